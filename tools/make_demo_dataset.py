"""Write synthetic datasets in the real ADE20K / Cityscapes layouts (for the demo and tests)."""
import argparse

from mmseg_gate.testing.synthetic_data import make_ade20k_like, make_cityscapes_like


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--out', default='data/demo', help='output folder (default: %(default)s)')
    parser.add_argument('--dataset', choices=['ade20k', 'cityscapes', 'both'], default='both')
    parser.add_argument('--num-train', type=int, default=None, help='training images (default: 40 ADE / 12 Cityscapes)')
    parser.add_argument('--num-val', type=int, default=None, help='validation images (default: 10 ADE / 6 Cityscapes)')
    args = parser.parse_args()
    sizes = {k: v for k, v in (('num_train', args.num_train), ('num_val', args.num_val)) if v is not None}
    if args.dataset in ('ade20k', 'both'):
        print('ADE20K layout:', make_ade20k_like(args.out, **sizes))
    if args.dataset in ('cityscapes', 'both'):
        print('Cityscapes layout:', make_cityscapes_like(args.out, **sizes))


if __name__ == '__main__':
    main()
