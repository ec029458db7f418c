"""End to end through tools/train.py, tools/test.py, dist_train.sh and mmseg's own train.py, on the tiny
assets and synthetic data in the real ADE20K / Cityscapes layouts."""
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

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


@pytest.fixture(scope='module')
def ade_checkpoint(workspace):
    wd = workspace / 'work_dirs' / 'ade'
    _, out = run(workspace, sys.executable, tool('train.py'), config('demo/gate_tiny_ade20k.py'), '--work-dir', str(wd),
                 '--cfg-options', *SHORT)
    assert 0 <= miou(out) <= 100
    return wd / 'iter_2.pth'


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


def test_mmseg_own_train_tool_with_custom_imports(workspace):
    import mmseg
    mmseg_train = Path(mmseg.__file__).parent / '.mim' / 'tools' / 'train.py'
    _, out = run(workspace, sys.executable, str(mmseg_train), config('demo/gate_tiny_ade20k.py'),
                 '--work-dir', str(workspace / 'work_dirs' / 'mmseg_own'), '--cfg-options', *SHORT)
    assert (workspace / 'work_dirs' / 'mmseg_own' / 'iter_2.pth').exists()


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


def test_swap_recipe_on_mmseg_upernet_config(workspace):
    common = [sys.executable, tool('train.py'), config('swap/upernet_r50_to_gate_ade20k.py'),
              '--work-dir', str(workspace / 'work_dirs' / 'swap'), '--cfg-options',
              'sd_path=data/tiny_sd/sd', 'data_root=data/demo/ADEChallengeData2016', 'model.backbone.dtype=fp32',
              'train_dataloader.batch_size=2', 'train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
              'val_dataloader.num_workers=0', 'val_dataloader.persistent_workers=False', 'model.decode_head.channels=16',
              'model.auxiliary_head.channels=16', 'train_cfg.max_iters=1', 'train_cfg.val_interval=100']
    # the recipe's channels are SD1.5's; the tiny model has 64 everywhere: the check names the fix
    code, out = run(workspace, *common, check=False)
    assert code != 0 and 'Set model.decode_head.in_channels=[64, 64, 64]' in out, out[-3000:]
    run(workspace, *common, 'model.decode_head.in_channels=[64,64,64]', 'model.auxiliary_head.in_channels=64')
    assert (workspace / 'work_dirs' / 'swap' / 'iter_1.pth').exists()


def test_ddp_two_processes_gloo(workspace):
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    wd = workspace / 'work_dirs' / 'ddp'
    _, out = run(workspace, 'bash', tool('dist_train.sh'), config('demo/gate_tiny_ade20k.py'), '2', '--work-dir', str(wd),
                 '--cfg-options', *SHORT, env={'PORT': str(port)})
    assert 'Distributed training: True' in out
    assert (wd / 'iter_2.pth').exists()


def test_missing_data_root_fails_fast(workspace):
    code, out = run(workspace, sys.executable, tool('train.py'), config('demo/gate_tiny_ade20k.py'),
                    '--cfg-options', 'data_root=data/nowhere', check=False)
    assert code != 0 and "data_root='data/nowhere' does not exist" in out


def _final_weights(path):
    from mmseg_gate.checkpoint_compat import load_runner_checkpoint
    return load_runner_checkpoint(str(path), map_location='cpu')['state_dict']


def test_killed_run_resumes_to_the_same_weights(workspace):
    # deterministic: no dropout, no random augmentation, seeded init
    cfg = workspace / 'deterministic.py'
    cfg.write_text(f"""_base_ = [{config('demo/gate_tiny_ade20k.py')!r}]
# noise='fixed': the default policy draws fresh noise from torch's RNG, which a resume does not restore
model = dict(decode_head=dict(dropout_ratio=0), auxiliary_head=dict(dropout_ratio=0),
             backbone=dict(noise='fixed', amalgamation=dict(dropout=0)))
train_dataloader = dict(batch_size=2, dataset=dict(pipeline=[
    dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='Resize', scale=(64, 64), keep_ratio=False), dict(type='PackSegInputs')]))
train_cfg = dict(max_iters=6, val_interval=100)
param_scheduler = [dict(type='PolyLR', eta_min=0.0, power=0.9, begin=0, end=6, by_epoch=False)]
default_hooks = dict(checkpoint=dict(interval=2, max_keep_ckpts=5))
""")
    base = [sys.executable, tool('train.py'), str(cfg)]
    full, part = workspace / 'work_dirs' / 'full', workspace / 'work_dirs' / 'killed'
    run(workspace, *base, '--work-dir', str(full))
    # the same run, killed once iteration 2's checkpoint is on disk
    proc = subprocess.Popen([*base, '--work-dir', str(part)], cwd=workspace, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    last = part / 'last_checkpoint'
    while time.time() < deadline and not (last.exists() and last.read_text().strip().endswith('iter_2.pth')):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (part / 'iter_6.pth').exists(), 'the run finished before it was killed'
    _, out = run(workspace, *base, '--work-dir', str(part), '--resume')
    assert 'resumed' in out.lower()
    a, b = _final_weights(full / 'iter_6.pth'), _final_weights(part / 'iter_6.pth')
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)


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
