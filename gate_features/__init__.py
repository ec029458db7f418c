"""gate_features: frozen diffusion models as feature extractors, with GATE's content-shift suppression.

The diffusers-side layer of mmseg-gate (DESIGN.md, "two layers"): model families, the frozen stack (load once,
encode once, early exit), branches (prompts, LoRAs, ControlNets, IP-Adapters), noise, taps. It imports no mmseg,
mmengine or mmcv; :mod:`mmseg_gate` is the mmseg layer over it (backbone, amalgamation, heads, segmentors).

    from gate_features import GATEFeatures, levels
    extractor = GATEFeatures.from_pretrained('checkpoints/stable-diffusion-v1-5', prompt='a photo', timestep=51)
    feats = extractor(images)  # images [B, 3, H, W] in [-1, 1] -> {branch: {tap: [B, C, H/s, W/s]}}
    by_level = levels(extractor, feats)  # [level][branch], as the mmseg backbone amalgamates them
"""
import importlib

_PUBLIC = {'GATEFeatures': 'extractor', 'GATE_TAPS': 'extractor', 'list_taps': 'extractor', 'levels': 'extractor',
           'FrozenStableDiffusion': 'frozen_stack', 'detect_family': 'families', 'FAMILIES': 'families'}
__all__ = sorted(_PUBLIC)


def __getattr__(name):  # the public names load on first use: ``import gate_features`` alone stays cheap
    if name in _PUBLIC:
        return getattr(importlib.import_module(f'.{_PUBLIC[name]}', __name__), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
