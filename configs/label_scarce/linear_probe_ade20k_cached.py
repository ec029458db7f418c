# A linear probe on cached SD1.5 features for ADE20K (the general use of the cache): one 1x1 convolution on the
# frozen 1/8 features of one branch (no amalgamation), images resized to 512x512 without augmentation.
# 1. python tools/cache_features.py configs/label_scarce/linear_probe_ade20k_cached.py  (writes cache_root)
# 2. python tools/train.py configs/label_scarce/linear_probe_ade20k_cached.py
# 8.1 MiB per image in float16 at 512 (640x64x64 + 1280x32x32 + 1280x16x16 values): ~176 GiB for ADE20K's
# 22k images on disk; training holds one batch of files in memory, whatever the set's size.
_base_ = ['../gate_ade20k.py']
cache_root = 'work_dirs/cache/sd15_ade20k_512'
cache_preprocessor = {{_base_.model.data_preprocessor}}  # the live one: what tools/cache_features.py uses
size = (512, 512)
model = dict(
    type='CachedFeatureEncoderDecoder',
    cache_root=cache_root,
    data_preprocessor=dict(_delete_=True, type='CachedFeaturePreprocessor'),
    backbone=dict(branches=[dict(name='basic')], amalgamation=None, noise='fixed'),  # raw features, one branch
    decode_head=dict(_delete_=True, type='FCNHead', in_channels=640, in_index=0, channels=640, num_convs=0,
                     concat_input=False, dropout_ratio=0.0, num_classes=150, align_corners=False,
                     norm_cfg=dict(type='BN', requires_grad=True),
                     loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0)),  # conv_seg: the linear layer
    auxiliary_head=None,
    test_cfg=dict(_delete_=True, mode='whole'))
cache_pipeline = [dict(type='LoadImageFromFile'), dict(type='Resize', scale=size, keep_ratio=False),
                  dict(type='PackSegInputs')]
train_pipeline = [dict(type='LoadCachedFeatures', cache_root=cache_root),
                  dict(type='LoadAnnotations', reduce_zero_label=True),
                  dict(type='Resize', scale=size, keep_ratio=False),  # labels to the features' 512 grid
                  dict(type='PackCachedSegInputs')]
test_pipeline = [dict(type='LoadCachedFeatures', cache_root=cache_root),
                 dict(type='LoadAnnotations', reduce_zero_label=True),  # scored at the original size
                 dict(type='PackCachedSegInputs')]
train_dataloader = dict(batch_size=16, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
custom_hooks = [dict(type='GATECheckHook')]
