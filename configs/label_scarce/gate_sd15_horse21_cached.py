# gate_sd15_horse21.py trained and tested from cached features (same model, same numbers, no SD per step).
# 1. python tools/cache_features.py configs/label_scarce/gate_sd15_horse21.py --out work_dirs/cache/gate_sd15_horse21
# 2. python tools/label_scarce_splits.py configs/label_scarce/gate_sd15_horse21_cached.py
_base_ = ['./gate_sd15_horse21.py']
cache_root = 'work_dirs/cache/gate_sd15_horse21'
cache_preprocessor = {{_base_.model.data_preprocessor}}  # the live one: what tools/cache_features.py uses
model = dict(
    type='CachedFeatureEncoderDecoder',
    cache_root=cache_root,
    cache_pipeline={{_base_.cache_pipeline}},  # refused unless the cache was made with this pipeline
    data_preprocessor=dict(_delete_=True, type='CachedFeaturePreprocessor'))
train_pipeline = [
    dict(type='LoadCachedFeatures', cache_root=cache_root),
    dict(type='LoadNpyAnnotations', label_size={{_base_.label_size}}, min_region_pixels=20),
    dict(type='PackCachedSegInputs'),
]
test_pipeline = [
    dict(type='LoadCachedFeatures', cache_root=cache_root),
    dict(type='LoadNpyAnnotations', label_size={{_base_.label_size}}),
    dict(type='PackCachedSegInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
