# GATE on Stable Diffusion 3.5 medium (MMDiT), ADE20K. UNVALIDATED ON REAL DATA: not in the paper and never
# trained here on real ADE20K; the layers, timestep and resolution below are argued, not measured.
#   B1 fine-grained prompt; B2 prompt + LoRA a + canny ControlNet; B3 prompt + LoRA b + canny ControlNet (GATE's).
# The DiT taps all lie on one 1/16 grid: mmseg's MultiLevelNeck (as mmseg's ViT + UPerNet configs) makes the
# pyramid UPerHead expects. Weight and data locations: edit below or override, e.g.
#   python tools/train.py configs/dit/gate_sd35_medium_ade20k.py --cfg-options sd_path=/models/sd35m
_base_ = ['../_base_/gate_ade20k_1024.py']  # crops of 1024
sd_path = 'checkpoints/stable-diffusion-3.5-medium'  # stabilityai/stable-diffusion-3.5-medium (diffusers folder)
# A canny ControlNet fits only the base it was trained on (SD3ControlNetModel in diffusers):
#   SD3.5-medium: tensorart/SD3.5M-Controlnet-Canny   <- this config's base
#   SD3-medium:   InstantX/SD3-Controlnet-Canny (VAE-encoded control image, zero pooled projections)
#   SD3.5-large:  stabilityai/stable-diffusion-3.5-large-controlnet-canny (Stability's 3.5 ControlNets are
#                 large-only: they do not load on medium, whose blocks are 1536 wide, not 2432)
controlnet_canny = 'checkpoints/SD3.5M-Controlnet-Canny'  # tensorart/SD3.5M-Controlnet-Canny
controlnet_path = controlnet_canny                        # the name the other GATE configs use
# SD3 LoRAs (diffusers/kohya formats, SD3LoraLoaderMixin: transformer and the CLIP encoders), trained as the
# paper's a (moderately, ~30 ADE20K images) and b (slightly over-fitted). None is published: train your own,
# e.g. with diffusers' examples/dreambooth/train_dreambooth_lora_sd3.py
lora_a = 'checkpoints/lora/sd35m_ade20k_a.safetensors'
lora_b = 'checkpoints/lora/sd35m_ade20k_b.safetensors'
# data_root comes from ../gate_ade20k.py: set it with --cfg-options data_root=/data/ade/ADEChallengeData2016

canny = dict(path=controlnet_canny, condition='canny', scale=1.0,
             condition_cfg=dict(low_threshold=100, high_threshold=200))
# SD3.5-medium generates at 1024x1024 (trained progressively up to 1440): the ADE20K pipeline at twice its
# scale (crops of 1024), as configs/sdxl does. At 512 crops the 1/16 token grid would be only 32x32.
# SD3.5-medium has 24 MMDiT blocks (0-23), 1536 channels each. DiTF (NeurIPS 2025) found the middle of a DiT
# best (FLUX: block 28 of 57) and late blocks worse (they turn towards predicting the velocity); the authors'
# extractor taps whole-block outputs (`vit-block{i}`). Four blocks around the middle, one per neck scale,
# shallowest to the finest output (as mmseg's ViT out_indices); the pass stops after block 15 (16 of 24 run).
taps = ('transformer_blocks.6', 'transformer_blocks.9', 'transformer_blocks.12', 'transformer_blocks.15')
channels = 1536  # each tap's image tokens; list them all with tools/list_taps.py
neck_channels = 768  # mmseg's ViT-B + MultiLevelNeck width
model = dict(
    backbone=dict(
        pretrained=sd_path,  # SD3 is detected from the folder (transformer/ and text_encoder_3/)
        # The authors' "t=50" on a flow model: img2img at strength 0.05 through the model's shifted 28-step
        # schedule, features at its first step. SD3's static shift 3 gives sigma 0.111 (x_t = (1 - s) x + s n;
        # the transformer gets 111), the same at every resolution. Not 51: that +1 was PNDM's (SD1.5 configs).
        # Or give the noise level directly: sigma=0.111.
        timestep=50,
        taps=taps,
        merge_same_stride=False,  # one level per tap: 4 levels at 1/16 for MultiLevelNeck's 4 scales
        # massive activations (DiTF: LayerNorm + the block's own AdaLN modulation, dropped extreme channels);
        # unvalidated on real data, off as in the authors' extractor. To try:
        # token_norm='adaln', drop_channels='auto',
        # T5-XXL (4.7 B parameters) encodes the prompt once at build and is released; to skip it (its tokens
        # become zeros, as diffusers without T5; the features change): drop_text_encoders=('text_encoder_3',),
        branches=[
            dict(name='prompt'),
            dict(name='prompt_lora_a_canny', loras=[dict(path=lora_a, scale=1.0)], controlnets=[canny]),
            dict(name='prompt_lora_b_canny', loras=[dict(path=lora_b, scale=1.0)], controlnets=[canny]),
        ]),
    # backbone.out_channels (amalgamation keeps each level's width) -> 1/4, 1/8, 1/16, 1/32 pyramid
    neck=dict(type='MultiLevelNeck', in_channels=[channels] * 4, out_channels=neck_channels, scales=[4, 2, 1, 0.5]),
    decode_head=dict(in_channels=[neck_channels] * 4, in_index=[0, 1, 2, 3]),
    auxiliary_head=dict(in_channels=neck_channels, in_index=2))  # the neck's 1/16 output: the taps' own grid
