"""The mmseg-gate demo: tiny random SD weights + synthetic ADE20K-layout data -> train -> test.

Makes the assets if absent (data/tiny_sd, data/demo), trains the paper's 3-branch GATE config on
them with the standard mmengine Runner, evaluates, saves prediction pictures and prints `mIoU: X`,
an approximate figure: it varies by up to a few points across CPUs (float summation order differs,
and training amplifies it). About 4 minutes on 2 CPU cores.
"""
import argparse
import os.path as osp
import time
from pathlib import Path

import mmseg_gate  # noqa: F401
from mmengine.config import Config
from mmengine.runner import Runner
from mmseg_gate.engine import apply_cfg_options
from mmseg_gate.testing import make_tiny_sd
from mmseg_gate.testing.synthetic_data import make_ade20k_like

DEFAULT_CONFIG = osp.join(osp.dirname(__file__), '..', 'configs', 'demo', 'gate_tiny_ade20k.py')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--work-dir', default='work_dirs/demo', help='logs, checkpoint, predictions')
    parser.add_argument('--config', default=DEFAULT_CONFIG, help='demo config (default: %(default)s)')
    parser.add_argument('--data-dir', default='data', help='where tiny_sd/ and demo/ are (made if absent)')
    parser.add_argument('--iters', type=int, default=None, help='training iterations (default: the config\'s)')
    args = parser.parse_args()

    start = time.perf_counter()
    data = Path(args.data_dir)
    make_tiny_sd(data / 'tiny_sd')
    if not (data / 'demo' / 'ADEChallengeData2016').is_dir():
        make_ade20k_like(data / 'demo')
    cfg = Config.fromfile(args.config)
    options = dict(sd_path=str(data / 'tiny_sd' / 'sd'), controlnet_path=str(data / 'tiny_sd' / 'controlnet-canny'),
                   lora_a=str(data / 'tiny_sd' / 'lora' / 'a.safetensors'),
                   lora_b=str(data / 'tiny_sd' / 'lora' / 'b.safetensors'),
                   data_root=str(data / 'demo' / 'ADEChallengeData2016'))
    if args.iters:
        options.update({'train_cfg.max_iters': args.iters, 'train_cfg.val_interval': args.iters,
                        'param_scheduler.0.end': args.iters, 'default_hooks.checkpoint.interval': args.iters})
    cfg = apply_cfg_options(cfg, options)
    cfg.work_dir = args.work_dir
    pictures = osp.join(args.work_dir, 'predictions')
    cfg.default_hooks.visualization.update(draw=True, interval=1)
    cfg.visualizer['save_dir'] = pictures
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None  # evaluate once, below
    runner = Runner.from_cfg(cfg)
    runner.train()
    metrics = runner.test()
    print(f'prediction pictures (ground truth | prediction, over the input) in {pictures}')
    print(f'total time: {time.perf_counter() - start:.0f} s')
    # not bitwise reproducible: float summation order differs across CPUs and training amplifies it
    # (34.87 on one machine, 35.54 on another); the line starts with `mIoU: X` for scripts
    print(f"mIoU: {metrics['mIoU']:.2f} (approximate: it varies by up to a few points across CPUs, "
          'because float summation order differs)')


if __name__ == '__main__':
    main()
