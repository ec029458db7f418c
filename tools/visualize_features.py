"""Pictures of what each branch sees: PCA (3 components -> RGB) of every branch's features at every
level, the amalgamated features, and the learned branch weights, one PNG grid per image.

  python tools/visualize_features.py configs/gate_ade20k.py --checkpoint work_dirs/gate_ade20k/iter_80000.pth \\
      --images demo.jpg other.jpg --out work_dirs/features

Within a level all branches share one PCA basis, so colour differences are feature differences.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch
from mmengine.config import DictAction


def pca_rgb(feats: list[torch.Tensor]) -> list[np.ndarray]:
    """[C, h, w] maps (same C) -> [h, w, 3] pictures in [0, 1] on one shared 3-component PCA basis."""
    flat = [f.permute(1, 2, 0).reshape(-1, f.shape[0]).float() for f in feats]
    allx = torch.cat(flat)
    mean = allx.mean(0, keepdim=True)
    _, _, v = torch.pca_lowrank(allx - mean, q=3, center=False)
    proj = [(x - mean) @ v[:, :3] for x in flat]
    joint = torch.cat(proj)
    lo, hi = joint.quantile(0.01, dim=0), joint.quantile(0.99, dim=0)
    return [((p - lo) / (hi - lo + 1e-8)).clamp(0, 1).reshape(*f.shape[1:], 3).numpy()
            for p, f in zip(proj, feats)]


@torch.no_grad()
def feature_pictures(model, img: torch.Tensor) -> dict:
    """For a segmentor with a GATEDiffusionBackbone and one normalised image [1, 3, H, W]: PCA pictures
    per level and branch, of the amalgamated features, and per-level mean branch weights."""
    backbone = model.backbone
    per_level = backbone.extract(img)
    result = {'branches': [s.name for s in backbone.specs], 'levels': [], 'strides': backbone.strides}
    fused = backbone.amalgamation(per_level) if backbone.amalgamation is not None else None
    for i, level in enumerate(per_level):
        entry = {'branch_pictures': pca_rgb([f[0] for f in level])}
        if fused is not None:
            entry['fused_picture'] = pca_rgb([fused[i][0]])[0]
            entry['branch_weights'] = backbone.amalgamation.levels[i].last_weights[0].mean(-1).tolist()  # [N]
        result['levels'].append(entry)
    return result


def save_grid(rgb: np.ndarray, pics: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    n_branch = len(pics['branches'])
    has_fused = 'fused_picture' in pics['levels'][0]
    cols = 1 + n_branch + (2 if has_fused else 0)
    rows = len(pics['levels'])
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.2 * rows), squeeze=False)
    for r, (level, stride) in enumerate(zip(pics['levels'], pics['strides'])):
        axes[r][0].imshow(rgb)
        axes[r][0].set_title('input' if r == 0 else '')
        axes[r][0].set_ylabel(f'1/{stride}')
        for b, name in enumerate(pics['branches']):
            axes[r][1 + b].imshow(level['branch_pictures'][b], interpolation='nearest')
            axes[r][1 + b].set_title(name if r == 0 else '', fontsize=8)
        if has_fused:
            axes[r][1 + n_branch].imshow(level['fused_picture'], interpolation='nearest')
            axes[r][1 + n_branch].set_title('amalgamated' if r == 0 else '', fontsize=8)
            ax = axes[r][2 + n_branch]
            ax.bar(range(n_branch), level['branch_weights'], color='tab:blue')
            ax.set_xticks(range(n_branch), [str(i + 1) for i in range(n_branch)])
            ax.set_ylim(0, 1)
            ax.set_title('branch weights' if r == 0 else '', fontsize=8)
        for c in range(cols - (1 if has_fused else 0)):
            axes[r][c].set_xticks([])
            axes[r][c].set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config')
    parser.add_argument('--checkpoint', default=None, help='trained weights (amalgamation); none: as initialised')
    parser.add_argument('--images', nargs='+', required=True, help='image files or folders')
    parser.add_argument('--out', default='work_dirs/features')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='key=value overrides (sd_path=... propagates)')
    args = parser.parse_args()

    import mmseg_gate  # noqa: F401
    from mmengine.config import Config
    from mmengine.runner import load_checkpoint
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules
    from mmseg_gate.engine import apply_cfg_options
    from mmseg_gate.utils import list_images
    register_all_modules()
    cfg = apply_cfg_options(Config.fromfile(args.config), args.cfg_options)
    model = MODELS.build(cfg.model)
    model.init_weights()
    if args.checkpoint:
        load_checkpoint(model, args.checkpoint, map_location='cpu')
    model.to(args.device).eval()
    pre = cfg.model.data_preprocessor
    mean = torch.tensor(pre.get('mean', [127.5] * 3)).view(1, 3, 1, 1)
    std = torch.tensor(pre.get('std', [127.5] * 3)).view(1, 3, 1, 1)
    files = list_images(args.images)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path in files:
        bgr = cv2.imread(str(path))
        if bgr is None:
            raise FileNotFoundError(f'cannot read image {path}')
        rgb = bgr[..., ::-1].copy()
        x = torch.from_numpy(rgb if pre.get('bgr_to_rgb', True) else bgr.copy()).permute(2, 0, 1)[None].float()
        pics = feature_pictures(model, ((x - mean) / std).to(args.device))
        target = out / f'{path.stem}_features.png'
        save_grid(rgb, pics, target)
        print(target)


if __name__ == '__main__':
    main()
