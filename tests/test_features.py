"""The extractor's public API (gate_features.GATEFeatures, docs/features.md): ``from_pretrained``, one call giving
every branch's taps by name, ``levels``, ``list_taps``; bitwise the backbone's features (SD1.5, SDXL, SD3)."""
import pytest
import torch

from conftest import backbone_cfg, build, gate_branches


def _pair(cfg):
    """The backbone of ``cfg`` (mmseg's registry) and the extractor of the same arguments, both in eval."""
    from gate_features import GATEFeatures
    kwargs = {k: v for k, v in cfg.items() if k not in ('type', 'amalgamation')}
    return build(cfg).eval(), GATEFeatures.from_pretrained(kwargs.pop('pretrained'), **kwargs)


def _check_equal(backbone, extractor, image):
    from gate_features import levels
    feats = extractor(image)
    assert list(feats) == [s.name for s in extractor.specs]
    assert all(list(per_tap) == extractor.tap_names for per_tap in feats.values())
    by_level = backbone.extract(image)
    assert [[t.shape for t in level] for level in levels(extractor, feats)] == [[t.shape for t in level]
                                                                              for level in by_level]
    for ours, theirs in zip(levels(extractor, feats), by_level):
        for a, b in zip(ours, theirs):
            assert torch.equal(a, b)  # bitwise: the same code on the same weights
    if backbone.amalgamation is None:
        for a, b in zip(backbone(image), by_level):
            assert torch.equal(a, b[0])
    return feats


def test_sd15_three_branches_by_name_equal_the_backbone(tiny, image):
    cfg = backbone_cfg(tiny, branches=gate_branches(tiny), noise='gate')
    backbone, extractor = _pair(cfg)
    assert not extractor.training and not any(p.requires_grad for p in extractor.parameters())
    feats = _check_equal(backbone, extractor, image)
    assert set(feats) == {'basic', 'lora_a_canny', 'lora_b_canny'}
    h, w = image.shape[-2:]
    for name, tap in zip(extractor.tap_names, extractor.tap_info):
        assert feats['basic'][name].shape == (1, tap.channels, -(-h // tap.stride), -(-w // tap.stride))
    assert not torch.equal(feats['basic'][extractor.taps[0]], feats['lora_a_canny'][extractor.taps[0]])
    assert torch.equal(extractor(image)['lora_b_canny'][extractor.taps[1]], feats['lora_b_canny'][extractor.taps[1]])


def test_sd15_merged_strides_and_attention_maps(tiny, image):
    cfg = backbone_cfg(tiny, amalgamation=None, merge_same_stride=True,
                       taps=('up_blocks.0.upsamplers.0', 'up_blocks.1.resnets.0', 'up_blocks.1.upsamplers.0'),
                       attention=dict())
    backbone, extractor = _pair(cfg)
    feats = _check_equal(backbone, extractor, image)
    from gate_features import levels
    assert 'attention' in feats['basic'] and len(levels(extractor, feats)) < len(extractor.tap_names)


def test_sdxl_equals_the_backbone(tiny, image):
    _check_equal(*_pair(backbone_cfg(tiny, pretrained=str(tiny / 'sdxl'), amalgamation=None,
                                     taps=('up_blocks.0.upsamplers.0', 'up_blocks.1.upsamplers.0'))), image)


def test_sd3_equals_the_backbone(tiny_dit, image):
    _check_equal(*_pair(dict(type='GATEDiffusionBackbone', pretrained=str(tiny_dit / 'sd3'), prompt='a photo',
                             taps=('transformer_blocks.0', 'transformer_blocks.2'), amalgamation=None)), image)


def test_list_taps_and_unknown_keywords(tiny):
    from gate_features import GATEFeatures, list_taps
    names = [t.name for t in list_taps(str(tiny / 'sd'), (64, 64))]
    assert 'up_blocks.1.upsamplers.0' in names
    with pytest.raises(TypeError, match=r"GATEFeatures: unknown keys \['timesteps'\].*did you mean 'timestep'"):
        GATEFeatures.from_pretrained(str(tiny / 'sd'), timesteps=51)
