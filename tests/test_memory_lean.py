"""Memory-lean inference: in-place VAE resnets, chunked feed-forward, no file mapping, heap trims."""
import contextlib
import gc
import shutil
import sys

import pytest
import torch
from diffusers import AutoencoderKL
from diffusers.models.resnet import ResnetBlock2D

from conftest import backbone_cfg, build, gate_branches
from mmseg_gate.models.inference_blocks import InplaceResnetBlock2D, chunk_feed_forward, use_inplace_resnets


def test_inplace_vae_encoder_gives_bit_identical_latents(tiny, image):
    stock = AutoencoderKL.from_pretrained(tiny / 'sd', subfolder='vae').eval()
    lean = AutoencoderKL.from_pretrained(tiny / 'sd', subfolder='vae').eval()
    assert use_inplace_resnets(lean.encoder) == sum(isinstance(m, ResnetBlock2D) for m in stock.encoder.modules())
    x = image[..., :64, :64]
    with torch.no_grad():
        expected = stock.encode(x).latent_dist.mode()
        got = lean.encode(x.clone()).latent_dist.mode()
    assert torch.equal(got, expected)
    # with gradients the block falls back to diffusers' forward (in-place work would break autograd)
    x = x.clone().requires_grad_()
    lean.encoder(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_inplace_resnet_overwrites_its_input_and_only_the_vae_encoder_uses_it(tiny):
    block = ResnetBlock2D(in_channels=8, out_channels=8, temb_channels=None, groups=4).eval()
    x = torch.randn(1, 8, 6, 6)
    with torch.no_grad():
        expected = block(x.clone(), None)
        use_inplace_resnets(block)
        given = x.clone()
        out = block(given, None)
    assert torch.equal(out, expected) and out.data_ptr() == given.data_ptr()  # no new full-size tensor

    backbone = build(backbone_cfg(tiny))
    sd = backbone.frozen_modules()
    assert any(isinstance(m, InplaceResnetBlock2D) for m in sd.vae.encoder.modules())
    # the UNet keeps resnet outputs as skip connections: its blocks must stay diffusers' own
    assert not any(isinstance(m, InplaceResnetBlock2D) for m in sd.unet.modules())


def test_chunked_feed_forward_keeps_per_sample_adapters(tiny, image):
    """Chunks along the tokens keep the batched branches (each with its own LoRA) together."""
    backbone = build(backbone_cfg(tiny, branches=gate_branches(tiny), amalgamation=dict(hidden_channels=8),
                                    feed_forward_chunks=1))
    unet = backbone.frozen_modules().unet
    expected = backbone.extract(image)
    calls = []
    ffs = [m.ff for m in unet.modules() if hasattr(m, 'set_chunk_feed_forward')]
    counters = [ff.register_forward_pre_hook(lambda m, a: calls.append(1)) for ff in ffs]
    hooks = chunk_feed_forward(unet, 4, min_tokens=1)  # tiny images: chunk every level that divides
    try:
        got = backbone.extract(image)
    finally:
        for h in hooks + counters:
            h.remove()
    assert len(calls) > len(ffs)  # some feed-forwards really ran in pieces
    for level in range(3):
        for i in range(3):
            torch.testing.assert_close(got[level][i], expected[level][i], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match='feed_forward_chunks=0'):
        build(backbone_cfg(tiny, feed_forward_chunks=0))


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='reads /proc/self/maps')
def test_vae_weights_leave_the_safetensors_mapping(tiny, tmp_path):
    """channels_last copies the conv weights; had any tensor stayed in the file mapping, the whole
    mapping (and the copied weights' pages) would stay resident as well."""
    sd = tmp_path / 'sd'
    shutil.copytree(tiny / 'sd', sd)
    backbone = build(backbone_cfg(tiny, pretrained=str(sd)))
    gc.collect()
    maps = open('/proc/self/maps').read()
    assert str(sd / 'vae') not in maps
    assert str(sd / 'unet') in maps  # the UNet still maps its file: weights are not copied twice
    del backbone


def test_heap_is_trimmed_between_stages_on_cpu_only_when_enabled(tiny, image, monkeypatch):
    from mmseg_gate.utils import memory as memory_module
    from mmseg_gate.utils import release_free_heap_memory
    if sys.platform.startswith('linux'):
        assert release_free_heap_memory()  # glibc has malloc_trim
    calls = []
    monkeypatch.setattr(memory_module, 'release_free_heap_memory', lambda: calls.append(1))
    backbone = build(backbone_cfg(tiny))
    calls.clear()
    backbone.extract(image)
    assert not calls  # the tiny VAE's activations fit in the heap: a trim would only cost page faults
    monkeypatch.setattr(memory_module, 'GLIBC_MAX_MMAP_THRESHOLD', 0)  # as if they were SD1.5's at 512
    backbone.extract(image)
    assert len(calls) == 4  # before the VAE, the ControlNets, the UNet and the UNet's middle block
    calls.clear()
    with contextlib.suppress(RuntimeError):  # the hook runs before the (here invalid) forward
        backbone.sd.unet.mid_block(torch.zeros(1))
    assert not calls  # outside extract the mid-block hook does not trim
    backbone = build(backbone_cfg(tiny, release_cpu_memory=False))
    calls.clear()
    backbone.extract(image)
    assert not calls


def test_controlnet_outputs_are_freed_before_the_batched_unet_pass(tiny, image):
    import weakref
    backbone = build(backbone_cfg(tiny, branches=gate_branches(tiny), amalgamation=dict(hidden_channels=8)))
    sd = backbone.frozen_modules()
    outputs, alive_at_unet = [], []
    h1 = sd.controlnets['0'].register_forward_hook(
        lambda m, a, out: outputs.extend(weakref.ref(t) for t in [*out[0], out[1]]))
    h2 = sd.unet.register_forward_pre_hook(lambda m, a: alive_at_unet.append(sum(r() is not None for r in outputs)))
    try:
        backbone.extract(image)
    finally:
        h1.remove(), h2.remove()
    assert outputs and alive_at_unet == [0]  # only the batched copies reach the UNet
