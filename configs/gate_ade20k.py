# GATE on ADE20K (paper, Table 2: 40.51 mIoU): three branches amalgamated.
#   B1 fine-grained prompt; B2 prompt + LoRA a + canny ControlNet; B3 prompt + LoRA b + canny ControlNet.
# Weight and data locations: edit below or override, e.g.
#   python tools/train.py configs/gate_ade20k.py --cfg-options sd_path=/models/sd15 data_root=/data/ade/ADEChallengeData2016
_base_ = [
    './_base_/models/gate_sd15_upernet.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    './_base_/schedules/gate_80k.py',
]
sd_path = 'checkpoints/stable-diffusion-v1-5'          # diffusers folder of stable-diffusion-v1-5
controlnet_path = 'checkpoints/sd-controlnet-canny'     # lllyasviel/sd-controlnet-canny
lora_a = 'work_dirs/lora_ade20k_a/lora.safetensors'  # LoCon, moderately trained on ~30 ADE20K images (README step 3)
lora_b = 'work_dirs/lora_ade20k_b/lora.safetensors'  # LoCon, slightly over-fitted (README step 3)
data_root = 'data/ade/ADEChallengeData2016'
prompt = ('a highly realistic photo of the real world. It can be an indoor scene, or an outdoor scene, '
          'or a photo of nature. high quality.')

canny = dict(path=controlnet_path, condition='canny', scale=1.0, condition_cfg=dict(low_threshold=100, high_threshold=200))
crop_size = (512, 512)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        pretrained=sd_path,
        prompt=prompt,
        branches=[
            dict(name='prompt'),
            dict(name='prompt_lora_a_canny', loras=[dict(path=lora_a, scale=1.0)], controlnets=[canny]),
            dict(name='prompt_lora_b_canny', loras=[dict(path=lora_b, scale=1.0)], controlnets=[canny]),
        ]),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(512, 512)))
train_dataloader = dict(batch_size=2, num_workers=4, dataset=dict(data_root=data_root))  # paper: batch 2
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
