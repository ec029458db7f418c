# Recipe for mmseg's own depth config: inherit it, replace the backbone (and what the frozen backbone makes moot).
# Here mmseg's VPD NYU-Depth-v2 config (RMSE 0.253 with VPD's fine-tuned UNet) runs on frozen SD1.5 features, one
# plain branch extracted as VPD does; head, data, schedule, test mode and metric are mmseg's, unchanged.
_base_ = 'mmseg::vpd/vpd_sd_4xb8-25k_nyu-480x480.py'
custom_imports = dict(imports=['mmseg_gate'], allow_failed_imports=False)
sd_path = 'checkpoints/stable-diffusion-v1-5'
model = dict(backbone=dict(
    _delete_=True,
    type='GATEDiffusionBackbone',
    pretrained=sd_path,
    dtype='bf16',
    taps=('up_blocks.0.resnets.1', 'up_blocks.1.attentions.1', 'up_blocks.2.attentions.1', 'up_blocks.3'),  # VPD's
    # VPDDepthHead's four levels (1/8 ... 1/64), kept on the grid padded to 64 as VPD pads 480 to 512: the head's
    # fmap_border=(1, 1) then cuts exactly that padding
    pyramid=dict(type='vpd', fmap_border=(1, 1)),
    timestep=1, noise='none',  # VPD's clean latents at t=1
    branches=[dict(name='plain')],
    amalgamation=None))
# VPD fine-tunes its UNet at lr_mult 0.01; the frozen backbone has no such parameters
optim_wrapper = dict(paramwise_cfg=dict(custom_keys=dict(_delete_=True)))
custom_hooks = [dict(type='GATECheckHook')]
