# Table 2 row "VPD with frozen UNet" (37.63 mIoU): plain SD1.5 features, empty prompt, one branch.
_base_ = ['../gate_ade20k.py']
# raw SD features straight into UPerHead: no amalgamation blocks, as the paper's baseline
model = dict(backbone=dict(prompt='', branches=[dict(name='plain')], amalgamation=None))
