# LoRA "a" for GATE on ADE20K (moderately trained): 30 training images, three caption styles.
#   python tools/caption.py ... --out data/ade/ADEChallengeData2016/captions.json   (sentences)
#   python tools/train.py configs/lora/lora_ade20k_a.py --cfg-options sd_path=... data_root=...
# writes work_dirs/lora_ade20k_a/lora.safetensors (the configs' lora_a).
_base_ = ['../_base_/lora/sd15_locon.py']
data_root = 'data/ade/ADEChallengeData2016'
# caption styles: every image appears once per style. None = the empty caption; the others are
# JSON files {image path relative to data_root: caption} from tools/caption.py (a tagger's tags,
# a captioner's sentence), as the authors' empty / WD14 / Kosmos-2 captions
caption_styles = [None, data_root + '/captions_tags.json', data_root + '/captions.json']
num_images = 30  # the first 30 training images (mmengine `indices`; a list of indices picks others)
crop_size = (512, 512)
meta_keys = ('img_path', 'ori_shape', 'img_shape', 'pad_shape', 'scale_factor', 'flip', 'flip_direction', 'caption')
train_dataloader = dict(
    batch_size=1, num_workers=2, persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type='ConcatDataset', datasets=[
        dict(type='ADE20KDataset', data_root=data_root, indices=num_images,
             data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
             pipeline=[dict(type='LoadImageFromFile'),
                       dict(type='LoadCaption', captions_file=style, data_root=data_root, missing='error'),
                       dict(type='Resize', scale=(4096, 512), keep_ratio=True),  # short side 512
                       dict(type='RandomCrop', crop_size=crop_size),
                       dict(type='PackSegInputs', meta_keys=meta_keys)])
        for style in caption_styles]))
