"""mmseg-gate: Stable Diffusion features for MMSegmentation, with GATE's content-shift suppression.

Importing the package registers :class:`GATEDiffusionBackbone`, the LoRA trainer (and friends) in mmseg's registries,
so configs only need ``custom_imports = dict(imports=['mmseg_gate'])``.
"""
import logging

# diffusers imports torchao (the dev/quant extra: quantization=) whenever it is installed; its import reports
# CUDA kernels it cannot load and deprecated pytree registrations, on every run and harmless: keep them out of
# the logs (errors still show)
for _name in ('torchao', 'torch.utils._pytree', 'diffusers.quantizers.torchao.torchao_quantizer'):
    logging.getLogger(_name).setLevel(logging.ERROR)

from . import cache  # noqa: F401,E402  (feature caches: registers LoadCachedFeatures, PackCachedSegInputs)
from .checkpoint_compat import allow_mmengine_checkpoints
from .datasets import LoadCaption
from .engine import GATECheckHook, check_head_channels
from .lora.training import SaveLoRAHook, StableDiffusionLoRA
from .models import GATE_TAPS, GATEDiffusionBackbone
from .version import __version__

allow_mmengine_checkpoints()

__all__ = ['GATEDiffusionBackbone', 'GATE_TAPS', 'GATECheckHook', 'check_head_channels', 'StableDiffusionLoRA',
           'SaveLoRAHook', '__version__']
