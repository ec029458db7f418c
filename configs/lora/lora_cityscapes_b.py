# LoRA "b" for GATE on Cityscapes: as "a", trained twice as long (slightly over-fitted).
_base_ = ['./lora_cityscapes_a.py']
max_iters = 6000
train_cfg = dict(max_iters=max_iters)
