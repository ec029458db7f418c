"""Write a synthetic NYU-Depth-v2 layout (mmseg's NYUDataset) for the tiny depth demo and tests:
``OUT/nyu/{images,annotations}/{train,test}``, 480x640 images, 16-bit depth PNGs in millimetres, scene names
in the file names (mmseg_gate/testing/synthetic_nyu.py)."""
import argparse

from mmseg_gate.testing.synthetic_nyu import make_nyu_like


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--out', default='data/demo', help='output folder (default: %(default)s)')
    parser.add_argument('--num-train', type=int, default=8, help='training images (default: %(default)s)')
    parser.add_argument('--num-test', type=int, default=3, help='test images (default: %(default)s)')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    print('NYU layout:', make_nyu_like(args.out, args.num_train, args.num_test, args.seed))


if __name__ == '__main__':
    main()
