# GATE on PixArt-Sigma (DiT with cross-attention), ADE20K. UNVALIDATED ON REAL DATA: not in the paper and never
# trained here on real ADE20K; the layers, timesteps and resolution below are argued, not measured.
# Branches: GATE's extra branches add a LoRA and a canny ControlNet, but diffusers has neither for PixArt (no
# PixArt ControlNet model, no LoRA loader on PixArtTransformer2DModel). What a PixArt branch can still vary is its
# prompt and its noise level: the fine-grained prompt at three timesteps, amalgamated as GATE's branches (a
# multi-timestep ensemble, as configs/multi_timestep; MMDiff found timestep fusion helps a frozen DiT). The three
# share one batched transformer call. The DiT taps all lie on one 1/16 grid: mmseg's MultiLevelNeck (as mmseg's
# ViT + UPerNet configs) makes the pyramid UPerHead expects. Weight and data locations: edit below or override, e.g.
#   python tools/train.py configs/dit/gate_pixart_sigma_ade20k.py --cfg-options sd_path=/models/pixart-sigma
_base_ = ['../_base_/gate_ade20k_1024.py']  # crops of 1024
# PixArt-alpha/PixArt-Sigma-XL-2-1024-MS (diffusers pipeline folder: transformer, T5-XXL, SDXL's VAE): the
# model the authors' extractor loads for PixArt-Sigma. PixArt-alpha/PixArt-Sigma-XL-2-512-MS ships only its
# transformer: to use it, keep this folder and add unet='checkpoints/PixArt-Sigma-XL-2-512-MS' to the
# backbone, with crops of 512 and the ADE20K scale (2048, 512).
sd_path = 'checkpoints/PixArt-Sigma-XL-2-1024-MS'
# data_root comes from ../gate_ade20k.py: set it with --cfg-options data_root=/data/ade/ADEChallengeData2016

# 1024-MS generates at 1024x1024: the ADE20K pipeline at twice its scale (crops of 1024), as configs/sdxl does;
# at 512 crops the 1/16 token grid would be only 32x32 (and 512 is the 512-MS model's resolution, not this one's)
# PixArt-Sigma has 28 transformer blocks (0-27), 1152 channels each. DiTF (NeurIPS 2025) found the middle of a
# DiT best (FLUX: block 28 of 57) and late blocks worse; the authors' extractor taps whole-block outputs
# (`vit-block{i}`, 28 for PixArt). Four blocks around the middle, one per neck scale, shallowest to the finest
# output (as mmseg's ViT out_indices); the pass stops after block 19 (20 of 28 run).
taps = ('transformer_blocks.7', 'transformer_blocks.11', 'transformer_blocks.15', 'transformer_blocks.19')
channels = 1152  # each tap's image tokens; list them all with tools/list_taps.py
neck_channels = 768  # mmseg's ViT-B + MultiLevelNeck width
model = dict(
    backbone=dict(
        pretrained=sd_path,  # PixArt-Sigma is detected from the folder (PixArtSigmaPipeline)
        # PixArt is DDPM-style: the latents are noised to alpha_bar[t] with DDPMScheduler.from_config of the
        # folder's scheduler (its DPMSolver's add_noise before set_timesteps would apply t=949's noise for t=50)
        # and the transformer gets t. The authors' PixArt path (img2img at strength 0.05 on the 1000-step
        # linspace schedule) lands on t=50 itself (no PNDM +1); alpha_bar[50] = 0.970, the signal-to-noise
        # ratio of a flow model's sigma 0.150.
        timestep=50,
        taps=taps,
        merge_same_stride=False,  # one level per tap: 4 levels at 1/16 for MultiLevelNeck's 4 scales
        # massive activations (DiTF: LayerNorm + the block's own AdaLN modulation, dropped extreme channels);
        # unvalidated on real data, off as in the authors' extractor. To try:
        # token_norm='adaln', drop_channels='auto',
        # T5-XXL (4.7 B parameters, PixArt's only text encoder) encodes the prompt once at build and is released
        branches=[
            dict(name='prompt_t50'),                  # the backbone's timestep (the authors' "t=50")
            dict(name='prompt_t150', timestep=150),   # the noise levels of configs/multi_timestep, without
            dict(name='prompt_t300', timestep=300),   # PNDM's +1 (PixArt's schedule has these timesteps)
        ]),
    # backbone.out_channels (amalgamation keeps each level's width) -> 1/4, 1/8, 1/16, 1/32 pyramid
    neck=dict(type='MultiLevelNeck', in_channels=[channels] * 4, out_channels=neck_channels, scales=[4, 2, 1, 0.5]),
    decode_head=dict(in_channels=[neck_channels] * 4, in_index=[0, 1, 2, 3]),
    auxiliary_head=dict(in_channels=neck_channels, in_index=2))  # the neck's 1/16 output: the taps' own grid
