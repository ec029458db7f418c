"""Caption every image of a dataset split with a local transformers image-to-text model (BLIP,
BLIP-2, Kosmos-2, ...), for per-image fine-grained prompts (see configs/per_image_prompts/).

  python tools/caption.py --model checkpoints/blip-image-captioning-large \\
      --data-root data/ade/ADEChallengeData2016 --images images/training --out captions_train.json

Writes JSON {image path relative to --data-root: caption}. Resumable: images already in --out are
skipped, and the file is rewritten after every batch, so an interrupted run loses at most one batch.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from mmseg_gate.utils import list_images

def load_captioner(path: str, device: str, dtype: torch.dtype):
    from transformers import AutoConfig, AutoProcessor
    config = AutoConfig.from_pretrained(path)
    if config.model_type == 'blip':
        from transformers import BlipForConditionalGeneration as Model
    else:
        from transformers import AutoModelForImageTextToText as Model
    model = Model.from_pretrained(path, dtype=dtype).to(device).eval()
    return AutoProcessor.from_pretrained(path), model


@torch.no_grad()
def caption_batch(processor, model, images: list[Image.Image], prompt: str | None, max_new_tokens: int) -> list[str]:
    kwargs = dict(images=images, return_tensors='pt')
    if prompt:
        kwargs['text'] = [prompt] * len(images)
    inputs = processor(**kwargs).to(model.device)
    inputs = {k: v.to(model.dtype) if v.is_floating_point() else v for k, v in inputs.items()}
    out = model.generate(**inputs, max_new_tokens=max_new_tokens)
    texts = processor.batch_decode(out, skip_special_tokens=True)
    return [t.replace(prompt, '', 1).strip() if prompt else t.strip() for t in texts]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', required=True, help='local folder of a transformers image-to-text model')
    parser.add_argument('--data-root', required=True, help='the dataset root the JSON keys are relative to')
    parser.add_argument('--images', required=True, help='image folder, relative to --data-root (searched recursively)')
    parser.add_argument('--out', required=True, help='captions JSON (extended if it exists)')
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--prompt', default=None, help='text prefix some captioners take (e.g. "a photo of")')
    parser.add_argument('--max-new-tokens', type=int, default=40)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--dtype', choices=['fp32', 'fp16', 'bf16'], default=None, help='default: fp16 on GPU, fp32 on CPU')
    args = parser.parse_args()
    if not os.path.isdir(args.model):
        parser.error(f'--model {args.model!r} is not a folder: download the captioner first '
                     '(e.g. huggingface-cli download Salesforce/blip-image-captioning-large --local-dir ...)')
    root = Path(args.data_root)
    folder = root / args.images
    if not folder.is_dir():
        parser.error(f'--images {folder} does not exist')
    files = list_images([folder])
    out = Path(args.out)
    captions = json.loads(out.read_text()) if out.exists() else {}
    todo = [p for p in files if str(p.relative_to(root)) not in captions]
    print(f'{len(files)} images, {len(files) - len(todo)} already captioned, {len(todo)} to go')
    dtype = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}[
        args.dtype or ('fp32' if args.device == 'cpu' else 'fp16')]
    processor, model = load_captioner(args.model, args.device, dtype)
    for i in tqdm(range(0, len(todo), args.batch_size), desc='captioning', unit='batch'):
        batch = todo[i:i + args.batch_size]
        texts = caption_batch(processor, model, [Image.open(p).convert('RGB') for p in batch], args.prompt,
                              args.max_new_tokens)
        captions.update({str(p.relative_to(root)): t for p, t in zip(batch, texts)})
        tmp = out.with_suffix('.tmp')
        tmp.write_text(json.dumps(captions, indent=1, sort_keys=True))
        tmp.replace(out)  # atomic: never a half-written file
    print(f'{len(captions)} captions in {out}')


if __name__ == '__main__':
    main()
