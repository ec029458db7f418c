"""``--cfg-options`` that also understand a config's top-level variables (``sd_path``, ``data_root`` ...)."""
from __future__ import annotations

from typing import Any

from mmengine.config import Config


def _replace(node: Any, old: str, new: Any) -> Any:
    if isinstance(node, str):
        if node == old:
            return new
        if isinstance(new, str) and node.startswith(old.rstrip('/') + '/'):  # a path built from it
            return new.rstrip('/') + node[len(old.rstrip('/')):]
        return node
    if isinstance(node, dict):
        return type(node)({k: _replace(v, old, new) for k, v in node.items()})
    if isinstance(node, (list, tuple)):
        return type(node)(_replace(v, old, new) for v in node)
    return node


def apply_cfg_options(cfg: Config, options: dict | None) -> Config:
    """Merge ``options`` into ``cfg``; a top-level string variable also replaces every use of its value.

    Configs name their weight and data locations once at the top (``sd_path = '...'``) and use them
    below; mmengine evaluates configs eagerly, so a plain override of ``sd_path`` would not reach
    ``model.backbone.pretrained``. Here it does: each place that held the old value gets the new one,
    and each path under it (``data_root + '/captions.json'``) moves with it.
    """
    if not options:
        return cfg
    for key, value in options.items():
        old = cfg.get(key) if '.' not in key else None
        if isinstance(old, str) and old != value:
            for name in list(cfg.keys()):
                if name != key:
                    cfg[name] = _replace(cfg[name], old, value)
    cfg.merge_from_dict(options)
    return cfg


def load_tool_config(args) -> Config:
    """The config as tools/train.py and tools/test.py see it: ``--cfg-options`` applied, launcher set,
    work_dir from the CLI, the config, or ``work_dirs/<config name>`` (mmseg's order)."""
    import os.path as osp
    cfg = apply_cfg_options(Config.fromfile(args.config), args.cfg_options)
    cfg.launcher = args.launcher
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or osp.join(
        './work_dirs', osp.splitext(osp.basename(args.config))[0])
    return cfg
