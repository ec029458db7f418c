from .amalgamation import Amalgamation
from .backbone import GATE_TAPS, GATEDiffusionBackbone
from .conditions import CONDITIONS, canny

__all__ = ['Amalgamation', 'GATEDiffusionBackbone', 'GATE_TAPS', 'CONDITIONS', 'canny']
