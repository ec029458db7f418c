# GATE+ on Cityscapes (our variant, UNVALIDATED on real data): see gate_plus_ade20k.py.
_base_ = ['../gate_cityscapes.py']
model = dict(backbone=dict(amalgamation=dict(refiner='bottleneck', shared_assigner=False, dropout=0.1)))
