from .ddpm_segmentation import DDPMSegmentationDataset, LoadNpyAnnotations
from .transforms import LoadCaption

__all__ = ['LoadCaption', 'DDPMSegmentationDataset', 'LoadNpyAnnotations']
