# GATE on Cityscapes with Stable Diffusion at the crop's native 1024x1024 (4x the UNet work of the
# paper's 512 resize; finer 1/8 features).
_base_ = ['./gate_cityscapes.py']
model = dict(backbone=dict(unet_input_scale=None))
