# Table 2 row "VPD with frozen UNet" on Cityscapes (55.06 mIoU): plain SD1.5, empty prompt, one branch.
_base_ = ['../gate_cityscapes.py']
# raw SD features straight into UPerHead: no amalgamation blocks, as the paper's baseline
model = dict(backbone=dict(prompt='', branches=[dict(name='plain')], amalgamation=None))
