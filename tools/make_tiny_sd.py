"""Write tiny random Stable Diffusion / ControlNet / LoRA weights in the diffusers layout."""
import argparse

from mmseg_gate.testing import make_tiny_sd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--out', default='data/tiny_sd', help='output folder (default: %(default)s)')
    parser.add_argument('--no-sd2', action='store_true', help='skip the SD2-shaped variant')
    parser.add_argument('--overwrite', action='store_true', help='rewrite even if the folder is complete')
    args = parser.parse_args()
    out = make_tiny_sd(args.out, sd2=not args.no_sd2, overwrite=args.overwrite)
    print(f'tiny weights in {out}: sd/, sd2/, controlnet-canny/, lora/a.safetensors, lora/b.safetensors')


if __name__ == '__main__':
    main()
