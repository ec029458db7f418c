# GATE on FLUX.1-dev (12 B-parameter rectified-flow transformer), ADE20K. UNVALIDATED ON REAL DATA: not in the
# paper and never trained here on real ADE20K; the blocks, timestep, resolution and quantization below are
# argued, not measured.
#   B1 fine-grained prompt; B2 prompt + LoRA a + canny ControlNet; B3 prompt + LoRA b + canny ControlNet (GATE's).
# All taps lie on one 1/16 token grid: mmseg's MultiLevelNeck makes the pyramid UPerHead expects.
# Memory (docs/models.md, "FLUX.1 on a 24 GB card"): the transformer is 23.8 GB in bf16, so this config loads it
# (and the ControlNet) in 8 bits; T5-XXL encodes the prompt once at build and is released. Weight and data
# locations: edit below or override, e.g.
#   python tools/train.py configs/dit/gate_flux1_dev_ade20k.py --cfg-options sd_path=/models/FLUX.1-dev
_base_ = ['../_base_/gate_ade20k_1024.py']  # crops of 1024
sd_path = 'checkpoints/FLUX.1-dev'  # black-forest-labs/FLUX.1-dev (diffusers folder; gated: accept its licence)
# FLUX ControlNets (FluxControlNetModel) for FLUX.1-dev, all loaded by path:
#   InstantX/FLUX.1-dev-Controlnet-Canny        <- this config (VAE-encoded, packed control image)
#   InstantX/FLUX.1-dev-Controlnet-Union, Shakker-Labs/FLUX.1-dev-ControlNet-Union-Pro: union kind, add mode=0
#     (canny) to the controlnet dict
#   XLabs-AI/flux-controlnet-canny-diffusers: XLabs kind (control image in pixels, its residuals repeat over
#     the double-stream blocks); detected from the weights
controlnet_canny = 'checkpoints/FLUX.1-dev-Controlnet-Canny'
controlnet_path = controlnet_canny  # the name the other GATE configs use
# FLUX LoRAs in diffusers, kohya (sd-scripts flux_train_network.py) or XLabs format (FluxLoraLoaderMixin:
# transformer and the CLIP encoder), trained as the paper's a (moderately, ~30 ADE20K images) and b (slightly
# over-fitted). None is published: train your own, e.g. diffusers' examples/dreambooth/train_dreambooth_lora_flux.py
lora_a = 'checkpoints/lora/flux1dev_ade20k_a.safetensors'
lora_b = 'checkpoints/lora/flux1dev_ade20k_b.safetensors'
# data_root comes from ../gate_ade20k.py: set it with --cfg-options data_root=/data/ade/ADEChallengeData2016

canny = dict(path=controlnet_canny, condition='canny', scale=1.0,
             condition_cfg=dict(low_threshold=100, high_threshold=200))
# FLUX.1 generates at 1024x1024 (and adapts its noise shift to the resolution): the ADE20K pipeline at twice its
# scale, crops of 1024, a 64x64 token grid (at 512 crops it would be 32x32).
# FLUX.1 has 19 double-stream blocks (transformer_blocks.0-18) and 38 single-stream ones
# (single_transformer_blocks.0-37); the authors' extractor numbers them 0-56 (`vit-block{i}`: i < 19 double,
# else single i - 19). DiTF (NeurIPS 2025) found block 28 of 57 the best FLUX feature and late blocks worse.
# Four blocks spread around it, one per neck scale, shallowest to the finest output (authors' 14, 21, 28, 35);
# the pass stops after single block 16 (36 of 57 blocks run).
taps = ('transformer_blocks.14', 'single_transformer_blocks.2', 'single_transformer_blocks.9',
        'single_transformer_blocks.16')
channels = 3072  # each tap's image tokens; list them all with tools/list_taps.py
neck_channels = 768
model = dict(
    backbone=dict(
        pretrained=sd_path,  # FLUX is detected from the folder (FluxPipeline's model_index.json)
        dtype='bf16',
        # 8-bit weights (torchao int8 weight-only, in the dev extra): 11.9 GB for the transformer instead of 23.8.
        # 4 bits: dict(type='BitsAndBytesConfig', load_in_4bit=True, bnb_4bit_quant_type='nf4',
        # bnb_4bit_compute_dtype='bfloat16') (pip install bitsandbytes; GPU only). None on an 80 GB card.
        quantization=dict(type='TorchAoConfig', quant_type='Int8WeightOnlyConfig'),
        # The authors' "t=50" on FLUX: FluxImg2ImgPipeline at strength 0.05 through the 28-step schedule shifted
        # by the image's resolution, features at its first step: sigma 0.195 at 1024x1024 (0.126 at 512).
        # DiTF's t=260 would be timestep=260; or give the noise level directly: sigma=0.195.
        timestep=50,
        # guidance of the guidance-distilled dev model: 1.0 by default, what the authors' extractor passed
        # (FluxPipeline's default is 3.5)
        taps=taps,
        merge_same_stride=False,  # one level per tap: 4 levels at 1/16 for MultiLevelNeck's 4 scales
        # massive activations (DiTF: LayerNorm + the block's own AdaLN modulation, two dropped channels: PCK 29.9
        # -> 67.1 on SPair); unvalidated for segmentation, off as in the authors' extractor. To try:
        # token_norm='adaln', drop_channels='auto',
        branches=[
            dict(name='prompt'),
            dict(name='prompt_lora_a_canny', loras=[dict(path=lora_a, scale=1.0)], controlnets=[canny]),
            dict(name='prompt_lora_b_canny', loras=[dict(path=lora_b, scale=1.0)], controlnets=[canny]),
        ]),
    # backbone.out_channels (amalgamation keeps each level's width) -> 1/4, 1/8, 1/16, 1/32 pyramid
    neck=dict(type='MultiLevelNeck', in_channels=[channels] * 4, out_channels=neck_channels, scales=[4, 2, 1, 0.5]),
    decode_head=dict(in_channels=[neck_channels] * 4, in_index=[0, 1, 2, 3]),
    auxiliary_head=dict(in_channels=neck_channels, in_index=2))  # the neck's 1/16 output: the taps' own grid
