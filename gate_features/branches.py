"""What a branch is (prompt, LoRA adapters, ControlNets) and how its adapters are loaded.

A branch never owns weights: LoRA files become named peft adapters on the one shared denoiser (and
text encoder, for the files that carry text-encoder layers), and ControlNets are loaded once per
path by the backbone.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .log import print_log
from torch import nn

from .lora_files import DENOISER_KINDS, lora_file_keys, lora_key_kinds
from .utils.files import file_sha256
from .conditions import CONDITIONS
from .families import FAMILIES, DenoiserFamily


@dataclass(frozen=True)
class LoraSpec:
    path: str
    scale: float = 1.0


@dataclass(frozen=True)
class ControlNetSpec:
    path: str
    condition: str = 'canny'
    scale: float = 1.0
    condition_cfg: tuple = ()  # sorted (key, value) pairs, hashable so identical conditions are shared
    mode: int | None = None  # a union ControlNet's control type (FLUX InstantX union: canny 0)

    @property
    def condition_key(self) -> tuple:
        return (self.condition, self.condition_cfg)


@dataclass(frozen=True)
class BranchSpec:
    name: str
    prompt: str
    loras: tuple[LoraSpec, ...] = ()
    controlnets: tuple[ControlNetSpec, ...] = ()
    own_prompt: bool = False  # True: its own prompt, not replaced by per-image prompts
    timestep: int | None = None  # its own timestep (None: the backbone's)
    denoising_from: int | None = None  # img2img steps from here down to its timestep (None: the backbone's)
    ip_adapters: tuple = ()  # per IP-Adapter its sorted (key, value) pairs: path, image_encoder, scale

    @property
    def adapter_key(self) -> tuple:
        return tuple((lora.path, lora.scale) for lora in self.loras)


def _take(cfg: dict, allowed: Sequence[str], what: str) -> dict:
    unknown = set(cfg) - set(allowed)
    if unknown:
        raise ValueError(f'{what}: unknown keys {sorted(unknown)}; allowed keys are {list(allowed)}')
    return cfg


def parse_branches(branches: Sequence[dict], default_prompt: str) -> list[BranchSpec]:
    """Validate the ``branches`` config list and turn it into :class:`BranchSpec` objects."""
    if not branches:
        raise ValueError('branches is empty: give at least one, e.g. branches=[dict(name="basic")]')
    specs, seen = [], set()
    for i, cfg in enumerate(branches):
        cfg = dict(cfg)
        name = cfg.get('name', f'branch{i}')
        _take(cfg, ('name', 'prompt', 'loras', 'controlnets', 'timestep', 'denoising_from', 'ip_adapters'),
              f'branch {name!r}')
        if name in seen:
            raise ValueError(f'duplicate branch name {name!r}: branch names must be unique')
        seen.add(name)
        loras = []
        for lora in cfg.get('loras', ()):
            lora = _take(dict(lora), ('path', 'scale'), f'branch {name!r} lora')
            if 'path' not in lora:
                raise ValueError(f'branch {name!r}: every lora needs a path, got {lora}')
            loras.append(LoraSpec(str(lora['path']), float(lora.get('scale', 1.0))))
        nets = []
        for net in cfg.get('controlnets', ()):
            net = _take(dict(net), ('path', 'condition', 'scale', 'condition_cfg', 'mode'),
                        f'branch {name!r} controlnet')
            if 'path' not in net:
                raise ValueError(f'branch {name!r}: every controlnet needs a path, got {net}')
            condition = net.get('condition', 'canny')
            if condition not in CONDITIONS:
                raise ValueError(f'branch {name!r}: unknown condition type {condition!r}; use one of '
                                 f'{sorted(CONDITIONS)}')
            mode = net.get('mode')
            if mode is not None and (isinstance(mode, bool) or not isinstance(mode, int)):
                raise TypeError(f'branch {name!r} controlnet mode={mode!r}: give the union ControlNet\'s control '
                                'type as its index (an int; FLUX InstantX union: canny 0, tile 1, depth 2, blur 3, '
                                'pose 4, gray 5, low quality 6)')
            nets.append(ControlNetSpec(str(net['path']), condition, float(net.get('scale', 1.0)),
                                       tuple(sorted(dict(net.get('condition_cfg', {})).items())), mode))
        prompt = cfg.get('prompt')
        timestep, start = cfg.get('timestep'), cfg.get('denoising_from')
        specs.append(BranchSpec(name, default_prompt if prompt is None else prompt, tuple(loras), tuple(nets),
                                own_prompt=prompt is not None, timestep=None if timestep is None else int(timestep),
                                denoising_from=None if start is None else int(start),
                                ip_adapters=tuple(_ip_adapter(name, a) for a in cfg.get('ip_adapters', ()))))
    return specs


def _ip_adapter(branch: str, cfg: dict) -> tuple:
    cfg = _take(dict(cfg), ('path', 'image_encoder', 'scale'), f'branch {branch!r} ip_adapter')
    if 'path' not in cfg or 'image_encoder' not in cfg:
        raise ValueError(f'branch {branch!r}: every ip_adapter needs a path and an image_encoder, got {cfg}')
    return tuple(sorted(dict(cfg, scale=float(cfg.get('scale', 1.0))).items()))


def load_lora_adapter(model: nn.Module, path: str, adapter_name: str, target: str,
                      family: DenoiserFamily = FAMILIES['sd'], unet_config=None) -> bool:
    """Load the ``target`` (the family's denoiser, 'unet' or 'transformer', or a text encoder) layers of
    one LoRA file as a named adapter, with the LoRA loaders of the family's diffusers pipeline.

    Reads diffusers, peft, kohya and LyCORIS LoCon files (``unet_config``: maps SDXL files in the
    original SGM block names). Returns whether the file has layers for ``target``; raises if the file
    is missing, holds no Stable Diffusion LoRA layers at all, or names layers ``model`` does not have
    (a LoRA for another base model).
    """
    pipeline = _lora_pipeline(family, path)
    targets = (family.denoiser, *family.lora_text_encoders)
    if target in family.text_encoders and target not in targets:
        return False  # the family's LoRA files never carry this encoder (SD3's T5)
    if target not in targets:
        raise ValueError(f'target={target!r}: use one of {targets}')
    state_dict, alphas, metadata = family.read_lora(_lora_file(path), unet_config)
    down = {p: {k for k in state_dict if k.startswith(p + '.') and ('lora_A' in k or '.down.' in k)}
            for p in targets}
    if not any(down.values()):
        raise ValueError(f'LoRA file {path!r} has no {family.pipeline_class} {family.denoiser} or text-encoder layers '
                         f'(first keys: {list(state_dict)[:3]}); is it a LoRA for this model?')
    if not down[target]:
        return False
    try:
        with _quiet_loaders():
            if target == 'unet':
                pipeline.load_lora_into_unet(state_dict, alphas, model, adapter_name=adapter_name, metadata=metadata)
            elif target == 'transformer':
                family.load_transformer_lora(state_dict, alphas, model, adapter_name, metadata)
            else:
                pipeline.load_lora_into_text_encoder(state_dict, alphas, model, prefix=target,
                                                     adapter_name=adapter_name, metadata=metadata)
    except Exception as err:  # peft/diffusers raise many types; say which file and model
        raise ValueError(f'LoRA file {path!r} does not match this {family.name} {target} '
                         f'({type(err).__name__}: {str(err)[:500]}). Use a LoRA trained for the same base model.'
                         ) from err
    loaded = sum(1 for m in model.modules() if adapter_name in getattr(m, 'lora_A', {}))
    if loaded != len(down[target]):
        raise ValueError(f'LoRA file {path!r}: only {loaded} of its {len(down[target])} {target} layers match '
                         'this model; the file was made for another base model')
    return True


def _lora_pipeline(family: DenoiserFamily, path: str):
    """The family's pipeline class with LoRA loaders; fails for families diffusers has none for."""
    pipeline = family.lora_pipeline()
    if not hasattr(pipeline, 'lora_state_dict'):
        raise ValueError(f'LoRA {path!r}: diffusers has no LoRA loader for the {family.name} family '
                         f'({pipeline.__name__}, {family.denoiser_class}): remove the branch\'s loras')
    return pipeline


def _lora_file(path: str) -> str:
    """``path`` with ``~`` expanded; fails when no such file exists."""
    if not Path(os.path.expanduser(path)).is_file():
        raise FileNotFoundError(f'LoRA file {path!r} not found: check the path in the branch config '
                                '(e.g. --cfg-options lora_a=...)')
    return os.path.expanduser(path)


def _some(keys: list[str]) -> str:
    """``'24 tensors (e.g. 'transformer.transformer_blocks.0.attn.to_k.lora_A.weight')'``: a weight, not an alpha."""
    return f"{len(keys)} tensors (e.g. {next((k for k in keys if not k.endswith('alpha')), keys[0])!r})"


def check_lora_family(path: str, family: DenoiserFamily) -> None:
    """Refuse a LoRA file whose denoiser keys are all another family's, before any of its layers load (its
    text-encoder layers would apply and its denoiser layers be dropped without a word); warn when only part
    of its tensors are for this model, with how many are not (they are ignored)."""
    _lora_pipeline(family, path)
    kinds = lora_key_kinds(lora_file_keys(_lora_file(path)))
    own = [k for kind in family.lora_kinds for k in kinds.get(kind, ())]
    foreign = {kind: keys for kind, keys in kinds.items() if kind in DENOISER_KINDS and kind not in family.lora_kinds}
    takes = DENOISER_KINDS[family.lora_kinds[0]]
    if foreign and not own:
        raise ValueError(f'LoRA file {path!r} is a LoRA for another family: '
                         + '; '.join(f'{_some(keys)} for {DENOISER_KINDS[kind]}' for kind, keys in foreign.items())
                         + f', none for this {family.name} {family.denoiser}, which takes LoRAs for {takes}: use a '
                         'LoRA trained for this base model')
    used = (*family.lora_kinds, *family.lora_text_encoders)
    matched = len(own) + sum(len(kinds.get(t, ())) for t in family.lora_text_encoders)
    ignored = {kind: keys for kind, keys in kinds.items() if kind not in used}
    if matched and ignored:
        print_log(f'LoRA file {path!r}: {matched} of its {matched + sum(map(len, ignored.values()))} tensors are for '
                  f'this {family.name} model ({", ".join(used)}); not matched, ignored: '
                  + '; '.join(f'{_some(keys)} for ' + (DENOISER_KINDS.get(kind, kind) if kind else 'unknown layers')
                              for kind, keys in ignored.items()), 'current', level=logging.WARNING)


class AdapterRegistry:
    """Every distinct LoRA file of the branches once, as a named peft adapter of each model it has
    layers for (UNet, text encoders), and per branch the adapters to switch on."""

    def __init__(self, specs: Sequence[BranchSpec], family: DenoiserFamily) -> None:
        self.specs, self.family = specs, family
        self.names: dict[str, str] = {}                  # LoRA path -> adapter name
        self.targets: dict[str, dict[str, bool]] = {}    # adapter name -> {target: has layers}
        self.sha256: dict[str, str] = {}                 # LoRA path -> what was loaded (checkpoint meta)

    def load(self, model: nn.Module, target: str, unet_config=None) -> None:
        """Load the branches' LoRA files into ``model`` (the ``target`` of the SD stack)."""
        for spec in self.specs:
            for lora in spec.loras:
                if lora.path not in self.names:  # first sight: before any of its layers load
                    check_lora_family(lora.path, self.family)
                name = adapter_name_for(lora.path, self.names)
                targets = self.targets.setdefault(name, {})
                if target not in targets:  # the file is read once per target: the text-encoder passes
                    # run before the UNet is loaded, and holding the parsed files in between costs memory
                    targets[target] = load_lora_adapter(model, lora.path, name, target, self.family, unet_config)
                    found = f'adapter {name!r}' if targets[target] else f'no {target} layers (nothing loaded there)'
                    print_log(f'LoRA {lora.path} -> {target}: {found}', 'current')
                if lora.path not in self.sha256:
                    self.sha256[lora.path] = file_sha256(lora.path)

    def of(self, spec: BranchSpec, target: str) -> tuple[list[str], list[float]]:
        """The branch's adapter names and scales that have layers in ``target``."""
        names, scales = [], []
        for lora in spec.loras:
            name = self.names[lora.path]
            if self.targets[name].get(target):
                names.append(name)
                scales.append(lora.scale)
        return names, scales

    def uses(self, target: str) -> bool:
        """Whether any adapter has layers in ``target``."""
        return any(t.get(target) for t in self.targets.values())


@contextlib.contextmanager
def _quiet_loaders():
    """Silence diffusers/transformers reports that are spurious here ("missing keys" of the *other*
    adapters, base weights "MISSING" from an adapter-only file): loading is verified right after."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog
    levels = dlog.get_verbosity(), tlog.get_verbosity()
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    try:
        yield
    finally:
        dlog.set_verbosity(levels[0])
        tlog.set_verbosity(levels[1])


def adapter_name_for(path: str, taken: dict[str, str]) -> str:
    """A readable, unique peft adapter name for a LoRA file (file stem, de-duplicated)."""
    if path in taken:
        return taken[path]
    stem = ''.join(c if c.isalnum() else '_' for c in Path(path).stem) or 'lora'
    name, k = stem, 1
    while name in taken.values():
        k += 1
        name = f'{stem}_{k}'
    taken[path] = name
    return name


__all__ = ['LoraSpec', 'ControlNetSpec', 'BranchSpec', 'parse_branches', 'load_lora_adapter', 'check_lora_family',
           'AdapterRegistry', 'adapter_name_for']
