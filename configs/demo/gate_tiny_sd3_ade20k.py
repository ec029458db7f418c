# configs/dit/gate_sd35_medium_ade20k.py's model on the tiny random SD3 (SD3.5-medium-shaped: dual attention,
# RMS q/k norm; 3 blocks of 16 channels), with the tiny demo's data (gate_tiny_ade20k.py), 40 iterations: the SD3
# code paths (three text encoders, flow-matching noise, an InstantX-kind SD3 ControlNet, diffusers-format LoRAs as
# mixed-adapter batches, token taps on the 1/16 grid, MultiLevelNeck) on a CPU in seconds.
# Assets: python tools/make_tiny_sd.py (writes data/tiny_sd/sd3, sd3-controlnet, sd3-lora/ next to the SD ones)
# and python tools/make_demo_dataset.py. Own variable names: tools/demo.py's SD1.5 overrides leave them alone.
_base_ = ['../_base_/gate_tiny_ade20k_40it.py']  # the tiny demo, 40 iterations of batch 2
tiny_root = 'data/tiny_sd'
sd3_path = tiny_root + '/sd3'
sd3_controlnet = tiny_root + '/sd3-controlnet'
sd3_lora_a = tiny_root + '/sd3-lora/a.safetensors'  # transformer image-stream attention
sd3_lora_b = tiny_root + '/sd3-lora/b.safetensors'  # text stream + feed-forward, and the first CLIP

canny = dict(path=sd3_controlnet, condition='canny', scale=1.0)
channels = 16  # the tiny transformer's width (SD3.5-medium: 1536)
neck_channels = 32
model = dict(
    backbone=dict(
        pretrained=sd3_path,  # SD3 is detected from the folder (transformer/ and text_encoder_3/)
        timestep=50,          # sigma 0.111 (SD3's shift 3), as the full config
        # four taps for the neck's four scales, as the full config; the tiny model has 3 blocks (SD3.5-medium:
        # 24), so one is a block's attention output; block 2 is the last (context_pre_only)
        taps=('transformer_blocks.0', 'transformer_blocks.1.attn', 'transformer_blocks.1', 'transformer_blocks.2'),
        merge_same_stride=False,  # one level per tap: 4 levels at 1/16
        branches=[
            dict(name='prompt'),
            dict(name='prompt_lora_a_canny', loras=[dict(path=sd3_lora_a)], controlnets=[canny]),
            dict(name='prompt_lora_b_canny', loras=[dict(path=sd3_lora_b)], controlnets=[canny]),
        ]),
    neck=dict(type='MultiLevelNeck', in_channels=[channels] * 4, out_channels=neck_channels, scales=[4, 2, 1, 0.5]),
    decode_head=dict(in_channels=[neck_channels] * 4, in_index=[0, 1, 2, 3]),
    auxiliary_head=dict(in_channels=neck_channels, in_index=2))
