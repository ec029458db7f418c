# LoRA "b" for GATE on NYU-Depth-v2: as "a", trained twice as long (the paper's slightly over-fitted adapter).
_base_ = ['./lora_nyu_a.py']
max_iters = 6000
train_cfg = dict(max_iters=max_iters)
