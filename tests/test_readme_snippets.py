"""The README's snippets are the files they name, its commands the library's, and "segment your own image" runs."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / 'README.md').read_text()
# a fenced block right after a line that names its file: "... (`configs/swap/x.py`):" or "`configs/swap/x.py`:"
NAMED = re.compile(r'`([\w./-]+\.(?:py|sh|cfg|toml|txt))`\)?:\n\n```\w*\n(.*?)```', re.S)


def blocks(language: str) -> list[str]:
    return re.findall(rf'```{language}\n(.*?)```', README, re.S)


def test_readme_is_short():
    assert len(README.splitlines()) <= 250


def test_every_named_snippet_is_its_file():
    named = NAMED.findall(README)
    assert named, 'no snippet names its file'
    for path, text in named:
        assert (REPO / path).read_text() == text, f'the README snippet of {path} differs from the file'


def test_every_config_snippet_names_its_file():
    """A config shown in the README (it sets _base_) is a file of the repository, shown whole."""
    named = {text for _, text in NAMED.findall(README)}
    for text in blocks('python'):
        if '_base_' in text:
            assert text in named, text


def test_readme_download_commands_are_the_not_found_messages():
    """The commands a missing-weights message suggests are the README's, filters and folder alike."""
    from mmseg_gate.models.stable_diffusion import download_command
    flat = ' '.join(README.replace('\\\n', ' ').split())
    for path, what in (('checkpoints/stable-diffusion-v1-5', 'Stable Diffusion model'),
                       ('checkpoints/sd-controlnet-canny', 'ControlNet')):
        assert download_command(path, what) in flat


def segment_snippet() -> str:
    (code,) = [b for b in blocks('python') if 'MMSegInferencer' in b]
    return code


@pytest.mark.e2e
def test_segment_your_own_image_runs(tiny, tmp_path):
    """The snippet as written, after a (2-iteration) demo, in the folder the demo ran in."""
    import cv2
    import numpy as np
    from mmseg_gate.testing.synthetic_data import make_ade20k_like
    (tmp_path / 'data').mkdir()
    (tmp_path / 'data' / 'tiny_sd').symlink_to(tiny)
    make_ade20k_like(tmp_path / 'data' / 'demo', num_train=4, num_val=1)
    (tmp_path / 'configs' / 'demo').mkdir(parents=True)
    (tmp_path / 'configs' / 'demo' / 'gate_tiny_ade20k.py').write_text(
        f"_base_ = ['{REPO / 'configs' / 'demo' / 'gate_tiny_ade20k.py'}']\n")
    demo = subprocess.run([sys.executable, str(REPO / 'tools/demo.py'), '--iters', '2'], cwd=tmp_path,
                          capture_output=True, text=True, timeout=400)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    cv2.imwrite(str(tmp_path / 'photo.jpg'), np.random.default_rng(0).integers(0, 255, (120, 160, 3), np.uint8))
    code = segment_snippet().replace('iter_500.pth', 'iter_2.pth')  # the demo's checkpoint, 2 iterations here
    done = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / 'outputs' / 'vis' / 'photo.jpg').is_file()
    pred = cv2.imread(str(tmp_path / 'outputs' / 'pred' / '00000000_pred.png'), cv2.IMREAD_UNCHANGED)
    assert pred.shape == (120, 160)  # class ids at the photo's size
