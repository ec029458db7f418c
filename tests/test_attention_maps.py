"""Cross-attention maps as features: equal to softmax(QK^T / sqrt(d)) from the hooked queries and keys,
averaged over heads and over the layers of one grid; every other attention layer stays fused. Marked
``device`` (docs/gpu.md): in bf16 the explicit maps are computed in fp32 from the hooked bf16 queries and keys."""
import pytest
import torch
import torch.nn.functional as F

from conftest import DEVICE_TOLERANCE, assert_features_close, backbone_cfg, build, lora

TAPS = ('up_blocks.0.upsamplers.0', 'up_blocks.1.upsamplers.0', 'up_blocks.2.upsamplers.0')


@pytest.fixture(scope='module')
def with_maps(tiny, device, dtype):
    return build(backbone_cfg(tiny, attention=dict(), amalgamation=None, dtype=dtype,
                              branches=[dict(name='lora_a', loras=[lora(tiny, 'a')])])).to(device)


def sum_tolerance(dtype):
    """How far the maps' sums may be from 1: fp32 1e-4; bf16/fp16 the rounding of their probabilities."""
    return 1e-4 if DEVICE_TOLERANCE[dtype] is None else 2e-2


def explicit_maps(model, image):
    """Queries and keys hooked on the kept layers during a plain forward; the maps computed here."""
    sd = model.frozen_modules()
    modules = dict(sd.unet.named_modules())
    q, k = {}, {}
    hooks = []
    for name in model.attention.names:
        hooks.append(modules[name + '.to_q'].register_forward_hook(lambda m, a, o, n=name: q.__setitem__(n, o)))
        hooks.append(modules[name + '.to_k'].register_forward_hook(lambda m, a, o, n=name: k.__setitem__(n, o)))
    try:
        feats = model.extract(image)
    finally:
        for hook in hooks:
            hook.remove()
    h, w = (-(-s // 64) * 64 for s in image.shape[-2:])  # the UNet saw the input padded to 64
    groups = {}
    for name in model.attention.names:
        heads = modules[name].heads
        qh, kh = (t.float().unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q[name], k[name]))  # [B, heads, N, d]
        probs = (qh @ kh.transpose(-1, -2) / qh.shape[-1] ** 0.5).softmax(-1).mean(1)  # [B, N, 77]
        stride = round((h * w / probs.shape[1]) ** 0.5)
        groups.setdefault(stride, []).append(probs.transpose(1, 2).unflatten(2, (h // stride, w // stride)))
    out = [F.interpolate(torch.stack(maps).mean(0), size=(h // 8, w // 8), mode='nearest')
           for _, maps in sorted(groups.items(), reverse=True)]
    return feats, torch.cat(out, 1)[..., :image.shape[-2] // 8, :image.shape[-1] // 8]


@pytest.mark.device
def test_attention_maps_equal_the_explicit_computation(with_maps, image, device, dtype):
    # the authors' default: up-stage cross-attention at 1/32 and 1/16, averaged per resolution, at 1/8
    assert sorted(set(with_maps.attention.layer_strides[n] for n in with_maps.attention.names)) == [16, 32]
    assert with_maps.out_channels == [64, 2 * 77, 64, 64]  # levels: 1/8 tap, maps at 1/8, 1/16, 1/32
    feats, expected = explicit_maps(with_maps, image.to(device))
    maps = feats[1][0]  # levels by stride: the 1/8 tap, then the maps (1/8), 1/16, 1/32
    assert maps.shape == expected.shape == (1, 154, 8, 12)
    assert_features_close(maps, expected, dtype, atol=1e-5, rtol=1e-4)
    # each resolution's maps sum to 1
    assert torch.allclose(maps.sum(1) / 2, torch.ones(1, 8, 12, device=device), atol=sum_tolerance(dtype))


@pytest.mark.device
def test_only_the_requested_layers_give_up_fused_attention(tiny, with_maps, image, device, dtype):
    from diffusers.models.attention_processor import AttnProcessor2_0
    procs = with_maps.frozen_modules().unet.attn_processors
    kept = {n + '.processor' for n in with_maps.attention.names}
    assert kept and all(type(p).__name__ == '_MapProcessor' for n, p in procs.items() if n in kept)
    assert all(isinstance(p, AttnProcessor2_0) for n, p in procs.items() if n not in kept)
    assert len(procs) > len(kept)
    # the other features are those of a backbone without maps
    plain = build(backbone_cfg(tiny, amalgamation=None, dtype=dtype,
                               branches=[dict(name='lora_a', loras=[lora(tiny, 'a')])])).to(device)
    ours, theirs = with_maps.extract(image.to(device)), plain.extract(image.to(device))
    for a, b in zip([ours[0], ours[2], ours[3]], theirs):
        assert_features_close(a[0], b[0], dtype, atol=1e-5, rtol=1e-4)


def test_attention_maps_per_layer_and_merged_with_the_taps(tiny, image):
    m = build(backbone_cfg(tiny, attention=dict(average_layers=False, strides=(16,), stride=16),
                           merge_same_stride=True, amalgamation=None))
    n_layers = len(m.attention.names)
    assert n_layers == 2 and m.out_channels == [64, 64 + 2 * 77, 64]  # joins the 1/16 level
    with pytest.raises(ValueError, match='no attention layer'):
        build(backbone_cfg(tiny, attention=dict(strides=(4,)), amalgamation=None))


@pytest.mark.device
def test_attention_maps_on_sdxl(tiny, image, device, dtype):
    """Two text encoders' 77 tokens, SDXL's up stages at 1/32 and 1/16: the same 154 channels at 1/8."""
    m = build(backbone_cfg(tiny, pretrained=str(tiny / 'sdxl'), attention=dict(), amalgamation=None, dtype=dtype,
                           taps=('up_blocks.1.upsamplers.0',))).to(device)
    feats = m.extract(image.to(device))
    assert m.out_channels == [64, 154] and feats[1][0].shape == (1, 154, 8, 12)
    assert torch.allclose(feats[1][0].sum(1), torch.full((1, 8, 12), 2.0, device=device),
                          atol=2 * sum_tolerance(dtype))
