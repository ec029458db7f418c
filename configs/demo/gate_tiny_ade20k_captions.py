# Per-image prompts (configs/per_image_prompts/gate_ade20k_captions.py) on the tiny assets; the
# captions file comes from tools/caption.py with a tiny random captioner.
_base_ = ['./gate_tiny_ade20k.py']
data_root = 'data/demo/ADEChallengeData2016'
captions = data_root + '/captions.json'
meta_keys = ('img_path', 'seg_map_path', 'ori_shape', 'img_shape', 'pad_shape', 'scale_factor', 'flip',
             'flip_direction', 'reduce_zero_label', 'caption')
model = dict(type='CaptionEncoderDecoder', backbone=dict(keep_text_encoder=True))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='LoadCaption', captions_file=captions, data_root=data_root),
    dict(type='RandomResize', scale=(128, 96), ratio_range=(0.75, 1.25), keep_ratio=True),
    dict(type='RandomCrop', crop_size=(96, 96), cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs', meta_keys=meta_keys),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 96), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='LoadCaption', captions_file=captions, data_root=data_root),
    dict(type='PackSegInputs', meta_keys=meta_keys),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
