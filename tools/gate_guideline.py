"""The GATE guideline: does a generation technique suppress content shift (is it worth a branch)?

Runs diffusers' Img2Img at a high strength on each image twice with the same seed, without the
technique (the reference) and with it, and scores how close each output stays to the input:
PSNR and SSIM (scikit-image), LPIPS if you give local LPIPS weights, and the paper's feature-level
score: diff = sum over pixels | ||Lap(F_ref)|| - ||Lap(F)|| | with F_ref the features at t=0,
score = (diff_reference - diff_technique) / diff_reference (> 0: the technique's features are closer).
The reference also runs with a second seed: an effect counts only when it exceeds what the two seeds
differ by (and twice its standard error over the images); otherwise the verdict is "no measurable
difference". Pixel and feature verdicts are compared (mmseg_gate.guideline).

  python tools/gate_guideline.py --sd checkpoints/stable-diffusion-v1-5 --images data/samples \\
      --technique '{"prompt": "a highly realistic photo ...", "loras": [{"path": "lora/a.safetensors"}],
                    "controlnets": [{"path": "checkpoints/sd-controlnet-canny", "condition": "canny"}]}'

A technique is a branch dict as in the backbone config (prompt, loras, controlnets, ip_adapters with
the input image as image prompt, denoising_from: the last acts on the feature score only, Img2Img
denoises anyway), plus an optional "strength" to compare strengths. Writes grid_<image>.png (input | reference | technique), scores.csv,
scores.json, and prints a verdict.
"""
from __future__ import annotations

import argparse
import ast
import csv
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

DTYPES = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}


def parse_technique(text: str) -> dict:
    """JSON or a Python dict literal."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = ast.literal_eval(text)
    if not isinstance(value, dict):
        raise ValueError(f'a technique is a dict (prompt, loras, controlnets, strength), got {text!r}')
    return value


class Img2Img:
    """Reference and technique pipelines sharing one UNet/VAE/text encoder (LoRAs as adapters)."""

    def __init__(self, sd: str, technique: dict, device: str, dtype: torch.dtype) -> None:
        from diffusers import (ControlNetModel, StableDiffusionControlNetImg2ImgPipeline,
                               StableDiffusionImg2ImgPipeline)
        self.base = StableDiffusionImg2ImgPipeline.from_pretrained(sd, dtype=dtype, safety_checker=None,
                                                                   requires_safety_checker=False).to(device)
        self.base.set_progress_bar_config(disable=True)
        self.adapters = []
        for i, lora in enumerate(technique.get('loras', ())):
            self.base.load_lora_weights(lora['path'], adapter_name=f'technique{i}')
            self.adapters.append((f'technique{i}', float(lora.get('scale', 1.0))))
        self.ip_scales = [float(a.get('scale', 1.0)) for a in technique.get('ip_adapters', ())]
        for a in technique.get('ip_adapters', ()):  # diffusers' own loading; the image encoder by its path
            folder = os.path.dirname(os.path.abspath(a['path']))
            self.base.load_ip_adapter(folder, subfolder='', weight_name=os.path.basename(a['path']),
                                      image_encoder_folder=os.path.relpath(os.path.abspath(a['image_encoder']), folder))
        self.nets = technique.get('controlnets', ())
        for net in self.nets:
            if net.get('condition', 'canny') not in ('canny', 'image'):
                raise ValueError(f"condition {net.get('condition')!r}: the guideline supports 'canny' and 'image'")
        self.controlnet_pipe = None
        if self.nets:
            models = [ControlNetModel.from_pretrained(n['path'], dtype=dtype) for n in self.nets]
            self.controlnet_pipe = StableDiffusionControlNetImg2ImgPipeline(
                **self.base.components,
                controlnet=models if len(models) > 1 else models[0]).to(device)
            self.controlnet_pipe.set_progress_bar_config(disable=True)
        self.device = device

    def _set_lora(self, on: bool) -> None:
        if not self.adapters:
            return
        if on:
            self.base.enable_lora()
            self.base.set_adapters([n for n, _ in self.adapters], [s for _, s in self.adapters])
        else:
            self.base.disable_lora()

    def __call__(self, image: Image.Image, prompt: str, strength: float, technique: bool, seed: int, steps: int,
                 guidance: float) -> Image.Image:
        from mmseg_gate.models.conditions import build_condition
        generator = torch.Generator(self.device).manual_seed(seed)
        kwargs = dict(prompt=prompt, image=image, strength=strength, num_inference_steps=steps,
                      guidance_scale=guidance, generator=generator)
        self._set_lora(technique)
        if self.ip_scales:  # the reference runs with the IP-Adapters at scale 0: plain cross-attention
            self.base.set_ip_adapter_scale(self.ip_scales if technique else [0.0] * len(self.ip_scales))
            kwargs['ip_adapter_image'] = [image] * len(self.ip_scales) if len(self.ip_scales) > 1 else image
        if technique and self.controlnet_pipe is not None:
            pixels = torch.from_numpy(np.asarray(image)).permute(2, 0, 1)[None].float()
            controls = [build_condition(n.get('condition', 'canny'), pixels, **n.get('condition_cfg', {}))
                        for n in self.nets]
            scales = [float(n.get('scale', 1.0)) for n in self.nets]
            return self.controlnet_pipe(control_image=controls if len(controls) > 1 else controls[0],
                                        controlnet_conditioning_scale=scales if len(scales) > 1 else scales[0],
                                        **kwargs).images[0]
        return self.base(**kwargs).images[0]


def laplacian_norm(feat: torch.Tensor) -> torch.Tensor:
    """||Laplacian(F)|| over channels, per pixel: [C, h, w] -> [h, w]."""
    k = torch.tensor([[0., 1., 0.], [1., -4., 1.], [0., 1., 0.]]).to(feat)
    lap = F.conv2d(feat[:, None], k[None, None], padding=1)[:, 0]
    return lap.norm(dim=0)


def _feature_diffs(backbone, img: torch.Tensor, timestep: int, seed: int) -> list[list[float]]:
    """Per level, per branch: sum | ||Lap(F_t=0)|| - ||Lap(F_t)|| |, F_t on the noise of ``seed``."""
    saved = backbone.timesteps, backbone.noise_policy.seed
    try:
        backbone.timesteps = [0] * len(backbone.specs)
        anchor = backbone.extract(img)
        # a denoising branch is extracted where its plan ends
        backbone.timesteps = [timestep if plan is None else plan.extract for plan in backbone.plans]
        backbone.noise_policy.seed = seed
        feats = backbone.extract(img)
    finally:
        backbone.timesteps, backbone.noise_policy.seed = saved
    return [[(laplacian_norm(anchor[level][0][0]) - laplacian_norm(feats[level][b][0])).abs().sum().item()
             for b in range(len(feats[level]))] for level in range(len(feats))]


def feature_scores(backbone, img: torch.Tensor, timestep: int, seed: int = 0) -> dict:
    """The paper's feature-level score of branch 1 (technique) against branch 0 (reference), per level,
    and the same score of the reference on the noise of ``seed + 1`` (its seed-to-seed spread)."""
    diffs, other = _feature_diffs(backbone, img, timestep, seed), _feature_diffs(backbone, img, timestep, seed + 1)
    scores = [(d[0] - d[1]) / max(d[0], 1e-12) for d in diffs]
    noise = [(d[0] - o[0]) / max(d[0], 1e-12) for d, o in zip(diffs, other)]
    return {'feature_score': float(np.mean(scores)), 'feature_score_per_level': scores,
            'feature_seed_difference': float(np.mean(noise))}


def closeness(a: np.ndarray, b: np.ndarray, lpips_model=None) -> dict:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity
    out = {'psnr': float(peak_signal_noise_ratio(a, b, data_range=255)),
           'ssim': float(structural_similarity(a, b, channel_axis=2, data_range=255))}
    if lpips_model is not None:
        to = lambda x: torch.from_numpy(x).permute(2, 0, 1)[None].float() / 127.5 - 1  # noqa: E731
        out['lpips'] = float(lpips_model(to(a), to(b)).item())
    return out


def save_grid(path: Path, images: list[np.ndarray], titles: list[str]) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(images), figsize=(3 * len(images), 3.2))
    for ax, im, title in zip(axes, images, titles):
        ax.imshow(im)
        ax.set_title(title, fontsize=8)
        ax.axis('off')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(args) -> dict:
    import mmseg_gate  # noqa: F401
    from mmseg.registry import MODELS
    from mmseg_gate.utils import list_images
    technique = parse_technique(args.technique)
    reference = parse_technique(args.reference)
    dtype = DTYPES[args.dtype]
    files = list_images(args.images)
    if args.max_images:
        files = files[:args.max_images]
    if not files:
        raise FileNotFoundError(f'no images in {args.images}')
    if reference.get('loras') or reference.get('controlnets'):
        raise ValueError('the reference is the model without the technique: give it a prompt/strength only')
    pipes = Img2Img(args.sd, technique, args.device, dtype)
    branch = {k: v for k, v in technique.items() if k != 'strength'}
    backbone = MODELS.build(dict(
        type='GATEDiffusionBackbone', pretrained=args.sd, dtype=args.dtype, timestep=args.timestep,
        prompt=reference.get('prompt', ''), branches=[dict(name='reference'), dict(name='technique', **branch)],
        noise='fixed',  # reference and technique scored on the same noisy latents
        amalgamation=dict())).to(args.device).eval()
    lpips_model = None
    if args.lpips_weights:
        try:
            import lpips
        except ImportError as err:
            raise SystemExit('--lpips-weights needs the lpips package (pip install lpips)') from err
        lpips_model = lpips.LPIPS(net='alex', pretrained=False, pnet_rand=True)
        lpips_model.load_state_dict(torch.load(args.lpips_weights, map_location='cpu', weights_only=True), strict=False)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    ref_strength = float(reference.get('strength', args.strength))
    tech_strength = float(technique.get('strength', args.strength))
    for path in tqdm(files, desc='guideline', unit='image'):
        image = Image.open(path).convert('RGB').resize((args.size, args.size), Image.BICUBIC)
        src = np.asarray(image)
        common = dict(seed=args.seed, steps=args.num_steps, guidance=args.guidance)
        ref_img = np.asarray(pipes(image, reference.get('prompt', ''), ref_strength, False, **common))
        ref2_img = np.asarray(pipes(image, reference.get('prompt', ''), ref_strength, False,
                                    **dict(common, seed=args.seed + 1)))  # the seed-to-seed spread
        tech_img = np.asarray(pipes(image, technique.get('prompt', reference.get('prompt', '')), tech_strength, True,
                                    **common))
        x = torch.from_numpy(src).permute(2, 0, 1)[None].float().to(args.device) / 127.5 - 1
        row = {'image': str(path), **{f'reference_{k}': v for k, v in closeness(src, ref_img, lpips_model).items()},
               **{f'technique_{k}': v for k, v in closeness(src, tech_img, lpips_model).items()},
               'reference_seed2_psnr': closeness(src, ref2_img)['psnr'],
               **feature_scores(backbone, x, args.timestep, args.seed)}
        row['closer'] = bool(row['technique_psnr'] > row['reference_psnr'])
        rows.append(row)
        save_grid(out / f'grid_{path.stem}.png', [src, ref_img, tech_img],
                  ['input', f"reference  PSNR {row['reference_psnr']:.1f}  SSIM {row['reference_ssim']:.2f}",
                   f"technique  PSNR {row['technique_psnr']:.1f}  SSIM {row['technique_ssim']:.2f}"])
    from mmseg_gate.guideline import effect, verdict
    wins = sum(r['closer'] for r in rows)
    judged = verdict(effect([r['technique_psnr'] - r['reference_psnr'] for r in rows],
                            [r['reference_seed2_psnr'] - r['reference_psnr'] for r in rows]),
                     effect([r['feature_score'] for r in rows], [r['feature_seed_difference'] for r in rows]))
    summary = {'technique': technique, 'reference': reference, 'images': len(rows), 'closer_on': wins,
               'mean_feature_score': float(np.mean([r['feature_score'] for r in rows])), **judged, 'rows': rows}
    (out / 'scores.json').write_text(json.dumps(summary, indent=2))
    with open(out / 'scores.csv', 'w', newline='') as f:
        fields = [k for k in rows[0] if k != 'feature_score_per_level']
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction='ignore')
        writer.writeheader()
        writer.writerows(rows)
    print(f"verdict: {summary['text']}; closer to the input than the reference on {wins}/{len(rows)} images")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--sd', required=True, help='local diffusers folder (or hub id) of Stable Diffusion')
    parser.add_argument('--images', nargs='+', required=True, help='image files or folders')
    parser.add_argument('--technique', required=True, help='branch dict (JSON or Python literal), may add "strength"')
    parser.add_argument('--reference', default='{}', help='reference settings: {"prompt": ..., "strength": ...}')
    parser.add_argument('--strength', type=float, default=0.75, help='Img2Img strength (high: content shift shows)')
    parser.add_argument('--num-steps', type=int, default=20)
    parser.add_argument('--guidance', type=float, default=7.5)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--size', type=int, default=512, help='images are resized to size x size')
    parser.add_argument('--timestep', type=int, default=50, help='t of the feature-level score')
    parser.add_argument('--lpips-weights', default=None, help='local LPIPS (alex) weights; adds an LPIPS column')
    parser.add_argument('--max-images', type=int, default=None)
    parser.add_argument('--out', default='work_dirs/guideline')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--dtype', choices=list(DTYPES), default=None, help='default: fp16 on GPU, fp32 on CPU')
    args = parser.parse_args()
    args.dtype = args.dtype or ('fp32' if args.device == 'cpu' else 'fp16')
    run(args)


if __name__ == '__main__':
    main()
