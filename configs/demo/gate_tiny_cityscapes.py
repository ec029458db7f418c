# The paper's 3-branch Cityscapes setup (crops resized before SD) on the tiny random SD assets and
# synthetic Cityscapes-layout data (tools/make_tiny_sd.py, tools/make_demo_dataset.py).
_base_ = ['../gate_cityscapes.py']
tiny_root = 'data/tiny_sd'
sd_path = tiny_root + '/sd'
controlnet_path = tiny_root + '/controlnet-canny'
lora_a = tiny_root + '/lora/a.safetensors'
lora_b = tiny_root + '/lora/b.safetensors'
data_root = 'data/demo/cityscapes'

norm_cfg = dict(type='BN', requires_grad=True)
canny = dict(path=controlnet_path, condition='canny', scale=1.0)
crop_size = (128, 128)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        pretrained=sd_path,
        dtype='fp32',
        unet_input_scale=0.5,  # as the paper's 1024 -> 512
        branches=[
            dict(name='prompt'),
            dict(name='prompt_lora_a_canny', loras=[dict(path=lora_a)], controlnets=[canny]),
            dict(name='prompt_lora_b_canny', loras=[dict(path=lora_b)], controlnets=[canny]),
        ],
        amalgamation=dict(hidden_channels=32, norm_cfg=norm_cfg)),
    decode_head=dict(in_channels=[64, 64, 64], channels=64, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=64, channels=32, norm_cfg=norm_cfg),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(96, 96)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(256, 128), ratio_range=(0.75, 1.25), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(256, 128), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(num_workers=0, persistent_workers=False, dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader

max_iters = 200
optim_wrapper = dict(optimizer=dict(lr=2e-3))
param_scheduler = [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=max_iters, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(logger=dict(interval=25), checkpoint=dict(interval=max_iters, max_keep_ckpts=2))
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)
