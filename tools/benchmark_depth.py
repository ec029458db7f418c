"""Time per training iteration of a depth config (DepthEstimator + GATE backbone + VPDDepthHead) on random weights.

One process per config: builds the config's model on SD1.5-shaped random weights (``--preset sd15``, ~6 GB written
once to ``--assets``; ``tiny`` for tests), then runs mmengine's ``train_step`` (preprocessing, frozen features,
amalgamation, head, SiLog loss, backward, the config's optimizer) on synthetic NYU-like 480x640 rooms cropped to
``--size``. Prints and writes (``--json``) seconds per iteration and the backbone's stage times.

  python tools/benchmark_depth.py configs/depth/gate_sd15_nyu.py --preset sd15 --size 480 --json gate.json
  python tools/benchmark_depth.py configs/depth/sd15_frozen_nyu.py --preset sd15 --size 480 --json vpd.json
"""
from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch


def make_batch(size: int, batch: int, seed: int = 0) -> dict:
    """``train_step``'s input: uint8 CHW BGR crops of synthetic rooms and their depth maps (metres)."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    from mmseg_gate.testing.synthetic_nyu import NYU_SIZE, _room
    rng = np.random.default_rng(seed)
    inputs, samples = [], []
    for i in range(batch):
        img, depth = _room(rng, *NYU_SIZE, far=5.0)
        img, depth = img[:size, :size], depth[:size, :size]
        inputs.append(torch.from_numpy(img.copy()).permute(2, 0, 1))
        s = SegDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size), pad_shape=(size, size),
                                        category_id=i % 27, flip=False))
        s.gt_depth_map = PixelData(data=torch.from_numpy(depth.astype(np.float32))[None])
        samples.append(s)
    return dict(inputs=inputs, data_samples=samples)


def build(config: str, assets: Path, preset: str, dtype: str):
    from mmengine.config import Config
    from mmengine.model import revert_sync_batchnorm
    from mmengine.optim import build_optim_wrapper
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules
    import mmseg_gate  # noqa: F401
    from mmseg_gate.engine.config import apply_cfg_options
    register_all_modules()
    cfg = Config.fromfile(config)
    options = {k: str(assets / sub) for k, sub in (('sd_path', 'sd'), ('controlnet_path', 'controlnet-canny'),
                                                   ('lora_a', 'lora/a.safetensors'), ('lora_b', 'lora/b.safetensors'))
               if k in cfg}
    options['model.backbone.dtype'] = dtype
    if preset == 'tiny':  # the tiny UNet's channels; a head of the tiny demo's width
        options.update({'model.decode_head.in_channels': [32, 64, 64, 64], 'model.decode_head.embed_dim': 16,
                        'model.decode_head.feature_dim': 128})
    cfg = apply_cfg_options(cfg, options)
    model = revert_sync_batchnorm(MODELS.build(cfg.model))  # SyncBN -> BN on one process, as the Runner does
    model.init_weights()
    return model, build_optim_wrapper(model, cfg.optim_wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config')
    parser.add_argument('--preset', choices=['tiny', 'sd15'], default='sd15')
    parser.add_argument('--assets', default=None, help='random weights (default: data/sd15_random, data/tiny_sd)')
    parser.add_argument('--size', type=int, default=480, help='square crop side (VPD: 480)')
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--iters', type=int, default=2)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--dtype', default='fp32', help='frozen dtype (fp32 on CPU)')
    parser.add_argument('--json', default=None)
    args = parser.parse_args()
    from mmseg_gate.testing.tiny_models import make_sd15_shaped, make_tiny_sd
    from mmseg_gate.utils import StageTimer
    assets = Path(args.assets or ('data/sd15_random' if args.preset == 'sd15' else 'data/tiny_sd'))
    (make_sd15_shaped if args.preset == 'sd15' else make_tiny_sd)(assets)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model, optim = build(args.config, assets, args.preset, args.dtype)
    build_s = time.perf_counter() - t0
    model.train()
    data = make_batch(args.size, args.batch)
    timer = StageTimer('cpu')
    model.backbone.stage_timer = timer
    for _ in range(args.warmup):
        model.train_step(data, optim)
    timer.ms.clear()
    times = []
    for _ in range(args.iters):
        start = time.perf_counter()
        losses = model.train_step(data, optim)
        times.append(time.perf_counter() - start)
    result = dict(config=args.config, preset=args.preset, size=args.size, batch=args.batch,
                  branches=len(model.backbone.specs), build_s=round(build_s, 1),
                  s_per_iter=round(sum(times) / len(times), 2), s_per_iter_each=[round(t, 2) for t in times],
                  backbone_stages_s={k: round(v / args.iters / 1000, 2) for k, v in timer.ms.items()},
                  loss=round(float(losses['loss']), 4), threads=torch.get_num_threads(),
                  peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == '__main__':
    main()
