# LoRA "a" for GATE on Cityscapes (moderately trained): 30 training images, three caption styles.
# See lora_ade20k_a.py for the captions and the commands.
_base_ = ['../_base_/lora/sd15_locon.py']
data_root = 'data/cityscapes'
caption_styles = [None, data_root + '/captions_tags.json', data_root + '/captions.json']
num_images = 30
crop_size = (512, 512)
meta_keys = ('img_path', 'ori_shape', 'img_shape', 'pad_shape', 'scale_factor', 'flip', 'flip_direction', 'caption')
train_dataloader = dict(
    batch_size=1, num_workers=2, persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type='ConcatDataset', datasets=[
        dict(type='CityscapesDataset', data_root=data_root, indices=num_images,
             data_prefix=dict(img_path='leftImg8bit/train', seg_map_path='gtFine/train'),
             pipeline=[dict(type='LoadImageFromFile'),
                       dict(type='LoadCaption', captions_file=style, data_root=data_root, missing='error'),
                       dict(type='Resize', scale=(4096, 512), keep_ratio=True),  # 2048x1024 -> 1024x512
                       dict(type='RandomCrop', crop_size=crop_size),
                       dict(type='PackSegInputs', meta_keys=meta_keys)])
        for style in caption_styles]))
