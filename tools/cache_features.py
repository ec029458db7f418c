"""Extract a config's frozen backbone features once per image into a feature cache (docs/label_scarce.md).

    python tools/cache_features.py configs/label_scarce/gate_sd15_horse21_cached.py   # --out: its cache_root

Each image is recorded as soon as its features are written: a re-run after a kill resumes after the last one,
and extracts again any entry whose file cannot be read. A cache of other settings or other model/LoRA files is
refused naming what differs; --overwrite starts afresh (also over a damaged meta.json or index.json).
"""
import argparse

from mmengine.config import Config, DictAction

from mmseg_gate.cache import write_feature_cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='a live or cached config (its model.backbone and cache_pipeline are used)')
    parser.add_argument('--out', help="cache folder (default: the config's cache_root)")
    parser.add_argument('--splits', nargs='+', default=['train', 'val', 'test'],
                        help='dataloaders whose images are cached (default: %(default)s)')
    parser.add_argument('--dtype', choices=['float16', 'float32'], default='float16',
                        help='stored precision (default: %(default)s; float32: bit-exact)')
    parser.add_argument('--device', help='default: cuda if available, else cpu')
    parser.add_argument('--overwrite', action='store_true',
                        help='start afresh: replace a cache of other settings or files, or a damaged one')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config values')
    args = parser.parse_args()
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    out = args.out or cfg.get('cache_root')
    if not out:
        parser.error('give --out (the config has no cache_root)')
    write_feature_cache(cfg, out, args.splits, args.dtype, args.device, args.overwrite)


if __name__ == '__main__':
    main()
