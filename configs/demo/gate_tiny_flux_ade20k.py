# configs/dit/gate_flux1_dev_ade20k.py's model on the tiny random FLUX (2 double- and 3 single-stream blocks of
# 16 channels, guidance-distilled as dev), with the tiny demo's data (gate_tiny_ade20k.py), 40 iterations: the
# FLUX code paths (CLIP pooled + T5 prompts, packed latents, resolution-shifted flow-matching noise, an
# InstantX-kind FLUX ControlNet, diffusers- and kohya-format LoRAs as mixed-adapter batches, image tokens of
# double- and single-stream blocks on the 1/16 grid, MultiLevelNeck) on a CPU in seconds.
# Assets: python tools/make_tiny_sd.py (writes data/tiny_sd/flux, flux-controlnet, flux-lora/ next to the SD ones)
# and python tools/make_demo_dataset.py. fp32 and no quantization: this is a CPU twin.
_base_ = ['../_base_/gate_tiny_ade20k_40it.py']  # the tiny demo, 40 iterations of batch 2
tiny_root = 'data/tiny_sd'
flux_path = tiny_root + '/flux'
flux_controlnet = tiny_root + '/flux-controlnet'
flux_lora_a = tiny_root + '/flux-lora/a.safetensors'          # diffusers format: attention of every block
flux_lora_b = tiny_root + '/flux-lora/kohya.safetensors'      # kohya (sd-scripts) format

canny = dict(path=flux_controlnet, condition='canny', scale=1.0)
channels = 16  # the tiny transformer's width (FLUX.1: 3072)
neck_channels = 32
model = dict(
    backbone=dict(
        pretrained=flux_path,  # FLUX is detected from the folder
        timestep=50,           # the authors' mapping: sigma 0.126 at 512x512 crops of the tiny demo
        # four taps for the neck's four scales, as the full config: both double-stream blocks and two of the
        # three single-stream ones (the pass stops after single block 1)
        taps=('transformer_blocks.0', 'transformer_blocks.1', 'single_transformer_blocks.0',
              'single_transformer_blocks.1'),
        merge_same_stride=False,  # one level per tap: 4 levels at 1/16
        branches=[
            dict(name='prompt'),
            dict(name='prompt_lora_a_canny', loras=[dict(path=flux_lora_a)], controlnets=[canny]),
            dict(name='prompt_lora_b_canny', loras=[dict(path=flux_lora_b)], controlnets=[canny]),
        ]),
    neck=dict(type='MultiLevelNeck', in_channels=[channels] * 4, out_channels=neck_channels, scales=[4, 2, 1, 0.5]),
    decode_head=dict(in_channels=[neck_channels] * 4, in_index=[0, 1, 2, 3]),
    auxiliary_head=dict(in_channels=neck_channels, in_index=2))
