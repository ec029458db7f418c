"""Diffusion-transformer families (SD3/SD3.5, PixArt-Sigma/alpha): features equal diffusers' own computation.

Each reference is built from the diffusers pipeline's own pieces (``encode_prompt``, the img2img
pipeline's ``get_timesteps`` and ``scale_noise``, DDPM ``add_noise``, the full transformer forward with
forward hooks), on a non-square input in eval with ``noise='fixed'`` (posterior mode, the seeded noise).
"""
import pytest
import torch

from conftest import build

PROMPT = 'a photo of a street'
SEED = 0  # noise='fixed': one pattern, torch.Generator().manual_seed(noise_seed)


def _cfg(tiny_dit, name, **kw):
    cfg = dict(type='GATEDiffusionBackbone', pretrained=str(tiny_dit / name), prompt=PROMPT, noise='fixed',
               taps=('transformer_blocks.0', 'transformer_blocks.2'), amalgamation=None)
    cfg.update(kw)
    return cfg


def _latents(vae, image):
    z = vae.encode(image).latent_dist.mode()
    return (z - (vae.config.shift_factor or 0)) * vae.config.scaling_factor


def _hooked(transformer, names, select):
    """Full transformer forward with hooks on ``names``: their (image) outputs as [B, C, h, w]."""
    modules = dict(transformer.named_modules())
    seen = {}
    handles = [modules[n].register_forward_hook(lambda m, a, o, n=n: seen.__setitem__(n, select(o))) for n in names]

    def run(hw, **kwargs):
        try:
            transformer(**kwargs)
        finally:
            for h in handles:
                h.remove()
        return [seen[n].transpose(1, 2).reshape(seen[n].shape[0], -1, *hw) for n in names]
    return run


@torch.no_grad()
def test_sd3_branch_equals_the_pipeline_pieces_and_the_authors_sigma(tiny_dit, image):
    from diffusers import StableDiffusion3Img2ImgPipeline, StableDiffusion3Pipeline
    pipe = StableDiffusion3Pipeline.from_pretrained(tiny_dit / 'sd3')
    assert pipe.transformer.config.dual_attention_layers == [0]  # SD3.5-medium's dual attention is exercised
    assert (pipe.vae.config.shift_factor, pipe.vae.config.scaling_factor) == (0.0609, 1.5305)
    embeds, _, pooled, _ = pipe.encode_prompt(PROMPT, None, None, do_classifier_free_guidance=False)
    # the authors' t=50: img2img at strength 0.05 through the 28-step shifted schedule, first step
    img2img = StableDiffusion3Img2ImgPipeline(**pipe.components)
    img2img.scheduler.set_timesteps(28)
    t = img2img.get_timesteps(28, 0.05, 'cpu')[0][:1]
    latents = _latents(pipe.vae, image)
    noise = torch.randn((1, *latents.shape[1:]), generator=torch.Generator().manual_seed(SEED))
    noisy = img2img.scheduler.scale_noise(latents, t, noise)
    names = ('transformer_blocks.0', 'transformer_blocks.2')  # block 2 is the last: context_pre_only
    ref = _hooked(pipe.transformer, names, lambda o: o[1])(
        (4, 6), hidden_states=noisy, timestep=t, encoder_hidden_states=embeds, pooled_projections=pooled)

    m = build(_cfg(tiny_dit, 'sd3')).eval()
    assert m._noise_level(50, (64, 96)) == pytest.approx(float(t) / 1000) == pytest.approx(0.1109, abs=1e-4)
    out = m(image)
    for o, r in zip(out, ref):
        torch.testing.assert_close(o, r, rtol=1e-4, atol=1e-5)
    # early exit: the backbone stopped after block 2 of 3... and after block 0 alone
    m = build(_cfg(tiny_dit, 'sd3', taps=('transformer_blocks.0',))).eval()
    torch.testing.assert_close(m(image)[0], ref[0], rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_sd3_without_t5_equals_the_pipeline_without_it(tiny_dit, image):
    from diffusers import StableDiffusion3Pipeline
    pipe = StableDiffusion3Pipeline.from_pretrained(tiny_dit / 'sd3', text_encoder_3=None, tokenizer_3=None)
    embeds, _, pooled, _ = pipe.encode_prompt(PROMPT, None, None, do_classifier_free_guidance=False)
    m = build(_cfg(tiny_dit, 'sd3', drop_text_encoders=('text_encoder_3',), sigma=0.3,
                   taps=('transformer_blocks.1',), keep_text_encoder=True)).eval()
    assert 'text_encoder_3' not in m.sd.text_encoders
    cond = m.sd.encode_prompt(PROMPT)
    torch.testing.assert_close(cond.hidden, embeds)
    torch.testing.assert_close(cond.pooled, pooled)
    # sigma= directly: x_t = (1 - sigma) x + sigma n and the transformer gets 1000 sigma
    latents = _latents(pipe.vae, image)
    noise = torch.randn((1, *latents.shape[1:]), generator=torch.Generator().manual_seed(SEED))
    ref = _hooked(pipe.transformer, ('transformer_blocks.1',), lambda o: o[1])(
        (4, 6), hidden_states=(0.7 * latents + 0.3 * noise), timestep=torch.tensor([300.0]),
        encoder_hidden_states=embeds, pooled_projections=pooled)
    torch.testing.assert_close(m(image)[0], ref[0], rtol=1e-4, atol=1e-5)


def test_flow_noise_equals_scale_noise_at_the_sigma():
    """PITFALLS: scale_noise looks sigma up in the schedule; a shift-1 copy with sigmas=[sigma] gives it exactly."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from mmseg_gate.models.families import FAMILIES
    x, n = torch.randn(2, 16, 4, 6), torch.randn(2, 16, 4, 6)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0)
    scheduler.set_timesteps(sigmas=[0.1109])
    ref = scheduler.scale_noise(x, scheduler.timesteps[:1], n)
    torch.testing.assert_close(FAMILIES['sd3'].add_noise(None, x, n, 0.1109), ref)


@pytest.mark.parametrize('name', ['pixart-sigma', 'pixart-alpha'])
@torch.no_grad()
def test_pixart_branch_equals_the_pipeline_pieces(tiny_dit, image, name):
    import diffusers
    cls = diffusers.PixArtSigmaPipeline if name == 'pixart-sigma' else diffusers.PixArtAlphaPipeline
    pipe = cls.from_pretrained(tiny_dit / name)
    embeds, mask, _, _ = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False)
    latents = _latents(pipe.vae, image)
    noise = torch.randn((1, *latents.shape[1:]), generator=torch.Generator().manual_seed(SEED))
    # DDPM noising from the folder's scheduler config (PITFALLS: DPMSolver's add_noise before set_timesteps)
    noisy = diffusers.DDPMScheduler.from_config(pipe.scheduler.config).add_noise(latents, noise, torch.tensor([50]))
    added = dict(resolution=None, aspect_ratio=None)
    if pipe.transformer.config.sample_size == 128:  # the pipeline's rule: alpha-1024's micro-conditions
        added = dict(resolution=torch.tensor([[64.0, 96.0]]), aspect_ratio=torch.tensor([[64 / 96]]))
    names = ('transformer_blocks.0', 'transformer_blocks.2')
    ref = _hooked(pipe.transformer, names, lambda o: o)(
        (4, 6), hidden_states=noisy, timestep=torch.tensor([50]), encoder_hidden_states=embeds,
        encoder_attention_mask=mask, added_cond_kwargs=added)
    out = build(_cfg(tiny_dit, name)).eval()(image)
    for o, r in zip(out, ref):
        torch.testing.assert_close(o, r, rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_token_norm_and_dropped_channels_compute_what_they_document(tiny_dit, image):
    """adaln: LayerNorm without affine (eps 1e-6), then (1 + scale_msa) x + shift_msa of the block's own
    AdaLN of its temb; dropped channels are zero before and after; 'auto' finds a planted massive channel."""
    import torch.nn.functional as F
    tap = 'transformer_blocks.1'
    raw = build(_cfg(tiny_dit, 'sd3', taps=(tap,))).eval()
    m = build(_cfg(tiny_dit, 'sd3', taps=(tap,), token_norm='adaln', drop_channels=[3])).eval()
    block = dict(m.sd.denoiser.named_modules())[tap]
    temb = {}
    block.register_forward_pre_hook(lambda mod, a, kw: temb.__setitem__('t', kw['temb']), with_kwargs=True)
    out = m(image)[0]
    x = raw(image)[0].flatten(2).transpose(1, 2).clone()  # the raw tokens
    x[..., 3] = 0
    shift, scale = block.norm1.linear(F.silu(temb['t'])).chunk(9 if 'X' in type(block.norm1).__name__ else 6,
                                                               dim=1)[:2]
    ref = F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale[:, None]) + shift[:, None]
    ref[..., 3] = 0
    torch.testing.assert_close(out, ref.transpose(1, 2).reshape(out.shape), rtol=1e-4, atol=1e-5)
    assert m.frozen_provenance()['token_norm'] == dict(token_norm='adaln', drop_channels={tap: [3]}, auto=False)

    auto = build(_cfg(tiny_dit, 'sd3', taps=(tap,), drop_channels='auto')).eval()
    assert auto.token_normalizer.drop == {tap: []}  # random weights have no massive activations
    dict(auto.sd.denoiser.named_modules())[f'{tap}.ff.net.2'].bias.data[5] += 1e4  # plant one
    auto._probe_taps()
    assert auto.token_normalizer.drop == {tap: [5]}
    assert (auto(image)[0][:, 5] == 0).all()


@torch.no_grad()
def test_sd3_lora_branches_equal_load_lora_weights(tiny_dit, image):
    """Three branches (none, LoRA a, LoRA b) batched through peft's mixed adapters equal the pipeline's
    ``load_lora_weights`` + ``set_adapters`` per branch (b also carries CLIP text-encoder layers)."""
    from diffusers import StableDiffusion3Pipeline
    lora = {k: str(tiny_dit / 'sd3-lora' / f'{k}.safetensors') for k in 'ab'}
    branches = [dict(name='basic'), *(dict(name=k, loras=[dict(path=p, scale=0.8)]) for k, p in lora.items())]
    m = build(_cfg(tiny_dit, 'sd3', taps=('transformer_blocks.1',), sigma=0.2, branches=branches,
                   amalgamation=dict(hidden_channels=8, refine_blocks=1, fuse_blocks=1))).eval()
    assert m.branch_groups == [[0, 1, 2]]  # one batched call
    out = m.extract(image)[0]

    pipe = StableDiffusion3Pipeline.from_pretrained(tiny_dit / 'sd3')
    for k, p in lora.items():
        pipe.load_lora_weights(p, adapter_name=k)
    assert pipe.transformer.peft_config['a'].lora_alpha == 8.0  # alpha kept in the file's metadata (rank 4)
    latents = _latents(pipe.vae, image)
    noise = torch.randn((1, *latents.shape[1:]), generator=torch.Generator().manual_seed(SEED))
    for branch, adapters in enumerate([[], ['a'], ['b']]):
        if adapters:
            pipe.set_adapters(adapters, adapter_weights=[0.8])
        else:
            pipe.disable_lora()
        embeds, _, pooled, _ = pipe.encode_prompt(PROMPT, None, None, do_classifier_free_guidance=False)
        ref = _hooked(pipe.transformer, ('transformer_blocks.1',), lambda o: o[1])(
            (4, 6), hidden_states=0.8 * latents + 0.2 * noise, timestep=torch.tensor([200.0]),
            encoder_hidden_states=embeds, pooled_projections=pooled)
        torch.testing.assert_close(out[branch], ref[0], rtol=1e-4, atol=1e-5, msg=f'branch {branch}')
        pipe.enable_lora()
    assert not torch.allclose(out[1], out[0]) and not torch.allclose(out[2], out[0])


def test_dit_families_refuse_what_they_lack(tiny_dit):
    with pytest.raises(ValueError, match='denoising_from'):
        build(_cfg(tiny_dit, 'sd3', denoising_from=200))
    with pytest.raises(ValueError, match='sigma=0.3 is for flow-matching'):
        build(_cfg(tiny_dit, 'pixart-sigma', sigma=0.3))
    with pytest.raises(ValueError, match='no LoRA loader'):
        build(_cfg(tiny_dit, 'pixart-sigma', branches=[dict(name='a', loras=[dict(
            path=str(tiny_dit / 'sd3-lora' / 'a.safetensors'))])]))
    with pytest.raises(ValueError, match="drop_text_encoders=\\['text_encoder'\\]"):
        build(_cfg(tiny_dit, 'sd3', drop_text_encoders=('text_encoder',)))


@torch.no_grad()
def test_sd3_controlnet_branch_equals_the_controlnet_pipeline_pieces(tiny_dit, image):
    """InstantX-kind SD3 ControlNet: canny image VAE-encoded without shift (posterior mode), zero pooled
    projections, residuals added after each block; a tapped block gives what the next block receives."""
    from diffusers import SD3ControlNetModel, StableDiffusion3ControlNetPipeline
    from mmseg_gate.models.conditions import build_condition
    net = SD3ControlNetModel.from_pretrained(tiny_dit / 'sd3-controlnet')
    assert net.config.force_zeros_for_pooled_projection
    pipe = StableDiffusion3ControlNetPipeline.from_pretrained(tiny_dit / 'sd3', controlnet=net)
    embeds, _, pooled, _ = pipe.encode_prompt(PROMPT, None, None, do_classifier_free_guidance=False)
    canny = build_condition('canny', (image + 1) * 127.5)
    control = pipe.image_processor.preprocess(canny, height=64, width=96)  # [0, 1] -> [-1, 1]
    control = pipe.vae.encode(control).latent_dist.mode() * pipe.vae.config.scaling_factor
    latents = _latents(pipe.vae, image)
    noise = torch.randn((1, *latents.shape[1:]), generator=torch.Generator().manual_seed(SEED))
    noisy, t = 0.8 * latents + 0.2 * noise, torch.tensor([200.0])
    residuals = net(noisy, controlnet_cond=control, conditioning_scale=0.7, encoder_hidden_states=embeds,
                    pooled_projections=torch.zeros_like(pooled), timestep=t, return_dict=False)[0]
    seen = {}
    blocks = pipe.transformer.transformer_blocks
    blocks[1].register_forward_pre_hook(lambda m, a, kw: seen.__setitem__(0, kw['hidden_states']), with_kwargs=True)
    blocks[2].register_forward_hook(lambda m, a, o: seen.__setitem__(2, o[1]))
    pipe.transformer(hidden_states=noisy, timestep=t, encoder_hidden_states=embeds, pooled_projections=pooled,
                     block_controlnet_hidden_states=residuals)

    branch = dict(name='canny', controlnets=[dict(path=str(tiny_dit / 'sd3-controlnet'), scale=0.7)])
    m = build(_cfg(tiny_dit, 'sd3', sigma=0.2, branches=[branch])).eval()
    out = m(image)
    for o, k in zip(out, (0, 2)):  # atol 1e-4: our VAE runs channels_last (another oneDNN summation order)
        torch.testing.assert_close(o, seen[k].transpose(1, 2).reshape(o.shape), rtol=1e-4, atol=1e-4)
    plain = build(_cfg(tiny_dit, 'sd3', sigma=0.2)).eval()(image)
    assert not torch.allclose(plain[0], out[0], atol=1e-3)  # the ControlNet steers the features


@torch.no_grad()
def test_per_branch_timesteps_share_one_call_and_equal_single_branch_backbones(tiny_dit, image):
    """Flow matching per branch: each branch's own t maps to its own sigma, in one batched call."""
    branches = [dict(name='t50'), dict(name='t300', timestep=300)]
    amal = dict(hidden_channels=8, refine_blocks=1, fuse_blocks=1)
    m = build(_cfg(tiny_dit, 'sd3', taps=('transformer_blocks.1',), branches=branches, amalgamation=amal)).eval()
    assert m.branch_groups == [[0, 1]]
    out = m.extract(image)[0]
    for branch, t in enumerate((50, 300)):
        single = build(_cfg(tiny_dit, 'sd3', taps=('transformer_blocks.1',), timestep=t)).eval()
        torch.testing.assert_close(out[branch], single(image)[0], rtol=1e-4, atol=1e-5)


def test_an_unsupported_pipeline_folder_is_named(tmp_path):
    import json
    from mmseg_gate.models.families import detect_family
    (tmp_path / 'model_index.json').write_text(json.dumps(dict(_class_name='SanaPipeline', transformer=['diffusers', 'x'],
                                                               text_encoder=['transformers', 'Gemma2Model'])))
    with pytest.raises(ValueError, match="no pipeline of a supported family .*'SanaPipeline'"):
        detect_family(str(tmp_path))
    (tmp_path / 'empty').mkdir()
    assert detect_family(str(tmp_path / 'empty')).name == 'sd'  # no pipeline at all: SD's layout check explains


@torch.no_grad()
def test_lora_extracted_from_a_fine_tuned_sd3_folder_equals_the_lora(tiny_dit, image, tmp_path):
    """tools/extract_lora.py's functions on SD3: LoRA b merged into the transformer and the first CLIP,
    saved as a folder, extracted back at its rank: the branch features equal those of the original file."""
    from diffusers import StableDiffusion3Pipeline
    from mmseg_gate.lora.extract import extract_lora, load_models, relative_error
    from mmseg_gate.lora.files import save_lora
    original = str(tiny_dit / 'sd3-lora' / 'b.safetensors')
    pipe = StableDiffusion3Pipeline.from_pretrained(tiny_dit / 'sd3')
    pipe.load_lora_weights(original)
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    pipe.save_pretrained(tmp_path / 'tuned')
    base = load_models(str(tiny_dit / 'sd3'), str(tiny_dit / 'sd3'), '--base')
    assert set(base) == {'transformer', 'text_encoder', 'text_encoder_2'}
    layers, reports = extract_lora(base, load_models(str(tmp_path / 'tuned'), str(tiny_dit / 'sd3'), '--tuned'),
                                   rank=2, progress=False)
    assert relative_error(reports) < 1e-4 and {'transformer', 'text_encoder'} <= {r.model for r in reports}
    extracted = save_lora(tmp_path / 'b.safetensors', layers, StableDiffusion3Pipeline)
    feats = [build(_cfg(tiny_dit, 'sd3', taps=('transformer_blocks.1',), sigma=0.2,
                        branches=[dict(name='b', loras=[dict(path=str(p))])])).eval()(image)[0]
             for p in (original, extracted)]
    torch.testing.assert_close(feats[1], feats[0], rtol=1e-3, atol=1e-4)
