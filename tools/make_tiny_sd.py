"""Write tiny random Stable Diffusion / ControlNet / LoRA weights in the diffusers layout."""
import argparse

from mmseg_gate.testing import make_tiny_sd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--out', default='data/tiny_sd', help='output folder (default: %(default)s)')
    parser.add_argument('--no-sd2', action='store_true', help='skip the SD2-shaped variants (sd2/, sd2v/)')
    parser.add_argument('--no-sdxl', action='store_true', help='skip the SDXL-shaped assets')
    parser.add_argument('--overwrite', action='store_true', help='rewrite even if the folder is complete')
    args = parser.parse_args()
    out = make_tiny_sd(args.out, sd2=not args.no_sd2, sdxl=not args.no_sdxl, overwrite=args.overwrite)
    print(f'tiny weights in {out}: sd/, controlnet-canny/, lora/{{a,b}}.safetensors, sd2/, sd2v/, sdxl/, '
          'sdxl-controlnet/, sdxl-lora/{a,b}.safetensors')


if __name__ == '__main__':
    main()
