# The ADE20K submission setup (configs/submission/gate_ade20k_test_server.py) on the tiny assets:
# predictions for images/testing written as ADE_test_*.png with class ids 1..150.
_base_ = ['./gate_tiny_ade20k.py']
output_dir = 'work_dirs/ade20k_submission'
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 96), keep_ratio=True),
    dict(type='PackSegInputs'),
]
test_dataloader = dict(dataset=dict(data_prefix=dict(_delete_=True, img_path='images/testing'), pipeline=test_pipeline))
test_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'], format_only=True, output_dir=output_dir)
