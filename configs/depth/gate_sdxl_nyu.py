# GATE on SDXL base 1.0 for NYU depth (UNVALIDATED ON REAL DATA): fine-grained prompt, and prompt + canny ControlNet
# (no SDXL LoRA files for NYU; add branches as in ./gate_sd15_nyu.py once you have them). SDXL's UNet ends at 1/32:
# pyramid='vpd' pools its 1/64 level from the 1/32 one. SDXL sees NYU's 480 crops (it was trained at 1024).
_base_ = ['./_base_/gate_sd15_vpd_nyu.py']
sd_path = 'checkpoints/stable-diffusion-xl-base-1.0'       # stabilityai/stable-diffusion-xl-base-1.0 (diffusers)
controlnet_path = 'checkpoints/controlnet-canny-sdxl-1.0'  # diffusers/controlnet-canny-sdxl-1.0
prompt = 'a highly realistic photo of an indoor scene, a room of a home, an office or a shop. high quality.'

canny = dict(path=controlnet_path, condition='canny', scale=1.0,
             condition_cfg=dict(low_threshold=100, high_threshold=200))
model = dict(
    backbone=dict(
        pretrained=sd_path,  # SDXL is detected from the folder (text_encoder_2/)
        # VPD's places in SDXL's three up blocks (mmseg_gate.models.pyramid.SDXL_VPD_TAPS): 1280 at 1/32, 640 at
        # 1/16, 320 at 1/8; + the pooled 1280 at 1/64
        taps=('up_blocks.0.attentions.1', 'up_blocks.1.attentions.1', 'up_blocks.2'),
        prompt=prompt,
        branches=[dict(name='prompt'), dict(name='prompt_canny', controlnets=[canny])]),
    decode_head=dict(in_channels=[320, 640, 1280, 1280]))
