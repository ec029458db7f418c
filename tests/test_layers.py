"""The two layers (DESIGN.md, "two layers"): the diffusers-side extractor imports no mmseg/mmengine/mmcv, and
moving code between the layers kept the checkpoint keys (a checkpoint written before the move still loads)."""
import os
import subprocess
import sys
from pathlib import Path

import torch

from conftest import backbone_cfg, gate_branches

DATA = Path(__file__).parent / 'data'
#: state_dict of :func:`tiny_segmentor_cfg`'s model, saved by the code before the extractor moved (2026-12-03)
CHECKPOINT = DATA / 'tiny_segmentor_v1.safetensors'


def test_extractor_imports_no_mmseg_mmengine_mmcv():
    """Every module of the extractor, imported in a fresh interpreter, leaves mmseg, mmengine and mmcv unloaded
    (mmseg_gate neither: importing it registers mmseg modules)."""
    code = ("import importlib, pkgutil, sys, gate_features\n"
            "for m in pkgutil.walk_packages(gate_features.__path__, 'gate_features.'):\n"
            "    importlib.import_module(m.name)\n"
            "print(sorted({k.split('.')[0] for k in sys.modules} & {'mmseg', 'mmengine', 'mmcv', 'mmseg_gate'}))\n")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).parent.parent)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == '[]', out.stdout


def test_old_import_paths_are_the_moved_modules():
    import gate_features.families.flux
    import gate_features.frozen_stack
    import gate_features.utils.memory
    import mmseg_gate.models.families.flux
    import mmseg_gate.models.stable_diffusion
    import mmseg_gate.utils.memory
    from mmseg_gate.models.conditions import canny
    from gate_features.conditions import canny as moved_canny
    assert mmseg_gate.models.stable_diffusion is gate_features.frozen_stack
    assert mmseg_gate.models.families.flux is gate_features.families.flux
    assert mmseg_gate.utils.memory is gate_features.utils.memory
    assert canny is moved_canny


def tiny_segmentor_cfg(tiny):
    """The paper's three branches, a tiny amalgamation and UPerHead + FCN auxiliary: every kind of backbone key."""
    norm = dict(type='BN', requires_grad=True)
    amalgamation = dict(hidden_channels=8, refine_blocks=1, fuse_blocks=1, out_channels=8)
    return dict(
        type='EncoderDecoder',
        data_preprocessor=dict(type='SegDataPreProcessor', mean=[127.5] * 3, std=[127.5] * 3, bgr_to_rgb=True,
                               pad_val=0, seg_pad_val=255, size=(64, 64)),
        backbone=backbone_cfg(tiny, branches=gate_branches(tiny), amalgamation=amalgamation),
        decode_head=dict(type='UPerHead', in_channels=[8, 8, 8], in_index=[0, 1, 2], pool_scales=(1, 2),
                         channels=8, dropout_ratio=0.1, num_classes=3, norm_cfg=norm, align_corners=False,
                         loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0)),
        auxiliary_head=dict(type='FCNHead', in_channels=8, in_index=1, channels=8, num_convs=1, num_classes=3,
                            norm_cfg=norm, align_corners=False, loss_decode=dict(type='CrossEntropyLoss', loss_weight=0.4)),
        train_cfg=dict(), test_cfg=dict(mode='whole'))


def build_tiny_segmentor(tiny):
    from mmengine.config import ConfigDict
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules
    import mmseg_gate  # noqa: F401
    register_all_modules()
    torch.manual_seed(0)
    model = MODELS.build(ConfigDict(tiny_segmentor_cfg(tiny)))
    model.init_weights()
    return model


def write_checkpoint(tiny, path=CHECKPOINT):
    """Regenerate the fixture (only ever with the code it is meant to pin: ``python tests/test_layers.py``)."""
    from safetensors.torch import save_file
    model = build_tiny_segmentor(tiny)
    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, str(path))


def test_checkpoint_from_before_the_move_loads(tiny):
    from safetensors.torch import load_file
    saved = load_file(str(CHECKPOINT))
    model = build_tiny_segmentor(tiny)
    assert sorted(model.state_dict()) == sorted(saved)
    with torch.no_grad():  # change every tensor first, so that equality below is the load's doing
        for v in model.state_dict().values():
            if v.is_floating_point():
                v.add_(1)
    model.load_state_dict(saved, strict=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k]), k


if __name__ == '__main__':
    write_checkpoint(Path(os.environ.get('MMSEG_GATE_TINY', '/tmp/tiny')))
