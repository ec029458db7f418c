"""Fine-tuned Stable Diffusion -> LoRA file: truncated SVD of each layer's weight difference.

Why: GATE's authors published their LoRA branches only merged into full SD checkpoints, while the
backbone keeps one UNet and switches adapters. The difference of a merged LoCon and its base is, per
layer, of the adapter's rank, so a truncated SVD at that rank gives the adapter back (up to float
error); a fully fine-tuned model gives its best low-rank approximation, with the error reported.

Linear and 1x1-conv weights are decomposed at ``rank``; kxk convolutions as LoCon does: the weight
reshaped to ``[out, in * k * k]``, decomposed at ``conv_rank``, the down factor a kxk convolution (with
the layer's stride and padding) and the up factor a 1x1 convolution.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

PICKLE_SUFFIXES = ('.ckpt', '.pt', '.pth', '.bin')


@dataclass
class LayerReport:
    model: str   # 'unet' | 'transformer' | 'text_encoder' | 'text_encoder_2'
    name: str
    kind: str    # 'linear' | 'conv1x1' | 'conv3x3' ...
    rank: int
    delta_norm: float
    error: float  # relative Frobenius error of the reconstruction


def _check_exists(path: str, what: str) -> Path:
    p = Path(os.path.expanduser(str(path)))
    if not p.exists():
        raise FileNotFoundError(f'{what} {str(path)!r} not found: give a diffusers folder'
                                + (' or a single-file checkpoint (.safetensors; .ckpt with --allow-pickle)'
                                   if what == '--tuned' else ''))
    return p


def load_models(path: str, base: str, what: str, allow_pickle: bool = False,
                text_encoder: bool = True) -> dict[str, nn.Module]:
    """The denoiser (and the text encoders LoRA files carry) of a diffusers folder or of a single-file
    checkpoint, for ``base``'s model family (SD1/2, SDXL's UNet; SD3's transformer and two CLIPs).

    Single files go through diffusers' own single-file loading, with ``base`` as the config source
    (no download); pickled checkpoints (``.ckpt``/``.pt``) only when ``allow_pickle``.
    """
    from diffusers import AutoencoderKL
    from gate_features.families import detect_family
    family = detect_family(base)
    p = _check_exists(path, what)
    if p.is_dir():
        if not (p / family.denoiser).is_dir():
            raise FileNotFoundError(f'{what} {str(path)!r} is not a diffusers folder (no {family.denoiser}/ inside)')
        models = {family.denoiser: family.denoiser_model_class().from_pretrained(str(p), subfolder=family.denoiser)}
        if text_encoder:
            for attribute in family.lora_text_encoders:
                models[attribute] = family.text_encoder_class(attribute).from_pretrained(str(p), subfolder=attribute)
        return models
    if family.name != 'sd':
        raise ValueError(f'{what} {str(path)!r}: single-file checkpoints are read for SD1.x/2.x bases; for '
                         f'{family.name}, give the fine-tuned model as a diffusers folder')
    from diffusers import StableDiffusionPipeline
    if p.suffix in PICKLE_SUFFIXES and not allow_pickle:
        raise ValueError(f'{what} {str(path)!r} is a pickle ({p.suffix}): loading it can run arbitrary code. '
                         'Convert it to .safetensors, or pass --allow-pickle if you trust its source.')
    if p.suffix not in PICKLE_SUFFIXES + ('.safetensors',):
        raise ValueError(f'{what} {str(path)!r}: expected a diffusers folder, .safetensors or .ckpt file')
    # the VAE is not needed: hand the base's in, so the file's VAE weights are not converted
    vae = AutoencoderKL.from_pretrained(base, subfolder='vae')
    with tempfile.TemporaryDirectory() as tmp:
        if p.suffix in PICKLE_SUFFIXES:  # opted in: unpickle (also Lightning extras), hand diffusers the tensors
            p = _pickle_to_safetensors(p, Path(tmp) / (p.stem + '.safetensors'))
        pipe = StableDiffusionPipeline.from_single_file(str(p), config=base, vae=vae, safety_checker=None,
                                                        local_files_only=True)
    models = {'unet': pipe.unet}
    if text_encoder:
        models['text_encoder'] = pipe.text_encoder
    return models


def _pickle_to_safetensors(path: Path, out: Path) -> Path:
    """The tensors of a pickled SD checkpoint (``state_dict`` of a Lightning file, or the file itself)."""
    from safetensors.torch import save_file
    ckpt = torch.load(path, map_location='cpu', weights_only=False)  # the caller passed --allow-pickle
    state = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else ckpt
    save_file({k: v.contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}, str(out))
    return out


def _layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}


def _low_rank(mat: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``up @ down`` ~= ``mat`` with ``rank`` columns/rows; exact when ``mat``'s rank is <= ``rank``."""
    m, n = mat.shape
    if min(m, n) <= 2 * rank + 20:
        u, s, vh = torch.linalg.svd(mat, full_matrices=False)
    else:  # randomised range finder: exact for rank <= q, far faster than a full SVD of SD's big layers
        u, s, v = torch.svd_lowrank(mat, q=rank + 10, niter=4)
        vh = v.T
    root = s[:rank].sqrt()
    return u[:, :rank] * root, root[:, None] * vh[:rank]


def _first_difference(base: dict, tuned: dict, model: str) -> str | None:
    for name in base:
        if name not in tuned:
            return f'{model} layer {name!r} is missing from --tuned'
        wb, wt = base[name].weight, tuned[name].weight
        if wb.shape != wt.shape:
            return f'{model} layer {name!r}: --base has shape {tuple(wb.shape)}, --tuned {tuple(wt.shape)}'
    extra = [n for n in tuned if n not in base]
    return f'{model} layer {extra[0]!r} of --tuned is missing from --base' if extra else None


@torch.no_grad()
def extract_lora(base: dict[str, nn.Module], tuned: dict[str, nn.Module], rank: int = 64, conv_rank: int = 32,
                 device: str | torch.device = 'cpu', progress: bool = True
                 ) -> tuple[dict[str, dict], list[LayerReport]]:
    """Per model ``{module name: (down, up, alpha)}`` for every layer whose weight differs, and a report.

    Alpha equals the rank (scale 1): the factors carry the whole difference, so the file means the
    same to any loader.
    """
    from tqdm import tqdm
    if rank < 1 or conv_rank < 1:
        raise ValueError(f'ranks must be >= 1 (rank={rank}, conv_rank={conv_rank})')
    layers: dict[str, dict] = {}
    reports: list[LayerReport] = []
    work = []
    for model in tuned:
        b, t = _layers(base[model]), _layers(tuned[model])
        problem = _first_difference(b, t, model)
        if problem:
            raise ValueError(f'--base and --tuned are different architectures: {problem}. Use the base model '
                             'the fine-tuned one was made from.')
        work += [(model, name, b[name], t[name]) for name in b]
        layers[model] = {}
    for model, name, mb, mt in tqdm(work, desc='layers', unit='layer', disable=not progress):
        wb, wt = mb.weight, mt.weight
        low = wb.dtype if wb.element_size() <= wt.element_size() else wt.dtype
        if torch.equal(wb.to(low), wt.to(low)):  # unchanged (also when one side was saved in half precision)
            continue
        delta = wt.to(device, torch.float32) - wb.to(device, torch.float32)
        conv = isinstance(mb, nn.Conv2d)
        spatial = conv and tuple(mb.kernel_size) != (1, 1)
        r = min(conv_rank if spatial else rank, delta.shape[0], delta[0].numel())
        mat = delta.reshape(delta.shape[0], -1)
        up, down = _low_rank(mat, r)
        err = (torch.linalg.matrix_norm(mat - up @ down) / torch.linalg.matrix_norm(mat)).item()
        if conv:
            down = down.reshape(r, *delta.shape[1:])
            up = up.reshape(delta.shape[0], r, 1, 1)
        kind = ('conv' + 'x'.join(map(str, mb.kernel_size))) if conv else 'linear'
        layers[model][name] = (down.cpu().contiguous(), up.cpu().contiguous(), float(r))
        reports.append(LayerReport(model, name, kind, r, torch.linalg.matrix_norm(mat).item(), err))
    if not reports:
        raise ValueError('--base and --tuned have identical weights in every linear and conv layer: nothing to '
                         'extract (is --tuned really the fine-tuned model?)')
    return layers, reports


def relative_error(reports: Iterable[LayerReport]) -> float:
    """Relative Frobenius error over all ``reports``' layers together: ||sum of errors|| / ||differences||."""
    reports = list(reports)
    den = sum(r.delta_norm ** 2 for r in reports)
    return (sum((r.error * r.delta_norm) ** 2 for r in reports) / den) ** 0.5 if den else 0.0


def summarize(reports: Iterable[LayerReport]) -> list[str]:
    """Lines of the error summary: per model and layer kind, then the total."""
    groups: dict[tuple, list[LayerReport]] = {}
    reports = list(reports)
    for r in reports:
        groups.setdefault((r.model, r.kind, r.rank), []).append(r)
    groups[('total', '', 0)] = reports
    lines = []
    for (model, kind, rank), rs in groups.items():
        label = 'total' if model == 'total' else f'{model} {kind} (rank {rank})'
        lines.append(f'{label:<40} {len(rs):5d} layers  relative error {relative_error(rs):.3e}  '
                     f'(worst layer {max(r.error for r in rs):.3e})')
    return lines


__all__ = ['LayerReport', 'load_models', 'extract_lora', 'relative_error', 'summarize', 'PICKLE_SUFFIXES']
