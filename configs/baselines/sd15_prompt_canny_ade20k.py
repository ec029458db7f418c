# Ablation: fine-grained prompt + canny ControlNet (one branch).
_base_ = ['../gate_ade20k.py']
model = dict(backbone=dict(branches=[dict(name='prompt_canny', controlnets=[{{_base_.canny}}])]))
