# Label-scarce style (as the authors' label-scarce experiments): GATE's branches plus the cross-attention
# maps of the up stage (VPD's AttentionStore, the authors' attention=['up_cross']), and the ControlNet
# branches denoised from 60 before extraction (their label-scarce README), trained on 100 ADE20K images.
# Our variant on mmseg's heads, unvalidated on real data.
_base_ = ['../gate_ade20k.py']
canny = dict(path='checkpoints/sd-controlnet-canny', condition='canny', scale=1.0,
             condition_cfg=dict(low_threshold=100, high_threshold=200))
model = dict(
    backbone=dict(
        # up-stage cross-attention at 1/32 and 1/16 (16x16 and 32x32 at 512), averaged per resolution and
        # brought to 1/8: 2 x 77 channels, concatenated with the 1/8 tap (merge_same_stride)
        attention=dict(layers='up_cross', strides=(32, 16), average_layers=True, stride=8),
        merge_same_stride=True,
        denoising_scheduler=None,  # the SD folder's scheduler (PNDM for SD1.5), as the authors'
        branches=[
            dict(name='prompt'),
            dict(name='prompt_lora_a_canny', loras=[dict(path='work_dirs/lora_ade20k_a/lora.safetensors')],
                 controlnets=[canny], denoising_from=60),   # img2img steps 61 -> 51 (PNDM starts at 61), then the features
            dict(name='prompt_lora_b_canny', loras=[dict(path='work_dirs/lora_ade20k_b/lora.safetensors')],
                 controlnets=[canny], denoising_from=60),
        ]),
    decode_head=dict(in_channels=[640 + 154, 1280, 1280]))
train_dataloader = dict(dataset=dict(indices=100))  # the first 100 training images
max_iters = 8000
param_scheduler = [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=max_iters, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(checkpoint=dict(interval=max_iters))
