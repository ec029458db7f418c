from .amalgamation import Amalgamation
from .backbone import GATE_TAPS, GATEDiffusionBackbone
from .conditions import CONDITIONS, canny
from .segmentor import CaptionEncoderDecoder

__all__ = ['Amalgamation', 'GATEDiffusionBackbone', 'GATE_TAPS', 'CONDITIONS', 'canny', 'CaptionEncoderDecoder']
