import os

import numpy as np
import pytest
import torch

os.environ.setdefault('HF_HUB_OFFLINE', '1')  # tests never reach a hub
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_addoption(parser):
    group = parser.getgroup('mmseg-gate', 'mmseg-gate: the device selection (docs/gpu.md)')
    group.addoption('--device', default='cpu',
                    help='device of the tests marked "device" (make test-gpu: cuda); the rest run on the CPU as always')
    group.addoption('--dtype', default='fp32', choices=sorted(DEVICE_TOLERANCE),
                    help='frozen dtype of the backbones in the tests marked "device" (their diffusers reference stays '
                         'fp32 on the same device; tolerances: DEVICE_TOLERANCE)')


def pytest_configure(config):
    config.addinivalue_line('markers', 'e2e: an end-to-end run of the tools in subprocesses (make test-e2e; '
                                       'make test leaves them out, CI runs them with make test-all)')
    config.addinivalue_line('markers', 'device: honours --device/--dtype (the device selection: make test-gpu runs '
                                       'pytest -m device --device cuda --dtype bf16; docs/gpu.md)')


@pytest.fixture(scope='session')
def tiny(tmp_path_factory):
    """Tiny SD/SD2/ControlNet/LoRA assets in the diffusers layout (built once per session)."""
    from mmseg_gate.testing import make_tiny_sd
    root = os.environ.get('MMSEG_GATE_TINY')  # reuse a prebuilt folder when given
    return make_tiny_sd(root or tmp_path_factory.mktemp('tiny'))


@pytest.fixture(scope='session')
def image_uint8():
    """A 64x96 RGB picture with flat regions, gradients and sharp edges (canny has work to do)."""
    import cv2
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :96]
    img = np.stack([xx * 2, yy * 3, (xx + yy)], -1).astype(np.uint8)
    cv2.circle(img, (30, 30), 14, (250, 30, 60), -1)
    cv2.rectangle(img, (55, 10), (90, 50), (20, 200, 90), -1)
    img = cv2.GaussianBlur(img, (3, 3), 0.8)
    return np.clip(img.astype(int) + rng.integers(-4, 5, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope='session')
def image(image_uint8):
    """The same picture as the backbone receives it: [1, 3, H, W] in [-1, 1]."""
    return torch.from_numpy(image_uint8).permute(2, 0, 1)[None].float() / 127.5 - 1


def backbone_cfg(tiny, **kw):
    # noise='fixed': one seeded pattern for all branches, train and eval, posterior mode: what the
    # comparisons with diffusers' own computation use (the default 'gate' policy: test_paper_recipe.py)
    cfg = dict(type='GATEDiffusionBackbone', pretrained=str(tiny / 'sd'), prompt='a photo', timestep=50,
               noise='fixed', amalgamation=dict(hidden_channels=16, refine_blocks=1, fuse_blocks=1))
    cfg.update(kw)
    return cfg


def lora(tiny, name, scale=1.0):
    return dict(path=str(tiny / 'lora' / f'{name}.safetensors'), scale=scale)


def canny_net(tiny, scale=1.0):
    return dict(path=str(tiny / 'controlnet-canny'), condition='canny', scale=scale)


def gate_branches(tiny):
    """The paper's three branches on the tiny assets."""
    return [dict(name='basic'),
            dict(name='lora_a_canny', loras=[lora(tiny, 'a')], controlnets=[canny_net(tiny)]),
            dict(name='lora_b_canny', loras=[lora(tiny, 'b')], controlnets=[canny_net(tiny)])]


def build(cfg):
    from mmseg.registry import MODELS
    import mmseg_gate  # noqa: F401
    return MODELS.build(cfg)


@pytest.fixture(scope='session')
def tiny_dit(tmp_path_factory):
    """Tiny SD3 (+ ControlNet, LoRAs) and PixArt-Sigma/alpha assets in the diffusers layout (built once)."""
    from mmseg_gate.testing.tiny_dit import make_tiny_dit
    root = os.environ.get('MMSEG_GATE_TINY_DIT')  # reuse a prebuilt folder when given
    return make_tiny_dit(root or tmp_path_factory.mktemp('tiny_dit'))


# ---------------------------------------------------------------------------------------------- the device selection
#: The largest feature difference allowed against diffusers' fp32 reference computed on the same device, as a
#: fraction of the reference's largest magnitude, per frozen dtype (docs/gpu.md). fp32 has none: its tests keep
#: their own absolute and relative tolerances, on every device (TF32 off on CUDA).
DEVICE_TOLERANCE = {'fp32': None, 'bf16': 0.06, 'fp16': 0.01}


def _tf32_flags():
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


@pytest.fixture(scope='session')
def device(request):
    """The device of the tests marked ``device`` (``--device``, default cpu); skips where it is not there.

    On CUDA, TF32 is off for the session (matmuls and cuDNN convolutions in full fp32): the fp32 references and the
    fp32 comparisons measure our computation, not TF32's 10-bit mantissa (torch's default keeps cuDNN convolutions
    in TF32: docs/gpu.md, "TF32").
    """
    name = request.config.getoption('--device')
    try:
        dev = torch.device(name)
    except RuntimeError as error:
        raise pytest.UsageError(f'--device {name!r}: {error}') from error
    if dev.type == 'cuda':
        if not torch.cuda.is_available():
            pytest.skip(f'--device {name}: no CUDA device is visible (torch {torch.__version__}, CUDA '
                        f'{torch.version.cuda or "not compiled"})')
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            pytest.skip(f'--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible')
        saved = _tf32_flags()
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        yield dev
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
        return
    if dev.type != 'cpu':
        pytest.skip(f'--device {name}: the device selection runs on cpu and cuda only')
    yield dev


@pytest.fixture(scope='session')
def dtype(request, device):
    """The frozen dtype of the backbones under test (``--dtype``: fp32, bf16 or fp16), as the config names it."""
    name = request.config.getoption('--dtype')
    if device.type == 'cuda' and name == 'bf16' and not torch.cuda.is_bf16_supported():
        pytest.skip(f'--dtype bf16: {torch.cuda.get_device_name(device)} has no bf16')
    return name


def assert_features_close(actual, expected, dtype='fp32', **tolerances):
    """Features against their reference: in fp32 ``torch.testing.assert_close(actual, expected, **tolerances)``
    unchanged; in bf16/fp16 the largest difference within ``DEVICE_TOLERANCE[dtype]`` of the reference's largest
    magnitude (and the same shape, dtype and device)."""
    if DEVICE_TOLERANCE[dtype] is None:
        torch.testing.assert_close(actual, expected, **tolerances)
        return
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, (actual.shape, expected.shape)
    assert actual.device == expected.device, (actual.device, expected.device)
    scale = expected.detach().abs().max().float().item()
    err = (actual.detach().float() - expected.detach().float()).abs().max().item()
    assert err <= DEVICE_TOLERANCE[dtype] * scale, \
        (f'{dtype}: max abs difference {err:.4g} is {err / max(scale, 1e-30):.4f} of the reference\'s max abs '
         f'{scale:.4g} (allowed: {DEVICE_TOLERANCE[dtype]})')


def on_device(device, *tensors):
    """``tensors`` moved to ``device`` (one tensor: that tensor)."""
    moved = tuple(t.to(device) for t in tensors)
    return moved[0] if len(moved) == 1 else moved
