# ADE20K test-server submission: one PNG per test image (ADE_test_*.png), class ids 1..150.
#   python tools/test.py configs/submission/gate_ade20k_test_server.py CHECKPOINT
#   cd work_dirs/ade20k_submission && zip -r ../ade20k_submission.zip .
# Test images (release_test/testing/*.jpg) go to <data_root>/images/testing.
_base_ = ['../gate_ade20k.py']
output_dir = 'work_dirs/ade20k_submission'
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    dict(type='PackSegInputs'),  # no annotations on the test set
]
test_dataloader = dict(dataset=dict(data_prefix=dict(_delete_=True, img_path='images/testing'), pipeline=test_pipeline))
test_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'], format_only=True, output_dir=output_dir)
