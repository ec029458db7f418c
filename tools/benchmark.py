"""Feature-extraction and training throughput of GATE: the reference code's way vs mmseg-gate's.

`reference` re-implements, for comparison only, what the authors' code does per image: each branch
its own pipeline copy (LoRA merged into its own UNet), its own prompt encoding, VAE encode and
ControlNet call, Canny with OpenCV on de-normalised uint8 images on the CPU, and a full UNet forward
with hooks. `gate` is GATEDiffusionBackbone. Both run on the same weights and inputs, each in its own
process so that peak memory is its own; with the same noise and posterior mode their features must
agree (max_abs_diff).

  python tools/benchmark.py --preset sd15 --size 512 --batch 1 --branches gate --json bench.json

Diffusion transformers (``--preset sd35m``, ``pixart``, ``flux``; ``tiny-sd3``, ``tiny-pixart``, ``tiny-flux``
for tests): see tools/benchmark_dit.py for their branches, taps, depth and reference-style extractor.
"""
from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from mmengine.config import DictAction

TAPS = ('up_blocks.0.upsamplers.0', 'up_blocks.1.upsamplers.0', 'up_blocks.2.upsamplers.0')
#: configs/sdxl/gate_sdxl_ade20k.py's taps (ours only: the reference code has no SDXL segmentation)
SDXL_TAPS = dict(taps=('up_blocks.1.upsamplers.0', 'up_blocks.1.attentions.0.transformer_blocks.0',
                       'up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_q',
                       'up_blocks.0.attentions.0.transformer_blocks.7', 'up_blocks.0.attentions.0.transformer_blocks.5'),
                 merge_same_stride=True)
PROMPT = 'a highly realistic photo of the real world. high quality.'
DTYPES = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark_dit as dit  # noqa: E402  (beside this file)


def branch_dicts(assets: Path, which: str, preset: str = 'sd15') -> list[dict]:
    if preset in dit.DIT_PRESETS:
        return dit.dit_branches(assets, preset, PROMPT)[:1 if which == 'basic' else None]
    canny = dict(path=str(assets / 'controlnet-canny'), condition='canny', scale=1.0)
    if which == 'basic':
        return [dict(name='basic')]
    if preset == 'sdxl':  # configs/sdxl/gate_sdxl_ade20k.py: no SDXL LoRA files
        return [dict(name='prompt'), dict(name='prompt_canny', controlnets=[canny])]
    if which == 'ip':  # configs/baselines/sd15_prompt_ipadapter_ade20k.py's branch
        name = 'ip-adapter_sd15' if preset == 'sd15' else 'ip-adapter_tiny'
        return [dict(name='prompt_ip', ip_adapters=[dict(path=str(assets / 'ip-adapter' / f'{name}.safetensors'),
                                                         image_encoder=str(assets / 'ip-adapter' / 'image_encoder'))])]
    return [dict(name='prompt'),
            dict(name='lora_a_canny', loras=[dict(path=str(assets / 'lora' / 'a.safetensors'))], controlnets=[canny]),
            dict(name='lora_b_canny', loras=[dict(path=str(assets / 'lora' / 'b.safetensors'))], controlnets=[canny])]


def make_inputs(size: int, batch: int) -> torch.Tensor:
    """Picture-like inputs in [-1, 1] (synthetic scenes: edges for Canny, regions for the VAE)."""
    from mmseg_gate.testing.synthetic_data import ADE_CLASSES, _scene
    rng = np.random.default_rng(0)
    imgs = [_scene(rng, size, size, ADE_CLASSES)[0][..., ::-1].copy() for _ in range(batch)]
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 127.5 - 1


# ---------------------------------------------------------------------------------------------- reference
class ReferenceExtractor:
    """The reference code's per-branch work (see module docstring)."""

    def __init__(self, assets: Path, branches: list[dict], dtype: torch.dtype, device: str, timestep: int,
                 sample_posterior: bool) -> None:
        from diffusers import ControlNetModel, StableDiffusionPipeline
        self.branches, self.device, self.timestep, self.sample = [], device, timestep, sample_posterior
        self.stage_timer = None  # as GATEDiffusionBackbone.stage_timer
        for b in branches:
            pipe = StableDiffusionPipeline.from_pretrained(str(assets / 'sd'), torch_dtype=dtype, safety_checker=None)
            for lora in b.get('loras', ()):
                pipe.load_lora_weights(lora['path'], adapter_name='merged')
                pipe.fuse_lora(lora_scale=lora.get('scale', 1.0))
                pipe.unload_lora_weights()  # merged: a plain UNet copy per branch
            nets = [ControlNetModel.from_pretrained(c['path'], torch_dtype=dtype).to(device)
                    for c in b.get('controlnets', ())]
            pipe.to(device)
            modules = dict(pipe.unet.named_modules())
            self.branches.append((pipe, nets, [modules[t] for t in TAPS]))

    def models(self):
        for pipe, nets, _ in self.branches:
            yield from (pipe.unet, pipe.vae, pipe.text_encoder, *nets)

    @torch.no_grad()
    def extract(self, img: torch.Tensor) -> list[list[torch.Tensor]]:
        import cv2
        from mmseg_gate.utils.timing import no_timer
        timed = self.stage_timer or no_timer
        per_level = [[] for _ in TAPS]
        for pipe, nets, taps in self.branches:
            dtype = pipe.unet.dtype
            with timed('text'):
                emb = pipe.encode_prompt(PROMPT, self.device, img.shape[0], False)[0]
            with timed('vae'):
                dist = pipe.vae.encode(img.to(self.device, dtype)).latent_dist
                latents = (dist.sample() if self.sample else dist.mode()) * pipe.vae.config.scaling_factor
                noise = torch.randn((1, *latents.shape[1:]), generator=torch.Generator().manual_seed(0))
                t = torch.full((img.shape[0],), self.timestep, dtype=torch.long, device=self.device)
                noisy = pipe.scheduler.add_noise(latents, noise.to(latents).expand_as(latents), t)
            kwargs = {}
            for net in nets:
                with timed('conditions'):  # de-normalise, to the CPU, OpenCV per image, back
                    u8 = ((img.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
                    edges = np.stack([np.stack([cv2.Canny(np.ascontiguousarray(im), 100, 200)] * 3) for im in u8])
                    cond = torch.from_numpy(edges).to(self.device, dtype) / 255
                with timed('controlnet'):
                    down, mid = net(noisy, self.timestep, encoder_hidden_states=emb, controlnet_cond=cond,
                                    return_dict=False)
                kwargs = dict(down_block_additional_residuals=down, mid_block_additional_residual=mid)
            out = {}
            hooks = [m.register_forward_hook(lambda m, a, o, i=i: out.__setitem__(i, o)) for i, m in enumerate(taps)]
            with timed('unet'):
                pipe.unet(noisy, self.timestep, encoder_hidden_states=emb, **kwargs)  # the full UNet
            for h in hooks:
                h.remove()
            for level, i in enumerate(reversed(range(len(TAPS)))):  # high resolution first
                per_level[level].append(out[i].float())
        return per_level


# ---------------------------------------------------------------------------------------------- worker
def unique_params(models) -> tuple[int, int]:
    seen, numel, nbytes = set(), 0, 0
    for m in models:
        for p in m.parameters():
            key = p.untyped_storage().data_ptr()
            if key not in seen:
                seen.add(key)
                numel += p.numel()
                nbytes += p.numel() * p.element_size()
    return numel, nbytes


def build_trainable(out_channels: list[int], n_branches: int, preset: str, device: str):
    """GATE's amalgamation + UPerHead (+ FCN auxiliary head) as in configs/gate_ade20k.py."""
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules
    from mmseg_gate.models.amalgamation import Amalgamation
    register_all_modules()
    big = not preset.startswith('tiny')
    norm = dict(type='BN', requires_grad=True)
    amalg = Amalgamation(out_channels, n_branches, hidden_channels=128 if big else 16,
                         refine_blocks=4 if big else 1, fuse_blocks=2 if big else 1)
    head = MODELS.build(dict(type='UPerHead', in_channels=out_channels, in_index=[0, 1, 2], pool_scales=(1, 2, 3),
                             channels=512 if big else 32, dropout_ratio=0.1, num_classes=150, norm_cfg=norm,
                             align_corners=False, loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0)))
    aux = MODELS.build(dict(type='FCNHead', in_channels=out_channels[1], in_index=1, channels=512 if big else 16,
                            num_convs=1, concat_input=False, num_classes=150, norm_cfg=norm, align_corners=False,
                            loss_decode=dict(type='CrossEntropyLoss', loss_weight=0.4)))
    return torch.nn.ModuleDict(dict(amalgamation=amalg, decode_head=head, auxiliary_head=aux)).to(device)


def gate_options(options: dict) -> dict:
    """``--gate-options`` with dict literals parsed (``attention={}``: DictAction keeps them as text)."""
    import ast
    return {k: ast.literal_eval(v) if isinstance(v, str) and v[:1] == '{' else v for k, v in options.items()}


def worker(args) -> None:
    import mmseg_gate  # noqa: F401
    from mmseg_gate.utils import StageTimer
    torch.manual_seed(0)
    device, dtype = args.device, DTYPES[args.dtype]
    io_dir = Path(args.io_dir)
    img = torch.load(io_dir / 'inputs.pt', weights_only=True).to(device)
    branches = branch_dicts(Path(args.assets), args.branches, args.preset)
    t0 = time.perf_counter()
    is_dit = args.preset in dit.DIT_PRESETS
    if is_dit:
        pretrained, taps = dit.pipeline_folder(Path(args.assets), args.preset), dict(
            taps=dit.preset_taps(Path(args.assets), args.preset))
    else:
        pretrained, taps = Path(args.assets) / 'sd', SDXL_TAPS if args.preset == 'sdxl' else dict(taps=TAPS)
    if args.worker == 'gate':
        from mmseg.registry import MODELS
        backbone = MODELS.build(dict(type='GATEDiffusionBackbone', pretrained=str(pretrained),
                                     branches=branches, prompt=PROMPT, timestep=50, dtype=args.dtype, **taps,
                                     # the reference's noise: one seeded pattern for all branches, posterior
                                     # mode (the default 'gate' policy costs the same: per-branch draws only)
                                     noise='fixed',
                                     amalgamation=None if len(branches) == 1 else dict(),
                                     **gate_options(args.gate_options))).to(device)
        # both modes time extract(); the trainable part (--train-step) is built alike for both
        # below, so the backbone's own amalgamation would be an unused second copy (~115 MB for sd15)
        backbone.amalgamation = None
        extract, models = backbone.extract, [backbone.frozen_modules()]
        out_channels = [sum(backbone.tap_info[i].channels for i in level) for level in backbone.levels]
    elif is_dit:
        ref = dit.DiTReferenceExtractor(Path(args.assets), args.preset, branches, PROMPT, dtype, device, 50,
                                        args.reference_sample_posterior)
        extract, models = ref.extract, list(ref.models())
        out_channels = None
    else:
        ref = ReferenceExtractor(Path(args.assets), branches, dtype, device, 50, args.reference_sample_posterior)
        extract, models = ref.extract, list(ref.models())
        out_channels = None
    build_s = time.perf_counter() - t0
    timer = StageTimer(device)
    extractor = backbone if args.worker == 'gate' else ref
    extractor.stage_timer = timer

    trainable = optim = None
    if args.train_step:
        with torch.no_grad():
            feats = extract(img)
        out_channels = [f[0].shape[1] for f in feats]
        trainable = build_trainable(out_channels, len(branches), args.preset, device)
        optim = torch.optim.AdamW(trainable.parameters(), lr=1.6e-4, weight_decay=1e-3)
        labels = torch.randint(0, 150, (img.shape[0], 1, *img.shape[-2:]), device=device)

    def step():
        feats = extract(img)
        if trainable is not None:
            with timer('head'):
                fused = trainable['amalgamation'](feats)
                loss = sum(trainable[h].loss_by_feat(trainable[h](fused), _samples(labels)).get('loss_ce', 0)
                           for h in ('decode_head', 'auxiliary_head'))
                optim.zero_grad()
                loss.backward()
                optim.step()
        return feats

    if device.startswith('cuda'):
        torch.cuda.reset_peak_memory_stats()
    warm = time.perf_counter()
    for _ in range(args.warmup):
        step()
    warmup_s = time.perf_counter() - warm  # compile=/compile_denoiser= compile here
    timer.ms.clear()
    start = time.perf_counter()
    for _ in range(args.iters):
        feats = step()
    if device.startswith('cuda'):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    numel, nbytes = unique_params(models)
    result = dict(mode=args.worker, build_s=round(build_s, 2), warmup_s=warmup_s, s_per_iter=elapsed / args.iters,
                  images_per_s=img.shape[0] * args.iters / elapsed,
                  stages_ms={k: v / args.iters for k, v in timer.ms.items()},
                  frozen_params_m=numel / 1e6, frozen_mb=nbytes / 2 ** 20,
                  peak_mem_mb=(torch.cuda.max_memory_allocated() / 2 ** 20 if device.startswith('cuda')
                               else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    if trainable is not None:
        buf = io.BytesIO()
        torch.save(trainable.state_dict(), buf)
        result['trainable_checkpoint_mb'] = buf.tell() / 2 ** 20
    torch.save([[f[:1].float().cpu() for f in level] for level in feats], io_dir / f'{args.worker}_feats.pt')
    (io_dir / f'{args.worker}.json').write_text(json.dumps(result))


def _samples(labels):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    out = []
    for lab in labels:
        s = SegDataSample(metainfo=dict(img_shape=tuple(lab.shape[-2:]), pad_shape=tuple(lab.shape[-2:])))
        s.gt_sem_seg = PixelData(data=lab)
        out.append(s)
    return out


# ---------------------------------------------------------------------------------------------- driver
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--preset', choices=['tiny', 'sd15', 'sdxl', *dit.DIT_PRESETS], default='tiny',
                        help='tiny test models, SD1.5-shaped random weights (~6 GB, made once) or SDXL-shaped '
                             'ones (~19 GB; ours only: --modes gate); sd35m / pixart / flux: SD3.5-medium- / '
                             'PixArt-Sigma-XL- / FLUX.1-dev-shaped (made once, --dit-blocks deep), tiny-sd3 / '
                             'tiny-pixart / tiny-flux: the tiny DiT test assets (tools/benchmark_dit.py)')
    parser.add_argument('--assets', default=None,
                        help='asset folder (default: data/tiny_sd, data/sd15_random, data/sdxl_random, '
                             'data/sd35m_random_b<N>, data/pixart_sigma_random_b<N>, data/flux1dev_random_d<D>s<S> '
                             'or data/tiny_dit)')
    parser.add_argument('--dit-blocks', default=None,
                        help='sd35m / pixart: transformer blocks N of the random assets; flux: D,S double- and '
                             f'single-stream blocks (default {dit.DEFAULT_BLOCKS}; the real models have 24 / 28 / '
                             '19,38; widths are always the real ones)')
    parser.add_argument('--size', type=int, default=512, help='square input side, multiple of 64')
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--branches', choices=['basic', 'gate', 'ip'], default='gate',
                        help="gate = the paper's 3 branches; basic = one; ip = one with an IP-Adapter (ours only)")
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--dtype', choices=list(DTYPES), default=None, help='default: bf16 on GPU (reference: fp16), fp32 on CPU')
    parser.add_argument('--train-step', action='store_true', help='time full training steps (features, heads, backward, AdamW)')
    parser.add_argument('--iters', type=int, default=2, help='timed iterations per mode')
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--modes', default='reference,gate', help='comma-separated subset of reference,gate')
    parser.add_argument('--reference-sample-posterior', action='store_true',
                        help='sample the VAE posterior in reference mode as the original (features then differ)')
    parser.add_argument('--gate-options', nargs='+', action=DictAction, default={},
                        help='extra GATEDiffusionBackbone arguments, e.g. batch_branches=False')
    parser.add_argument('--json', default=None, help='write the results here')
    parser.add_argument('--worker', choices=['reference', 'gate'], help=argparse.SUPPRESS)
    parser.add_argument('--io-dir', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.size % 64:
        parser.error(f'--size {args.size} must be a multiple of 64')
    if args.train_step and args.batch < 2:
        parser.error(f'--train-step needs --batch 2 or more (got {args.batch}): UPerHead\'s 1x1 pooling branch '
                     'normalises over the batch, and BatchNorm cannot train on a single value per channel')
    if args.branches == 'ip' and 'reference' in args.modes.split(','):
        parser.error('--branches ip times ours only (the reference code has no IP-Adapter): add --modes gate')
    if args.preset == 'sdxl' and 'reference' in args.modes.split(','):
        parser.error('--preset sdxl times ours only (the reference code has no SDXL segmentation): add --modes gate')
    if args.dtype is None:
        args.dtype = 'fp32' if args.device == 'cpu' else 'bf16'
    if args.branches == 'ip' and args.preset in dit.DIT_PRESETS:
        parser.error(f'--branches ip is for the SD presets (got --preset {args.preset})')
    if args.preset in dit.DIT_PRESETS and not args.preset.startswith('tiny-'):
        try:
            dit.parse_blocks(args.preset, args.dit_blocks)
        except ValueError as e:
            parser.error(str(e))
    from mmseg_gate.testing.tiny_models import make_sd15_shaped, make_sdxl_shaped, make_tiny_sd
    makers = dict(tiny=(make_tiny_sd, 'data/tiny_sd'), sd15=(make_sd15_shaped, 'data/sd15_random'),
                  sdxl=(make_sdxl_shaped, 'data/sdxl_random'))
    for name in dit.DIT_PRESETS:
        makers[name] = (lambda out, name=name: dit.make_assets(name, out, args.dit_blocks),
                        dit.default_assets(name, args.dit_blocks))
    if args.assets is None:
        args.assets = makers[args.preset][1]
    if args.worker:
        return worker(args)

    makers[args.preset][0](args.assets)
    if args.branches == 'ip' and args.preset == 'sd15':
        from mmseg_gate.testing.tiny_models import make_sd15_ip_adapter
        make_sd15_ip_adapter(args.assets)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(make_inputs(args.size, args.batch), Path(tmp) / 'inputs.pt')
        forwarded = [a for a in sys.argv[1:] if a not in ('--json',)]
        if args.json:
            i = forwarded.index(args.json) if args.json in forwarded else None
            forwarded = [a for j, a in enumerate(forwarded) if j != i]
        for mode in args.modes.split(','):
            print(f'[{mode}] running {args.warmup} warm-up + {args.iters} timed iterations ...', flush=True)
            cmd = [sys.executable, __file__, *forwarded, '--assets', args.assets, '--dtype', args.dtype,
                   '--device', args.device, '--worker', mode, '--io-dir', tmp]
            if mode == 'reference' and args.device != 'cpu' and '--dtype' not in sys.argv:
                cmd[cmd.index('--dtype') + 1] = 'fp16'  # the reference code runs fp16 on GPU
            subprocess.run(cmd, check=True)
            results[mode] = json.loads((Path(tmp) / f'{mode}.json').read_text())
        if {'reference', 'gate'} <= results.keys():
            a = torch.load(Path(tmp) / 'reference_feats.pt', weights_only=True)
            b = torch.load(Path(tmp) / 'gate_feats.pt', weights_only=True)
            results['max_abs_diff'] = max((x - y).abs().max().item() for la, lb in zip(a, b) for x, y in zip(la, lb))
            results['max_abs_feature'] = max(x.abs().max().item() for la in a for x in la)
            results['speedup'] = results['gate']['images_per_s'] / results['reference']['images_per_s']
            results['mem_ratio'] = results['gate']['peak_mem_mb'] / results['reference']['peak_mem_mb']
    results['setup'] = dict(preset=args.preset, size=args.size, batch=args.batch, branches=args.branches,
                            device=args.device, dtype=args.dtype, train_step=args.train_step, iters=args.iters,
                            torch=torch.__version__, date=time.strftime('%Y-%m-%d'),
                            threads=torch.get_num_threads(), gate_options=args.gate_options)
    if args.preset in dit.DIT_PRESETS:
        results['setup']['model'] = dit.describe(Path(args.assets), args.preset)
        results['setup']['branch_names'] = [b['name'] for b in
                                            branch_dicts(Path(args.assets), args.branches, args.preset)]
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def report(r: dict) -> None:
    modes = [m for m in ('reference', 'gate') if m in r]
    stages = sorted({s for m in modes for s in r[m]['stages_ms']})
    rows = [(f'{s} ms', [r[m]['stages_ms'].get(s, 0.0) for m in modes]) for s in stages]
    rows += [('warm-up s', [r[m].get('warmup_s', 0.0) for m in modes]),
             ('s/iter', [r[m]['s_per_iter'] for m in modes]), ('images/s', [r[m]['images_per_s'] for m in modes]),
             ('peak memory MB', [r[m]['peak_mem_mb'] for m in modes]),
             ('frozen params (M, unique)', [r[m]['frozen_params_m'] for m in modes])]
    if 'trainable_checkpoint_mb' in r.get('gate', {}):
        rows.append(('trainable checkpoint MB', [r[m].get('trainable_checkpoint_mb', 0) for m in modes]))
    print(f"\n{r['setup']}")
    print(f"{'':28s}" + ''.join(f'{m:>14s}' for m in modes) + ('    gate/ref' if len(modes) == 2 else ''))
    for name, vals in rows:
        ratio = f'{vals[1] / vals[0]:12.3f}' if len(vals) == 2 and vals[0] else ''
        print(f'{name:28s}' + ''.join(f'{v:14.3f}' for v in vals) + ratio)
    if 'speedup' in r:
        print(f"speedup {r['speedup']:.2f}x, memory ratio {r['mem_ratio']:.2f}, features max |diff| "
              f"{r['max_abs_diff']:.3g} (max |feature| {r['max_abs_feature']:.3g})")


if __name__ == '__main__':
    main()
