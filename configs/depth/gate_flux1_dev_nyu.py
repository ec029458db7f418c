# GATE on FLUX.1-dev for NYU depth (UNVALIDATED ON REAL DATA): ../dit/gate_flux1_dev_ade20k.py's backbone (int8
# weights, double- and single-stream taps, canny ControlNet, LoRAs) into VPDDepthHead through MultiLevelNeck.
_base_ = ['./_base_/gate_dit_vpd_nyu.py']
sd_path = 'checkpoints/FLUX.1-dev'  # black-forest-labs/FLUX.1-dev (gated: accept its licence)
controlnet_path = 'checkpoints/FLUX.1-dev-Controlnet-Canny'
lora_a = 'work_dirs/lora_flux1dev_nyu_a/lora.safetensors'
lora_b = 'work_dirs/lora_flux1dev_nyu_b/lora.safetensors'

canny = dict(path=controlnet_path, condition='canny', scale=1.0,
             condition_cfg=dict(low_threshold=100, high_threshold=200))
model = dict(
    backbone=dict(
        pretrained=sd_path,
        dtype='bf16',
        quantization=dict(type='TorchAoConfig', quant_type='Int8WeightOnlyConfig'),  # 11.9 GB instead of 23.8
        timestep=50,  # the authors' t=50: sigma 0.126 at 512x512, shifted by the image's token count
        taps=('transformer_blocks.14', 'single_transformer_blocks.2', 'single_transformer_blocks.9',
              'single_transformer_blocks.16'),
        branches=[
            dict(name='prompt'),
            dict(name='prompt_lora_a_canny', loras=[dict(path=lora_a, scale=1.0)], controlnets=[canny]),
            dict(name='prompt_lora_b_canny', loras=[dict(path=lora_b, scale=1.0)], controlnets=[canny]),
        ]),
    neck=dict(in_channels=[3072] * 4))
