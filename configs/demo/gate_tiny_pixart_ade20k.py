# configs/dit/gate_pixart_sigma_ade20k.py's model on the tiny random PixArt-Sigma (3 blocks of 16 channels), with
# the tiny demo's data (gate_tiny_ade20k.py), 40 iterations: the PixArt code paths (T5 with its mask, DDPM noise from
# the folder's scheduler config, per-branch timesteps in one batched call, token taps on the 1/16 grid,
# MultiLevelNeck) on a CPU in seconds. No ControlNet and no LoRA: diffusers has neither for PixArt.
# Assets: python tools/make_tiny_sd.py (writes data/tiny_sd/pixart-sigma next to the SD ones) and
# python tools/make_demo_dataset.py. Own variable name: tools/demo.py's SD1.5 overrides leave it alone.
_base_ = ['../_base_/gate_tiny_ade20k_40it.py']  # the tiny demo, 40 iterations of batch 2
tiny_root = 'data/tiny_sd'
pixart_path = tiny_root + '/pixart-sigma'

channels = 16  # the tiny transformer's width (PixArt-Sigma: 1152)
neck_channels = 32
model = dict(
    backbone=dict(
        pretrained=pixart_path,  # PixArt-Sigma is detected from the folder (PixArtSigmaPipeline)
        timestep=50,
        # four taps for the neck's four scales, as the full config; the tiny model has 3 blocks (PixArt-Sigma:
        # 28), so one is a block's self-attention output
        taps=('transformer_blocks.0', 'transformer_blocks.1.attn1', 'transformer_blocks.1', 'transformer_blocks.2'),
        merge_same_stride=False,  # one level per tap: 4 levels at 1/16
        branches=[dict(name='prompt_t50'), dict(name='prompt_t150', timestep=150),
                  dict(name='prompt_t300', timestep=300)]),
    neck=dict(type='MultiLevelNeck', in_channels=[channels] * 4, out_channels=neck_channels, scales=[4, 2, 1, 0.5]),
    decode_head=dict(in_channels=[neck_channels] * 4, in_index=[0, 1, 2, 3]),
    auxiliary_head=dict(in_channels=neck_channels, in_index=2))
