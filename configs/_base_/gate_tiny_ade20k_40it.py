# The tiny demo (../demo/gate_tiny_ade20k.py) with 40 iterations of batch 2: the schedule of the tiny
# twins of other model families (SDXL, SD3, PixArt), which inherit it and set their backbone.
_base_ = ['../demo/gate_tiny_ade20k.py']
train_dataloader = dict(batch_size=2)
max_iters = 40
param_scheduler = [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=max_iters, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=max_iters, max_keep_ckpts=2))
auto_scale_lr = dict(base_batch_size=2)  # this config's batch: the rate is not scaled
