"""The mmseg-gate demo: tiny random SD weights + synthetic ADE20K-layout data -> train -> test.

Makes the assets if absent (data/tiny_sd, data/demo), trains the paper's 3-branch GATE config on
them with the standard mmengine Runner, evaluates and prints a short summary: the classes of the test
images with their IoU, where the prediction pictures are, and `mIoU: X`. The full logs (config, hooks,
every iteration, mmseg's class table) go to WORK_DIR/demo.log.

The demo computes with a fixed number of CPU threads (--threads, default 2), whatever OMP_NUM_THREADS
says: CPU kernels split their float reductions by thread, so another count gives another mIoU. With
the count fixed the mIoU repeats on one machine whatever else runs on it; it still depends on the
CPU's kernels (instruction set) and the library versions.
"""
import os

# before torch loads OpenMP: waiting threads sleep instead of spinning, so cores shared with other jobs
# are not burnt by barriers (2 threads beside a busy core: 42 s -> 28 s for 25 iterations)
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import argparse  # noqa: E402
import contextlib  # noqa: E402
import os.path as osp  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import mmseg_gate  # noqa: F401,E402
import numpy as np  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.hooks import Hook  # noqa: E402
from mmengine.runner import Runner  # noqa: E402
from mmseg.evaluation import IoUMetric  # noqa: E402
from mmseg.registry import METRICS  # noqa: E402
from mmseg_gate.engine import apply_cfg_options  # noqa: E402
from mmseg_gate.engine.heads import check_model_config  # noqa: E402
from mmseg_gate.testing import make_tiny_sd  # noqa: E402
from mmseg_gate.testing.synthetic_data import make_ade20k_like  # noqa: E402
from mmseg_gate.utils.threads import configure_threads  # noqa: E402

DEFAULT_CONFIG = osp.join(osp.dirname(__file__), '..', 'configs', 'demo', 'gate_tiny_ade20k.py')
DEMO_THREADS = 2  # the demo's mIoU is measured (README) with this count


@METRICS.register_module(force=True)
class DemoIoUMetric(IoUMetric):
    """mmseg's IoUMetric that also keeps the IoU of each class present in the ground truth, for the
    summary (mmseg logs all 150 ADE20K classes, mostly ``nan`` on the demo's 6)."""

    present: dict = {}

    def compute_metrics(self, results: list) -> dict:
        if results:
            intersect, union, _, label = (sum(r) for r in zip(*results))
            names = self.dataset_meta['classes']
            self.present = {names[i]: 100 * float(intersect[i] / union[i])
                            for i in np.flatnonzero(np.asarray(label) > 0)}
        return super().compute_metrics(results)


class ConsoleProgress(Hook):
    """A line on the console every ``interval`` iterations while the logs go to a file."""

    priority = 'VERY_LOW'

    def __init__(self, stream, interval: int = 100) -> None:
        self.stream, self.interval, self.start = stream, interval, time.perf_counter()

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        done = runner.iter + 1
        if done % self.interval == 0 or done == runner.max_iters:
            loss = float((outputs or {}).get('loss', float('nan')))
            print(f'  iteration {done}/{runner.max_iters}: loss {loss:.3f} '
                  f'({time.perf_counter() - self.start:.0f} s)', file=self.stream, flush=True)


@contextlib.contextmanager
def output_to(log: str):
    """Send everything written to stdout and stderr (Python's, C libraries', handlers bound at import time)
    to ``log``; yield a stream to the console."""
    sys.stdout.flush(), sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    console = os.fdopen(os.dup(saved[0]), 'w', buffering=1)
    with open(log, 'w') as out:
        try:
            os.dup2(out.fileno(), 1), os.dup2(out.fileno(), 2)
            yield console
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            console.close()


def build_config(args, data: Path) -> Config:
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
    cfg.default_hooks.visualization.update(draw=True, interval=1)
    cfg.visualizer['save_dir'] = osp.join(args.work_dir, 'predictions')
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None  # evaluate once, below
    cfg.test_evaluator = dict(cfg.test_evaluator, type='DemoIoUMetric')
    return cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--work-dir', default='work_dirs/demo', help='logs, checkpoint, predictions')
    parser.add_argument('--config', default=DEFAULT_CONFIG, help='demo config (default: %(default)s)')
    parser.add_argument('--data-dir', default='data', help='where tiny_sd/ and demo/ are (made if absent)')
    parser.add_argument('--iters', type=int, default=None, help='training iterations (default: the config\'s)')
    parser.add_argument('--threads', type=int, default=DEMO_THREADS,
                        help='CPU threads (default: %(default)s, the README\'s mIoU; another count gives another)')
    args = parser.parse_args()

    start = time.perf_counter()
    threads = configure_threads(args.threads, log=False)
    omp = os.environ.get('OMP_NUM_THREADS')
    print(f'mmseg-gate demo: {threads} CPU threads (fixed, so the mIoU repeats'
          + (f'; OMP_NUM_THREADS={omp} does not apply' if omp and omp.strip() != str(threads) else '') + ')')
    os.makedirs(args.work_dir, exist_ok=True)
    log = osp.join(args.work_dir, 'demo.log')
    print(f'training and testing; full log: {log}', flush=True)
    with output_to(log) as console:
        configure_threads(threads, reason='the demo\'s fixed count')  # into the log
        data = Path(args.data_dir)
        make_tiny_sd(data / 'tiny_sd')
        if not (data / 'demo' / 'ADEChallengeData2016').is_dir():
            make_ade20k_like(data / 'demo')
        cfg = build_config(args, data)
        check_model_config(cfg)
        runner = Runner.from_cfg(cfg)
        runner.register_hook(ConsoleProgress(console))
        runner.train()
        metrics = runner.test()
        present = runner.test_loop.evaluator.metrics[0].present
        pictures = runner.visualizer.get_backend('LocalVisBackend')._img_save_dir
    images = len(runner.test_dataloader.dataset)
    print(f'classes in the {images} test images (IoU %): '
          + ', '.join(f'{name} {iou:.1f}' for name, iou in present.items()))
    print(f'prediction pictures (ground truth | prediction, over the input): {pictures}/*.png')
    print(f'total time: {time.perf_counter() - start:.0f} s')
    # the line starts with `mIoU: X` for scripts
    print(f"mIoU: {metrics['mIoU']:.2f} (repeats on this machine with --threads {threads}; other CPUs, thread "
          'counts or library versions give other values; random weights: it shows the pipeline learns)')


if __name__ == '__main__':
    main()
