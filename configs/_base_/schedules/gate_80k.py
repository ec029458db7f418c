# The paper's schedule: 80k iterations, AdamW 1.6e-4, weight decay 1e-3, poly decay (power 0.9).
_base_ = 'mmseg::_base_/schedules/schedule_80k.py'
optimizer = dict(_delete_=True, type='AdamW', lr=1.6e-4, betas=(0.9, 0.999), weight_decay=1e-3)
optim_wrapper = dict(type='OptimWrapper', optimizer=optimizer, clip_grad=None)
param_scheduler = [dict(type='PolyLR', eta_min=0.0, power=0.9, begin=0, end=80000, by_epoch=False)]
default_hooks = dict(checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=8000, max_keep_ckpts=3))
