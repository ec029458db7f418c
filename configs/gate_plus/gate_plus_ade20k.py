# GATE+ (our variant, UNVALIDATED on real data): learnable bottleneck refiners and one weight assigner
# per branch, instead of the authors' effective x + b refiners and shared assigner. Compare with
# configs/gate_ade20k.py (the paper's recipe) before trusting it.
_base_ = ['../gate_ade20k.py']
model = dict(backbone=dict(amalgamation=dict(
    refiner='bottleneck',    # x + conv1x1(conv3x3(conv1x1(x))), 128-channel bottleneck, last conv small
    shared_assigner=False,   # one assigner per branch
    dropout=0.1)))
