# Ablation: all three techniques in a single branch (prompt + LoRA a + canny ControlNet), no amalgamation
# of branches; compare with gate_ade20k.py (three branches amalgamated).
_base_ = ['../gate_ade20k.py']
model = dict(backbone=dict(branches=[dict(name='prompt_lora_a_canny', loras=[dict(path={{_base_.lora_a}})],
                                          controlnets=[{{_base_.canny}}])]))
