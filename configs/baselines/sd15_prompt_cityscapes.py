# Ablation on Cityscapes: fine-grained prompt only (one branch).
_base_ = ['../gate_cityscapes.py']
model = dict(backbone=dict(branches=[dict(name='prompt')]))
