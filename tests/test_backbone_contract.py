"""What mmseg and users rely on: determinism, frozen weights, checkpoints, shapes, dtypes."""
import copy

import pytest
import torch

from conftest import backbone_cfg, build, gate_branches


@pytest.fixture(scope='module')
def model(tiny):
    return build(backbone_cfg(tiny, branches=gate_branches(tiny)))


def test_outputs_high_resolution_first_with_out_channels(model, image):
    feats = model(image)
    h, w = image.shape[-2:]
    assert [f.shape[-2:] for f in feats] == [(-(-h // s), -(-w // s)) for s in (8, 16, 32)]
    assert [f.shape[1] for f in feats] == model.out_channels == [64, 64, 64]
    assert model.strides == [8, 16, 32]
    assert all(f.dtype == torch.float32 for f in feats)


@pytest.mark.parametrize('hw', [(70, 100), (64, 64), (33, 129)])
def test_any_input_size(model, hw):
    img = torch.rand(2, 3, *hw) * 2 - 1
    feats = model(img)
    assert [tuple(f.shape) for f in feats] == [(2, 64, -(-hw[0] // s), -(-hw[1] // s)) for s in (8, 16, 32)]


def test_resize_mode_keeps_the_output_grid(tiny, image):
    m = build(backbone_cfg(tiny, unet_input_scale=2.0))
    feats = m(image)
    assert [f.shape[-2:] for f in feats] == [(8, 12), (4, 6), (2, 3)]


def test_resize_keeps_the_aspect_ratio_of_non_square_crops(tiny, image_uint8):
    """A 128x192 crop at scale 0.5: SD sees 64x96 (padded to 128), not a squashed square; the control
    image comes from an antialiased bicubic resize of the pixels (the authors' PIL path)."""
    import torch.nn.functional as F
    m = build(backbone_cfg(tiny, unet_input_scale=0.5))
    img = torch.from_numpy(image_uint8).permute(2, 0, 1)[None].float()
    img = F.interpolate(img, size=(128, 192), mode='nearest') / 127.5 - 1
    from mmseg_gate.models.geometry import prepare_images, sd_size
    x, pixels = prepare_images(img, m.mean, m.std, m.unet_input_scale, m.frozen_modules().pad_multiple)
    assert sd_size(128, 192, m.unet_input_scale) == (64, 96) and tuple(x.shape[-2:]) == (64, 128)
    ref = F.interpolate(((img + 1) * 127.5).round(), size=(64, 96), mode='bicubic', antialias=True).round().clamp(0, 255)
    torch.testing.assert_close(pixels[..., :64, :96], ref)
    assert [f.shape[-2:] for f in m(img)] == [(16, 24), (8, 12), (4, 6)]
    with pytest.raises(ValueError, match='unet_input_scale'):
        build(backbone_cfg(tiny, unet_input_size=(512, 512)))


def test_deterministic_and_random_noise(tiny, model, image):
    model.eval()
    a, b = model.extract(image), model.extract(image)
    assert all(torch.equal(x, y) for la, lb in zip(a, b) for x, y in zip(la, lb))
    # same image in another batch position: same features
    batch = torch.cat([torch.rand_like(image) * 2 - 1, image])
    c = model.extract(batch)
    torch.testing.assert_close(c[0][0][1:], a[0][0], atol=1e-5, rtol=1e-4)
    rnd = build(backbone_cfg(tiny, noise='random'))
    x, y = rnd.extract(image), rnd.extract(image)
    assert not torch.allclose(x[0][0], y[0][0])


def test_state_dict_has_only_trainable_weights_and_round_trips(tiny, model, image):
    sd = model.state_dict()
    assert sd and all(k.startswith('amalgamation.') for k in sd), [k for k in sd if not k.startswith('amalgamation.')]
    trainable = {n for n, p in model.named_parameters()}
    assert all(n.startswith('amalgamation.') for n in trainable)
    # perturb, save, load into a fresh model: identical outputs
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    model.eval()
    out = model(image)
    fresh = build(backbone_cfg(tiny, branches=gate_branches(tiny)))
    fresh.load_state_dict(copy.deepcopy(model.state_dict()), strict=True)
    fresh.eval()
    for a, b in zip(out, fresh(image)):
        torch.testing.assert_close(a, b)


def test_only_amalgamation_gets_gradients_and_sd_stays_eval(model, image):
    model.train()
    sd = model.frozen_modules()
    assert not sd.training and not sd.unet.training and not any(m.training for m in sd.modules())
    assert not any(p.requires_grad for p in sd.parameters())
    loss = sum(f.square().mean() for f in model(torch.cat([image, image.flip(-1)])))
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if 'score.bias' not in n), \
        [n for n, g in grads.items() if g is None or g.abs().sum() == 0]
    assert all(p.grad is None for p in sd.parameters())
    model.zero_grad()


def test_dtype_and_device_follow_the_module(tiny, image):
    m = build(backbone_cfg(tiny, dtype='bf16'))
    assert m.frozen_modules().dtype == torch.bfloat16
    feats = m(image)
    assert all(f.dtype == torch.float32 for f in feats)
    m.to(torch.float32)  # .to() reaches the hidden frozen stack
    assert m.frozen_modules().unet.dtype == torch.float32


def test_imagenet_normalised_inputs(tiny, image):
    mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
    pixels = (image + 1) * 127.5
    imnet = (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    a = build(backbone_cfg(tiny, amalgamation=None)).extract(image)
    b = build(backbone_cfg(tiny, amalgamation=None, mean=mean, std=std)).extract(imnet)
    torch.testing.assert_close(a[0][0], b[0][0], atol=1e-4, rtol=1e-3)


def test_sd2_shaped_model(tiny, image):
    m = build(backbone_cfg(tiny, pretrained=str(tiny / 'sd2')))
    feats = m(image)
    assert m.frozen_modules().unet.config.cross_attention_dim == 64
    assert [f.shape[1] for f in feats] == m.out_channels


def test_amalgamation_projection(tiny, image):
    m = build(backbone_cfg(tiny, amalgamation=dict(hidden_channels=8, refine_blocks=1, fuse_blocks=1,
                                                   out_channels=[16, 24, 32])))
    assert [f.shape[1] for f in m(image)] == m.out_channels == [16, 24, 32]


def test_bottleneck_refiners_are_independent_and_not_zero(tiny):
    model = build(backbone_cfg(tiny, branches=gate_branches(tiny), amalgamation=dict(
        refiner='bottleneck', shared_assigner=False, hidden_channels=8, refine_blocks=2, fuse_blocks=1)))
    level = model.amalgamation.levels[0]
    assert len(level.assigners) == 3
    blocks = [b for seq in level.refiners for b in seq]
    assert len({id(b) for b in blocks}) == len(blocks)
    assert all(b.expand.weight.abs().sum() > 0 for b in blocks)


def test_autocast_does_not_reach_the_frozen_parts(model, image):
    """--amp wraps the forward in autocast; SD must still run in its own dtype (here fp32)."""
    model.eval()
    plain = model.extract(image)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        amp = model.extract(image)
    assert all(torch.equal(a, b) for la, lb in zip(plain, amp) for a, b in zip(la, lb))
