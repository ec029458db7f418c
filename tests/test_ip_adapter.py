"""IP-Adapter branches: equal diffusers' pipeline pieces (load_ip_adapter, the input's image embeddings,
set_ip_adapter_scale); branches without it are unchanged by its presence. The comparisons are marked ``device`` (docs/gpu.md)."""
import pytest
import torch
from PIL import Image

from conftest import assert_features_close, backbone_cfg, build, lora
from test_features_match_diffusers import TAPS, crop, padded


def ip(tiny, scale=0.7):
    return dict(path=str(tiny / 'ip-adapter' / 'ip-adapter_tiny.safetensors'),
                image_encoder=str(tiny / 'ip-adapter' / 'image_encoder'), scale=scale)


def reference(tiny, image, image_uint8, scale, folder=None, device='cpu'):
    """diffusers' pipeline with the IP-Adapter, fp32 on ``device`` (the seeded noise drawn on the CPU, moved)."""
    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny / 'sd'), safety_checker=None)
    pipe.load_ip_adapter(str(folder or tiny / 'ip-adapter'), subfolder='', weight_name='ip-adapter_tiny.safetensors',
                         image_encoder_folder='image_encoder')
    pipe.set_ip_adapter_scale(scale)
    pipe.to(device)
    with torch.no_grad():
        embeds = pipe.prepare_ip_adapter_image_embeds(Image.fromarray(image_uint8), None, device, 1, False)
        emb = pipe.encode_prompt('a photo', device, 1, False)[0]
        latents = pipe.vae.encode(image.to(device)).latent_dist.mode() * pipe.vae.config.scaling_factor
        noise = torch.randn((1, *latents.shape[1:]), generator=torch.Generator().manual_seed(0)).to(device)
        noisy = pipe.scheduler.add_noise(latents, noise, torch.tensor([50]))
        modules = dict(pipe.unet.named_modules())
        out = {}
        hooks = [modules[n].register_forward_hook(lambda m, a, o, n=n: out.__setitem__(n, o)) for n in TAPS]
        pipe.unet(noisy, 50, encoder_hidden_states=emb, added_cond_kwargs=dict(image_embeds=embeds))
        for hook in hooks:
            hook.remove()
    return [out[n] for n in reversed(TAPS)]


@pytest.fixture(scope='module')
def with_ip(tiny, device, dtype):
    return build(backbone_cfg(tiny, dtype=dtype, branches=[dict(name='plain'), dict(name='ip', ip_adapters=[ip(tiny)]),
                                                           dict(name='lora', loras=[lora(tiny, 'a')])])).to(device)


@pytest.mark.device
def test_ip_adapter_branch_equals_diffusers(tiny, image, image_uint8, with_ip, device, dtype):
    assert with_ip.branch_groups == [[0, 2], [1]]  # IP-Adapter scales differ: a call of its own
    ours = with_ip.extract(image.to(device))
    for level, r in enumerate(crop(reference(tiny, padded(image), image_uint8, 0.7, device=device), image)):
        assert_features_close(ours[level][1], r, dtype, atol=1e-4, rtol=1e-3)
    assert (ours[0][1] - ours[0][0]).abs().max() > 1e-3  # the image prompt changed the features


@pytest.mark.device
def test_image_processor_is_sized_to_its_image_encoder(tiny, tmp_path, image, image_uint8, device, dtype):
    """diffusers' load_ip_adapter sizes the CLIPImageProcessor to the encoder's config.image_size: an
    encoder of 96 px (not the default processor's 224) gets 96 px inputs and equals diffusers (before
    the fix the encoder refused the 224 px input)."""
    from mmseg_gate.testing.tiny_models import TINY_IMAGE_ENCODER, _save_ip_adapter
    _save_ip_adapter(tiny / 'sd', tmp_path, seed=11, encoder_cfg=dict(TINY_IMAGE_ENCODER, image_size=96))
    adapter = dict(path=str(tmp_path / 'ip-adapter_tiny.safetensors'), image_encoder=str(tmp_path / 'image_encoder'),
                   scale=0.7)
    m = build(backbone_cfg(tiny, amalgamation=None, dtype=dtype,
                           branches=[dict(name='ip', ip_adapters=[adapter])])).to(device)
    ours = m.extract(image.to(device))
    for level, r in enumerate(crop(reference(tiny, padded(image), image_uint8, 0.7, tmp_path, device=device), image)):
        assert_features_close(ours[level][0], r, dtype, atol=1e-4, rtol=1e-3)
    assert [p.crop_size for p in m.ip.image_processors] == [dict(height=96, width=96)]


@pytest.mark.device
def test_other_branches_are_unchanged_by_an_ip_adapter(tiny, image, with_ip, device, dtype):
    ours = with_ip.extract(image.to(device))
    plain = build(backbone_cfg(tiny, dtype=dtype, branches=[dict(name='plain'),
                                                            dict(name='lora', loras=[lora(tiny, 'a')])])).to(device)
    theirs = plain.extract(image.to(device))
    for level in range(3):
        assert_features_close(ours[level][0], theirs[level][0], dtype, atol=1e-5, rtol=1e-4)
        assert_features_close(ours[level][2], theirs[level][1], dtype, atol=1e-5, rtol=1e-4)


def test_ip_adapter_and_denoising_are_in_the_checkpoint_provenance(tiny, with_ip):
    from mmseg_gate.engine.checks import provenance_differences
    saved = with_ip.frozen_provenance()
    (sha,) = saved['ip_adapters'].values()
    assert len(sha) == 64 and 'denoising_from' not in saved
    changed = dict(saved, ip_adapters={k: '0' * 64 for k in saved['ip_adapters']})
    assert any('ip_adapters' in d for d in provenance_differences(changed, saved))
    denoised = build(backbone_cfg(tiny, amalgamation=None, denoising_from=60))
    assert denoised.frozen_provenance()['denoising_from'] == [60]


def test_ip_adapter_errors(tiny):
    with pytest.raises(ValueError, match='needs a path and an image_encoder'):
        build(backbone_cfg(tiny, branches=[dict(name='x', ip_adapters=[dict(path='x.safetensors')])]))
    with pytest.raises(FileNotFoundError, match='IP-Adapter file .*missing.safetensors'):
        build(backbone_cfg(tiny, branches=[dict(name='x', ip_adapters=[dict(ip(tiny), path='missing.safetensors')])]))
    with pytest.raises(ValueError, match='use one of them'):
        build(backbone_cfg(tiny, attention=dict(), branches=[dict(name='x', ip_adapters=[ip(tiny)])]))
