# GATE on NYU-Depth-v2 depth (UNVALIDATED ON REAL DATA: the paper evaluates segmentation only): the paper's three
# branches, amalgamated per level, into mmseg's VPDDepthHead.
#   B1 fine-grained prompt; B2 prompt + LoRA a + canny ControlNet; B3 prompt + LoRA b + canny ControlNet.
# LoRAs: python tools/train.py configs/depth/lora_nyu_a.py (and _b), as configs/lora/ for ADE20K.
#   python tools/train.py configs/depth/gate_sd15_nyu.py --cfg-options sd_path=/models/sd15 data_root=/data/nyu
_base_ = ['./_base_/gate_sd15_vpd_nyu.py']
controlnet_path = 'checkpoints/sd-controlnet-canny'  # lllyasviel/sd-controlnet-canny
lora_a = 'work_dirs/lora_nyu_a/lora.safetensors'      # LoCon, moderately trained on 30 NYU training images
lora_b = 'work_dirs/lora_nyu_b/lora.safetensors'      # slightly over-fitted
# ours (the authors wrote one per segmentation dataset, none for NYU): indoor scenes, as theirs describe the data
prompt = 'a highly realistic photo of an indoor scene, a room of a home, an office or a shop. high quality.'

canny = dict(path=controlnet_path, condition='canny', scale=1.0,
             condition_cfg=dict(low_threshold=100, high_threshold=200))
model = dict(backbone=dict(
    prompt=prompt,
    branches=[
        dict(name='prompt'),
        dict(name='prompt_lora_a_canny', loras=[dict(path=lora_a, scale=1.0)], controlnets=[canny]),
        dict(name='prompt_lora_b_canny', loras=[dict(path=lora_b, scale=1.0)], controlnets=[canny]),
    ]))
