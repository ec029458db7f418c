"""The backbone inside a stock mmseg EncoderDecoder + UPerHead: build, train a step, predict.

Marked ``device`` (docs/gpu.md): on ``--device``/``--dtype`` the segmentor trains there with its frozen stack in
that dtype, and with mmengine's AmpOptimWrapper (``--amp``, CUDA only)."""
import pytest
import torch

from conftest import backbone_cfg, gate_branches


def segmentor_cfg(tiny, num_classes=5, dtype='fp32'):
    norm = dict(type='BN', requires_grad=True)
    return dict(
        type='EncoderDecoder',
        data_preprocessor=dict(type='SegDataPreProcessor', mean=[127.5] * 3, std=[127.5] * 3, bgr_to_rgb=True,
                               pad_val=0, seg_pad_val=255, size=(64, 64)),
        backbone=backbone_cfg(tiny, branches=gate_branches(tiny), dtype=dtype),
        decode_head=dict(type='UPerHead', in_channels=[64, 64, 64], in_index=[0, 1, 2], pool_scales=(1, 2, 3),
                         channels=16, dropout_ratio=0.1, num_classes=num_classes, norm_cfg=norm, align_corners=False,
                         loss_decode=[dict(type='CrossEntropyLoss', loss_weight=1.0),
                                      dict(type='LovaszLoss', reduction='none', loss_weight=1.0)]),
        auxiliary_head=dict(type='FCNHead', in_channels=64, in_index=1, channels=16, num_convs=1, num_classes=num_classes,
                            norm_cfg=norm, align_corners=False, loss_decode=dict(type='CrossEntropyLoss', loss_weight=0.4)),
        train_cfg=dict(), test_cfg=dict(mode='whole'))


@pytest.mark.device
@pytest.mark.parametrize('amp', [False, True], ids=['fp32-heads', 'amp'])
def test_encoder_decoder_trains_one_step(tiny, device, dtype, amp):
    if amp and device.type != 'cuda':
        pytest.skip("--amp (mmengine's AmpOptimWrapper) needs a GPU: run with --device cuda")
    from mmengine.optim import build_optim_wrapper
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample
    import mmseg_gate  # noqa: F401
    from mmseg.utils import register_all_modules
    register_all_modules()
    from mmengine.config import ConfigDict
    model = MODELS.build(ConfigDict(segmentor_cfg(tiny, dtype=dtype)))
    model.init_weights()
    model.to(device)  # what mmengine's Runner does: the frozen stack follows (GATEDiffusionBackbone._apply)
    frozen = model.backbone.frozen_modules()
    assert frozen.denoiser.device.type == frozen.vae.device.type == device.type
    assert frozen.dtype == {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}[dtype]
    wrapper = build_optim_wrapper(model, dict(type='AmpOptimWrapper' if amp else 'OptimWrapper',
                                              optimizer=dict(type='AdamW', lr=1e-3)))
    samples = []
    for _ in range(2):
        s = SegDataSample(metainfo=dict(img_shape=(64, 64), ori_shape=(64, 64), pad_shape=(64, 64)))
        s.gt_sem_seg = PixelData(data=torch.randint(0, 5, (1, 64, 64)))
        samples.append(s)
    data = dict(inputs=[torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8) for _ in range(2)],
                data_samples=samples)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    losses = model.train_step(data, wrapper)
    assert torch.isfinite(losses['loss']) if 'loss' in losses else all(torch.isfinite(v) for v in losses.values())
    assert all(p.device.type == device.type for p in model.parameters())
    changed = [n for n, p in model.named_parameters() if not torch.equal(before[n], p)]
    assert any(n.startswith('backbone.amalgamation') for n in changed)
    assert any(n.startswith('decode_head') for n in changed)
    model.eval()
    preds = model.test_step(dict(inputs=data['inputs'][:1], data_samples=[samples[0]]))
    assert preds[0].pred_sem_seg.data.shape == (1, 64, 64)
    # no frozen weights leak into the checkpoint
    assert not any('unet' in k or 'vae' in k for k in model.state_dict())
