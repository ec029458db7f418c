"""The default configs and the backbone compute what the authors ran (see README: deviations)."""
import os

import pytest
import torch
from mmengine.config import Config

from conftest import backbone_cfg, build, gate_branches

ROOT = os.path.join(os.path.dirname(__file__), '..')
SEG = 'diffusion-content-shift segmentation/configs/gate_{}.py'
SCHED = 'generic-diffusion-feature segmentation/configs/_base_/schedules/schedule_80k.py'
UPER = 'generic-diffusion-feature segmentation/configs/_base_/models/upernet_r50.py'
MODEL = 'diffusion-content-shift segmentation/models/diffusion_gate_segmentor.py'
FEAT = 'generic-diffusion-feature feature/diffusion_feature.py'
ADE_PROMPT = ('a highly realistic photo of the real world. It can be an indoor scene, or an outdoor scene, '
              'or a photo of nature. high quality.')
CITY_PROMPT = ('An urban street scene with multiple lanes, various buildings, traffic lights, cars in the lanes, '
               'and pedestrians, highly realistic.')

# (key, the authors' value, where it comes from): shared by both datasets
COMMON = [
    ('model.backbone.timestep', 51, FEAT + ': t=50 through PNDM set_timesteps(1000) + get_timesteps'),
    ('model.backbone.taps', ('up_blocks.0.upsamplers.0', 'up_blocks.1.upsamplers.0', 'up_blocks.2.upsamplers.0'),
     SEG + ": layer up-level{0,1,2}-upsampler-out"),
    ('model.backbone.amalgamation.refiner', 'bias', MODEL + ': zero-initialised ResBlocks learn only x + b'),
    ('model.backbone.amalgamation.refine_blocks', 4, MODEL + ': MultiRes(layer[1], 4)'),
    ('model.backbone.amalgamation.fuse_blocks', 2, MODEL + ": MultiRes(dim, 2) ('amalgemated')"),
    ('model.backbone.amalgamation.shared_assigner', True, MODEL + ': one WeightAssigner per level'),
    ('model.backbone.amalgamation.hidden_channels', 128, MODEL + ': WeightAssigner Conv2d(dim, 128)'),
    ('model.backbone.amalgamation.dropout', 0.5, MODEL + ': nn.Dropout()'),
    ('model.data_preprocessor.mean', [127.5] * 3, SEG + ': mean=[v * 255 for v in [0.5] * 3]'),
    ('model.data_preprocessor.std', [127.5] * 3, SEG),
    ('model.data_preprocessor.bgr_to_rgb', True, SEG),
    ('model.data_preprocessor.pad_val', 0, SEG),
    ('model.decode_head.type', 'UPerHead', SEG),
    ('model.decode_head.pool_scales', (1, 2, 3), SEG),
    ('model.decode_head.channels', 512, SEG + ': head_c'),
    ('model.decode_head.dropout_ratio', 0.1, SEG),
    ('model.decode_head.loss_decode', [dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
                                       dict(type='LovaszLoss', reduction='none', loss_weight=1.0)], SEG),
    ('model.auxiliary_head.type', 'FCNHead', SEG),
    ('model.auxiliary_head.in_index', 1, SEG),
    ('model.auxiliary_head.channels', 512, SEG + ': head_c'),
    ('model.auxiliary_head.num_convs', 1, SEG),
    ('model.auxiliary_head.concat_input', False, UPER + ' (gate_{}.py keeps it)'),
    ('model.auxiliary_head.dropout_ratio', 0.1, SEG),
    ('model.auxiliary_head.loss_decode.loss_weight', 0.4, SEG),
    ('optim_wrapper.optimizer.type', 'AdamW', SCHED),
    ('optim_wrapper.optimizer.lr', 1.6e-4, SCHED),
    ('optim_wrapper.optimizer.weight_decay', 1e-3, SCHED),
    ('optim_wrapper.optimizer.betas', (0.9, 0.999), SCHED + ' (PyTorch default)'),
    ('param_scheduler', [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=80000, by_epoch=False)], SCHED),
    ('train_cfg.max_iters', 80000, SCHED),
    ('train_cfg.val_interval', 8000, SCHED),
    ('default_hooks.checkpoint.interval', 8000, SCHED),
    ('default_hooks.logger.interval', 50, SCHED),
    ('train_dataloader.batch_size', 2, 'generic-diffusion-feature _base_/datasets/*.py'),
]
ADE = [
    ('model.backbone.prompt', ADE_PROMPT, SEG),
    ('model.decode_head.num_classes', 150, SEG),
    ('model.data_preprocessor.size', (512, 512), SEG + ': crop_size'),
    ('model.test_cfg', dict(mode='slide', crop_size=(512, 512), stride=(512, 512)), SEG),
    ('train_dataloader.dataset.pipeline', [
        dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', reduce_zero_label=True),
        dict(type='RandomResize', scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
        dict(type='RandomCrop', crop_size=(512, 512), cat_max_ratio=0.75), dict(type='RandomFlip', prob=0.5),
        dict(type='PhotoMetricDistortion'), dict(type='PackSegInputs')], '_base_/datasets/ade20k.py'),
    ('test_dataloader.dataset.pipeline', [
        dict(type='LoadImageFromFile'), dict(type='Resize', scale=(2048, 512), keep_ratio=True),
        dict(type='LoadAnnotations', reduce_zero_label=True), dict(type='PackSegInputs')], '_base_/datasets/ade20k.py'),
]
CITY = [
    ('model.backbone.prompt', CITY_PROMPT, SEG),
    ('model.backbone.unet_input_scale', 0.5, FEAT + ': 1024 crops interpolated to img_size=512'),
    ('model.decode_head.num_classes', 19, SEG),
    ('model.data_preprocessor.size', (1024, 1024), SEG + ': crop_size'),
    ('model.test_cfg', dict(mode='slide', crop_size=(1024, 1024), stride=(512, 512)), SEG),
    ('train_dataloader.dataset.pipeline', [
        dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
        dict(type='Resize', scale=(2048, 1024), keep_ratio=True),
        dict(type='RandomCrop', crop_size=(1024, 1024), cat_max_ratio=0.75), dict(type='RandomFlip', prob=0.5),
        dict(type='PhotoMetricDistortion'), dict(type='PackSegInputs')], '_base_/datasets/cityscapes.py'),
    ('test_dataloader.dataset.pipeline', [
        dict(type='LoadImageFromFile'), dict(type='Resize', scale=(2048, 1024), keep_ratio=True),
        dict(type='LoadAnnotations'), dict(type='PackSegInputs')], '_base_/datasets/cityscapes.py'),
]
# our deliberate deviations (README, "Deviations from the authors' code"): (key, ours, theirs)
DEVIATIONS = [
    ('model.data_preprocessor.seg_pad_val', 255, 1),  # padded pixels ignored, not trained as class 1
    ('model.decode_head.in_channels', [640, 1280, 1280], [1280, 1280, 640]),  # levels high resolution first
    ('model.backbone.dtype', 'bf16', 'fp16'),  # bf16's range; noising in fp32 either way
]


def _plain(value):
    """Config values without mmengine's scope markers, tuples and lists alike."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if k != '_scope_'}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _get(cfg, key):
    node = cfg
    for part in key.split('.'):
        node = node[part]
    return _plain(node)


@pytest.mark.parametrize('name, rows', [('ade20k', COMMON + ADE), ('cityscapes', COMMON + CITY)])
def test_configs_are_the_authors_settings(name, rows):
    cfg = Config.fromfile(os.path.join(ROOT, 'configs', f'gate_{name}.py'))
    wrong = [f'{key}: ours {_get(cfg, key)!r}, theirs {_plain(value)!r} ({src})'
             for key, value, src in rows if _get(cfg, key) != _plain(value)]
    assert not wrong, '\n'.join(wrong)
    for key, ours, theirs in DEVIATIONS:
        assert _get(cfg, key) == _plain(ours) != _plain(theirs), key
    assert cfg.auto_scale_lr == dict(enable=True, base_batch_size=2)  # N GPUs x 2: the rate scales by N


def test_baselines_feed_raw_features_to_the_head():
    for name in ('sd15_ade20k', 'sd15_cityscapes'):
        cfg = Config.fromfile(os.path.join(ROOT, 'configs', 'baselines', f'{name}.py'))
        assert cfg.model.backbone.amalgamation is None and len(cfg.model.backbone.branches) == 1


def test_authors_t50_is_scheduler_timestep_51():
    """Their extract(): scheduler.set_timesteps(1000) and img2img get_timesteps(1000, t / 1000) with
    SD1.5's PNDM scheduler (steps_offset=1); the first timestep is where they noise and run the UNet."""
    from diffusers import PNDMScheduler, StableDiffusionImg2ImgPipeline
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule='scaled_linear',
                              num_train_timesteps=1000, skip_prk_steps=True, steps_offset=1)
    scheduler.set_timesteps(1000)
    pipe = StableDiffusionImg2ImgPipeline.__new__(StableDiffusionImg2ImgPipeline)
    object.__setattr__(pipe, 'scheduler', scheduler)
    timesteps, _ = StableDiffusionImg2ImgPipeline.get_timesteps(pipe, 1000, 50 / 1000, 'cpu')
    assert int(timesteps[0]) == 51


def test_bf16_noising_equals_fp32_cast(tiny):
    m = build(backbone_cfg(tiny, dtype='bf16', amalgamation=None))
    g = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    a = m.sd.scheduler.alphas_cumprod[50]
    got = m.sd.add_noise(latents.to(torch.bfloat16).float(), noise, 50)
    want = (a.sqrt() * latents.to(torch.bfloat16).float() + (1 - a).sqrt() * noise).to(torch.bfloat16)
    assert got.dtype == torch.bfloat16 and torch.equal(got, want)
    naive = m.sd.scheduler.add_noise(latents.to(torch.bfloat16), noise.to(torch.bfloat16), torch.tensor([50]))
    assert not torch.equal(naive, want)  # what diffusers gives in bf16: another noise level


@pytest.fixture(scope='module')
def gate(tiny):
    return build(backbone_cfg(tiny, noise='gate', branches=gate_branches(tiny)))


def test_training_draws_fresh_noise_per_branch_and_step(gate, image):
    gate.train()
    a, b = gate.extract(image), gate.extract(image)
    assert not torch.allclose(a[0][0], b[0][0])  # fresh noise every step
    latents = gate.noise_policy.noisy_latents(torch.zeros(1, 4, 8, 8), torch.ones(1, 4, 8, 8), [51] * 3, True,
                                              lambda z, n, t: z + n)
    assert not torch.allclose(latents[1], latents[2])  # every branch its own draws


def test_eval_is_deterministic_and_branches_differ(gate, image):
    gate.eval()
    a, b = gate.extract(image), gate.extract(image)
    assert all(torch.equal(x, y) for la, lb in zip(a, b) for x, y in zip(la, lb))
    batch = torch.cat([torch.rand_like(image) * 2 - 1, image])
    c = gate.extract(batch)
    for level in range(3):
        for branch in range(3):
            torch.testing.assert_close(c[level][branch][1:], a[level][branch], atol=1e-5, rtol=1e-4)
    latents = gate.noise_policy.noisy_latents(torch.zeros(1, 4, 8, 8), torch.ones(1, 4, 8, 8), [51] * 3, False,
                                              lambda z, n, t: z + n)
    assert not torch.allclose(latents[0], latents[1])  # seeded per branch


def test_shared_assigner_and_bias_refiners(gate, image):
    from mmseg_gate.models.amalgamation import BiasRefiner
    for level in gate.amalgamation.levels:
        assert len(level.assigners) == 1  # one set of assigner parameters per level
        assert isinstance(level.assigners[0].dropout, torch.nn.Dropout) and level.assigners[0].dropout.p == 0.5
    refiner = gate.amalgamation.levels[0].refiners[0]
    x = torch.randn(2, 64, 4, 4)

    def is_bias(module):  # f(x) - x is the same per-channel constant for any input
        d1, d2 = module(x) - x, module(x * 3 + 1) - (x * 3 + 1)
        return torch.allclose(d1, d2, atol=1e-6) and torch.allclose(d1, d1[:1, :, :1, :1].expand_as(d1), atol=1e-6)

    assert isinstance(refiner, BiasRefiner) and is_bias(refiner)
    gate.train()
    opt = torch.optim.AdamW(gate.parameters(), lr=1e-2)
    loss = sum(f.square().mean() for f in gate(torch.cat([image, image.flip(-1)])))
    loss.backward()
    opt.step()
    assert refiner.bias.abs().sum() > 0 and is_bias(refiner)


def test_checkpoints_record_frozen_parts_and_warn_on_another_lora(tiny, tmp_path):
    import shutil
    from types import SimpleNamespace
    from unittest import mock
    from mmseg_gate.engine.checks import GATECheckHook
    from mmseg_gate.utils.files import file_sha256
    path = tmp_path / 'mine.safetensors'
    shutil.copy(tiny / 'lora' / 'a.safetensors', path)
    cfg = backbone_cfg(tiny, amalgamation=None, branches=[dict(name='l', loras=[dict(path=str(path))])])
    hook, ckpt = GATECheckHook(), {'meta': {}}
    hook.before_save_checkpoint(SimpleNamespace(model=SimpleNamespace(backbone=build(cfg))), ckpt)
    saved = ckpt['meta']['gate_frozen']
    old = file_sha256(path)
    assert saved['loras'] == {str(path): old} and saved['timestep'] == 50 and saved['dtype'] == 'float32'
    same = SimpleNamespace(model=SimpleNamespace(backbone=build(cfg)))
    with mock.patch('mmengine.logging.print_log') as log:
        hook.after_load_checkpoint(same, ckpt)
    assert not log.called  # same files: nothing to say
    shutil.copy(tiny / 'lora' / 'b.safetensors', path)  # the LoRA retrained under the same name
    other = SimpleNamespace(model=SimpleNamespace(backbone=build(cfg)))
    with mock.patch('mmengine.logging.print_log') as log:
        hook.after_load_checkpoint(other, ckpt)
    message = log.call_args[0][0]
    assert 'mine.safetensors' in message and old in message and file_sha256(path) in message


def test_data_root_override_moves_paths_built_from_it():
    from types import SimpleNamespace
    from mmseg_gate.engine import load_tool_config
    args = SimpleNamespace(config=os.path.join(ROOT, 'configs', 'per_image_prompts', 'gate_ade20k_captions.py'),
                           cfg_options={'data_root': '/data/ade'}, launcher='none', work_dir=None)
    cfg = load_tool_config(args)
    loads = [t for t in cfg.train_dataloader.dataset.pipeline if t['type'] == 'LoadCaption']
    assert loads[0]['captions_file'] == '/data/ade/captions.json' and loads[0]['data_root'] == '/data/ade'
    assert cfg.train_dataloader.dataset.data_root == '/data/ade'
