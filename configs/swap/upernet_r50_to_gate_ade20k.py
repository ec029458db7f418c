# Recipe for any mmseg config: inherit it, replace the backbone, fix the head channels.
# Here mmseg's own UPerNet-R50 ADE20K config runs on GATE's SD1.5 features (one plain branch).
_base_ = 'mmseg::upernet/upernet_r50_4xb4-80k_ade20k-512x512.py'
custom_imports = dict(imports=['mmseg_gate'], allow_failed_imports=False)
sd_path = 'checkpoints/stable-diffusion-v1-5'
model = dict(
    pretrained=None,  # the R50 config's ImageNet checkpoint; SD's location goes to the backbone instead
    backbone=dict(
        _delete_=True,
        type='GATEDiffusionBackbone',
        pretrained=sd_path,
        dtype='bf16',
        # the preprocessor keeps ImageNet mean/std; the backbone undoes it to feed SD [-1, 1]
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        branches=[dict(name='plain')],
        amalgamation=dict(norm_cfg=dict(type='SyncBN', requires_grad=True))),
    # SD1.5 gives 3 levels (1/8, 1/16, 1/32) instead of ResNet's 4
    decode_head=dict(in_channels=[640, 1280, 1280], in_index=[0, 1, 2], pool_scales=(1, 2, 3)),
    auxiliary_head=dict(in_channels=1280, in_index=1))
custom_hooks = [dict(type='GATECheckHook')]
