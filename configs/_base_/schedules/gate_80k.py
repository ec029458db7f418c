# The authors' schedule (generic-diffusion-feature segmentation/configs/_base_/schedules/schedule_80k.py):
# 80k iterations, AdamW 1.6e-4, weight decay 1e-3, poly decay (power 0.9) down to 1e-4, batch 2.
_base_ = 'mmseg::_base_/schedules/schedule_80k.py'
optimizer = dict(_delete_=True, type='AdamW', lr=1.6e-4, betas=(0.9, 0.999), weight_decay=1e-3)
optim_wrapper = dict(type='OptimWrapper', optimizer=optimizer, clip_grad=None)
param_scheduler = [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=80000, by_epoch=False)]
# AtomicCheckpointHook: mmengine's CheckpointHook, but each file is written under a temporary name and renamed, and the
# oldest is removed only after the new one and last_checkpoint are in place (a kill mid-save loses nothing)
default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook', by_epoch=False, interval=8000, max_keep_ckpts=3))
# the paper trained with batch 2 in all (one GPU): with N GPUs x batch 2 the rate scales by N
auto_scale_lr = dict(enable=True, base_batch_size=2)
