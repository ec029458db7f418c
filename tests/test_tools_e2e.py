"""End to end through tools/train.py, tools/test.py, dist_train.sh and mmseg's own train.py, on the tiny
assets and synthetic data in the real ADE20K / Cityscapes layouts."""
import os
import random
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.e2e  # the tools through subprocesses: make test-e2e

REPO = Path(__file__).resolve().parents[1]
SHORT = ['train_cfg.max_iters=2', 'train_cfg.val_interval=2', 'default_hooks.checkpoint.interval=2',
         'param_scheduler.0.end=2']


@pytest.fixture(scope='module')
def workspace(tiny, tmp_path_factory):
    """A working folder laid out as the demo configs expect: data/tiny_sd, data/demo/..."""
    from mmseg_gate.testing.synthetic_data import make_ade20k_like, make_cityscapes_like
    ws = tmp_path_factory.mktemp('ws')
    (ws / 'data').mkdir()
    (ws / 'data' / 'tiny_sd').symlink_to(tiny)
    make_ade20k_like(ws / 'data' / 'demo', num_train=6, num_val=3)
    make_cityscapes_like(ws / 'data' / 'demo', num_train=4, num_val=3)
    return ws


def run(ws, *args, env=None, check=True, timeout=300):
    proc = subprocess.run([*args], cwd=ws, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, 'PYTHON': sys.executable, **(env or {})})
    out = proc.stdout + proc.stderr
    if check and proc.returncode != 0:
        raise AssertionError(f'{args} failed ({proc.returncode}):\n{out[-4000:]}')
    return proc.returncode, out


def tool(name):
    return str(REPO / 'tools' / name)


def config(name):
    return str(REPO / 'configs' / name)


def miou(out):
    found = re.findall(r'mIoU: ([\d.]+)', out)
    assert found, out[-2000:]
    return float(found[-1])


# the demo's schedule, shortened: checkpoints after 2, 4 and 5, validation at the end, every loss logged
# (test_killed_run_resumes_to_the_same_weights resumes a killed twin of this run)
RESUMABLE = ['train_cfg.max_iters=5', 'train_cfg.val_interval=5', 'default_hooks.checkpoint.interval=2',
             'param_scheduler.0.end=5', 'default_hooks.logger.interval=1', 'log_processor.window_size=1']


@pytest.fixture(scope='module')
def ade_run(workspace):
    """The tiny ADE20K demo through tools/train.py: (work_dir, log)."""
    wd = workspace / 'work_dirs' / 'ade'
    _, out = run(workspace, sys.executable, tool('train.py'), config('demo/gate_tiny_ade20k.py'), '--work-dir', str(wd),
                 '--cfg-options', *RESUMABLE)
    assert 0 <= miou(out) <= 100
    return wd, out


@pytest.fixture(scope='module')
def ade_checkpoint(ade_run):
    return ade_run[0] / 'iter_5.pth'


def test_tiny_sdxl_demo_trains_and_tests(workspace):
    """configs/demo/gate_tiny_sdxl_ade20k.py through tools/train.py: SDXL conditioning, its ControlNet,
    a kohya LoRA on both text encoders and token taps in a training run; the checkpoint stays small."""
    wd = workspace / 'work_dirs' / 'sdxl'
    _, out = run(workspace, sys.executable, tool('train.py'), config('demo/gate_tiny_sdxl_ade20k.py'),
                 '--work-dir', str(wd), '--cfg-options', *SHORT)
    assert 0 <= miou(out) <= 100
    from mmseg_gate.checkpoint_compat import load_runner_checkpoint
    ckpt = load_runner_checkpoint(str(wd / 'iter_2.pth'), map_location='cpu')
    assert ckpt['meta']['gate_frozen']['pretrained'].endswith('sdxl')
    assert not any('unet' in k or 'text_encoder' in k or 'controlnet' in k for k in ckpt['state_dict'])


def test_ade20k_train_then_test_with_outputs(workspace, ade_checkpoint):
    assert ade_checkpoint.exists()
    # the checkpoint holds the trainable weights only (MBs, not the frozen SD)
    from mmseg_gate.checkpoint_compat import load_runner_checkpoint
    with pytest.raises(Exception, match='Weights only load failed'):
        torch.load(ade_checkpoint, map_location='cpu')  # what mmengine alone would do under torch >= 2.6
    ckpt = load_runner_checkpoint(str(ade_checkpoint), map_location='cpu')
    assert not any('unet' in k or 'vae' in k or 'controlnet' in k for k in ckpt['state_dict'])
    out_dir, show_dir = workspace / 'pred', workspace / 'show'
    _, out = run(workspace, sys.executable, tool('test.py'), config('demo/gate_tiny_ade20k.py'), str(ade_checkpoint),
                 '--work-dir', str(workspace / 'work_dirs' / 'ade_test'), '--out', str(out_dir), '--show-dir', str(show_dir))
    assert 0 <= miou(out) <= 100
    pngs = sorted(out_dir.glob('ADE_val_*.png'))
    assert len(pngs) == 3
    assert list(show_dir.rglob('*.png'))


def test_ade20k_submission_files(workspace, ade_checkpoint):
    sub = workspace / 'submission'
    run(workspace, sys.executable, tool('test.py'), config('demo/gate_tiny_ade20k_submission.py'), str(ade_checkpoint),
        '--format-only', str(sub))
    pngs = sorted(sub.glob('*.png'))
    assert [p.stem for p in pngs] == [f'ADE_test_{i:08d}' for i in range(1, 4)]
    for p in pngs:
        arr = np.array(Image.open(p))
        assert arr.shape == (96, 128) and arr.min() >= 1 and arr.max() <= 150  # ADE ids 1..150, 0 never


def test_cityscapes_train_and_cityscapesscripts_agrees(workspace):
    wd = workspace / 'work_dirs' / 'cs'
    run(workspace, sys.executable, tool('train.py'), config('demo/gate_tiny_cityscapes.py'), '--work-dir', str(wd),
        '--cfg-options', *SHORT)
    from mmengine.config import Config
    from mmengine.runner import Runner
    import mmseg_gate  # noqa: F401
    cfg = Config.fromfile(config('demo/gate_tiny_cityscapes.py'))
    preds = workspace / 'cs_labelIds'
    # mmseg's CityscapesMetric evaluates with cityscapesscripts (instance and pixel-accuracy scores
    # included: they need numpy < 2.4, whose np.in1d cityscapesscripts calls)
    cfg.test_evaluator = [dict(type='IoUMetric', iou_metrics=['mIoU']),
                          dict(type='CityscapesMetric', output_dir=str(preds), keep_results=True)]
    cfg.work_dir = str(wd / 'test')
    cfg.load_from = str(wd / 'iter_2.pth')
    cwd = os.getcwd()
    os.chdir(workspace)
    try:
        metrics = Runner.from_cfg(cfg).test()
    finally:
        os.chdir(cwd)
    assert 0 <= metrics['averageScoreCategories'] <= 1 and 'averageScoreInstCategories' in metrics
    files = sorted(preds.glob('*_leftImg8bit.png'))
    assert len(files) == 3
    import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as CSEval
    gts = [str(workspace / 'data/demo/cityscapes/gtFine/val/frankfurt' /
               f.name.replace('_leftImg8bit.png', '_gtFine_labelIds.png')) for f in files]
    CSEval.args.evalPixelAccuracy, CSEval.args.JSONOutput, CSEval.args.quiet = True, False, True
    CSEval.args.evalInstLevelScore = True
    CSEval.args.predictionPath = str(preds)
    result = CSEval.evaluateImgLists([str(f) for f in files], gts, CSEval.args)
    # class mIoU ('averageScoreClasses'; 'averageScoreCategories' averages the 7 categories instead)
    assert result['averageScoreClasses'] * 100 == pytest.approx(metrics['mIoU'], abs=0.01)


def test_swap_recipe_on_mmseg_upernet_config_with_mmseg_own_train_tool(workspace):
    """configs/swap/: mmseg's UPerNet config with the backbone swapped, trained by mmseg's own tools/train.py
    (custom_imports registers the plugin); the recipe's SD1.5 channels fail on the tiny model with the fix named."""
    import mmseg
    from mmengine.config import Config
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules
    from mmseg_gate.engine import check_head_channels
    # mmseg's tool merges dotted keys only (tools/train.py also rewrites top-level variables such as sd_path)
    root = 'data/demo/ADEChallengeData2016'
    options = {'model.backbone.pretrained': str(workspace / 'data/tiny_sd/sd'),
               **{f'{split}_dataloader.dataset.data_root': root for split in ('train', 'val', 'test')}}
    options.update({'model.backbone.dtype': 'fp32', 'model.decode_head.channels': 16, 'model.auxiliary_head.channels': 16,
                    'train_dataloader.batch_size': 2, 'train_dataloader.num_workers': 0,
                    'train_dataloader.persistent_workers': False, 'val_dataloader.num_workers': 0,
                    'val_dataloader.persistent_workers': False, 'train_cfg.max_iters': 1, 'train_cfg.val_interval': 100})
    # the recipe's channels are SD1.5's; the tiny model has 64 everywhere: the check (GATECheckHook's) names the fix
    register_all_modules()
    cfg = Config.fromfile(config('swap/upernet_r50_to_gate_ade20k.py'))
    cfg.merge_from_dict(dict(options))
    with pytest.raises(ValueError, match=re.escape('Set model.decode_head.in_channels=[64, 64, 64]')):
        check_head_channels(MODELS.build(cfg.model))
    options.update({'model.decode_head.in_channels': '[64,64,64]', 'model.auxiliary_head.in_channels': 64})
    mmseg_train = Path(mmseg.__file__).parent / '.mim' / 'tools' / 'train.py'
    run(workspace, sys.executable, str(mmseg_train), config('swap/upernet_r50_to_gate_ade20k.py'),
        '--work-dir', str(workspace / 'work_dirs' / 'swap'), '--cfg-options', *(f'{k}={v}' for k, v in options.items()))
    assert (workspace / 'work_dirs' / 'swap' / 'iter_1.pth').exists()


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


# two processes: checkpoints after 2 and 4, every loss logged
DDP_RESUME = ['train_cfg.max_iters=4', 'train_cfg.val_begin=100', 'default_hooks.checkpoint.interval=2',
              'param_scheduler.0.end=4', 'default_hooks.logger.interval=1', 'log_processor.window_size=1']


@pytest.fixture(scope='module')
def ddp_run(workspace):
    """The tiny demo, 4 iterations in two processes (gloo on CPUs) through dist_train.sh."""
    wd = workspace / 'work_dirs' / 'ddp'
    _, out = run(workspace, 'bash', tool('dist_train.sh'), config('demo/gate_tiny_ade20k.py'), '2', '--work-dir', str(wd),
                 '--cfg-options', *DDP_RESUME, env={'PORT': str(free_port())})
    return wd, out


def test_ddp_two_processes_gloo(ddp_run):
    wd, out = ddp_run
    assert 'Distributed training: True' in out
    assert (wd / 'iter_4.pth').exists()


def test_missing_data_root_fails_fast(workspace):
    code, out = run(workspace, sys.executable, tool('train.py'), config('demo/gate_tiny_ade20k.py'),
                    '--cfg-options', 'data_root=data/nowhere', check=False)
    assert code != 0 and "data_root='data/nowhere' does not exist" in out


def killed_config(ws, base, iteration):
    """``base`` plus a hook that SIGKILLs each training process after ``iteration`` (its own hooks kept)."""
    from mmseg_gate.testing.fault_hooks import config_with_hooks
    return config_with_hooks(base, ws / f'{Path(base).stem}_killed_after_{iteration}.py',
                             [dict(type='KillAfterIteration', iteration=iteration)])


def logged_losses(log):
    """{iteration: 'loss: ... ' (the loss and every logged loss/accuracy term)}, from LoggerHook lines."""
    return {int(m.group(1)): m.group(2).strip()
            for m in re.finditer(r'Iter\(train\) \[\s*(\d+)/\d+\].*?\s(loss: .*)$', log, re.M)}


def assert_resumed_exactly(full_dir, part_dir, last, full_log, resumed_log, killed_log, resumed_from):
    assert 'random state restored' in resumed_log, resumed_log[-3000:]
    from mmseg_gate.testing.checkpoints import checkpoint_differences
    diffs = checkpoint_differences(full_dir / f'iter_{last}.pth', part_dir / f'iter_{last}.pth')
    assert all(d['differ'] == 0 for d in diffs.values()), diffs  # keys, tensors and other entries
    full, resumed, killed = logged_losses(full_log), logged_losses(resumed_log), logged_losses(killed_log)
    assert sorted(full) == list(range(1, last + 1)) and sorted(resumed) == list(range(resumed_from + 1, last + 1))
    assert resumed == {i: full[i] for i in resumed}
    assert killed == {i: full[i] for i in killed}


def kill_then_resume(ws, base, part, kill_after, options, processes=None):
    """Train ``base`` (through dist_train.sh with ``processes``) killed with SIGKILL after iteration
    ``kill_after``, then ``--resume`` it: the two logs."""
    def train(cfg, *args, env=None, check=True):
        launch = ['bash', tool('dist_train.sh'), cfg, str(processes)] if processes else [sys.executable, tool('train.py'), cfg]
        env = {**(env or {}), **({'PORT': str(free_port())} if processes else {})}
        return run(ws, *launch, '--work-dir', str(part), *args, '--cfg-options', *options, env=env, check=check)
    code, killed_log = train(killed_config(ws, base, kill_after), check=False)
    killed = 'Signal 9 (SIGKILL) received' in killed_log if processes else code == -signal.SIGKILL  # torchrun: 1
    assert killed and f'Iter(train) [{kill_after}/' in killed_log and \
        f'Iter(train) [{kill_after + 1}/' not in killed_log, killed_log[-3000:]
    _, resumed_log = train(base, '--resume')
    return killed_log, resumed_log


def test_killed_run_resumes_to_the_same_weights(workspace, ade_run):
    """The tiny demo as shipped ('gate' noise: fresh noise and posterior samples per branch, dropout,
    random resize/crop/flip), killed with SIGKILL after a random iteration past the first checkpoint,
    then --resume: bitwise the uninterrupted run (weights, optimizer state, logged losses)."""
    full, full_log = ade_run
    part = workspace / 'work_dirs' / 'killed'
    kill_after = random.Random(21).randint(3, 4)  # checkpoints after 2 and 4 (of 5)
    killed_log, resumed_log = kill_then_resume(workspace, config('demo/gate_tiny_ade20k.py'), part, kill_after,
                                               RESUMABLE)
    assert_resumed_exactly(full, part, 5, full_log, resumed_log, killed_log, kill_after - kill_after % 2)


def test_ddp_killed_run_resumes_to_its_uninterrupted_twin(workspace, ddp_run):
    """Two processes, each with its own random state (rank 0 writes both): killed after iteration 3,
    resumed from iteration 2's checkpoint, it ends as test_ddp_two_processes_gloo's run."""
    full, full_log = ddp_run
    part = workspace / 'work_dirs' / 'ddp_killed'
    demo = config('demo/gate_tiny_ade20k.py')
    kill_after = 3  # the only iteration between the checkpoints after 2 and 4
    killed_log, resumed_log = kill_then_resume(workspace, demo, part, kill_after, DDP_RESUME, processes=2)
    from mmseg_gate.checkpoint_compat import load_runner_checkpoint
    saved = load_runner_checkpoint(str(part / 'iter_4.pth'))['random_state']
    assert saved['world_size'] == 2 and all(r is not None for r in saved['ranks'])
    assert_resumed_exactly(full, part, 4, full_log, resumed_log, killed_log, 2)


def test_per_image_prompt_config_trains_and_tests(workspace):
    from mmseg_gate.testing import make_tiny_captioner
    blip = make_tiny_captioner(workspace / 'blip')
    root = workspace / 'data' / 'demo' / 'ADEChallengeData2016'
    run(workspace, sys.executable, tool('caption.py'), '--model', str(blip), '--data-root', str(root), '--images',
        'images', '--out', str(root / 'captions.json'), '--max-new-tokens', '4')
    wd = workspace / 'work_dirs' / 'captions'
    _, out = run(workspace, sys.executable, tool('train.py'), config('demo/gate_tiny_ade20k_captions.py'),
                 '--work-dir', str(wd), '--cfg-options', *SHORT)
    assert 0 <= miou(out) <= 100 and (wd / 'iter_2.pth').exists()
