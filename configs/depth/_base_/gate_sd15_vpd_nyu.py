# Depth on NYU-Depth-v2 through mmseg's own depth stack: mmseg's VPD config (DepthEstimator, NYUDataset,
# VPDDepthHead with SiLog loss and max_depth 10, DepthMetric with the NYU crop, slide_flip test at 480) with the
# frozen GATE backbone in place of VPD's fine-tuned UNet. Every depth config inherits this and sets its branches.
# Changed from mmseg's config, each for a reason (docs/depth.md):
#   - the backbone (VPD's lr_mult on the UNet is moot: the frozen stack has no parameters);
#   - RandomDepthMix dropped: mmseg 1.2.2 writes the depth in millimetres into the uint8 image, modulo 256;
#   - DepthMetric writes millimetre PNGs (depth_scale_factor) with --out; two checkpoints kept.
_base_ = 'mmseg::vpd/vpd_sd_4xb8-25k_nyu-480x480.py'
custom_imports = dict(imports=['mmseg_gate'], allow_failed_imports=False)  # registers the backbone
sd_path = 'checkpoints/stable-diffusion-v1-5'  # diffusers folder of stable-diffusion-v1-5
data_root = 'data/nyu'                         # mmseg's NYU layout (tools/dataset_converters/nyu.py)
norm_cfg = dict(type='SyncBN', requires_grad=True)  # reverted to BN automatically on one process
crop_size = (480, 480)  # VPD's
# the head cuts this many 1/32 cells off the bottom and right; the backbone pads 480 -> 512 (a multiple of 64),
# exactly one cell: both must agree (the backbone refuses inputs where they would not)
fmap_border = (1, 1)
model = dict(
    backbone=dict(
        _delete_=True,
        type='GATEDiffusionBackbone',
        pretrained=sd_path,
        dtype='bf16',  # frozen parts on GPU; 'fp32' on CPU
        # VPD's taps (its LDM output_blocks 1, 4, 7 and the last up block's output): 320, 640, 1280, 1280
        # channels at 1/8, 1/16, 1/32, 1/64 (mmseg_gate.models.pyramid.VPD_TAPS)
        taps=('up_blocks.0.resnets.1', 'up_blocks.1.attentions.1', 'up_blocks.2.attentions.1', 'up_blocks.3'),
        pyramid=dict(type='vpd', fmap_border=fmap_border),  # four levels on the grid padded to 64, as VPD's
        timestep=51,   # the GATE configs' "t=50" (configs/gate_ade20k.py); the baseline uses VPD's t=1
        prompt='',
        branches=[dict(name='basic')],
        amalgamation=dict(refiner='bias', refine_blocks=4, fuse_blocks=2, shared_assigner=True,
                          hidden_channels=128, dropout=0.5, norm_cfg=norm_cfg)),  # GATE's, as gate_sd15_upernet.py
    decode_head=dict(fmap_border=fmap_border))  # in_channels [320, 640, 1280, 1280], max_depth 10: VPD's
# VPD's custom_keys (backbone.encoder_vq lr_mult 0, backbone.unet 0.01) match no parameter here
optim_wrapper = dict(paramwise_cfg=dict(custom_keys=dict(_delete_=True)))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadDepthAnnotation', depth_rescale_factor=1e-3),  # 16-bit millimetres -> metres
    dict(type='RandomFlip', prob=0.5),
    dict(type='RandomCrop', crop_size=crop_size),
    dict(type='Albu', transforms=[dict(type='RandomBrightnessContrast'), dict(type='RandomGamma'),
                                  dict(type='HueSaturationValue')]),
    dict(type='PackSegInputs', meta_keys=('img_path', 'depth_map_path', 'ori_shape', 'img_shape', 'pad_shape',
                                          'scale_factor', 'flip', 'flip_direction', 'category_id')),  # the scene
]
train_dataloader = dict(dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
# never depth_metrics=[...]: mmseg 1.2.2's DepthMetric rejects every list (a broken isinstance check)
val_evaluator = dict(depth_scale_factor=1000.0)  # --out writes 16-bit millimetre PNGs, as NYU's
test_evaluator = val_evaluator
default_hooks = dict(checkpoint=dict(max_keep_ckpts=2))  # VPD keeps one; GATECheckHook makes saves atomic
custom_hooks = [dict(type='GATECheckHook')]
