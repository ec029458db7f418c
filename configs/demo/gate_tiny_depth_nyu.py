# configs/depth/gate_sd15_nyu.py (the paper's 3 branches into mmseg's VPDDepthHead) on the tiny random SD assets and
# the synthetic NYU layout: runs on a 2-core CPU in a minute. Assets: python tools/make_tiny_sd.py (data/tiny_sd),
# python tools/make_demo_nyu.py (data/demo/nyu: 480x640 images, 16-bit millimetre depth, scene names).
_base_ = ['../depth/gate_sd15_nyu.py']
tiny_root = 'data/tiny_sd'
sd_path = tiny_root + '/sd'
controlnet_path = tiny_root + '/controlnet-canny'
lora_a = tiny_root + '/lora/a.safetensors'
lora_b = tiny_root + '/lora/b.safetensors'
data_root = 'data/demo/nyu'

norm_cfg = dict(type='BN', requires_grad=True)  # CPU: no SyncBN
canny = dict(path=controlnet_path, condition='canny', scale=1.0)
crop_size = (96, 96)  # 96 / 32 = 3 cells + 1 of padding to 128: VPD's 480 geometry, fmap_border (1, 1) unchanged
scale = (128, 96)     # NYU's 640x480 at a fifth
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        pretrained=sd_path,
        dtype='fp32',  # bf16 is ~60x slower on CPUs without AVX512-BF16
        # VPD's taps exist in the tiny UNet too (its up blocks have 2 layers, SD1.5's 3): 32, 64, 64, 64 channels
        branches=[
            dict(name='prompt'),
            dict(name='prompt_lora_a_canny', loras=[dict(path=lora_a)], controlnets=[canny]),
            dict(name='prompt_lora_b_canny', loras=[dict(path=lora_b)], controlnets=[canny]),
        ],
        amalgamation=dict(hidden_channels=32, norm_cfg=norm_cfg)),
    # a small head: feature_dim must be 8 * embed_dim (its decoder's input), both multiples of 16 (GroupNorm)
    decode_head=dict(in_channels=[32, 64, 64, 64], embed_dim=16, feature_dim=128),
    test_cfg=dict(mode='slide_flip', crop_size=crop_size, stride=(32, 32)))

meta_keys = ('img_path', 'depth_map_path', 'ori_shape', 'img_shape', 'pad_shape', 'scale_factor', 'flip',
             'flip_direction', 'category_id')
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadDepthAnnotation', depth_rescale_factor=1e-3),
    dict(type='RandomFlip', prob=0.5),
    dict(type='Resize', scale=scale, keep_ratio=True),  # the depth map too (nearest), as a seg field
    dict(type='RandomCrop', crop_size=crop_size),
    dict(type='Albu', transforms=[dict(type='RandomBrightnessContrast'), dict(type='RandomGamma'),
                                  dict(type='HueSaturationValue')]),
    dict(type='PackSegInputs', meta_keys=meta_keys),
]
test_pipeline = [  # as mmseg's NYU test pipeline: the depth is loaded after the resize, evaluated at 480x640
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=scale, keep_ratio=True),
    dict(type='LoadDepthAnnotation', depth_rescale_factor=1e-3),
    dict(type='PackSegInputs', meta_keys=meta_keys),
]
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader

max_iters = 60
optim_wrapper = dict(optimizer=dict(lr=2e-3))  # a higher rate than VPD's: tiny model, few steps
param_scheduler = [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=max_iters, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=max_iters, max_keep_ckpts=2))
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))  # gloo: DDP works on CPUs too
randomness = dict(seed=0)
