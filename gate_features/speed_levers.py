"""Speed levers of the frozen stack: ``torch.compile`` of the VAE encoder and ControlNets, regional compilation of
the denoiser's repeated blocks, channels_last weights and the fused SDPA backends. Each is off by default: none was
measured on a GPU yet, and each changes the floating-point order of the features a little (tested equal within
1e-4 on CPU: ``tests/test_speed_levers.py``).

Why *regional* compilation: the extraction stops after the deepest tap (a hook raises an exception), switches LoRA
adapters between calls and adds per-call hooks for mixed-adapter batches. Compiling only the repeated blocks
(diffusers' ``compile_repeated_blocks``: the transformer blocks) leaves the early exit and the block-to-block
control flow eager, compiles one block class for all its instances and once per adapter state (tested: a second
pass over GATE's three branches recompiles nothing).

Why dynamo must guard on module hooks here: torch's default (``skip_nnmodule_hook_guards=True``) assumes hooks do
not change after compilation, and the extractor registers its hooks per call (taps, the mixed-adapter batch's LoRA
hooks). Measured without the guards: a tap inside a compiled transformer block never fires. :meth:`SpeedLevers.context`
turns those guards on around the extractor's own calls only.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import nn

from .log import print_log
from .utils.memory import to_channels_last

#: ``sdpa_backends`` names -> torch's SDPA backends (``torch.nn.attention.SDPBackend``)
SDPA_BACKENDS = ('flash', 'efficient', 'cudnn', 'math')
#: how torch says that no allowed SDPA backend runs (CUDA's and CPU's wording)
_NO_SDPA_KERNEL = ('No available kernel', 'No viable backend for scaled_dot_product_attention')


def _sdpa_backend(name: str):
    from torch.nn.attention import SDPBackend
    return {'flash': SDPBackend.FLASH_ATTENTION, 'efficient': SDPBackend.EFFICIENT_ATTENTION,
            'cudnn': SDPBackend.CUDNN_ATTENTION, 'math': SDPBackend.MATH}[name]


class SpeedLevers:
    """The levers of one extractor: validated at build, applied to its frozen stack, active during its calls.

    Args:
        compile: ``True`` or a dict of ``torch.compile`` kwargs: compile the parts that always run whole and
            unchanged, the VAE encoder and the ControlNets.
        compile_denoiser: ``True`` or a dict of ``torch.compile`` kwargs (``dict(mode='max-autotune')``,
            ``dict(backend='eager')``): compile each of the denoiser's repeated blocks (regional compilation).
        channels_last: UNet families: the denoiser's and ControlNets' convolution weights in channels_last,
            so cuDNN skips its layout transposes (the VAE encoder is always channels_last).
        sdpa_backends: the fused attention kernels torch may choose from, in order of preference, e.g.
            ``('flash', 'efficient')`` (``None``: torch's own choice); a backend the device lacks is refused
            at the first call with the ones it has.
    """

    def __init__(self, compile: bool | dict = False, compile_denoiser: bool | dict = False,
                 channels_last: bool = False, sdpa_backends: Sequence[str] | None = None) -> None:
        self.static_compile_kwargs = _compile_kwargs('compile', compile)
        self.compile_kwargs = _compile_kwargs('compile_denoiser', compile_denoiser)
        self.channels_last = bool(channels_last)
        if isinstance(sdpa_backends, str):
            sdpa_backends = (sdpa_backends,)
        if sdpa_backends is not None:
            unknown = [b for b in sdpa_backends if b not in SDPA_BACKENDS]
            if unknown or not sdpa_backends:
                raise ValueError(f'sdpa_backends={sdpa_backends!r}: give one or more of {list(SDPA_BACKENDS)} '
                                 "(e.g. ('flash', 'efficient')), or None for torch's own choice")
        self.sdpa_backends = None if sdpa_backends is None else tuple(sdpa_backends)

    def check_family(self, family) -> None:
        """Refuse a lever the family's denoiser cannot use, naming the family."""
        if self.channels_last and family.denoiser != 'unet':
            raise ValueError(f"channels_last=True: the {family.name} family's denoiser is a transformer (one "
                             'patch-embedding convolution), nothing to gain; the VAE encoder runs channels_last '
                             'already. Leave channels_last off')

    def apply(self, sd) -> None:
        """Convert and compile the frozen stack ``sd`` (a :class:`~gate_features.frozen_stack.FrozenStableDiffusion`
        with its denoiser and ControlNets loaded). State-dict keys and ``.to()`` are unaffected."""
        if self.channels_last:
            for module in (sd.denoiser, *(sd.controlnets or {}).values()):
                to_channels_last(module)
        if self.static_compile_kwargs is not None:
            sd.compile_static_parts(**self.static_compile_kwargs)
        compiled = 0
        if self.compile_kwargs is not None:
            compiled = compile_repeated_blocks(sd.denoiser, sd.family.repeated_blocks, **self.compile_kwargs)
        on = self.describe()
        if on:  # the first forward pays a compilation: say why it is slow
            print_log(f'speed levers on: {on}' + (f' ({compiled} denoiser blocks compiled)' if compiled else ''),
                      'current')

    @contextlib.contextmanager
    def context(self, device: torch.device) -> Iterator[None]:
        """Around the extractor's calls: the chosen SDPA backends, and dynamo guarding on hooks (module doc)."""
        with contextlib.ExitStack() as stack:
            if self.compile_kwargs is not None:
                stack.enter_context(torch._dynamo.config.patch(skip_nnmodule_hook_guards=False))
            if self.sdpa_backends is not None:
                from torch.nn.attention import sdpa_kernel
                stack.enter_context(sdpa_kernel([_sdpa_backend(b) for b in self.sdpa_backends],
                                                set_priority=True))
            try:
                yield
            except RuntimeError as e:
                if self.sdpa_backends is None or not any(m in str(e) for m in _NO_SDPA_KERNEL):
                    raise
                raise RuntimeError(f'sdpa_backends={list(self.sdpa_backends)}: none of them runs on this {device} '
                                   f'for these inputs ({available_sdpa_backends(device)} can run there); add '
                                   "'math' as the last resort, or leave sdpa_backends=None") from e

    def describe(self) -> dict:
        """The levers that are on (logs, reports)."""
        out = dict(compile=self.static_compile_kwargs, compile_denoiser=self.compile_kwargs,
                   channels_last=self.channels_last or None,
                   sdpa_backends=self.sdpa_backends and list(self.sdpa_backends))
        return {k: v for k, v in out.items() if v is not None}


def _compile_kwargs(key: str, value) -> dict | None:
    """``True`` / a kwargs dict -> the ``torch.compile`` kwargs; off -> None."""
    if not isinstance(value, (bool, dict)):
        raise ValueError(f"{key}={value!r}: give True, False or a dict of torch.compile kwargs, e.g. "
                         "dict(mode='max-autotune')")
    return (value if isinstance(value, dict) else {}) if value else None


def compile_repeated_blocks(denoiser: nn.Module, family_blocks: Sequence[str] = (), **compile_kwargs) -> int:
    """diffusers' regional compilation (``ModelMixin.compile_repeated_blocks``) of the denoiser's repeated blocks:
    those its class names (``_repeated_blocks``), else ``family_blocks`` (SD3's and PixArt's classes name none in
    diffusers 0.42). Returns how many blocks were compiled."""
    blocks = list(getattr(denoiser, '_repeated_blocks', None) or family_blocks)
    if not blocks:
        raise ValueError(f'compile_denoiser: {type(denoiser).__name__} names no repeated blocks (_repeated_blocks) '
                         'and its family lists none: leave compile_denoiser off')
    if list(getattr(denoiser, '_repeated_blocks', None) or ()) != blocks:
        denoiser._repeated_blocks = blocks  # the instance only: diffusers' method reads it from self
    denoiser.compile_repeated_blocks(**compile_kwargs)
    return sum(type(m).__name__ in blocks for m in denoiser.modules())


def available_sdpa_backends(device: torch.device) -> list[str]:
    """The SDPA backends that run a small float attention on ``device`` (for error messages)."""
    from torch.nn.attention import sdpa_kernel
    q = torch.zeros(1, 1, 8, 64, device=device)
    ok = []
    for name in SDPA_BACKENDS:
        try:
            with sdpa_kernel([_sdpa_backend(name)]):
                torch.nn.functional.scaled_dot_product_attention(q, q, q)
            ok.append(name)
        except RuntimeError:
            pass
    return ok


__all__ = ['SDPA_BACKENDS', 'SpeedLevers', 'available_sdpa_backends', 'compile_repeated_blocks']
