"""FLUX.1 family: every branch equals diffusers' own computation (FluxPipeline pieces, the full transformer
forward with hooks, FluxControlNetModel with and without blocks repeat, FluxLoraLoaderMixin), on a
non-square 64x96 input (4x6 packed tokens) in eval with ``noise='fixed'``.
"""
import numpy as np
import pytest
import torch

from conftest import build

PROMPT = 'a photo of a street'
SEED = 0
TAPS = ('transformer_blocks.1', 'single_transformer_blocks.1')  # the last double block; a single one mid-way


def _cfg(tiny_dit, name='flux', **kw):
    cfg = dict(type='GATEDiffusionBackbone', pretrained=str(tiny_dit / name), prompt=PROMPT, noise='fixed',
               taps=TAPS, amalgamation=None)
    cfg.update(kw)
    return cfg


def _packed(pipe, image, sigma):
    """The pipeline's noisy packed latents at ``sigma`` (posterior mode, the seeded noise) and their ids."""
    z = pipe.vae.encode(image).latent_dist.mode()
    latents = (z - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
    noise = torch.randn((1, *latents.shape[1:]), generator=torch.Generator().manual_seed(SEED))
    noisy = (1 - sigma) * latents + sigma * noise
    return pipe._pack_latents(noisy, 1, 16, 8, 12), pipe._prepare_latent_image_ids(1, 4, 6, 'cpu', torch.float32)


def _run(transformer, names, pre=False, **kwargs):
    """Full forward with hooks: the image tokens each of ``names`` gives (``pre``: that the module receives),
    as [B, C, 4, 6] maps."""
    modules = dict(transformer.named_modules())
    seen = {}
    if pre:
        handles = [modules[n].register_forward_pre_hook(
            lambda m, a, kw, n=n: seen.__setitem__(n, kw['hidden_states']), with_kwargs=True) for n in names]
    else:
        handles = [modules[n].register_forward_hook(lambda m, a, o, n=n: seen.__setitem__(n, o[1])) for n in names]
    try:
        transformer(**kwargs)
    finally:
        for h in handles:
            h.remove()
    return [seen[n].transpose(1, 2).reshape(1, -1, 4, 6) for n in names]


@torch.no_grad()
def test_flux_branch_equals_the_pipeline_pieces_and_the_authors_sigma(tiny_dit, image):
    from diffusers import FluxImg2ImgPipeline, FluxPipeline
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps
    from mmseg_gate.models.families import FAMILIES, detect_family
    from mmseg_gate.models.families.flux import pack_latents, unpack_latents
    assert detect_family(str(tiny_dit / 'flux')).name == detect_family(str(tiny_dit / 'flux-schnell')).name == 'flux'
    pipe = FluxPipeline.from_pretrained(tiny_dit / 'flux')
    embeds, pooled, text_ids = pipe.encode_prompt(PROMPT, None)
    # the authors' t=50: FluxImg2ImgPipeline at strength 0.05, 28 steps, sigmas shifted by the image's mu
    img2img = FluxImg2ImgPipeline(**pipe.components)
    cfg = img2img.scheduler.config
    mu = calculate_shift(4 * 6, cfg.base_image_seq_len, cfg.max_image_seq_len, cfg.base_shift, cfg.max_shift)
    retrieve_timesteps(img2img.scheduler, 28, 'cpu', sigmas=np.linspace(1.0, 1 / 28, 28), mu=mu)
    t = img2img.get_timesteps(28, 0.05, 'cpu')[0][:1]
    packed, img_ids = _packed(pipe, image, float(t) / 1000)
    kwargs = dict(hidden_states=packed, timestep=t / 1000, guidance=torch.tensor([1.0]), pooled_projections=pooled,
                  encoder_hidden_states=embeds, txt_ids=text_ids, img_ids=img_ids)
    ref = _run(pipe.transformer, TAPS, **kwargs)

    m = build(_cfg(tiny_dit)).eval()
    assert m._noise_level(50, (64, 96)) == pytest.approx(float(t) / 1000, rel=1e-6)
    out = m(image)
    for o, r in zip(out, ref):
        torch.testing.assert_close(o, r, rtol=1e-4, atol=1e-5)
    # early exit after double block 1 equals the full forward's hook
    torch.testing.assert_close(build(_cfg(tiny_dit, taps=TAPS[:1])).eval()(image)[0], ref[0], rtol=1e-4, atol=1e-5)
    # the documented sigmas of FLUX.1-dev's schedule at 512 and 1024
    dev = FAMILIES['flux']
    assert dev.noise_level(img2img.scheduler, 50, 32 * 32) == pytest.approx(0.1262, abs=1e-4)
    assert dev.noise_level(img2img.scheduler, 50, 64 * 64) == pytest.approx(0.1955, abs=1e-4)
    # packing: the pipeline's, and a round trip
    x = torch.randn(2, 16, 8, 12)
    torch.testing.assert_close(pack_latents(x), pipe._pack_latents(x, 2, 16, 8, 12))
    torch.testing.assert_close(unpack_latents(pack_latents(x), 8, 12), x)


@torch.no_grad()
def test_flux_schnell_sigma_and_adaln_token_norm(tiny_dit, image):
    """schnell: no guidance embedding; ``sigma=`` directly; token_norm='adaln' on a single-stream block is its
    own ``norm`` (LayerNorm without affine, (1 + scale) x + shift of its temb)."""
    import torch.nn.functional as F
    from diffusers import FluxPipeline
    pipe = FluxPipeline.from_pretrained(tiny_dit / 'flux-schnell')
    embeds, pooled, text_ids = pipe.encode_prompt(PROMPT, None)
    packed, img_ids = _packed(pipe, image, 0.3)
    ref = _run(pipe.transformer, TAPS, hidden_states=packed, timestep=torch.tensor([0.3]), pooled_projections=pooled,
               encoder_hidden_states=embeds, txt_ids=text_ids, img_ids=img_ids)
    tap = TAPS[1]
    m = build(_cfg(tiny_dit, 'flux-schnell', sigma=0.3, taps=(tap,), token_norm='adaln')).eval()
    block = dict(m.sd.denoiser.named_modules())[tap]
    temb = {}
    block.register_forward_pre_hook(lambda mod, a, kw: temb.__setitem__('t', kw['temb']), with_kwargs=True)
    out = m(image)[0]
    x = ref[1].flatten(2).transpose(1, 2)
    shift, scale, _ = block.norm.linear(F.silu(temb['t'])).chunk(3, dim=1)
    expected = F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale[:, None]) + shift[:, None]
    torch.testing.assert_close(out, expected.transpose(1, 2).reshape(out.shape), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match='not guidance-distilled'):
        build(_cfg(tiny_dit, 'flux-schnell', guidance=3.5))


@torch.no_grad()
def test_flux_controlnets_equal_the_controlnet_pipeline_pieces(tiny_dit, image):
    """InstantX (VAE-encoded, packed control image), its union kind (mode 0) and XLabs (pixels, double-block
    residuals repeated over all blocks), three branches with one batched transformer call: each tapped block
    gives what the next block receives in the pipeline's forward."""
    from diffusers import FluxControlNetModel, FluxPipeline
    from mmseg_gate.models.conditions import build_condition
    pipe = FluxPipeline.from_pretrained(tiny_dit / 'flux')
    embeds, pooled, text_ids = pipe.encode_prompt(PROMPT, None)
    packed, img_ids = _packed(pipe, image, 0.2)
    canny = pipe.image_processor.preprocess(build_condition('canny', (image + 1) * 127.5), height=64, width=96)
    latent_canny = pipe.vae.encode(canny).latent_dist.mode()
    latent_canny = pipe._pack_latents((latent_canny - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor,
                                      1, 16, 8, 12)
    common = dict(hidden_states=packed, timestep=torch.tensor([0.2]), guidance=torch.tensor([1.0]),
                  pooled_projections=pooled, encoder_hidden_states=embeds, txt_ids=text_ids, img_ids=img_ids)
    nexts = ('single_transformer_blocks.0', 'single_transformer_blocks.2')  # what TAPS hand on
    kinds = {'instantx': (latent_canny, None, 0.7), 'union': (latent_canny, 0, 1.0), 'xlabs': (canny, None, 0.8)}
    refs = {}
    for kind, (cond, mode, scale) in kinds.items():
        path = tiny_dit / ('flux-controlnet' if kind == 'instantx' else f'flux-controlnet-{kind}')
        net = FluxControlNetModel.from_pretrained(path)
        doubles, singles = net(controlnet_cond=cond, conditioning_scale=scale, return_dict=False,
                               controlnet_mode=None if mode is None else torch.tensor([[mode]]), **common)
        refs[kind] = _run(pipe.transformer, nexts, pre=True, controlnet_block_samples=doubles,
                          controlnet_single_block_samples=singles, controlnet_blocks_repeat=kind == 'xlabs', **common)
    branches = [dict(name=kind, controlnets=[dict(path=str(tiny_dit / ('flux-controlnet' if kind == 'instantx'
                                                                        else f'flux-controlnet-{kind}')),
                                                  scale=scale, **({} if mode is None else dict(mode=mode)))])
                for kind, (_, mode, scale) in kinds.items()]
    m = build(_cfg(tiny_dit, sigma=0.2, branches=branches,
                   amalgamation=dict(hidden_channels=8, refine_blocks=1, fuse_blocks=1))).eval()
    assert m.branch_groups == [[0, 1, 2]]
    out = m.extract(image)
    for b, kind in enumerate(kinds):  # atol 1e-4: our VAE runs channels_last (another oneDNN summation order)
        for level in range(2):
            torch.testing.assert_close(out[level][b], refs[kind][level], rtol=1e-4, atol=1e-4, msg=f'{kind} {level}')
    plain = build(_cfg(tiny_dit, sigma=0.2)).eval()(image)
    assert not torch.allclose(plain[0], out[0][0], atol=1e-3)


@torch.no_grad()
def test_flux_lora_files_of_every_format_equal_load_lora_weights(tiny_dit, image):
    """diffusers (transformer; transformer + CLIP), kohya and XLabs files as peft adapters of the one
    transformer, five branches in one mixed-adapter call, each equal to ``load_lora_weights`` + ``set_adapters``."""
    from diffusers import FluxPipeline
    files = {k: str(tiny_dit / 'flux-lora' / f'{k}.safetensors') for k in ('a', 'b', 'kohya', 'xlabs')}
    branches = [dict(name='basic'), *(dict(name=k, loras=[dict(path=p, scale=0.8)]) for k, p in files.items())]
    m = build(_cfg(tiny_dit, sigma=0.2, branches=branches,
                   amalgamation=dict(hidden_channels=8, refine_blocks=1, fuse_blocks=1))).eval()
    assert m.branch_groups == [[0, 1, 2, 3, 4]]
    out = m.extract(image)
    pipe = FluxPipeline.from_pretrained(tiny_dit / 'flux')
    for k, p in files.items():
        pipe.load_lora_weights(p, adapter_name=k)
    packed, img_ids = _packed(pipe, image, 0.2)
    for branch, adapters in enumerate([[], *([k] for k in files)]):
        if adapters:
            pipe.set_adapters(adapters, adapter_weights=[0.8])
        else:
            pipe.disable_lora()
        embeds, pooled, text_ids = pipe.encode_prompt(PROMPT, None)
        ref = _run(pipe.transformer, TAPS, hidden_states=packed, timestep=torch.tensor([0.2]),
                   guidance=torch.tensor([1.0]), pooled_projections=pooled, encoder_hidden_states=embeds,
                   txt_ids=text_ids, img_ids=img_ids)
        for level in range(2):
            torch.testing.assert_close(out[level][branch], ref[level], rtol=1e-4, atol=1e-5, msg=f'branch {branch}')
        pipe.enable_lora()
    assert all(not torch.allclose(out[1][b], out[1][0]) for b in range(1, 5))


def test_flux_refuses_bad_control_modes(tiny_dit):
    union = str(tiny_dit / 'flux-controlnet-union')
    with pytest.raises(ValueError, match='union ControlNet .*give the branch\'s controlnet a mode'):
        build(_cfg(tiny_dit, branches=[dict(name='u', controlnets=[dict(path=union)])]))
    with pytest.raises(ValueError, match='remove mode=2'):
        build(_cfg(tiny_dit, branches=[dict(name='c', controlnets=[dict(path=str(tiny_dit / 'flux-controlnet'),
                                                                       mode=2)])]))
    with pytest.raises(ValueError, match='guidance=2.0 is for guidance-distilled'):
        build(_cfg(tiny_dit, 'sd3', guidance=2.0, taps=('transformer_blocks.0',)))


@torch.no_grad()
def test_quantized_transformer_and_controlnet_keep_loras_and_features(tiny_dit, image):
    """quantization= loads the transformer and the ControlNet through diffusers' quantization config (torchao int8
    weight-only: runs on CPU); LoRA adapters stay on top; the features stay close to the unquantized ones."""
    from mmseg_gate.models.quantization import quantization_config
    branch = dict(name='l', loras=[dict(path=str(tiny_dit / 'flux-lora' / 'a.safetensors'))],
                  controlnets=[dict(path=str(tiny_dit / 'flux-controlnet'))])
    ref = build(_cfg(tiny_dit, sigma=0.2, branches=[branch])).eval()(image)
    m = build(_cfg(tiny_dit, sigma=0.2, branches=[branch],
                   quantization=dict(type='TorchAoConfig', quant_type='Int8WeightOnlyConfig'))).eval()
    for net in (m.sd.denoiser, m.sd.controlnets['0']):
        assert type(net.transformer_blocks[0].attn.to_k.weight).__name__ == 'Int8Tensor'
    assert 'lora_A' in dir(m.sd.denoiser.transformer_blocks[0].attn.to_q)  # the adapter wraps the quantized layer
    assert m.frozen_provenance()['quantization'] == 'torchao:Int8WeightOnlyConfig'
    for o, r in zip(m(image), ref):
        assert not torch.equal(o, r) and (o - r).abs().max() < 0.02 * r.abs().max()
    with pytest.raises(ValueError, match="type='Int8'"):
        quantization_config(dict(type='Int8'))
    with pytest.raises(ValueError, match="quant_type='int8wo' is no torchao config class"):
        quantization_config(dict(type='TorchAoConfig', quant_type='int8wo'))


@torch.no_grad()
def test_lora_extracted_from_a_fine_tuned_flux_folder_equals_the_lora(tiny_dit, image, tmp_path):
    """tools/extract_lora.py's functions on FLUX: LoRA b merged into the transformer and the CLIP encoder, saved
    as a folder, extracted back at its rank (FLUX format): the branch features equal those of the original."""
    from diffusers import FluxPipeline
    from mmseg_gate.lora.extract import extract_lora, load_models, relative_error
    from mmseg_gate.lora.files import save_lora
    original = str(tiny_dit / 'flux-lora' / 'b.safetensors')
    pipe = FluxPipeline.from_pretrained(tiny_dit / 'flux')
    pipe.load_lora_weights(original)
    pipe.fuse_lora(components=['transformer', 'text_encoder'])  # FluxPipeline fuses the transformer alone by default
    pipe.unload_lora_weights()
    pipe.save_pretrained(tmp_path / 'tuned')
    base = load_models(str(tiny_dit / 'flux'), str(tiny_dit / 'flux'), '--base')
    assert set(base) == {'transformer', 'text_encoder'}
    layers, reports = extract_lora(base, load_models(str(tmp_path / 'tuned'), str(tiny_dit / 'flux'), '--tuned'),
                                   rank=2, progress=False)
    assert relative_error(reports) < 1e-4 and {r.model for r in reports} == {'transformer', 'text_encoder'}
    extracted = save_lora(tmp_path / 'b.safetensors', layers, FluxPipeline)
    feats = [build(_cfg(tiny_dit, taps=TAPS[:1], sigma=0.2, branches=[dict(name='b', loras=[dict(path=str(p))])]
                        )).eval()(image)[0] for p in (original, extracted)]
    torch.testing.assert_close(feats[1], feats[0], rtol=1e-3, atol=1e-4)
