# LoRA "a" for GATE on NYU-Depth-v2 (moderately trained): configs/lora/lora_ade20k_a.py's recipe (LoCon rank 64 /
# conv 32, 3000 steps of batch 1) on the first 30 NYU training images, with the empty caption and, when you have
# them, a captioner's sentences (python tools/caption.py ... --images images/train --out data/nyu/captions.json).
#   python tools/train.py configs/depth/lora_nyu_a.py --cfg-options sd_path=... data_root=...
# writes work_dirs/lora_nyu_a/lora.safetensors (../depth/gate_sd15_nyu.py's lora_a).
_base_ = ['../lora/lora_ade20k_a.py']
data_root = 'data/nyu'
caption_styles = [None]  # add data_root + '/captions.json' (tools/caption.py) for the authors' sentence style
train_dataloader = dict(dataset=dict(_delete_=True, type='ConcatDataset', datasets=[
    dict(type='NYUDataset', data_root=data_root, indices={{_base_.num_images}},
         data_prefix=dict(img_path='images/train', depth_map_path='annotations/train'),
         pipeline=[dict(type='LoadImageFromFile'),
                   dict(type='LoadCaption', captions_file=style, data_root=data_root, missing='error'),
                   dict(type='Resize', scale=(4096, 512), keep_ratio=True),  # short side 512 (NYU: 480x640)
                   dict(type='RandomCrop', crop_size={{_base_.crop_size}}),
                   dict(type='PackSegInputs', meta_keys={{_base_.meta_keys}})])
    for style in caption_styles]))
