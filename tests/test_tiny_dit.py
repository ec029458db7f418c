"""The tiny SD3 / PixArt assets (mmseg_gate.testing.tiny_dit) load with diffusers' pipelines and their LoRAs
and ControlNet have an effect."""
import torch


def test_folders_load_and_generate(tiny_dit):
    from diffusers import PixArtAlphaPipeline, PixArtSigmaPipeline, StableDiffusion3Pipeline
    kw = dict(num_inference_steps=1, output_type='latent', height=64, width=96)
    pipe = StableDiffusion3Pipeline.from_pretrained(tiny_dit / 'sd3')
    assert pipe.transformer.config.dual_attention_layers == [0]
    assert (pipe.vae.config.shift_factor, pipe.vae.config.scaling_factor) == (0.0609, 1.5305)
    latents = pipe('a photo', generator=torch.Generator().manual_seed(0), **kw).images
    assert latents.shape == (1, 16, 8, 12) and torch.isfinite(latents).all()
    # without T5 (zeros in its place), as the real folders are used on small machines
    pipe = StableDiffusion3Pipeline.from_pretrained(tiny_dit / 'sd3', text_encoder_3=None, tokenizer_3=None)
    assert pipe('a photo', **kw).images.shape == (1, 16, 8, 12)
    with torch.no_grad():
        z = pipe.vae.encode(torch.rand(1, 3, 64, 96) * 2 - 1).latent_dist.mode()
    z = (z - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
    assert 0.3 < z.std() < 3  # random VAE, calibrated to the real factors
    for name, cls, steps in (('pixart-sigma', PixArtSigmaPipeline, 1),
                             # PixArt-alpha's 1-step branch wants a DMD scheduler (step(...)[1])
                             ('pixart-alpha', PixArtAlphaPipeline, 2)):
        pipe = cls.from_pretrained(tiny_dit / name)
        latents = pipe('a photo', use_resolution_binning=False, **dict(kw, num_inference_steps=steps)).images
        assert latents.shape == (1, 4, 8, 12) and torch.isfinite(latents).all()


@torch.no_grad()
def test_sd3_lora_and_controlnet_change_the_output(tiny_dit):
    from diffusers import SD3ControlNetModel, StableDiffusion3ControlNetPipeline
    net = SD3ControlNetModel.from_pretrained(tiny_dit / 'sd3-controlnet')
    pipe = StableDiffusion3ControlNetPipeline.from_pretrained(tiny_dit / 'sd3', controlnet=net)
    control = torch.rand(1, 3, 64, 96)
    kw = dict(num_inference_steps=1, output_type='latent', height=64, width=96, control_image=control)
    off, on = (pipe('a photo', controlnet_conditioning_scale=s, generator=torch.Generator().manual_seed(0),
                    **kw).images for s in (0.0, 1.0))
    assert (on - off).abs().max() > 1e-3

    embeds, _, pooled, _ = pipe.encode_prompt('a photo', None, None, do_classifier_free_guidance=False)
    x = torch.randn(1, 16, 8, 12, generator=torch.Generator().manual_seed(1))
    args = dict(hidden_states=x, encoder_hidden_states=embeds, pooled_projections=pooled,
                timestep=torch.tensor([500.0]))
    before = pipe.transformer(**args).sample
    pipe.load_lora_weights(tiny_dit / 'sd3-lora' / 'a.safetensors', adapter_name='a')
    assert pipe.transformer.peft_config['a'].lora_alpha == 8.0  # alpha from the file's metadata
    assert (pipe.transformer(**args).sample - before).abs().max() > 1e-3
