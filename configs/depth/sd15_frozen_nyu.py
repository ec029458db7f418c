# Baseline: VPD with a frozen SD1.5 (GATE's Table 2 baseline, for depth): one branch of plain features as VPD
# extracts them (clean latents at t=1, its four taps), empty prompt, no amalgamation, straight into VPDDepthHead.
#   python tools/train.py configs/depth/sd15_frozen_nyu.py --cfg-options sd_path=/models/sd15 data_root=/data/nyu
_base_ = ['./_base_/gate_sd15_vpd_nyu.py']
model = dict(backbone=dict(
    timestep=1, noise='none',  # VPD: posterior mode, no noise, the UNet told t=1
    prompt='', branches=[dict(name='plain')], amalgamation=None))
