# GATE on SDXL base 1.0, ADE20K: fine-grained prompt, and prompt + canny ControlNet (SDXL's).
# Not in the paper's tables (its appendix runs SDXL): a starting point, unvalidated on real data.
# LoRA branches as in ../gate_ade20k.py once you have SDXL LoRA files (kohya or diffusers format, UNet and
# both text encoders): add dict(name=..., loras=[dict(path=...)], controlnets=[canny]) below.
_base_ = ['../_base_/gate_ade20k_1024.py']  # crops of 1024
sd_path = 'checkpoints/stable-diffusion-xl-base-1.0'     # stabilityai/stable-diffusion-xl-base-1.0 (diffusers)
controlnet_path = 'checkpoints/controlnet-canny-sdxl-1.0'  # diffusers/controlnet-canny-sdxl-1.0

canny = dict(path=controlnet_path, condition='canny', scale=1.0, condition_cfg=dict(low_threshold=100, high_threshold=200))
# SDXL is trained at 1024x1024: the ADE20K pipeline at twice its scale (crops of 1024), as SD1.5 sees 512
model = dict(
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
    auxiliary_head=dict(in_channels=1280))
