# Label-scarce segmentation on Bedroom-28 (GATE paper: 53.1 ± 2.7 mIoU over five random splits); as
# gate_sd15_horse21.py with the bedroom prompt and classes (29, background included, as the GATE authors').
_base_ = ['./gate_sd15_horse21.py']
data_root = 'data/ddpm_segmentation/bedroom_28/real'
model = dict(backbone=dict(prompt='a photo of a bedroom'),  # the authors' prompt pattern ("a photo of a horse")
             decode_head=dict(num_classes=29))
train_dataloader = dict(dataset=dict(type='Bedroom28Dataset', data_root=data_root))
val_dataloader = dict(dataset=dict(type='Bedroom28Dataset', data_root=data_root))
test_dataloader = val_dataloader
