"""Train and test a label-scarce config on five random splits (the papers' protocol); print mean ± std.

    python tools/label_scarce_splits.py configs/label_scarce/gate_sd15_horse21_cached.py [--seeds 0 1 2 3 4]
"""
import argparse
import json

from mmengine.config import Config, DictAction

from mmseg_gate.label_scarce import run_splits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2, 3, 4], help='split seeds (default: 0-4)')
    parser.add_argument('--work-dir', help='runs go to WORK_DIR/split<seed> (default: work_dirs/<config name>)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config values')
    args = parser.parse_args()
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    import os.path as osp
    work_dir = args.work_dir or osp.join('work_dirs', osp.splitext(osp.basename(args.config))[0])
    result = run_splits(cfg, args.seeds, work_dir)
    scores = ', '.join(f'split {s}: {v:.2f}' for s, v in result['scores'].items())
    print(f"{result['metric']} {result['mean']:.2f} ± {result['std']:.2f} over {len(result['scores'])} splits ({scores})")
    with open(osp.join(work_dir, 'splits.json'), 'w') as f:
        json.dump(result, f, indent=1)


if __name__ == '__main__':
    main()
