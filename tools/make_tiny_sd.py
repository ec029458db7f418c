"""Write tiny random Stable Diffusion / ControlNet / LoRA weights in the diffusers layout.

With ``--dit`` (the default; ``--no-dit`` skips it) the same folder also gets the tiny diffusion-transformer
assets of ``mmseg_gate.testing.tiny_dit`` (a few seconds): ``sd3/``, ``sd3-controlnet/``,
``sd3-lora/{a,b}.safetensors``, ``pixart-sigma/``, ``pixart-alpha/`` (made once: ``.complete_dit``) and
``flux/``, ``flux-schnell/``, ``flux-controlnet{,-union,-xlabs}/``, ``flux-lora/`` (``.complete_flux``).
"""
import argparse

from mmseg_gate.testing import make_tiny_sd
from mmseg_gate.testing.tiny_dit import make_tiny_dit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='data/tiny_sd', help='output folder (default: %(default)s)')
    parser.add_argument('--no-sd2', action='store_true', help='skip the SD2-shaped variants (sd2/, sd2v/)')
    parser.add_argument('--no-sdxl', action='store_true', help='skip the SDXL-shaped assets')
    parser.add_argument('--dit', action=argparse.BooleanOptionalAction, default=True,
                        help='also write the SD3, PixArt and FLUX.1 assets (default: %(default)s)')
    parser.add_argument('--overwrite', action='store_true', help='rewrite even if the folder is complete')
    args = parser.parse_args()
    out = make_tiny_sd(args.out, sd2=not args.no_sd2, sdxl=not args.no_sdxl, overwrite=args.overwrite)
    print(f'tiny weights in {out}: sd/, controlnet-canny/, lora/{{a,b}}.safetensors, sd2/, sd2v/, sdxl/, '
          'sdxl-controlnet/, sdxl-lora/{a,b}.safetensors')
    if args.dit:
        make_tiny_dit(args.out, overwrite=args.overwrite)
        print(f'tiny DiT weights in {out}: sd3/, sd3-controlnet/, sd3-lora/{{a,b}}.safetensors, pixart-sigma/, '
              'pixart-alpha/, flux/, flux-schnell/, flux-controlnet{,-union,-xlabs}/, '
              'flux-lora/{a,b,kohya,xlabs}.safetensors')


if __name__ == '__main__':
    main()
