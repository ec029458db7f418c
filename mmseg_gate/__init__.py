"""mmseg-gate: Stable Diffusion features for MMSegmentation, with GATE's content-shift suppression.

Importing the package registers :class:`GATEDiffusionBackbone`, the LoRA trainer (and friends) in mmseg's registries,
so configs only need ``custom_imports = dict(imports=['mmseg_gate'])``.
"""
# first of all: drop the diffusion stack's known harmless import messages (torchao kernels, pytree
# deprecations, peft's "Already found a peft_config"), message by message, before anything imports them
from .utils.quiet import quiet_import_noise

quiet_import_noise()

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
