# The depth base (./gate_sd15_vpd_nyu.py) for diffusion transformers: their taps all lie on one 1/16 grid, and
# mmseg's MultiLevelNeck makes VPDDepthHead's 1/8, 1/16, 1/32, 1/64 pyramid from them (1/16 x [2, 1, 0.5, 0.25];
# the backbone pads the input to a multiple of 64, so the 1/64 grid is exact). Each DiT config sets its backbone
# and the neck's in_channels (its taps' width).
_base_ = ['./gate_sd15_vpd_nyu.py']
prompt = 'a highly realistic photo of an indoor scene, a room of a home, an office or a shop. high quality.'
neck_channels = 256  # the head's in_channels: multiples of 16 (its GroupNorm); mmseg's ViT necks use 768
model = dict(
    backbone=dict(prompt=prompt, merge_same_stride=False),  # one 1/16 level per tap, one per neck scale
    # the shallowest tap -> the finest output, as mmseg's ViT + MultiLevelNeck configs
    neck=dict(type='MultiLevelNeck', in_channels=[1152] * 4, out_channels=neck_channels, scales=[2, 1, 0.5, 0.25]),
    decode_head=dict(in_channels=[neck_channels] * 4))
