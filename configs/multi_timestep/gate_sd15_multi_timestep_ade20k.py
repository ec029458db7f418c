# Multi-timestep ensemble (as Diffusion Hyperfeatures aggregates timesteps): the fine-grained prompt at
# three noise levels, amalgamated as GATE's branches. The three branches still share one batched UNet call
# (the UNet takes a timestep per sample). Our variant, unvalidated on real data.
_base_ = ['../gate_ade20k.py']
model = dict(backbone=dict(branches=[
    dict(name='prompt_t51'),                  # the backbone's timestep (51, the paper's "t=50")
    dict(name='prompt_t151', timestep=151),
    dict(name='prompt_t301', timestep=301),
]))
