# GATE on ADE20K with per-image fine-grained prompts: each image's caption (tools/caption.py) replaces
# the fixed prompt of every branch that has no prompt of its own.
#   python tools/caption.py --model checkpoints/blip-image-captioning-large --data-root data/ade/ADEChallengeData2016 \
#       --images images/training --out data/ade/ADEChallengeData2016/captions.json   (and --images images/validation)
_base_ = ['../gate_ade20k.py']
data_root = 'data/ade/ADEChallengeData2016'
captions = data_root + '/captions.json'  # {'images/training/ADE_train_00000001.jpg': 'a kitchen with ...', ...}
meta_keys = ('img_path', 'seg_map_path', 'ori_shape', 'img_shape', 'pad_shape', 'scale_factor', 'flip',
             'flip_direction', 'reduce_zero_label', 'caption')  # PackSegInputs' defaults + the caption
model = dict(
    type='CaptionEncoderDecoder',      # hands data_samples' captions to the backbone
    backbone=dict(keep_text_encoder=True))  # CLIP stays to encode new captions (cached)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='LoadCaption', captions_file=captions, data_root=data_root),
    dict(type='RandomResize', scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=(512, 512), cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs', meta_keys=meta_keys),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='LoadCaption', captions_file=captions, data_root=data_root),
    dict(type='PackSegInputs', meta_keys=meta_keys),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
