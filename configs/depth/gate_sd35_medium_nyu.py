# GATE on SD3.5 Medium for NYU depth (UNVALIDATED ON REAL DATA): ../dit/gate_sd35_medium_ade20k.py's backbone (four
# 1/16 block taps, the authors' t=50, canny ControlNet, LoRAs) into VPDDepthHead through MultiLevelNeck.
_base_ = ['./_base_/gate_dit_vpd_nyu.py']
sd_path = 'checkpoints/stable-diffusion-3.5-medium'       # stabilityai/stable-diffusion-3.5-medium (diffusers)
controlnet_path = 'checkpoints/SD3.5M-Controlnet-Canny'   # tensorart/SD3.5M-Controlnet-Canny
lora_a = 'work_dirs/lora_sd35m_nyu_a/lora.safetensors'    # SD3.5 LoRAs trained on NYU (diffusers/kohya format)
lora_b = 'work_dirs/lora_sd35m_nyu_b/lora.safetensors'

canny = dict(path=controlnet_path, condition='canny', scale=1.0,
             condition_cfg=dict(low_threshold=100, high_threshold=200))
model = dict(
    backbone=dict(
        pretrained=sd_path,  # SD3 is detected from the folder
        timestep=50,         # the authors' "t=50" on a flow model: sigma 0.111 (../dit/gate_sd35_medium_ade20k.py)
        taps=('transformer_blocks.6', 'transformer_blocks.9', 'transformer_blocks.12', 'transformer_blocks.15'),
        branches=[
            dict(name='prompt'),
            dict(name='prompt_lora_a_canny', loras=[dict(path=lora_a, scale=1.0)], controlnets=[canny]),
            dict(name='prompt_lora_b_canny', loras=[dict(path=lora_b, scale=1.0)], controlnets=[canny]),
        ]),
    neck=dict(in_channels=[1536] * 4))  # each tap's image tokens (tools/list_taps.py)
