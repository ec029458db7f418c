# LoRA training (configs/lora/lora_ade20k_a.py) on the tiny random SD and the synthetic ADE20K-layout
# data (tools/demo.py or tools/make_tiny_sd.py + tools/make_demo_dataset.py make them): seconds on a CPU.
_base_ = ['../lora/lora_ade20k_a.py']
sd_path = 'data/tiny_sd/sd'
data_root = 'data/demo/ADEChallengeData2016'
caption_styles = [None, data_root + '/captions_tags.json']  # make_demo_dataset writes tag captions
crop_size = (64, 64)
model = dict(pretrained=sd_path, rank=4, alpha=2, conv_rank=2, conv_alpha=1, dtype='fp32',
             data_preprocessor=dict(size=crop_size))
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(type='ConcatDataset', datasets=[
        dict(type='ADE20KDataset', data_root=data_root, indices=8,
             data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
             pipeline=[dict(type='LoadImageFromFile'),
                       dict(type='LoadCaption', captions_file=style, data_root=data_root, missing='error'),
                       dict(type='RandomCrop', crop_size=crop_size),
                       dict(type='PackSegInputs', meta_keys={{_base_.meta_keys}})])
        for style in caption_styles]))
optim_wrapper = dict(optimizer=dict(lr=2e-3))  # tiny model, few steps
max_iters = 40
train_cfg = dict(max_iters=max_iters)
default_hooks = dict(logger=dict(interval=5), checkpoint=dict(interval=20))
env_cfg = dict(dist_cfg=dict(backend='gloo'))
