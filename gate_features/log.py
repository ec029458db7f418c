"""Log lines of the extractor: through mmengine's logger when mmengine is loaded (runs of the mmseg tools, where
the lines belong in the run's log), else through :mod:`logging` (``gate_features``), so this layer imports no
mmengine."""
from __future__ import annotations

import logging
import sys

_logger = logging.getLogger('gate_features')


def print_log(msg: str, logger: str | None = 'current', level: int = logging.INFO) -> None:
    """``mmengine.logging.print_log(msg, logger, level)`` when mmengine is imported, else ``logging``."""
    mmengine_logging = sys.modules.get('mmengine.logging')
    if mmengine_logging is not None:
        mmengine_logging.print_log(msg, logger, level=level)
    else:
        _logger.log(level, msg)
