"""tools/benchmark.py's DiT machinery (--preset sd35m / pixart / flux) on the tiny DiT assets: both modes run, the
reference-style per-branch pipelines and GATE give equal features, and the JSON has what the docs quote."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


# tiny-sd3 and tiny-flux: their branches exercise every reference stage (LoRA, ControlNet; FLUX's packing, sigma
# mapping and guidance, a tap on the last double block); PixArt's features are compared with diffusers in
# test_dit.py, and another subprocess would cost ~45 s of the suite's budget
@pytest.mark.e2e
@pytest.mark.parametrize('preset', ['tiny-sd3', 'tiny-flux'])
def test_dit_benchmark_json_and_feature_agreement(tiny_dit, tmp_path, preset):
    out = tmp_path / 'bench.json'
    proc = subprocess.run([sys.executable, str(REPO / 'tools' / 'benchmark.py'), '--preset', preset,
                           '--assets', str(tiny_dit), '--size', '64', '--batch', '1', '--iters', '1', '--warmup', '0',
                           '--device', 'cpu', '--json', str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    stages = {'vae', 'unet', 'text'} | ({'controlnet', 'conditions'} if preset != 'tiny-pixart' else set())
    for mode in ('reference', 'gate'):
        assert r[mode]['images_per_s'] > 0 and r[mode]['peak_mem_mb'] > 0
        assert stages - {'text'} <= set(r[mode]['stages_ms'])
    assert 'text' in r['reference']['stages_ms']
    assert r['max_abs_diff'] < 1e-4 < r['max_abs_feature']
    assert {'speedup', 'mem_ratio'} <= set(r)
    assert r['setup']['preset'] == preset and 'taps' in r['setup']['model']
    if preset != 'tiny-pixart':  # the branches: prompt; + LoRA a + canny; + LoRA b + canny
        assert r['setup']['branch_names'] == ['prompt', 'lora_a_canny', 'lora_b_canny']
        # one transformer + one ControlNet + adapters against three pipeline copies and two ControlNets
        assert r['gate']['frozen_params_m'] < 0.5 * r['reference']['frozen_params_m']
    else:  # no PixArt LoRA in diffusers: three prompts
        assert r['setup']['branch_names'] == ['prompt0', 'prompt1', 'prompt2']
    assert 'speedup' in proc.stdout and 'gate/ref' in proc.stdout


def test_dit_taps_are_the_quarter_depth_blocks():
    sys.path.insert(0, str(REPO / 'tools'))
    from benchmark_dit import dit_taps
    assert dit_taps(24) == tuple(f'transformer_blocks.{i}' for i in (5, 11, 17))
    assert dit_taps(4) == ('transformer_blocks.0', 'transformer_blocks.1', 'transformer_blocks.2')
    assert dit_taps(3) == ('transformer_blocks.0', 'transformer_blocks.1')  # the tiny assets
    # FLUX: double- then single-stream blocks, one depth (the tiny 2 + 3; the flux preset's default 1 + 2)
    flux = [f'transformer_blocks.{i}' for i in range(2)] + [f'single_transformer_blocks.{i}' for i in range(3)]
    assert dit_taps(flux) == ('transformer_blocks.0', 'transformer_blocks.1', 'single_transformer_blocks.1')
    assert dit_taps(flux[1:4]) == ('transformer_blocks.1', 'single_transformer_blocks.0')
