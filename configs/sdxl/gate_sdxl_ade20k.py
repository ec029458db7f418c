# GATE on SDXL base 1.0, ADE20K: fine-grained prompt, and prompt + canny ControlNet (SDXL's).
# Not in the paper's tables (its appendix runs SDXL): a starting point, unvalidated on real data.
# LoRA branches as in ../gate_ade20k.py once you have SDXL LoRA files (kohya or diffusers format, UNet and
# both text encoders): add dict(name=..., loras=[dict(path=...)], controlnets=[canny]) below.
_base_ = ['../gate_ade20k.py']
sd_path = 'checkpoints/stable-diffusion-xl-base-1.0'     # stabilityai/stable-diffusion-xl-base-1.0 (diffusers)
controlnet_path = 'checkpoints/controlnet-canny-sdxl-1.0'  # diffusers/controlnet-canny-sdxl-1.0

canny = dict(path=controlnet_path, condition='canny', scale=1.0, condition_cfg=dict(low_threshold=100, high_threshold=200))
# SDXL is trained at 1024x1024: the ADE20K pipeline at twice its scale (crops of 1024), as SD1.5 sees 512
crop_size = (1024, 1024)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        pretrained=sd_path,  # SDXL is detected from the folder (text_encoder_2/)
        # the authors' SDXL layers (generic-diffusion-feature feature/configs/config_xl_practical.json):
        # two transformer blocks of the 1/32 stage, the first of the 1/16 stage and its cross-attention
        # query (tokens, laid back on their grids); plus the 1/8 level a segmentation head needs, taken as
        # SD1.5's GATE taps are: the output of the upsampler of the 1/16 stage
        taps=('up_blocks.1.upsamplers.0',
              'up_blocks.1.attentions.0.transformer_blocks.0', 'up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_q',
              'up_blocks.0.attentions.0.transformer_blocks.7', 'up_blocks.0.attentions.0.transformer_blocks.5'),
        merge_same_stride=True,  # one level per stride: 1/8 (640), 1/16 (640 + 640), 1/32 (1280 + 1280)
        dtype='bf16',            # SDXL's VAE overflows in fp16 only (with fp16 it runs in fp32 unless vae=<fp16-fix>)
        branches=[dict(name='prompt'), dict(name='prompt_canny', controlnets=[canny])]),
    decode_head=dict(in_channels=[640, 1280, 2560]),
    auxiliary_head=dict(in_channels=1280),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(1024, 1024)))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(4096, 1024), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(4096, 1024), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
