"""A newcomer's first hour (issue 28): threads on shared machines, the demo's summary, head channels of other
mmseg heads caught before the build, quiet imports, quick and exact "not found" messages, key typos."""
import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from mmengine.config import Config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'tools'))


# ----------------------------------------------------------------------------- threads
def test_threads_follow_omp_num_threads(monkeypatch):
    from mmseg_gate.utils import threads
    monkeypatch.setattr(threads.os, 'sched_getaffinity', lambda pid: {0}, raising=False)
    assert threads.choose_num_threads({'OMP_NUM_THREADS': '3'}) == (3, 'OMP_NUM_THREADS=3')
    with pytest.raises(ValueError, match=r"OMP_NUM_THREADS='two' is not a positive whole number"):
        threads.choose_num_threads({'OMP_NUM_THREADS': 'two'})


def test_threads_capped_at_the_affinity_mask(monkeypatch):
    """A process allowed 2 of the host's 8 CPUs (a container's or a scheduler's mask): 2 threads, not torch's 8."""
    from mmseg_gate.utils import threads
    monkeypatch.setattr(threads.torch, 'get_num_threads', lambda: 8)
    monkeypatch.setattr(threads.os, 'sched_getaffinity', lambda pid: {4, 5}, raising=False)
    n, why = threads.choose_num_threads({})
    assert n == 2 and 'the 2 CPUs this process may use (torch would take 8)' in why
    monkeypatch.setattr(threads.os, 'sched_getaffinity', lambda pid: set(range(16)), raising=False)
    assert threads.choose_num_threads({})[0] == 8  # torch's default where the mask allows it


def test_configure_threads_sets_torch_and_logs_once(monkeypatch):
    import torch
    from mmseg_gate.utils import threads
    lines = []
    monkeypatch.setattr('mmengine.logging.print_log', lambda msg, *a, **k: lines.append(msg))
    before = torch.get_num_threads()
    try:
        assert threads.configure_threads(1, reason='a test') == 1 == torch.get_num_threads()
        threads.configure_threads(1, reason='a test')
    finally:
        torch.set_num_threads(before)
    assert lines == ['torch CPU threads: 1 (a test)']


# ----------------------------------------------------------------------------- head channels
def swap_config(tmp_path, base: str, **heads) -> Config:
    """mmseg's ``base`` with the backbone swapped for the tiny SD (64 channels at 1/8, 1/16, 1/32)."""
    from mmseg_gate.testing import make_tiny_sd
    tiny = os.environ.get('MMSEG_GATE_TINY') or make_tiny_sd(tmp_path / 'tiny', sd2=False, sdxl=False)
    edits = ', '.join(f'{k}={v!r}' for k, v in heads.items())
    path = tmp_path / f'{base.split("/")[0]}_swap.py'
    path.write_text(f"_base_ = 'mmseg::{base}'\nnorm = dict(type='BN', requires_grad=True)\n"
                    "model = dict(pretrained=None, backbone=dict(_delete_=True, type='GATEDiffusionBackbone', "
                    f"pretrained={str(Path(tiny) / 'sd')!r}, amalgamation=dict(hidden_channels=16, norm_cfg=norm)), "
                    f"{edits})\n")
    return Config.fromfile(str(path))


DEEPLAB = 'deeplabv3plus/deeplabv3plus_r50-d8_4xb4-80k_ade20k-512x512.py'
SEGFORMER = 'segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py'


def test_deeplabv3plus_c1_in_channels_caught_before_and_after_the_build(tmp_path):
    """The base's c1_in_channels=256 passed the old check and died in the first forward (a conv shape error)."""
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules
    from mmseg_gate import check_head_channels
    from mmseg_gate.engine.heads import check_model_config
    cfg = swap_config(tmp_path, DEEPLAB, decode_head=dict(in_index=2, in_channels=64, channels=16),
                      auxiliary_head=dict(in_index=1, in_channels=64, channels=16))
    fix = re.escape('model.decode_head.c1_in_channels=256 does not match the backbone: the decoder reads level 0, '
                    'which has 64 channels. Set model.decode_head.c1_in_channels=64.')
    with pytest.raises(ValueError, match=fix):
        check_model_config(cfg)
    register_all_modules()
    with pytest.raises(ValueError, match=fix):
        check_head_channels(MODELS.build(cfg.model))  # GATECheckHook's check of the built model
    cfg.model.decode_head.c1_in_channels = 64
    check_model_config(cfg)


def test_deeplabv3plus_base_in_index_names_the_coarsest_level(tmp_path):
    from mmseg_gate.engine.heads import check_model_config
    with pytest.raises(ValueError, match=re.escape('model.decode_head.in_index=3 but the backbone gives only 3 levels '
                                                   '(out_channels=[64, 64, 64]): use indices 0..2, e.g. '
                                                   'model.decode_head.in_index=2 and model.decode_head.in_channels=64')):
        check_model_config(swap_config(tmp_path, DEEPLAB))


def test_segformer_in_channels_caught_before_mmseg_asserts(tmp_path):
    """in_index cut to 3 levels, in_channels left at MiT's 4: mmseg's head build asserts bare; ours names the value."""
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules
    from mmseg_gate.engine.heads import check_model_config
    cfg = swap_config(tmp_path, SEGFORMER, decode_head=dict(in_index=[0, 1, 2]))
    register_all_modules()
    with pytest.raises(AssertionError):
        MODELS.build(cfg.model.decode_head)  # what a user got
    with pytest.raises(ValueError, match=re.escape('model.decode_head.in_channels=[32, 64, 160, 256] has 4 values but '
                                                   'in_index=[0, 1, 2] selects 3 levels. Set '
                                                   'model.decode_head.in_channels=[64, 64, 64]')):
        check_model_config(cfg)


@pytest.mark.parametrize('taps, merge', [
    (None, False),
    (('down_blocks.0.resnets.0', 'mid_block', 'up_blocks.1', 'up_blocks.2.attentions.0', 'up_blocks.3.resnets.0'),
     False),
    (('up_blocks.1.upsamplers.0', 'up_blocks.2.resnets.0', 'up_blocks.1.resnets.1'), True),
])
def test_expected_out_channels_match_the_built_backbone(tiny, taps, merge):
    """The config-level prediction (read from unet/config.json) equals what the probe pass finds."""
    from conftest import backbone_cfg, build
    from mmseg_gate.engine.heads import expected_out_channels
    cfg = backbone_cfg(tiny, merge_same_stride=merge, amalgamation=None, **({'taps': taps} if taps else {}))
    assert expected_out_channels(cfg) == build(cfg).out_channels


@pytest.mark.e2e
def test_train_tool_checks_the_heads_before_building(tmp_path):
    swap_config(tmp_path, SEGFORMER, decode_head=dict(in_index=[0, 1, 2]))  # writes segformer_swap.py
    done = subprocess.run([sys.executable, str(REPO / 'tools/train.py'), str(tmp_path / 'segformer_swap.py'),
                           '--work-dir', str(tmp_path / 'wd'), '--cfg-options',
                           *(f'{s}_dataloader.dataset.data_root={tmp_path}' for s in ('train', 'val', 'test'))],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode != 0
    assert 'Set model.decode_head.in_channels=[64, 64, 64]' in done.stderr, done.stderr[-3000:]
    assert 'AssertionError' not in done.stderr


# ----------------------------------------------------------------------------- messages
def test_unknown_backbone_key_gets_close_matches(tiny):
    from conftest import backbone_cfg, build
    with pytest.raises(TypeError, match=r"unknown keys \['timesteps'\] \('timesteps': did you mean 'timestep'\?\); "
                                        r"allowed keys are \['pretrained', 'branches'"):
        build(backbone_cfg(tiny, timesteps=51))


def readme_download(repo: str) -> str:
    text = (REPO / 'README.md').read_text().replace('\\\n', ' ')
    return ' '.join(re.search(rf'(hf download {re.escape(repo)} .*)', text).group(1).split())


def test_missing_hub_like_path_is_answered_at_once_with_the_readme_command(tmp_path, monkeypatch):
    """A typo under an existing local folder: no hub retries (~25 s), the close match, the README's filters."""
    import huggingface_hub
    from mmseg_gate.models.stable_diffusion import check_weights_location
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'checkpoints' / 'stable-diffusion-v1-5').mkdir(parents=True)
    monkeypatch.setattr(huggingface_hub, 'is_offline_mode', lambda: False)
    monkeypatch.setattr(huggingface_hub.HfApi, 'model_info', lambda *a, **k: pytest.fail('asked the hub'))
    with pytest.raises(FileNotFoundError) as error:
        check_weights_location('checkpoints/stable-diffusion-v1-6', 'Stable Diffusion model')
    message = str(error.value)
    assert "Close matches: ['checkpoints/stable-diffusion-v1-5']" in message
    assert f'`{readme_download("stable-diffusion-v1-5/stable-diffusion-v1-5")}`' in message
    assert 'checkpoints/ is a local folder' in message


def test_missing_hub_id_offline_or_after_one_failed_request(tmp_path, monkeypatch):
    import huggingface_hub
    from mmseg_gate.models.stable_diffusion import check_weights_location, download_command
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub, 'is_offline_mode', lambda: True)
    monkeypatch.setattr(huggingface_hub.HfApi, 'model_info', lambda *a, **k: pytest.fail('asked the hub offline'))
    with pytest.raises(FileNotFoundError, match='HF_HUB_OFFLINE is set'):
        check_weights_location('someone/sd-typo', 'ControlNet')
    calls = []

    def refuse(self, repo_id, timeout=None):
        calls.append(timeout)
        raise ConnectionError('no network')
    monkeypatch.setattr(huggingface_hub, 'is_offline_mode', lambda: False)
    monkeypatch.setattr(huggingface_hub.HfApi, 'model_info', refuse)
    with pytest.raises(FileNotFoundError, match='the hub answered ConnectionError'):
        check_weights_location('someone/sd-typo', 'ControlNet')
    assert calls == [10]  # one request with a timeout, no retries
    assert download_command('x', 'ControlNet') == readme_download('lllyasviel/sd-controlnet-canny')


def test_doctor_names_the_readme_step_of_each_missing_file():
    import collect_env
    sources = collect_env.readme_sources()
    assert collect_env.how_to_make('work_dirs/lora_cityscapes_b/lora.safetensors', sources) == (
        'README "Reproducing GATE" step 3 (LoRA a and b, then the segmentor): '
        '`python tools/train.py configs/lora/lora_cityscapes_b.py --work-dir work_dirs/lora_cityscapes_b`')
    assert collect_env.how_to_make('checkpoints/stable-diffusion-v1-5', sources).startswith(
        'README "Reproducing GATE" step 1 (Weights): `hf download stable-diffusion-v1-5/stable-diffusion-v1-5 ')
    assert 'docs/models.md' in collect_env.how_to_make('checkpoints/FLUX.1-dev', sources)


def test_gate_configs_read_the_loras_where_the_recipe_writes_them():
    import collect_env
    made = {path for path, _, _ in collect_env.readme_sources()}
    for name in ('gate_ade20k', 'gate_cityscapes'):
        cfg = Config.fromfile(str(REPO / 'configs' / f'{name}.py'))
        for key in ('lora_a', 'lora_b'):
            path = cfg[key].replace('cityscapes', 'ade20k')  # the README: the same with cityscapes in the names
            assert path in made or str(Path(path).parent) in made, (name, key, cfg[key])


# ----------------------------------------------------------------------------- import noise
def test_known_noise_dropped_other_messages_kept(caplog):
    from mmseg_gate.utils.quiet import quiet_import_noise
    quiet_import_noise()
    with caplog.at_level(logging.WARNING):
        logging.getLogger('torchao').warning('Failed to load /x/torchao/_C_mxfp8.cpython-310-x86_64-linux-gnu.so: no')
        logging.getLogger('torch.utils._pytree').warning(
            "<enum 'KernelPreference'> is an Enum subclass and is now natively supported by torch.compile")
        logging.getLogger('torchao').warning('a real torchao problem')
        logging.getLogger('torch.utils._pytree').error('a real pytree error')
    assert [r.getMessage() for r in caplog.records] == ['a real torchao problem', 'a real pytree error']
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter('default')
        quiet_import_noise()
        for module in ('peft.tuners.tuners_utils', 'elsewhere'):
            warnings.warn_explicit('Already found a `peft_config` attribute in the model. This will lead to having '
                                   'multiple adapters in the model.', UserWarning, 'x.py', 1, module=module)
    assert [w.filename for w in seen] == ['x.py']  # only the one from elsewhere


@pytest.mark.e2e
def test_imports_quiet_whichever_comes_first():
    code = 'import mmseg_gate, mmseg.apis, diffusers.models; from diffusers import StableDiffusionPipeline'
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for noise in ('Failed to load', 'register_constant', 'Unable to import `torchao`', 'requires torchvision'):
        assert noise not in done.stderr, done.stderr


# ----------------------------------------------------------------------------- the demo
@pytest.mark.e2e
def test_demo_summary_and_the_same_miou_whatever_omp_num_threads(tiny, tmp_path):
    from mmseg_gate.testing.synthetic_data import make_ade20k_like
    (tmp_path / 'data').mkdir()
    (tmp_path / 'data' / 'tiny_sd').symlink_to(tiny)
    make_ade20k_like(tmp_path / 'data' / 'demo', num_train=6, num_val=3)
    outputs = {}
    for omp in (None, '1'):
        env = {k: v for k, v in os.environ.items() if k != 'OMP_NUM_THREADS'}
        env.update({'OMP_NUM_THREADS': omp} if omp else {})
        wd = tmp_path / f'wd_{omp}'
        done = subprocess.run([sys.executable, str(REPO / 'tools/demo.py'), '--data-dir', 'data', '--work-dir', str(wd),
                               '--iters', '4'], capture_output=True, text=True, timeout=400, cwd=tmp_path, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        outputs[omp] = done.stdout
        lines = (done.stdout + done.stderr).strip().splitlines()
        assert len(lines) <= 8, lines  # a summary, not 742 lines: those are in the log
        pictures = re.search(r'prediction pictures .*: (\S+)/\*\.png', done.stdout).group(1)
        assert pictures == str(wd / 'predictions' / 'vis_data' / 'vis_image')
        assert len(list(Path(pictures).glob('*.png'))) == 3
        assert re.search(r'classes in the 3 test images \(IoU %\): wall [\d.]+, sky [\d.]+', done.stdout)
        assert 'Config:' in (wd / 'demo.log').read_text()  # the full logs
    assert 'OMP_NUM_THREADS=1 does not apply' in outputs['1']
    miou = {k: re.search(r'^mIoU: ([\d.]+)', v, re.M).group(1) for k, v in outputs.items()}
    assert miou[None] == miou['1'], miou


def test_lora_log_line_says_what_a_missing_target_means(tiny, tmp_path, monkeypatch):
    """A LoRA without text-encoder layers used to log "-> text_encoder adapter 'a': False", read as a failure."""
    from safetensors.torch import load_file, save_file
    from conftest import backbone_cfg, build
    path = tmp_path / 'unet_only_lora.safetensors'
    save_file({k: v for k, v in load_file(str(tiny / 'lora' / 'a.safetensors')).items()
               if not k.startswith(('text_encoder', 'lora_te'))}, str(path))
    lines = []
    monkeypatch.setattr('mmengine.logging.print_log', lambda msg, *a, **k: lines.append(msg))
    build(backbone_cfg(tiny, branches=[dict(name='x', loras=[dict(path=str(path))])]))
    out = '\n'.join(lines)
    assert f'LoRA {path} -> text_encoder: no text_encoder layers (nothing loaded there)' in out
    assert f"LoRA {path} -> unet: adapter " in out and ': False' not in out
