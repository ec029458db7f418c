"""Small helpers of the extractor (no mmseg, mmengine or mmcv): file lists and hashes, finite checks, heap trims,
stage timers, atomic writes."""
