# GATE on Cityscapes as in the paper (Table 2: 64.20 mIoU): 1024x1024 crops, resized by 0.5 (to 512x512)
# before Stable Diffusion (SD1.5's native size), features brought back to the crop's 1/8..1/32 grid.
# See gate_cityscapes_native.py for SD at full crop resolution.
_base_ = [
    './_base_/models/gate_sd15_upernet.py',
    'mmseg::_base_/datasets/cityscapes_1024x1024.py',
    'mmseg::_base_/default_runtime.py',
    './_base_/schedules/gate_80k.py',
]
sd_path = 'checkpoints/stable-diffusion-v1-5'          # diffusers folder of stable-diffusion-v1-5
controlnet_path = 'checkpoints/sd-controlnet-canny'     # lllyasviel/sd-controlnet-canny
lora_a = 'work_dirs/lora_cityscapes_a/lora.safetensors'  # LoCon, moderately trained on ~30 images (README step 3)
lora_b = 'work_dirs/lora_cityscapes_b/lora.safetensors'  # LoCon, slightly over-fitted (README step 3)
data_root = 'data/cityscapes'
prompt = ('An urban street scene with multiple lanes, various buildings, traffic lights, cars in the lanes, '
          'and pedestrians, highly realistic.')

canny = dict(path=controlnet_path, condition='canny', scale=1.0, condition_cfg=dict(low_threshold=100, high_threshold=200))
crop_size = (1024, 1024)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        pretrained=sd_path,
        prompt=prompt,
        unet_input_scale=0.5,  # the paper: 1024 crops resized to 512 before SD (aspect ratio kept)
        branches=[
            dict(name='prompt'),
            dict(name='prompt_lora_a_canny', loras=[dict(path=lora_a, scale=1.0)], controlnets=[canny]),
            dict(name='prompt_lora_b_canny', loras=[dict(path=lora_b, scale=1.0)], controlnets=[canny]),
        ]),
    decode_head=dict(num_classes=19),
    auxiliary_head=dict(num_classes=19),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(512, 512)))  # the authors' stride
# the authors' training pipeline: a fixed (2048, 1024) resize, no random scaling (their cityscapes.py)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='Resize', scale=(2048, 1024), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(batch_size=2, num_workers=4,  # paper: batch 2
                        dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
