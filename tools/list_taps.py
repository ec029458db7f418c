"""Every denoiser module (UNet or diffusion transformer) a backbone can tap, with its output's kind, channels,
stride and shape.

  python tools/list_taps.py checkpoints/stable-diffusion-v1-5 --size 512 512
  python tools/list_taps.py checkpoints/stable-diffusion-xl-base-1.0 --size 1024 1024 --grep up_blocks.0
  python tools/list_taps.py checkpoints/stable-diffusion-3.5-medium --size 1024 1024 --grep 'blocks.12' \
      --drop-text-encoders text_encoder_3
  python tools/list_taps.py checkpoints/PixArt-Sigma-XL-2-1024-MS --size 1024 1024 --grep 'blocks.13'
  python tools/list_taps.py checkpoints/FLUX.1-dev --size 1024 1024 --grep 'single_transformer_blocks.9'

DiT blocks and their parts give image tokens on the 1/16 grid (text-stream outputs are not listed).

Names go into the backbone's ``taps``; maps and tokens alike become feature levels of that stride.
"""
import argparse

from mmseg_gate.models.taps import tappable_modules
from mmseg_gate.utils.threads import configure_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('pretrained', help='diffusers folder or hub id (SD1.x, SD2.x, SDXL, SD3/SD3.5, PixArt, FLUX.1)')
    parser.add_argument('--size', type=int, nargs=2, default=(512, 512), metavar=('H', 'W'),
                        help='SD input size (default: %(default)s)')
    parser.add_argument('--grep', default='', help='only names containing this')
    parser.add_argument('--unet', help='another UNet folder, as the backbone\'s unet=')
    parser.add_argument('--drop-text-encoders', nargs='+', default=(), metavar='NAME',
                        help="optional text encoders not to load, as the backbone's drop_text_encoders= "
                             "(text_encoder_3: SD3's T5-XXL, 4.7 B parameters)")
    args = parser.parse_args()
    configure_threads(log=False)  # OMP_NUM_THREADS, else torch's default within the CPUs (stdout is the table)
    taps = [t for t in tappable_modules(args.pretrained, tuple(args.size), unet=args.unet,
                                             drop_text_encoders=tuple(args.drop_text_encoders)) if args.grep in t.name]
    h, w = args.size
    print(f'{"module":70s} {"kind":6s} {"channels":>8s} {"stride":>6s}  shape at {h}x{w}')
    for tap in taps:
        grid = f'{-(-h // tap.stride)}x{-(-w // tap.stride)}'
        shape = f'[B, {grid.replace("x", "*")}, {tap.channels}]' if tap.tokens else f'[B, {tap.channels}, {grid}]'
        print(f'{tap.name:70s} {"tokens" if tap.tokens else "map":6s} {tap.channels:8d} {"1/" + str(tap.stride):>6s}  '
              f'{shape}')
    print(f'{len(taps)} modules')


if __name__ == '__main__':
    main()
