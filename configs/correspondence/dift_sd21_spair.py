# Semantic correspondence on SPair-71k (test split) with DIFT's protocol (gate_features/correspondence.py):
#   python tools/correspondence.py configs/correspondence/dift_sd21_spair.py
# A plain Python file (no _base_): tools/correspondence.py reads its variables without mmengine.
#
# The choices and where they come from (DIFT: Tang et al., NeurIPS 2023, github.com/Tsingularity/dift, eval_spair.py
# and src/models/dift_sd.py):
# - SD2.1 base, its own resolution: DIFT's SPair numbers use stable-diffusion-2-1 at 768x768 (img_size).
# - t=261 and the output of the second up block (up_ft_index=1: up_blocks.1, 1/16 at 768 -> 48x48, 1280 channels):
#   DIFT's SPair setting for SD (t=261, up_ft_index=1).
# - prompt 'a photo of a {category}': DIFT's SDFeaturizer4Eval encodes one prompt per SPair category; here
#   prompt_classes + a '{}' template (per-scene prompts, chosen per image by its category).
# - an ensemble of 8 noise draws averaged (DIFT: ensemble_size=8, one batch of 8 noised latents): here 8 branches of
#   the same prompt, each with its own seeded noise in eval (noise='gate'), averaged; deterministic, one batched
#   denoiser call.
# - matching and metric: feature maps upsampled bilinearly to each image's own size, cosine nearest neighbour,
#   PCK@0.1 of the target bounding box's longer side, per image and per point (DIFT's eval_spair.py).
# The GATE authors (github.com/Darkbblue/generic-diffusion-feature) evaluate correspondence the same way on DIFT's
# features; their extractor differs only in the feature choice, which the `extractor` dict below sets.
categories = ['aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair', 'cow', 'dog', 'horse',
              'motorbike', 'person', 'pottedplant', 'sheep', 'train', 'tvmonitor']
pretrained = 'checkpoints/stable-diffusion-2-1'
ensemble = 8
extractor = dict(
    prompt='a photo of a {}', prompt_classes=categories, timestep=261, taps=('up_blocks.1',),
    branches=[dict(name=f'draw_{i}') for i in range(ensemble)], noise='gate', dtype='fp32')
tap = 'up_blocks.1'
data = dict(root='data/SPair-71k', split='test', categories=None, image_size=(768, 768))
metric = dict(alpha=0.1)
