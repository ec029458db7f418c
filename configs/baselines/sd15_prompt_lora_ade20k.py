# Ablation: fine-grained prompt + LoRA a (one branch).
_base_ = ['../gate_ade20k.py']
model = dict(backbone=dict(branches=[dict(name='prompt_lora_a', loras=[dict(path={{_base_.lora_a}})])]))
