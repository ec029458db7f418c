"""Every shipped config parses, and the decode heads of the new model/feature configs take what their
backbones give (channels computed from the tap layout, checked on the tiny twins where they exist)."""
from pathlib import Path

import pytest
from mmengine.config import Config

REPO = Path(__file__).resolve().parents[1]
# configs/correspondence/: plain-Python configs of tools/correspondence.py (no model), tested in test_correspondence.py
CONFIGS = sorted(p for p in (REPO / 'configs').rglob('*.py') if '_base_' not in p.parts and 'correspondence' not in p.parts)


@pytest.mark.parametrize('path', CONFIGS, ids=[str(p.relative_to(REPO / 'configs')) for p in CONFIGS])
def test_config_parses(path):
    cfg = Config.fromfile(str(path))
    assert cfg.model.type in ('EncoderDecoder', 'CaptionEncoderDecoder', 'StableDiffusionLoRA',
                              'CachedFeatureEncoderDecoder', 'DepthEstimator')


def test_tiny_sdxl_demo_head_matches_its_backbone(tiny):
    from conftest import build
    cfg = Config.fromfile(str(REPO / 'configs/demo/gate_tiny_sdxl_ade20k.py'))
    backbone = dict(cfg.model.backbone, pretrained=str(tiny / 'sdxl'), dtype='fp32', branches=[dict(name='p')],
                    amalgamation=None)
    assert build(backbone).out_channels == cfg.model.decode_head.in_channels
