"""Extract a LoRA file from a fine-tuned diffusion model (e.g. the GATE authors' merged SD1.5
checkpoints, or a fully fine-tuned SD3 folder): truncated SVD of every changed linear/conv layer of the
denoiser (UNet or SD3 transformer) and the text encoders LoRA files carry.

  python tools/extract_lora.py --base checkpoints/stable-diffusion-v1-5 \\
      --tuned checkpoints/gate_ade20k_lora_a.safetensors --out checkpoints/lora/ade20k_a.safetensors

--tuned: a diffusers folder, or a single-file checkpoint in the original SD layout (.safetensors;
.ckpt/.pt are pickles and need --allow-pickle). Ranks default to the paper's LoCon (64, conv 32): a
merged adapter of those ranks comes back exactly. The file loads in GATEDiffusionBackbone branches
(`loras=[dict(path=...)]`) and in diffusers' `pipe.load_lora_weights`.
"""
from __future__ import annotations

import argparse
import time

from mmseg_gate.lora.extract import extract_lora, load_models, relative_error, summarize
from mmseg_gate.lora.files import save_lora
from mmseg_gate.models.families import detect_family


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--base', required=True, help='diffusers folder of the base model (SD1.x/2.x, SDXL, SD3)')
    parser.add_argument('--tuned', required=True, help='fine-tuned model: diffusers folder, or (SD1.x/2.x) single file')
    parser.add_argument('--out', required=True, help='LoRA file to write (.safetensors)')
    parser.add_argument('--rank', type=int, default=64, help='rank of linear and 1x1 conv layers (default: 64)')
    parser.add_argument('--conv-rank', type=int, default=32, help='rank of 3x3 conv layers (default: 32)')
    parser.add_argument('--text-encoder', action=argparse.BooleanOptionalAction, default=True,
                        help='also extract the text encoder\'s layers (default: yes)')
    parser.add_argument('--device', default='cpu', help='where the SVDs run: cpu or cuda (default: cpu)')
    parser.add_argument('--allow-pickle', action='store_true',
                        help='allow a pickled --tuned checkpoint (.ckpt/.pt): only for files you trust')
    args = parser.parse_args()
    if not args.out.endswith('.safetensors'):
        parser.error(f'--out {args.out}: LoRA files are written as .safetensors')

    t0 = time.perf_counter()
    base = load_models(args.base, args.base, '--base', text_encoder=args.text_encoder)
    tuned = load_models(args.tuned, args.base, '--tuned', allow_pickle=args.allow_pickle,
                        text_encoder=args.text_encoder)
    loaded = time.perf_counter()
    layers, reports = extract_lora(base, tuned, args.rank, args.conv_rank, args.device)
    save_lora(args.out, layers, detect_family(args.base).lora_pipeline())
    done = time.perf_counter()
    print('\n'.join(summarize(reports)))
    print(f'extracted {len(reports)} layers to {args.out}: relative error {relative_error(reports):.3e}, '
          f'{done - loaded:.1f} s (+{loaded - t0:.1f} s loading)')


if __name__ == '__main__':
    main()
