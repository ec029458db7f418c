from gate_features.conditions import CONDITIONS, canny
from gate_features.pyramid import SDXL_VPD_TAPS, VPD_TAPS, VPDPyramid

from .amalgamation import Amalgamation
from .backbone import GATE_TAPS, GATEDiffusionBackbone
from .cached_segmentor import CachedFeatureEncoderDecoder, CachedFeaturePreprocessor
from .pixel_classifier import PixelClassifierHead
from .segmentor import CaptionEncoderDecoder

__all__ = ['Amalgamation', 'GATEDiffusionBackbone', 'GATE_TAPS', 'CONDITIONS', 'canny', 'CaptionEncoderDecoder',
           'CachedFeatureEncoderDecoder', 'CachedFeaturePreprocessor', 'PixelClassifierHead', 'VPD_TAPS',
           'SDXL_VPD_TAPS', 'VPDPyramid']
