"""DDPM-segmentation's label-scarce sets (Baranchuk et al., ICLR 2022) in their published layout.

``datasets.tar.gz`` of yandex-research/ddpm-segmentation unpacks to ``<category>/real/{train,test}/``: images
(``.png``/``.jpg``) with a label map of the same stem as ``.npy`` (class indices, 255 = ignore). Class names and
palettes are those of their ``src/data_util.py``; the class counts and ``ignore_index=255`` follow the GATE
authors' ``scarce_segmentation/segmentation/data_util.py`` (generic-diffusion-feature), which keeps class 0
(background) as a class for every set, Bedroom-28 included (29 classes).

Split protocol (the GATE authors' ``shuffle_split`` in ``scarce_segmentation/segmentation/datasets.py``): the
published train and test images are pooled, shuffled, and the first ``len(train)`` become the training set;
the paper reports the mean and std over five such random splits. Their shuffle is Python's ``random`` under
their global seed, so their exact splits cannot be rebuilt; here ``split_seed=s`` draws a numpy permutation
(seed ``s``), the same on every machine. ``split_seed=None`` keeps the published split.
"""
from __future__ import annotations

import os.path as osp
from pathlib import Path

import cv2
import numpy as np
from mmcv.transforms import BaseTransform
from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS, TRANSFORMS

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg')


def _palette(flat: list[int]) -> list[list[int]]:
    return [list(flat[i:i + 3]) for i in range(0, len(flat), 3)]


BEDROOM_28 = ('background', 'bed', 'bed***footboard', 'bed***headboard', 'bed***side rail', 'carpet', 'ceiling',
              'chandelier / ceiling fan blade', 'curtain', 'cushion', 'floor', 'table/nightstand/dresser',
              'table/nightstand/dresser***top', 'picture / mirrow', 'pillow', 'lamp***column', 'lamp***shade', 'wall',
              'window', 'curtain rod', 'window***frame', 'chair', 'picture / mirror***frame', 'plinth',
              'door / door frame', 'pouf', 'wardrobe', 'plant', 'table staff')
BEDROOM_28_PALETTE = [255, 255, 255, 238, 229, 102, 255, 72, 69, 124, 99, 34, 193, 127, 15, 106, 177, 21, 248, 213, 43,
                      252, 155, 83, 220, 147, 77, 99, 83, 3, 116, 116, 138, 63, 182, 24, 200, 226, 37, 225, 184, 161,
                      233, 5, 219, 142, 172, 248, 153, 112, 146, 38, 112, 254, 229, 30, 141, 99, 205, 255, 74, 59, 83,
                      186, 9, 0, 107, 121, 0, 0, 194, 160, 255, 170, 146, 255, 144, 201, 185, 3, 170, 221, 239, 255,
                      0, 0, 53]
HORSE_21 = ('background', 'person', 'back', 'barrel', 'bridle', 'chest', 'ear', 'eye', 'forelock', 'head', 'hoof',
            'leg', 'mane', 'muzzle', 'neck', 'nostril', 'tail', 'thigh', 'saddle', 'shoulder', 'leg protection')
HORSE_21_PALETTE = [255, 255, 255, 255, 74, 70, 0, 137, 65, 0, 111, 166, 163, 0, 89, 255, 219, 229, 122, 73, 0,
                    0, 0, 166, 99, 255, 172, 183, 151, 98, 0, 77, 67, 143, 176, 255, 241, 38, 110, 27, 210, 105,
                    128, 150, 147, 228, 230, 158, 160, 136, 106, 79, 198, 1, 59, 93, 255, 115, 214, 209, 255, 47, 128]
CAT_15 = ('background', 'back', 'belly', 'chest', 'leg', 'paw', 'head', 'ear', 'eye', 'mouth', 'tongue', 'nose',
          'tail', 'whiskers', 'neck')
CAT_15_PALETTE = [255, 255, 255, 190, 153, 153, 250, 170, 30, 220, 220, 0, 107, 142, 35, 102, 102, 156, 152, 251, 152,
                  119, 11, 32, 244, 35, 232, 220, 20, 60, 52, 83, 84, 194, 87, 125, 143, 176, 255, 31, 102, 211,
                  104, 131, 101]
CELEBA_19 = ('background', 'cloth', 'ear_r', 'eye_g', 'hair', 'hat', 'l_brow', 'l_ear', 'l_eye', 'l_lip', 'mouth',
             'neck', 'neck_l', 'nose', 'r_brow', 'r_ear', 'r_eye', 'skin', 'u_lip')
CELEBA_19_PALETTE = [255, 255, 255, 238, 229, 102, 250, 150, 50, 124, 99, 34, 193, 127, 15, 225, 96, 18, 220, 147, 77,
                     99, 83, 3, 116, 116, 138, 200, 226, 37, 225, 184, 161, 142, 172, 248, 153, 112, 146, 38, 112, 254,
                     229, 30, 141, 52, 83, 84, 194, 87, 125, 248, 213, 42, 31, 102, 211]
FFHQ_34 = ('background', 'head', 'head***cheek', 'head***chin', 'head***ear', 'head***ear***helix',
           'head***ear***lobule', 'head***eye***bottom lid', 'head***eye***eyelashes', 'head***eye***iris',
           'head***eye***pupil', 'head***eye***sclera', 'head***eye***tear duct', 'head***eye***top lid',
           'head***eyebrow', 'head***forehead', 'head***frown', 'head***hair', 'head***hair***sideburns', 'head***jaw',
           'head***moustache', 'head***mouth***inferior lip', 'head***mouth***oral commissure',
           'head***mouth***superior lip', 'head***mouth***teeth', 'head***neck', 'head***nose',
           'head***nose***ala of nose', 'head***nose***bridge', 'head***nose***nose tip', 'head***nose***nostril',
           'head***philtrum', 'head***temple', 'head***wrinkles')
# their FFHQ palette is given as floats in [0, 1] and scaled by int(x * 255)
FFHQ_34_PALETTE = [int(v * 255) for v in (
    1.0, 1.0, 1.0, .4420, .5100, .4234, .8562, .9537, .3188, .2405, .4699, .9918, .8434, .9329, .7544,
    .3748, .7917, .3256, .0190, .4943, .3782, .7461, .0137, .5684, .1644, .2402, .7324, .0200, .4379, .4100,
    .5853, .8880, .6137, .7991, .9132, .9720, .6816, .6237, .8562, .9981, .4692, .3849, .5351, .8242, .2731,
    .1747, .3626, .8345, .5323, .6668, .4922, .2122, .3483, .4707, .6844, .1238, .1452, .3882, .4664, .1003,
    .2296, .0401, .3030, .5751, .5467, .9835, .1308, .9628, .0777, .2849, .1846, .2625, .9764, .9420, .6628,
    .3893, .4456, .6433, .8705, .3957, .0963, .6117, .9702, .0247, .3668, .6694, .3117, .6451, .7302, .9542,
    .6171, .1097, .9053, .3377, .4950, .7284, .1655, .9254, .6557, .9450, .6721, .6162)]
ADE_BEDROOM_30 = ('wall', 'bed', 'floor', 'table', 'lamp', 'ceiling', 'painting', 'windowpane', 'pillow', 'curtain',
                  'cushion', 'door', 'chair', 'cabinet', 'chest', 'mirror', 'rug', 'armchair', 'book', 'sconce', 'plant',
                  'wardrobe', 'clock', 'light', 'flower', 'vase', 'fan', 'box', 'shelf', 'television')
ADE_BEDROOM_30_PALETTE = [240, 156, 206, 69, 88, 93, 240, 49, 184, 27, 107, 126, 50, 82, 241, 54, 250, 147, 156, 213, 3,
                          176, 108, 79, 251, 150, 149, 66, 51, 34, 210, 97, 53, 30, 53, 102, 232, 164, 118, 204, 150,
                          17, 101, 86, 178, 249, 20, 213, 54, 35, 82, 157, 68, 216, 58, 161, 73, 174, 67, 67, 193, 181,
                          78, 169, 60, 178, 220, 204, 166, 4, 127, 85, 245, 106, 216, 222, 172, 168, 84, 148, 105, 137,
                          220, 89, 68, 252, 126, 29]

#: category -> (class names, flat RGB palette)
CATEGORIES = {'bedroom_28': (BEDROOM_28, BEDROOM_28_PALETTE), 'horse_21': (HORSE_21, HORSE_21_PALETTE),
              'cat_15': (CAT_15, CAT_15_PALETTE), 'celeba_19': (CELEBA_19, CELEBA_19_PALETTE),
              'ffhq_34': (FFHQ_34, FFHQ_34_PALETTE), 'ade_bedroom_30': (ADE_BEDROOM_30, ADE_BEDROOM_30_PALETTE)}


def list_images(folder: str | Path) -> list[str]:
    """The images of one published folder, sorted (as their ``_list_image_files_recursively`` + ``sorted``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f'{folder} not found: DDPM-segmentation data unpack to <category>/real/{{train,test}}/ '
                                '(datasets.tar.gz of yandex-research/ddpm-segmentation)')
    return sorted(str(p) for p in folder.rglob('*') if p.suffix.lower() in IMAGE_SUFFIXES)


def random_split(train: list[str], test: list[str], seed: int | None) -> dict[str, list[str]]:
    """The paper's protocol: pool, shuffle with ``seed``, first ``len(train)`` train; ``None``: as published."""
    if seed is None:
        return {'train': list(train), 'test': list(test)}
    pool = list(train) + list(test)
    order = np.random.default_rng(seed).permutation(len(pool))
    pool = [pool[i] for i in order]
    return {'train': pool[:len(train)], 'test': pool[len(train):]}


@DATASETS.register_module()
class DDPMSegmentationDataset(BaseSegDataset):
    """One of DDPM-segmentation's sets, read from ``data_root`` = ``<category>/real``.

    Args:
        category: ``'bedroom_28'``, ``'horse_21'``, ``'cat_15'``, ``'celeba_19'``, ``'ffhq_34'`` or
            ``'ade_bedroom_30'``: sets the class names and palette (or use the registered subclasses).
        split: ``'train'``, ``'test'`` or ``'all'`` (train then test: what a feature cache needs).
        split_seed: ``None`` keeps the published split; an int draws the paper's random split with that seed.
        **kwargs: :class:`BaseSegDataset`'s (``data_root``, ``pipeline``, ``indices``, ...).

    Labels are the ``.npy`` files next to the images: load them with :class:`LoadNpyAnnotations`.
    """
    CATEGORY: str | None = None

    def __init__(self, category: str | None = None, split: str = 'train', split_seed: int | None = None,
                 ignore_index: int = 255, **kwargs) -> None:
        category = category or self.CATEGORY
        if category not in CATEGORIES:
            raise ValueError(f'category={category!r}: use one of {sorted(CATEGORIES)}')
        if split not in ('train', 'test', 'all'):
            raise ValueError(f"split={split!r}: use 'train', 'test' or 'all'")
        self.category, self.split, self.split_seed = category, split, split_seed
        classes, palette = CATEGORIES[category]
        metainfo = dict(classes=classes, palette=_palette(palette), **(kwargs.pop('metainfo', None) or {}))
        super().__init__(img_suffix='.png', seg_map_suffix='.npy', metainfo=metainfo, ignore_index=ignore_index,
                         reduce_zero_label=False, **kwargs)

    def load_data_list(self) -> list[dict]:
        root = self.data_root or ''
        parts = random_split(list_images(osp.join(root, 'train')), list_images(osp.join(root, 'test')),
                             self.split_seed)
        images = parts['train'] + parts['test'] if self.split == 'all' else parts[self.split]
        out = []
        for img in images:
            label = osp.splitext(img)[0] + '.npy'
            if not osp.isfile(label):
                raise FileNotFoundError(f'label map {label} missing for {img} (the published layout has one .npy '
                                        'per image)')
            out.append(dict(img_path=img, seg_map_path=label, label_map=self.label_map,
                            reduce_zero_label=False, seg_fields=[], num_classes=len(self.metainfo['classes'])))
        return out


def _category_dataset(name: str, category: str) -> type:
    cls = type(name, (DDPMSegmentationDataset,), dict(
        CATEGORY=category, METAINFO=dict(classes=CATEGORIES[category][0], palette=_palette(CATEGORIES[category][1])),
        __doc__=f'DDPM-segmentation\'s {category} (``data_root`` = ``{category}/real``).'))
    return DATASETS.register_module(name=name, module=cls)


Bedroom28Dataset = _category_dataset('Bedroom28Dataset', 'bedroom_28')
Horse21Dataset = _category_dataset('Horse21Dataset', 'horse_21')
Cat15Dataset = _category_dataset('Cat15Dataset', 'cat_15')
CelebA19Dataset = _category_dataset('CelebA19Dataset', 'celeba_19')
FFHQ34Dataset = _category_dataset('FFHQ34Dataset', 'ffhq_34')
ADEBedroom30Dataset = _category_dataset('ADEBedroom30Dataset', 'ade_bedroom_30')


def check_label_values(label: np.ndarray, path: str, num_classes: int | None, ignore_index: int) -> None:
    """Refuse class ids outside ``[0, num_classes)`` (``None``: the uint8 range the map is stored in) other
    than ``ignore_index``, and non-integer values, before any cast: a cast to uint8 turns 260 into 4 silently,
    and an id >= num_classes only fails in the loss, without the file's name."""
    if label.dtype == np.bool_:
        return
    if not np.issubdtype(label.dtype, np.integer):
        if not np.issubdtype(label.dtype, np.floating):
            raise ValueError(f'{path}: a label map holds class indices, got dtype {label.dtype}')
        fraction = label[np.isfinite(label) & (label != np.round(label))]
        if (~np.isfinite(label)).any() or fraction.size:
            raise ValueError(f'{path}: a label map holds class indices, got non-integer values '
                             f'{np.unique(fraction)[:5].tolist() or "nan/inf"} (dtype {label.dtype})')
    top = 256 if num_classes is None else int(num_classes)
    values, counts = np.unique(label, return_counts=True)
    bad = (values < 0) | (values >= top)
    bad &= values != ignore_index
    if bad.any():
        offending = ', '.join(f'{v} ({c} pixels)' for v, c in zip(values[bad][:10].tolist(), counts[bad][:10]))
        more = f' and {int(bad.sum()) - 10} more' if bad.sum() > 10 else ''
        within = f'the set has {top} classes' if num_classes is not None else 'label maps are uint8'
        raise ValueError(f'{path}: class ids {offending}{more} outside [0, {top}) ({within}; {ignore_index} = '
                         'ignore): fix the label map, or the category/num_classes it is read with')


@TRANSFORMS.register_module()
class LoadNpyAnnotations(BaseTransform):
    """Loads ``results['seg_map_path']`` (a ``.npy`` label map) as ``gt_seg_map`` (uint8), refusing class ids
    outside ``[0, num_classes)`` other than ``ignore_index`` (naming the file and the values).

    Args:
        label_size: ``(h, w)`` to resize the label to (nearest, as the authors' ``cv2.INTER_NEAREST`` to 256);
            ``ori_shape`` becomes this size too, so predictions are scored at the label resolution.
            ``None`` keeps the file's size.
        min_region_pixels: a class covering fewer pixels than this in an image becomes ``ignore_index``
            (the authors delete annotations under 20 pixels from the training images; 0 keeps all).
        ignore_index: the value of unlabelled pixels (0..255: the maps are uint8, as mmseg's).
        num_classes: the valid ids are ``[0, num_classes)``; ``None``: the dataset's (``results['num_classes']``,
            which :class:`DDPMSegmentationDataset` sets), else only the uint8 range is checked.
    """

    def __init__(self, label_size: tuple[int, int] | None = None, min_region_pixels: int = 0,
                 ignore_index: int = 255, num_classes: int | None = None) -> None:
        if not 0 <= ignore_index <= 255:
            raise ValueError(f'ignore_index={ignore_index}: label maps are uint8, use a value in 0..255 (255)')
        if num_classes is not None and not 0 < num_classes <= 255:
            raise ValueError(f'num_classes={num_classes}: uint8 label maps hold 1..255 classes')
        self.label_size = tuple(label_size) if label_size is not None else None
        self.min_region_pixels, self.ignore_index = int(min_region_pixels), ignore_index
        self.num_classes = num_classes

    def transform(self, results: dict) -> dict:
        path = results['seg_map_path']
        label = np.load(path, allow_pickle=False)
        if label.ndim != 2:
            raise ValueError(f'{path}: a label map is [H, W], got shape {label.shape}')
        num_classes = self.num_classes if self.num_classes is not None else results.get('num_classes')
        check_label_values(label, path, num_classes, self.ignore_index)
        label = label.astype(np.uint8)
        if self.label_size is not None and label.shape != self.label_size:
            label = cv2.resize(label, self.label_size[::-1], interpolation=cv2.INTER_NEAREST)
        if self.min_region_pixels:
            values, counts = np.unique(label, return_counts=True)
            for v, c in zip(values, counts):
                if v != self.ignore_index and c < self.min_region_pixels:
                    label[label == v] = self.ignore_index
        results['gt_seg_map'] = label
        results.setdefault('seg_fields', []).append('gt_seg_map')
        if self.label_size is not None:
            results['ori_shape'] = label.shape
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(label_size={self.label_size}, '
                f'min_region_pixels={self.min_region_pixels}, num_classes={self.num_classes})')
