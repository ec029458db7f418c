"""Test (and evaluate) a segmentor: mmseg's tools/test.py plus config-variable overrides, checks and
``--format-only DIR`` for test-server submissions.

Same flags as mmseg's: CONFIG CHECKPOINT [--work-dir] [--out DIR] [--show] [--show-dir DIR]
[--wait-time S] [--cfg-options k=v ...] [--launcher ...] [--tta].
"""
import os

# before torch loads OpenMP: waiting threads sleep instead of spinning, which keeps cores shared with other
# jobs usable (tools/demo.py, 2 threads beside a busy core: 42 s -> 28 s)
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import argparse  # noqa: E402

import mmseg_gate  # noqa: F401,E402  (registers the backbone; lets torch>=2.6 load Runner checkpoints)
from mmengine.config import DictAction  # noqa: E402
from mmengine.runner import Runner  # noqa: E402
from mmseg_gate.engine import check_data_roots, load_tool_config  # noqa: E402
from mmseg_gate.engine.dist import init_cpu_distributed  # noqa: E402
from mmseg_gate.engine.heads import check_model_config  # noqa: E402
from mmseg_gate.utils.threads import configure_threads  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description='MMSeg test (and eval) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='where the metric results are dumped as json')
    parser.add_argument('--out', type=str, help='directory to save output predictions for offline evaluation')
    parser.add_argument('--format-only', metavar='DIR',
                        help='write test-server files to DIR and skip evaluation (no ground truth needed)')
    parser.add_argument('--show', action='store_true', help='show prediction results')
    parser.add_argument('--show-dir', help='directory where painted images will be saved')
    parser.add_argument('--wait-time', type=float, default=2, help='the interval of show (s)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings, key=value; top-level variables (sd_path=...) propagate')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none', help='job launcher')
    parser.add_argument('--tta', action='store_true', help='Test time augmentation')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def _evaluators(cfg) -> list:
    ev = cfg.test_evaluator
    return list(ev) if isinstance(ev, (list, tuple)) else [ev]


def main():
    args = parse_args()
    cfg = load_tool_config(args)
    cfg.load_from = args.checkpoint
    if args.show or args.show_dir:
        hook = cfg.default_hooks.get('visualization')
        if hook is None:
            raise RuntimeError('--show/--show-dir need default_hooks.visualization=dict(type="SegVisualizationHook")')
        hook['draw'] = True
        if args.show:
            hook['show'], hook['wait_time'] = True, args.wait_time
        if args.show_dir:
            cfg.visualizer['save_dir'] = args.show_dir
            hook['interval'] = 1  # every image (mmseg's default draws every 50th)
    if args.tta:
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    for ev in _evaluators(cfg):
        if args.out is not None:
            ev['output_dir'], ev['keep_results'] = args.out, True
        if args.format_only is not None:
            ev['output_dir'], ev['keep_results'], ev['format_only'] = args.format_only, True, True
    check_data_roots(cfg)
    check_model_config(cfg)  # heads vs the backbone's levels, before mmseg's bare assertions at head build
    init_cpu_distributed(cfg)
    configure_threads()  # OMP_NUM_THREADS, else torch's default within the CPUs this process may use
    Runner.from_cfg(cfg).test()


if __name__ == '__main__':
    main()
