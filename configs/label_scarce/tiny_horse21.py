# gate_sd15_horse21.py on the tiny random SD assets and a synthetic Horse-21 twin (64 px): the same code paths,
# a 2-core CPU runs it in a minute. Assets: python tools/make_tiny_sd.py; data (data/demo/horse_21/real):
# python -c "from mmseg_gate.testing.synthetic_data import make_ddpm_segmentation_like as m; m('data/demo')"
_base_ = ['./gate_sd15_horse21.py']
data_root = 'data/demo/horse_21/real'
tiny_size = (64, 64)
canny = dict(path='data/tiny_sd/controlnet-canny', condition='canny', scale=1.0)
model = dict(
    data_preprocessor=dict(size=tiny_size),
    backbone=dict(pretrained='data/tiny_sd/sd', dtype='fp32',  # fp32: CPUs without bf16 instructions
                  branches=[dict(name='prompt'), dict(name='prompt_canny', controlnets=[canny])],
                  amalgamation=dict(hidden_channels=16)),
    decode_head=dict(in_channels=[64 + 154, 64, 64], num_models=4, pixels_per_image=256))
cache_pipeline = [dict(type='LoadImageFromFile'), dict(type='Resize', scale=tiny_size, keep_ratio=False),
                  dict(type='PackSegInputs')]
train_pipeline = [dict(type='LoadImageFromFile'), dict(type='Resize', scale=tiny_size, keep_ratio=False),
                  dict(type='LoadNpyAnnotations', label_size=tiny_size, min_region_pixels=20),
                  dict(type='PackSegInputs')]
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='Resize', scale=tiny_size, keep_ratio=False),
                 dict(type='LoadNpyAnnotations', label_size=tiny_size), dict(type='PackSegInputs')]
train_dataloader = dict(num_workers=0, dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(num_workers=0, dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
max_iters = 40
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(checkpoint=dict(interval=max_iters), logger=dict(interval=10))
