"""tools/benchmark.py on the tiny assets: runs both modes, reports what the README quotes, and the
reference-style and GATE features agree."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # subprocess runs of tools/benchmark.py: make test-e2e

REPO = Path(__file__).resolve().parents[1]


def test_benchmark_json_and_feature_agreement(tiny, tmp_path):
    out = tmp_path / 'bench.json'
    proc = subprocess.run([sys.executable, str(REPO / 'tools' / 'benchmark.py'), '--preset', 'tiny', '--assets', str(tiny),
                           '--size', '64', '--batch', '2', '--iters', '1', '--warmup', '0', '--train-step',
                           '--device', 'cpu', '--json', str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    for mode in ('reference', 'gate'):
        assert r[mode]['images_per_s'] > 0 and r[mode]['peak_mem_mb'] > 0
        assert r[mode]['trainable_checkpoint_mb'] > 0
        assert {'vae', 'unet', 'controlnet', 'conditions', 'head'} <= set(r[mode]['stages_ms'])
    assert r['max_abs_diff'] < 1e-4 < r['max_abs_feature']
    assert {'speedup', 'mem_ratio'} <= set(r)
    # one UNet + one ControlNet + adapters against three pipeline copies and two ControlNets
    assert r['gate']['frozen_params_m'] < 0.5 * r['reference']['frozen_params_m']
    assert 'speedup' in proc.stdout and 'gate/ref' in proc.stdout


def test_train_step_with_batch_1_is_refused_up_front(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / 'tools' / 'benchmark.py'), '--train-step', '--batch', '1'],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and '--train-step needs --batch 2' in proc.stderr, proc.stderr[-2000:]
