"""Semantic correspondence (SPair-71k, DIFT's protocol: gate_features/correspondence.py) with the extractor.

  python tools/correspondence.py configs/correspondence/dift_sd21_spair.py
  python tools/correspondence.py CONFIG --pretrained data/tiny_sd --data-root data/spair_twin --image-size 64 64

The config is a plain Python file (``pretrained``, ``extractor``, ``tap``, ``data``, ``metric``); the flags override
it. Prints PCK per category, per image and per point, and writes them as JSON with ``--out``.
"""
import argparse
import json
import runpy
import sys
from pathlib import Path


def read_config(path: str) -> dict:
    cfg = {k: v for k, v in runpy.run_path(path).items() if not k.startswith('_')}
    missing = [k for k in ('pretrained', 'extractor', 'tap', 'data') if k not in cfg]
    if missing:
        raise SystemExit(f'{path}: the config lacks {missing} (see configs/correspondence/dift_sd21_spair.py)')
    return cfg


def run(cfg: dict) -> dict:
    from gate_features import GATEFeatures
    from gate_features.correspondence import evaluate, extractor_featurizer, read_pairs
    data, kwargs = cfg['data'], dict(cfg['extractor'])
    pairs = read_pairs(data['root'], data.get('split', 'test'), data.get('categories'))
    classes = kwargs.get('prompt_classes')
    if classes is not None:  # categories of the pairs that have no prompt: refused before the model loads
        unknown = sorted({p['category'] for p in pairs} - set(classes))
        if unknown:
            raise SystemExit(f'categories {unknown} are not in extractor.prompt_classes')
    extractor = GATEFeatures.from_pretrained(cfg['pretrained'], **kwargs)
    featurize = extractor_featurizer(extractor, cfg['tap'], list(classes) if classes else None)
    size = data.get('image_size')
    return evaluate(featurize, data['root'], pairs, tuple(size) if size else None,
                    **cfg.get('metric', {}))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config')
    parser.add_argument('--pretrained', help="the config's pretrained")
    parser.add_argument('--data-root', help="the config's data['root']")
    parser.add_argument('--image-size', type=int, nargs=2, metavar=('H', 'W'), help="the model input's size")
    parser.add_argument('--out', help='write the result as JSON here')
    args = parser.parse_args(argv)
    cfg = read_config(args.config)
    if args.pretrained:
        cfg['pretrained'] = args.pretrained
    if args.data_root:
        cfg['data'] = {**cfg['data'], 'root': args.data_root}
    if args.image_size:
        cfg['data'] = {**cfg['data'], 'image_size': tuple(args.image_size)}
    result = run(cfg)
    for cat, value in result['per_category'].items():
        print(f'{cat} per image PCK@{cfg.get("metric", {}).get("alpha", 0.1)}: {100 * value:.2f}')
    print(f'All per image PCK: {100 * result["per_image"]:.2f}  per point: {100 * result["per_point"]:.2f}  '
          f'({result["pairs"]} pairs)')
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == '__main__':
    sys.exit(main())
