# Cityscapes test-server submission: *_leftImg8bit.png files holding labelIds (not trainIds).
#   python tools/test.py configs/submission/gate_cityscapes_test_server.py CHECKPOINT
#   cd work_dirs/cityscapes_submission && zip ../cityscapes_submission.zip *.png
_base_ = ['../gate_cityscapes.py']
output_dir = 'work_dirs/cityscapes_submission'
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 1024), keep_ratio=True),
    dict(type='PackSegInputs'),
]
test_dataloader = dict(dataset=dict(data_prefix=dict(img_path='leftImg8bit/test', seg_map_path='gtFine/test'),
                                    pipeline=test_pipeline))
test_evaluator = dict(type='CityscapesMetric', output_dir=output_dir, format_only=True, keep_results=True)
