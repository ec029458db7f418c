# configs/sdxl/gate_sdxl_ade20k.py's model on the tiny random SDXL (tools/make_tiny_sd.py), with the tiny
# demo's data (gate_tiny_ade20k.py), 40 iterations: the SDXL code paths (two text encoders, time ids, an
# SDXL ControlNet, a kohya LoRA on the UNet and both text encoders, token taps) on a CPU in seconds.
_base_ = ['../_base_/gate_tiny_ade20k_40it.py']  # the tiny demo, 40 iterations of batch 2
tiny_root = 'data/tiny_sd'
controlnet_path = tiny_root + '/sdxl-controlnet'
lora_b = tiny_root + '/sdxl-lora/b.safetensors'  # kohya format: UNet and both text encoders

canny = dict(path=controlnet_path, condition='canny', scale=1.0)
model = dict(
    backbone=dict(
        pretrained=tiny_root + '/sdxl',  # SDXL is detected from the folder (text_encoder_2/)
        # the SDXL config's kinds of taps; the tiny SDXL has 2 transformer blocks at 1/32 (SDXL: 10)
        taps=('up_blocks.1.upsamplers.0',
              'up_blocks.1.attentions.0.transformer_blocks.0', 'up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_q',
              'up_blocks.0.attentions.0.transformer_blocks.1', 'up_blocks.0.attentions.0.transformer_blocks.0'),
        merge_same_stride=True,  # one level per stride: 1/8 (64), 1/16 (64 + 64), 1/32 (64 + 64)
        branches=[dict(name='prompt'), dict(name='prompt_canny', controlnets=[canny]),
                  dict(name='prompt_lora_b_canny', loras=[dict(path=lora_b)], controlnets=[canny])]),
    decode_head=dict(in_channels=[64, 128, 128]),
    auxiliary_head=dict(in_channels=128))
