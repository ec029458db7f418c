# LoRA training for GATE's LoRA branches, the authors' kohya recipe through mmengine: LoCon shape
# (linears rank 64 / alpha 32, 3x3 convs rank 32), UNet lr 1e-4, text encoder 5e-5 (their lora_guide.md),
# constant rate, batch 1, the standard denoising loss. The dataset part lives in each config.
custom_imports = dict(imports=['mmseg_gate'], allow_failed_imports=False)  # registers the model and hook
default_scope = 'mmseg'
sd_path = 'checkpoints/stable-diffusion-v1-5'  # diffusers folder of stable-diffusion-v1-5
crop_size = (512, 512)
model = dict(
    type='StableDiffusionLoRA',
    pretrained=sd_path,
    rank=64, alpha=32,           # attention, feed-forward and projection linears
    conv_rank=32, conv_alpha=16,  # resnet 3x3 convs (LoCon); alpha = half the rank, the authors' rule
    text_encoder=True,           # kohya trains text-encoder LoRA layers too
    dtype='bf16',                # frozen weights on GPU; 'fp32' on CPU. The LoRA layers train in fp32
    data_preprocessor=dict(type='SegDataPreProcessor', mean=[127.5] * 3, std=[127.5] * 3,  # -> [-1, 1]
                           bgr_to_rgb=True, size=crop_size, pad_val=0, seg_pad_val=255))
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, weight_decay=1e-2),
    paramwise_cfg=dict(custom_keys={'lora.text_encoder': dict(lr_mult=0.5)}))  # 5e-5 for the text encoder
param_scheduler = []  # constant rate, kohya's default
max_iters = 3000
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters)
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=20, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='AtomicCheckpointHook', by_epoch=False, interval=500, max_keep_ckpts=3),
    sampler_seed=dict(type='DistSamplerSeedHook'))
custom_hooks = [dict(type='SaveLoRAHook')]  # <work_dir>/lora_iter_N.safetensors with every checkpoint, lora.safetensors at the end
env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='nccl'))
log_processor = dict(by_epoch=False)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0)
