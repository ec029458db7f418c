"""Our early-exit, shared-work extraction equals diffusers' own full computation.

Marked ``device``: on ``--device``/``--dtype`` (docs/gpu.md) the backbone runs there in that frozen dtype and
diffusers' reference in fp32 on the same device."""
import cv2
import numpy as np
import pytest
import torch

from conftest import assert_features_close, backbone_cfg, build, gate_branches, lora

TAPS = ('up_blocks.0.upsamplers.0', 'up_blocks.1.upsamplers.0', 'up_blocks.2.upsamplers.0')


def reference_features(tiny, image, image_uint8, prompt='a photo', loras=(), controlnet=False, t=50, sd=None,
                       clean=False, unet=None, device='cpu'):
    """diffusers' pipeline pieces, full UNet forward, features captured by hooks (``sd``: another model
    folder than the tiny base; ``clean``: no noise; ``unet``: another UNet folder), in fp32 on ``device``
    (the seeded noise drawn on the CPU and moved, as the backbone's)."""
    from diffusers import ControlNetModel, StableDiffusionPipeline, UNet2DConditionModel
    pipe = StableDiffusionPipeline.from_pretrained(str(sd or tiny / 'sd'), safety_checker=None)
    if unet:
        pipe.unet = UNet2DConditionModel.from_pretrained(str(unet))
    for i, path in enumerate(loras):
        pipe.load_lora_weights(path, adapter_name=f'l{i}')
    if loras:
        pipe.fuse_lora()
    pipe.to(device)
    with torch.no_grad():
        emb = pipe.encode_prompt(prompt, device, 1, False)[0]
        latents = pipe.vae.encode(image.to(device)).latent_dist.mode() * pipe.vae.config.scaling_factor
        noise = torch.randn((1, *latents.shape[1:]), generator=torch.Generator().manual_seed(0)).to(device)
        noisy = latents if clean else pipe.scheduler.add_noise(latents, noise, torch.tensor([t]))  # SD's PNDM
        kwargs = {}
        if controlnet:
            net = ControlNetModel.from_pretrained(str(tiny / 'controlnet-canny')).to(device)
            edges = cv2.Canny(image_uint8, 100, 200)
            cond = torch.from_numpy(np.stack([edges] * 3, 0))[None].float().to(device) / 255
            down, mid = net(noisy, t, encoder_hidden_states=emb, controlnet_cond=cond, return_dict=False)
            kwargs = dict(down_block_additional_residuals=down, mid_block_additional_residual=mid)
        modules = dict(pipe.unet.named_modules())
        out = {}
        hooks = [modules[n].register_forward_hook(lambda m, a, o, n=n: out.__setitem__(n, o)) for n in TAPS]
        pipe.unet(noisy, t, encoder_hidden_states=emb, **kwargs)
        for h in hooks:
            h.remove()
    # high resolution first
    return [out[n] for n in reversed(TAPS)]


def crop(feats, image):
    h, w = image.shape[-2:]
    return [f[..., :-(-h // s), :-(-w // s)] for f, s in zip(feats, (8, 16, 32))]


@pytest.fixture(scope='module')
def gate(tiny, device, dtype):
    return build(backbone_cfg(tiny, dtype=dtype, branches=gate_branches(tiny) + [
        dict(name='lora_a_only', loras=[lora(tiny, 'a')])])).to(device)


def padded(image, multiple=64):
    h, w = image.shape[-2:]
    return torch.nn.functional.pad(image, (0, -w % multiple, 0, -h % multiple), mode='replicate')


@pytest.mark.device
def test_basic_branch_equals_full_forward_with_hooks(tiny, image, image_uint8, gate, device, dtype):
    ours = gate.extract(image.to(device))
    ref = crop(reference_features(tiny, padded(image), None, device=device), image)
    for level, r in enumerate(ref):
        assert ours[level][0].shape == r.shape
        assert_features_close(ours[level][0], r, dtype, atol=1e-5, rtol=1e-4)


@pytest.mark.device
def test_lora_branch_equals_fused_lora(tiny, image, gate, device, dtype):
    ours = gate.extract(image.to(device))
    ref = crop(reference_features(tiny, padded(image), None, loras=[str(tiny / 'lora' / 'a.safetensors')],
                                  device=device), image)
    basic = ours[0][0]
    assert (ours[0][3] - basic).abs().max() > 1e-3, 'the LoRA changed nothing: the test could not fail'
    for level, r in enumerate(ref):
        assert_features_close(ours[level][3], r, dtype, atol=1e-4, rtol=1e-3)


@pytest.mark.device
@pytest.mark.parametrize('name, index', [('a', 1), ('b', 2)])
def test_lora_controlnet_branch_equals_diffusers(tiny, image, image_uint8, gate, name, index, device, dtype):
    """LoRA (diffusers format or kohya LoCon with text-encoder layers) + canny ControlNet."""
    img = padded(image)
    img_u8 = np.pad(image_uint8, ((0, img.shape[-2] - image_uint8.shape[0]),
                                  (0, img.shape[-1] - image_uint8.shape[1]), (0, 0)), mode='edge')
    ref = crop(reference_features(tiny, img, img_u8, loras=[str(tiny / 'lora' / f'{name}.safetensors')],
                                  controlnet=True, device=device), image)
    ours = gate.extract(image.to(device))
    for level, r in enumerate(ref):
        assert_features_close(ours[level][index], r, dtype, atol=1e-4, rtol=1e-3)


@pytest.mark.device
def test_branch_order_does_not_change_features(tiny, image, gate, device, dtype):
    ours = gate.extract(image.to(device))
    reordered = build(backbone_cfg(tiny, dtype=dtype, branches=list(reversed(gate_branches(tiny))))).to(device)
    theirs = reordered.extract(image.to(device))
    for level in range(3):
        for i in range(3):
            assert_features_close(ours[level][i], theirs[level][2 - i], dtype)
    # and running the same model twice in a row (adapters switched back and forth) is stable
    again = gate.extract(image.to(device))
    for level in range(3):
        for i in range(4):
            assert torch.equal(ours[level][i], again[level][i])


@pytest.mark.device
def test_shared_controlnet_and_unet_weights(tiny, gate):
    sd = gate.frozen_modules()
    assert len(sd.controlnets) == 1, 'two branches with the same ControlNet must share one copy'
    from diffusers import UNet2DConditionModel
    base = UNet2DConditionModel.from_pretrained(str(tiny / 'sd'), subfolder='unet')
    base_numel = sum(p.numel() for p in base.parameters())
    storages = {p.untyped_storage().data_ptr(): p for p in sd.unet.parameters()}
    lora_numel = sum(p.numel() for n, p in sd.unet.named_parameters() if 'lora_' in n)
    assert sum(p.numel() for p in storages.values()) == base_numel + lora_numel
    assert len(storages) == len(list(sd.unet.parameters()))
