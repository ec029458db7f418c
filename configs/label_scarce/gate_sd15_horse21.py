# Label-scarce segmentation on Horse-21 (DDPM-segmentation's set; GATE paper: 67.2 ± 1.1 mIoU over five random
# splits): frozen SD1.5 features at 512 with the up-stage cross-attention maps, DatasetGAN's pixel-classifier
# ensemble on the features upsampled to the 256x256 labels. Runs live (SD every step); the cached twin
# gate_sd15_horse21_cached.py trains the same model from features extracted once (docs/label_scarce.md).
# Five splits, mean ± std: python tools/label_scarce_splits.py configs/label_scarce/gate_sd15_horse21_cached.py
_base_ = ['../_base_/models/gate_sd15_upernet.py', 'mmseg::_base_/default_runtime.py']
sd_path = 'checkpoints/stable-diffusion-v1-5'
controlnet_path = 'checkpoints/sd-controlnet-canny'
data_root = 'data/ddpm_segmentation/horse_21/real'  # datasets.tar.gz of yandex-research/ddpm-segmentation
dataset_type = 'Horse21Dataset'
prompt = 'a photo of a horse'      # the GATE authors' label-scarce prompt (scarce_segmentation/README.md)
num_classes = 21
sd_size = (512, 512)               # SD1.5's input (the authors' --img_size 512)
label_size = (256, 256)            # the authors' label resolution (dim [256, 256, C])
split_seed = 0                     # the paper's random split; tools/label_scarce_splits.py sets 0..4

norm_cfg = dict(type='BN', requires_grad=True)
canny = dict(path=controlnet_path, condition='canny', scale=1.0, condition_cfg=dict(low_threshold=100, high_threshold=200))
model = dict(
    data_preprocessor=dict(size=sd_size),  # training batches are stacked at SD's input size (mmseg needs one)
    backbone=dict(
        pretrained=sd_path,
        prompt=prompt,
        noise='fixed',  # train = eval features: what a cache holds, so live and cached training agree
        # up-stage cross-attention at 1/32 and 1/16, averaged per stride, at 1/8: 2 x 77 channels joined to
        # the 1/8 tap (the authors' --attention up_cross)
        attention=dict(layers='up_cross', strides=(32, 16), average_layers=True, stride=8),
        merge_same_stride=True,
        # GATE's techniques without dataset LoRAs (none published for Horse-21); add
        # dict(name='prompt_lora_a_canny', loras=[dict(path=...)], controlnets=[canny], denoising_from=60)
        # branches with LoRAs trained on the training images (configs/lora/)
        branches=[dict(name='prompt'), dict(name='prompt_canny', controlnets=[canny])],
        amalgamation=dict(norm_cfg=norm_cfg)),
    decode_head=dict(
        _delete_=True,
        type='PixelClassifierHead',
        in_channels=[640 + 154, 1280, 1280],
        num_classes=num_classes,
        num_models=10,              # the papers' ensemble of 10
        pixels_per_image=1024,      # labelled pixels per image and member per step (ours; theirs: 64-pixel batches)
        ignore_index=255,
        loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0)),
    auxiliary_head=None,
    test_cfg=dict(mode='whole'))

cache_pipeline = [  # what the backbone sees of an image (no augmentation); also the feature cache's
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=sd_size, keep_ratio=False),
    dict(type='PackSegInputs'),
]
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=sd_size, keep_ratio=False),
    dict(type='LoadNpyAnnotations', label_size=label_size, min_region_pixels=20),  # theirs: < 20 px ignored
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=sd_size, keep_ratio=False),
    dict(type='LoadNpyAnnotations', label_size=label_size),  # scored at 256 (ori_shape = label size)
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=2, num_workers=2, persistent_workers=False, sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root, split='train', split_seed=split_seed,
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=2, persistent_workers=False, sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, split='test', split_seed=split_seed,
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator

max_iters = 4000  # ours (the authors stop each member early on its loss); unvalidated on the real data
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='Adam', lr=1e-3))  # the authors' Adam 1e-3
param_scheduler = []
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=2),
                     logger=dict(type='LoggerHook', interval=100, log_metric_by_epoch=False))
randomness = dict(seed=split_seed)
