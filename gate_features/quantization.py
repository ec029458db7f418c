"""Quantized frozen denoisers: diffusers' quantization configs, named in a backbone config.

A frozen 12 B-parameter FLUX transformer fills a 24 GB card in bf16 (23.8 GB); in 8 bits it takes about
half and in 4 bits about a quarter, which leaves room for three branches' activations and the heads.
diffusers quantizes at ``from_pretrained(..., quantization_config=...)``; this module turns a config's
``quantization=dict(type='TorchAoConfig', quant_type='Int8WeightOnlyConfig')`` into that object and says which package a
backend needs. bitsandbytes needs a GPU; torchao's weight-only types also run on CPU.
"""
from __future__ import annotations

import importlib.util

import torch

#: diffusers config class -> (import name, pip name) of its backend
BACKENDS = {'BitsAndBytesConfig': ('bitsandbytes', 'bitsandbytes'), 'TorchAoConfig': ('torchao', 'torchao'),
            'QuantoConfig': ('optimum.quanto', 'optimum-quanto')}
_DTYPE_KEYS = ('bnb_4bit_compute_dtype', 'compute_dtype')


def quantization_config(cfg):
    """``None``; a diffusers quantization config (returned as is); or ``dict(type=<class name>, **kwargs)``,
    e.g. ``dict(type='BitsAndBytesConfig', load_in_4bit=True, bnb_4bit_quant_type='nf4',
    bnb_4bit_compute_dtype='bfloat16')`` or ``dict(type='TorchAoConfig', quant_type='Int8WeightOnlyConfig')``
    (a torchao config class by name, its kwargs in ``quant_type_kwargs``)."""
    if cfg is None or hasattr(cfg, 'quant_method'):  # diffusers' configs all have one
        return cfg
    if not isinstance(cfg, dict):
        raise TypeError(f"quantization={cfg!r}: give a config dict, e.g. dict(type='TorchAoConfig', "
                        "quant_type='Int8WeightOnlyConfig') (int8 weights, CPU too) or dict(type='BitsAndBytesConfig', "
                        f"load_in_4bit=True) (GPU), with type one of {sorted(BACKENDS)}; or a diffusers quantization "
                        'config object; or leave it out')
    cfg = dict(cfg)
    kind = cfg.pop('type', None)
    if kind not in BACKENDS:
        raise ValueError(f'quantization type={kind!r}: use one of {sorted(BACKENDS)} (diffusers\' quantization '
                         'configs; its other kwargs are that class\'s)')
    module, package = BACKENDS[kind]
    if importlib.util.find_spec(module.split('.')[0]) is None:
        raise ImportError(f'quantization type={kind!r} needs the {package!r} package: `pip install {package}` into '
                          'this environment (it is not part of the locked stack; torchao is, in the dev extra)')
    for key in _DTYPE_KEYS:
        if isinstance(cfg.get(key), str):
            cfg[key] = getattr(torch, cfg[key])
    if kind == 'TorchAoConfig' and isinstance(cfg.get('quant_type'), str):
        cfg['quant_type'] = _torchao_config(cfg['quant_type'], cfg.pop('quant_type_kwargs', {}))
    import diffusers
    return getattr(diffusers, kind)(**cfg)


def _torchao_config(name: str, kwargs: dict):
    """``'Int8WeightOnlyConfig'`` -> ``torchao.quantization.Int8WeightOnlyConfig(**kwargs)`` (diffusers 0.42 takes
    torchao's config objects, not the old string names)."""
    import torchao.quantization as tq
    cls = getattr(tq, name, None)
    if cls is None or not name.endswith('Config'):
        known = sorted(n for n in dir(tq) if n.endswith('Config') and not n.startswith('_'))
        raise ValueError(f"quantization quant_type={name!r} is no torchao config class: use one of {known} "
                         "(e.g. 'Int8WeightOnlyConfig'; GPU: 'Float8WeightOnlyConfig', 'Int4WeightOnlyConfig')")
    return cls(**kwargs)


def describe(config) -> str | None:
    """What checkpoints record of a quantization config."""
    if config is None:
        return None
    method = getattr(config, 'quant_method', None)
    detail = getattr(config, 'quant_type', None) or getattr(config, 'weights_dtype', None)
    detail = detail if detail is None or isinstance(detail, str) else type(detail).__name__
    if getattr(config, 'load_in_4bit', False):
        detail = f"4bit-{getattr(config, 'bnb_4bit_quant_type', '')}"
    elif getattr(config, 'load_in_8bit', False):
        detail = '8bit'
    return f'{getattr(method, "value", method)}:{detail}'


__all__ = ['BACKENDS', 'quantization_config', 'describe']
