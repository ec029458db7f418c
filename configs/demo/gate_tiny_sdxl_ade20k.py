# configs/sdxl/gate_sdxl_ade20k.py on the tiny random SDXL (tools/make_tiny_sd.py) and synthetic
# ADE20K-layout data: the SDXL code paths (two text encoders, time ids, SDXL ControlNet, token taps) on a CPU.
_base_ = ['../sdxl/gate_sdxl_ade20k.py']
tiny_root = 'data/tiny_sd'
sd_path = tiny_root + '/sdxl'
controlnet_path = tiny_root + '/sdxl-controlnet'
lora_b = tiny_root + '/sdxl-lora/b.safetensors'  # kohya format: UNet and both text encoders
data_root = 'data/demo/ADEChallengeData2016'

norm_cfg = dict(type='BN', requires_grad=True)  # CPU: no SyncBN
canny = dict(path=controlnet_path, condition='canny', scale=1.0)
crop_size = (96, 96)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        pretrained=sd_path,
        dtype='fp32',
        # the tiny SDXL has 2 transformer blocks at 1/32 (SDXL: 10): the same kinds of taps
        taps=('up_blocks.1.upsamplers.0',
              'up_blocks.1.attentions.0.transformer_blocks.0', 'up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_q',
              'up_blocks.0.attentions.0.transformer_blocks.1', 'up_blocks.0.attentions.0.transformer_blocks.0'),
        branches=[dict(name='prompt'), dict(name='prompt_canny', controlnets=[canny]),
                  dict(name='prompt_lora_b_canny', loras=[dict(path=lora_b)], controlnets=[canny])],
        amalgamation=dict(hidden_channels=32, norm_cfg=norm_cfg)),
    decode_head=dict(in_channels=[64, 128, 128], channels=64, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=128, channels=32, norm_cfg=norm_cfg),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(64, 64)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(128, 96), ratio_range=(0.75, 1.25), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 96), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(num_workers=0, persistent_workers=False, dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader

max_iters = 40
optim_wrapper = dict(optimizer=dict(lr=2e-3))  # a higher rate than the paper's: tiny model, few steps
param_scheduler = [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=max_iters, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=max_iters, max_keep_ckpts=1))
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)
auto_scale_lr = dict(base_batch_size=2)  # this config's batch: the rate is not scaled
