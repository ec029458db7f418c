# Ablation: fine-grained prompt only (one branch).
_base_ = ['../gate_ade20k.py']
model = dict(backbone=dict(branches=[dict(name='prompt')]))
