# gate_sd15_bedroom28.py from cached features: gate_sd15_horse21_cached.py (the cached model and pipelines)
# with the bedroom set of gate_sd15_bedroom28.py and its own cache folder (same two commands as there).
# mmengine binds a base's variables when the base is read, so the cache folder is set again where it is used;
# tests/test_label_scarce.py checks that the backbone, head and data equal gate_sd15_bedroom28.py's.
_base_ = ['./gate_sd15_horse21_cached.py']
cache_root = 'work_dirs/cache/gate_sd15_bedroom28'
data_root = 'data/ddpm_segmentation/bedroom_28/real'
model = dict(cache_root=cache_root,
             backbone=dict(prompt='a photo of a bedroom'),  # as gate_sd15_bedroom28.py
             decode_head=dict(num_classes=29))
# the horse pipelines with LoadCachedFeatures (their first step) reading this cache
train_pipeline = [dict(_base_.train_pipeline[0], cache_root=cache_root), *_base_.train_pipeline[1:]]
test_pipeline = [dict(_base_.test_pipeline[0], cache_root=cache_root), *_base_.test_pipeline[1:]]
train_dataloader = dict(dataset=dict(type='Bedroom28Dataset', data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(type='Bedroom28Dataset', data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
