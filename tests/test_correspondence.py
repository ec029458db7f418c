"""Semantic correspondence (gate_features/correspondence.py, tools/correspondence.py) on the synthetic SPair twin:
identical images give PCK 1.0, a warp lowers it; the protocol's pieces on hand-made features."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).parent.parent
CONFIG = ROOT / 'configs' / 'correspondence' / 'dift_sd21_spair.py'


def test_match_keypoints_and_pck_on_hand_made_features():
    from gate_features.correspondence import match_keypoints, pck
    h, w = 4, 6
    src = torch.eye(h * w).view(h * w, h, w)  # every pixel its own one-hot feature
    trg = src.flip(-1)  # the target is the mirror image
    kps = torch.tensor([[0, 0], [5, 3], [2, 1]])
    pred = match_keypoints(src, trg, kps, (h, w), (h, w))
    assert pred.tolist() == [[5, 0], [0, 3], [3, 1]]
    truth = torch.tensor([[5, 0], [0, 3], [0, 0]])
    assert pck(pred, truth, [0, 0, 9, 9], alpha=0.1).tolist() == [True, True, False]
    assert pck(pred, truth, [0, 0, 40, 40], alpha=0.1).tolist() == [True, True, True]


def _extractor(tiny):
    from gate_features import GATEFeatures
    return GATEFeatures.from_pretrained(str(tiny / 'sd'), prompt='a photo of a {}', prompt_classes=['cat', 'dog'],
                                        taps=('up_blocks.1',), branches=[dict(name='a'), dict(name='b')])


def test_identical_images_give_pck_one_and_a_warp_lowers_it(tiny, tmp_path):
    from gate_features.correspondence import evaluate, extractor_featurizer, read_pairs
    from mmseg_gate.testing.synthetic_spair import make_spair_like
    extractor = _extractor(tiny)
    featurize = extractor_featurizer(extractor, 'up_blocks.1', ['cat', 'dog'])
    same = make_spair_like(tmp_path / 'same', warp='none')
    result = evaluate(featurize, same, read_pairs(same), image_size=(64, 96))
    assert result['per_image'] == result['per_point'] == 1.0 and result['pairs'] == 4
    assert set(result['per_category']) == {'cat', 'dog'}
    warped = make_spair_like(tmp_path / 'rotated', warp='rotate')
    lower = evaluate(featurize, warped, read_pairs(warped), image_size=(64, 96))
    assert lower['per_point'] < 1.0


def _tool():
    import importlib.util
    spec = importlib.util.spec_from_file_location('correspondence_tool', ROOT / 'tools' / 'correspondence.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_config_is_dift_s_setting():
    cfg = _tool().read_config(str(CONFIG))
    assert cfg['extractor']['timestep'] == 261 and cfg['tap'] == 'up_blocks.1'
    assert len(cfg['extractor']['branches']) == 8 and cfg['data']['image_size'] == (768, 768)
    assert cfg['metric'] == dict(alpha=0.1) and len(cfg['categories']) == 18


@pytest.mark.e2e
def test_tool_runs_on_the_twin(tiny, tmp_path):
    from mmseg_gate.testing.synthetic_spair import make_spair_like
    root = make_spair_like(tmp_path / 'spair', warp='none')
    cfg = tmp_path / 'tiny.py'
    cfg.write_text(CONFIG.read_text().replace("categories = [", "categories = ['cat', 'dog'] or [")
                   .replace('ensemble = 8', 'ensemble = 2'))
    out = subprocess.run([sys.executable, str(ROOT / 'tools' / 'correspondence.py'), str(cfg), '--pretrained',
                          str(tiny / 'sd'), '--data-root', str(root), '--image-size', '64', '96', '--out',
                          str(tmp_path / 'pck.json')], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((tmp_path / 'pck.json').read_text())['per_image'] == 1.0
    assert 'All per image PCK: 100.00' in out.stdout
