# The paper's 3-branch GATE setup on the tiny random SD assets and synthetic ADE20K-layout data:
# runs on a 2-core CPU in minutes (tools/demo.py makes the assets: tools/make_tiny_sd.py,
# tools/make_demo_dataset.py). Same code paths as configs/gate_ade20k.py, small numbers.
_base_ = ['../gate_ade20k.py']
tiny_root = 'data/tiny_sd'
sd_path = tiny_root + '/sd'
controlnet_path = tiny_root + '/controlnet-canny'
lora_a = tiny_root + '/lora/a.safetensors'
lora_b = tiny_root + '/lora/b.safetensors'
data_root = 'data/demo/ADEChallengeData2016'

norm_cfg = dict(type='BN', requires_grad=True)  # CPU: no SyncBN
canny = dict(path=controlnet_path, condition='canny', scale=1.0)
crop_size = (96, 96)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        pretrained=sd_path,
        dtype='fp32',  # bf16 is ~60x slower on CPUs without AVX512-BF16
        branches=[
            dict(name='prompt'),
            dict(name='prompt_lora_a_canny', loras=[dict(path=lora_a)], controlnets=[canny]),
            dict(name='prompt_lora_b_canny', loras=[dict(path=lora_b)], controlnets=[canny]),
        ],
        amalgamation=dict(hidden_channels=32, norm_cfg=norm_cfg)),
    decode_head=dict(in_channels=[64, 64, 64], channels=64, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=64, channels=32, norm_cfg=norm_cfg),
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
train_dataloader = dict(batch_size=4, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(num_workers=0, persistent_workers=False, dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader

max_iters = 500
optim_wrapper = dict(optimizer=dict(lr=2e-3))  # a higher rate than the paper's: tiny model, few steps
param_scheduler = [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=max_iters, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(logger=dict(interval=25), checkpoint=dict(interval=max_iters, max_keep_ckpts=2))
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))  # gloo: DDP works on CPUs too
randomness = dict(seed=0)
auto_scale_lr = dict(base_batch_size=4)  # this config's batch: the demo's rate is not scaled
