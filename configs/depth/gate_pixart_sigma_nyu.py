# GATE on PixArt-Sigma for NYU depth (UNVALIDATED ON REAL DATA): ../dit/gate_pixart_sigma_ade20k.py's branches (the
# fine-grained prompt at three timesteps: diffusers has no PixArt ControlNet or LoRA loader) and taps, into
# VPDDepthHead through MultiLevelNeck.
_base_ = ['./_base_/gate_dit_vpd_nyu.py']
sd_path = 'checkpoints/PixArt-Sigma-XL-2-1024-MS'  # PixArt-alpha/PixArt-Sigma-XL-2-1024-MS (diffusers folder)
model = dict(
    backbone=dict(
        pretrained=sd_path,
        timestep=50,  # DDPM-style: alpha_bar[50], no PNDM +1 (../dit/gate_pixart_sigma_ade20k.py)
        taps=('transformer_blocks.7', 'transformer_blocks.11', 'transformer_blocks.15', 'transformer_blocks.19'),
        branches=[dict(name='prompt_t50'), dict(name='prompt_t150', timestep=150),
                  dict(name='prompt_t300', timestep=300)]),
    neck=dict(in_channels=[1152] * 4))
