# Clean-image features (no noise, t=0) from a CleanDIFT-fine-tuned SD2.1 UNet with SD2.1's VAE and text
# encoder: CleanDIFT's setting, as a single-branch baseline. Our variant, unvalidated on real data.
_base_ = ['../sd21/gate_sd21_768_ade20k.py']
cleandift_unet = 'checkpoints/cleandift-sd21-unet'  # CleanDIFT's released SD2.1 UNet (diffusers layout)
model = dict(backbone=dict(
    unet=cleandift_unet,      # VAE, text encoder and scheduler stay those of sd_path
    noise='none',             # clean latents (posterior mode)
    timestep=0,
    branches=[dict(name='prompt')],
    amalgamation=None))       # one branch: raw features into UPerHead
