# GATE on FLUX.1-schnell, ADE20K: configs/dit/gate_flux1_dev_ade20k.py with the timestep-distilled, Apache-2.0
# model. UNVALIDATED ON REAL DATA. What differs from dev, read from the folder:
# - no guidance embedding (giving guidance= fails at build);
# - its scheduler has no resolution-dependent shift (shift 1): the authors' t=50 maps to sigma 0.071 at every
#   resolution, not dev's 0.195 at 1024 (schnell's 28 steps are k/28 apart: for dev's noise level give sigma=0.195);
# - the FLUX ControlNets are trained on dev: on schnell they get dev's default guidance, as diffusers'
#   FluxControlNetPipeline does; their effect on schnell's features is unmeasured.
_base_ = ['./gate_flux1_dev_ade20k.py']
sd_path = 'checkpoints/FLUX.1-schnell'  # black-forest-labs/FLUX.1-schnell (diffusers folder)
model = dict(backbone=dict(pretrained=sd_path))
