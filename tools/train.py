"""Train a segmentor: mmseg's tools/train.py, plus config-variable overrides and fail-fast checks.

Same flags as mmseg's: CONFIG [--work-dir DIR] [--resume] [--amp] [--cfg-options k=v ...]
[--launcher none|pytorch|slurm|mpi]. ``--cfg-options sd_path=... data_root=...`` also rewrites
every place of the config that used those top-level variables.
"""
import os

# before torch loads OpenMP: waiting threads sleep instead of spinning, which keeps cores shared with other
# jobs usable (tools/demo.py, 2 threads beside a busy core: 42 s -> 28 s)
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import argparse  # noqa: E402
import logging  # noqa: E402

import mmseg_gate  # noqa: F401,E402  (registers the backbone; lets torch>=2.6 load Runner checkpoints)
from mmengine.config import DictAction  # noqa: E402
from mmengine.logging import print_log  # noqa: E402
from mmengine.runner import Runner  # noqa: E402
from mmseg.registry import RUNNERS  # noqa: E402
from mmseg_gate.engine import check_data_roots, load_tool_config  # noqa: E402
from mmseg_gate.engine.dist import init_cpu_distributed  # noqa: E402
from mmseg_gate.engine.heads import check_model_config  # noqa: E402
from mmseg_gate.utils.threads import configure_threads  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description='Train a segmentor')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument('--resume', action='store_true', default=False,
                        help='resume from the latest checkpoint in the work_dir automatically')
    parser.add_argument('--amp', action='store_true', default=False, help='enable automatic-mixed-precision training')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings, key=value; top-level variables (sd_path=...) propagate')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def main():
    args = parse_args()
    cfg = load_tool_config(args)
    if args.amp:
        if cfg.optim_wrapper.type == 'AmpOptimWrapper':
            print_log('AMP training is already enabled in your config.', logger='current', level=logging.WARNING)
        else:
            assert cfg.optim_wrapper.type == 'OptimWrapper', \
                f'--amp needs optim_wrapper.type OptimWrapper, got {cfg.optim_wrapper.type}'
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.loss_scale = 'dynamic'
    cfg.resume = args.resume
    check_data_roots(cfg)
    check_model_config(cfg)  # heads vs the backbone's levels, before mmseg's bare assertions at head build
    init_cpu_distributed(cfg)
    configure_threads()  # OMP_NUM_THREADS, else torch's default within the CPUs this process may use
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    runner.train()


if __name__ == '__main__':
    main()
