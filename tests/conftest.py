import os

import numpy as np
import pytest
import torch

os.environ.setdefault('HF_HUB_OFFLINE', '1')  # tests never reach a hub
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_configure(config):
    config.addinivalue_line('markers', 'e2e: an end-to-end run of the tools in subprocesses (make test-e2e; '
                                       'make test leaves them out, CI runs them with make test-all)')


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
