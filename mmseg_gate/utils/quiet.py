"""Known harmless messages of the diffusion stack, dropped one by one so that every other warning and error
still shows.

``import transformers`` (mmengine's optimizer registry imports it, so ``import mmseg.apis`` does too) imports
torchao when it is installed (the dev/quant extra), which logs kernels built for other Pythons and GPUs and
deprecated pytree registrations, on every run; transformers then tells on first use that torchvision is
absent; peft warns at every second LoRA adapter that a model may hold several (this package's design).
Standard library only: ``mmseg_gate/__init__`` applies it before anything else imports, and the doctor
(``tools/collect_env.py``) loads this file by path where the package itself may not import.
"""
from __future__ import annotations

import logging
import os
import re
import warnings

#: logger name -> patterns of its messages to drop, each with the reason it is harmless
DROPPED: dict[str, tuple[str, ...]] = {
    # torchao's optional C++/CUDA kernels (a cpython-310 build, sm90a); the pure-Python paths the
    # quantization= option uses run without them
    'torchao': (r'^Failed to load .*_C\w*\.\S*so\b',),
    # torchao registers Enum classes with torch's pytree: a deprecation of torch's, nothing to do here
    'torch.utils._pytree': (r'is an Enum subclass and is now natively supported',),
    # diffusers 0.42 looks for torchao 0.18's moved tensor classes to unpickle torchao-serialized checkpoints;
    # the quantization= option quantizes at load and never unpickles one
    'diffusers.quantizers.torchao.torchao_quantizer': (r'^Unable to import `torchao` Tensor objects',),
    # diffusers' IP-Adapter imports name CLIPImageProcessor; the PIL one transformers falls back to is the same
    'transformers.utils.import_utils': (r'requires torchvision \(not installed\); falling back to',),
}
#: warnings (message pattern, module of origin): several named adapters on one model are the design
IGNORED_WARNINGS = ((r'Already found a `peft_config` attribute in the model', r'peft\.tuners\.tuners_utils'),)


class DropMessages(logging.Filter):
    """Drop the records whose message matches one of ``patterns``; let every other one through."""

    def __init__(self, patterns: tuple[str, ...]) -> None:
        super().__init__()
        self.patterns = [re.compile(p) for p in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 (a record that cannot format is not ours to judge)
            return True
        return not any(p.search(message) for p in self.patterns)


def quiet_import_noise() -> None:
    """Install the filters of :data:`DROPPED` and :data:`IGNORED_WARNINGS` (idempotent)."""
    os.environ.setdefault('NO_ALBUMENTATIONS_UPDATE', '1')  # albumentations asks PyPI for updates at import
    for name, patterns in DROPPED.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMessages) for f in logger.filters):
            logger.addFilter(DropMessages(patterns))
    for message, module in IGNORED_WARNINGS:
        warnings.filterwarnings('ignore', message=message, module=module)


__all__ = ['DROPPED', 'IGNORED_WARNINGS', 'DropMessages', 'quiet_import_noise']
