# The fine-grained-prompt and canny branches on Stable Diffusion 2.1 (768x768, v-prediction), ADE20K.
# v-prediction changes what the UNet predicts, not how the latents are noised: nothing to set for it.
# Our variant, unvalidated on real data. SD2.1 has no canny ControlNet from lllyasviel: the community's
# (e.g. thibaud/controlnet-sd21-canny-diffusers) must be in the diffusers layout.
_base_ = ['../gate_ade20k.py']
sd_path = 'checkpoints/stable-diffusion-2-1'                 # stabilityai/stable-diffusion-2-1 (diffusers)
controlnet_path = 'checkpoints/controlnet-sd21-canny'        # a diffusers ControlNet made for SD2.1

canny = dict(path=controlnet_path, condition='canny', scale=1.0, condition_cfg=dict(low_threshold=100, high_threshold=200))
crop_size = (768, 768)  # SD2.1-768's training resolution
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        pretrained=sd_path,
        # SD2.1 has SD1.5's block layout: the GATE taps give the same levels and channels
        branches=[dict(name='prompt'), dict(name='prompt_canny', controlnets=[canny])]),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(768, 768)))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(3072, 768), ratio_range=(0.5, 2.0), keep_ratio=True),  # ADE's x1.5
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(3072, 768), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
