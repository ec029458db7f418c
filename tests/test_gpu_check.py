"""tools/gpu_check.py (make gpu-check, docs/gpu.md): its dry run end to end on the CPU, its report and time budget;
and the diffusion-transformer families on ``--device``/``--dtype`` (the device selection's DiT part: test_dit.py
and test_flux.py compare those families with diffusers on the CPU, these compare the device's features with them)."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import DEVICE_TOLERANCE, assert_features_close, build

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'tools'))

# per family: taps, and a branch with the family's techniques (PixArt has no LoRA and no ControlNet in diffusers)
DIT_FAMILIES = {
    'sd3': (('transformer_blocks.0', 'transformer_blocks.2'),
            dict(loras=[dict(path='sd3-lora/a.safetensors')], controlnets=[dict(path='sd3-controlnet')])),
    'pixart-sigma': (('transformer_blocks.0', 'transformer_blocks.2'), {}),
    'flux': (('transformer_blocks.1', 'single_transformer_blocks.1'),
             dict(loras=[dict(path='flux-lora/a.safetensors')], controlnets=[dict(path='flux-controlnet')])),
}
INT8 = dict(type='TorchAoConfig', quant_type='Int8WeightOnlyConfig')


def _dit(tiny_dit, family, dtype='fp32', **kw):
    taps, technique = DIT_FAMILIES[family]
    technique = {k: [dict(v, path=str(tiny_dit / v['path'])) for v in vs] for k, vs in technique.items()}
    branches = [dict(name='plain')] + ([dict(name='technique', **technique)] if technique else [])
    return build(dict(type='GATEDiffusionBackbone', pretrained=str(tiny_dit / family), prompt='a photo of a street',
                      noise='fixed', taps=taps, dtype=dtype, branches=branches, sigma=0.2 if family != 'pixart-sigma'
                      else None, amalgamation=dict(hidden_channels=8, refine_blocks=1, fuse_blocks=1), **kw)).eval()


@pytest.fixture(scope='module')
def dit_cpu_fp32(tiny_dit, image):
    """Each family's features in fp32 on the CPU (equal to diffusers': test_dit.py, test_flux.py)."""
    return {family: _dit(tiny_dit, family).extract(image) for family in DIT_FAMILIES}


@pytest.mark.device
@pytest.mark.parametrize('family', list(DIT_FAMILIES))
def test_dit_family_on_the_device(tiny_dit, image, dit_cpu_fp32, family, device, dtype):
    """SD3 (+ LoRA + ControlNet), PixArt-Sigma and FLUX.1 (+ LoRA + ControlNet) built, moved to the device in the
    frozen dtype: features equal the CPU's fp32 ones (fp32: within 1e-4 / 1e-3; bf16/fp16: DEVICE_TOLERANCE)."""
    m = _dit(tiny_dit, family, dtype).to(device)
    assert m.frozen_modules().denoiser.device.type == device.type
    ours = m.extract(image.to(device))
    for level, ref in zip(ours, dit_cpu_fp32[family]):
        for branch, r in zip(level, ref):
            assert_features_close(branch, r.to(device), dtype, atol=1e-4, rtol=1e-3)
    if len(ours[0]) > 1:  # the LoRA + ControlNet branch differs: the comparison could fail
        assert (ours[0][1] - ours[0][0]).abs().max() > 1e-3


@pytest.mark.device
def test_torchao_int8_flux_with_lora_moves_to_the_device(tiny_dit, image, dit_cpu_fp32, device, dtype):
    """torchao int8 weight-only FLUX (transformer and ControlNet) built on the CPU, moved with ``.to(device)``: its
    int8 tensors go along, the LoRA sits on top, and the features stay near the unquantized fp32 ones."""
    m = _dit(tiny_dit, 'flux', dtype, quantization=INT8).to(device)
    for net in (m.sd.denoiser, m.sd.controlnets['0']):
        weight = net.transformer_blocks[0].attn.to_k.weight
        assert type(weight).__name__ == 'Int8Tensor' and weight.device.type == device.type
    assert 'lora_A' in dir(m.sd.denoiser.transformer_blocks[0].attn.to_q)
    tolerance = 0.02 + (DEVICE_TOLERANCE[dtype] or 0)  # int8's error (test_flux.py) plus the dtype's
    for level, ref in zip(m.extract(image.to(device)), dit_cpu_fp32['flux']):
        for branch, r in zip(level, ref):
            r = r.to(device)
            assert (branch - r).abs().max() < tolerance * r.abs().max()


# ---------------------------------------------------------------------------------------------- gpu_check itself
def test_budget_skips_stages_and_the_report_says_so(tmp_path):
    """With no time left every stage is skipped for time; the JSON and Markdown reports still come out."""
    import gpu_check
    out = tmp_path / 'out'
    assert gpu_check.main(['--dry-run', '--budget-s', '0', '--out', str(out)]) == 0
    report = json.loads((out / 'gpu_check.json').read_text())
    names = [s.name for s in gpu_check.make_stages()]
    assert [s['name'] for s in report['stages']] == names and report['skipped_for_time'] == names
    assert report['failed'] == [] and report['environment']['versions']['torch'] == torch.__version__
    assert 'tf32' in report['environment'] and 'mmcv_ops' in report['environment']
    md = (out / 'gpu_check.md').read_text()
    assert '| a doctor |' in md and 'Skipped for time: doctor, suite' in md


def test_report_helpers(tmp_path):
    import gpu_check
    log = ('06/01 Iter(train) [ 1/12]  lr: 2e-03  eta: 0:00:01  time: 0.5  loss: 1.9000  decode.loss_ce: 1.2\n'
           '06/01 Iter(train) [ 2/12]  lr: 2e-03  eta: 0:00:01  time: 0.5  loss: 1.5000  decode.loss_ce: 1.0\n')
    assert gpu_check.logged_losses(log) == [1.9, 1.5] and gpu_check.logged_losses(log, True) == {1: 1.9, 2: 1.5}
    msg = 'RuntimeError: upsample_bilinear2d_backward_out_cuda does not have a deterministic implementation, but ...'
    assert gpu_check.NONDETERMINISTIC.findall(msg) == ['upsample_bilinear2d_backward_out_cuda']
    assert gpu_check.last_error('a\nTraceback\nRuntimeError: boom\n') == 'RuntimeError: boom'
    xml = tmp_path / 'r.xml'
    xml.write_text('<testsuites><testsuite time="1.5"><testcase classname="tests.test_x" name="a"/>'
                   '<testcase classname="tests.test_x" name="b"><failure message="assert 1 == 2&#10;more"/></testcase>'
                   '<testcase classname="tests.test_x" name="c"><skipped message="no GPU"/></testcase>'
                   '</testsuite></testsuites>')
    r = gpu_check.junit(xml)
    assert (r['tests'], r['passed'], r['time_s']) == (3, 1, 1.5)
    assert r['failed'] == [dict(name='test_x::b', message='assert 1 == 2')]
    assert r['skipped'] == [dict(name='test_x::c', reason='no GPU')]


@pytest.mark.e2e
def test_gpu_check_dry_run(tiny, tiny_dit, tmp_path):
    """make gpu-check-dry: every stage of the GPU check on the CPU at tiny sizes, the report complete."""
    import gpu_check
    out = tmp_path / 'out'
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(REPO / 'tools' / 'gpu_check.py'), '--dry-run', '--out', str(out),
                           '--tiny', str(tiny), '--tiny-dit', str(tiny_dit)],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    wall = time.monotonic() - t0
    report = json.loads((out / 'gpu_check.json').read_text())
    stages = {s['name']: s for s in report['stages']}
    assert proc.returncode == 0 and report['failed'] == [], \
        (proc.stdout[-3000:] + proc.stderr[-3000:], {n: s['reason'][:1500] for n, s in stages.items() if s['reason']})
    assert all(s['status'] == 'ok' for s in stages.values()), {n: s['status'] for n, s in stages.items()}
    suite = stages['suite']['details']
    assert suite['passed'] >= 6 and not suite['failed'] and '--dtype bf16' in suite['command']
    train = stages['train']['details']
    assert train['loss_fell'] and train['frozen_keys'] == [] and train['checkpoint_mb'] < 50
    assert stages['ddp']['details']['distributed']
    resume = stages['resume']['details']
    assert resume['bitwise'] and resume['attempts'][resume['mode']]['random_state_restored']
    bench = stages['benchmark']['details']
    assert bench['extract_b1']['max_abs_diff'] < 1e-4 and bench['extract_b1']['speedup'] > 0
    assert bench['train_step_b2']['gate']['images_per_s'] > 0  # ours only in a dry run
    levers = stages['levers']['details']['runs']
    assert set(levers) == set(gpu_check.LEVERS_DRY) and all(m['s_per_iter'] > 0 for m in levers.values()), levers
    flux = stages['flux']['details']
    assert set(flux['measured']) == {'bf16', 'int8'} and flux['int8_weight_type'] == 'Int8Tensor'
    assert all(e < 0.1 for e in flux['int8_error'].values())
    md = (out / 'gpu_check.md').read_text()
    for heading in ('## Stages', '## (b) Device selection', '## (c) Training', '## (d) Kill and resume',
                    '## (e) tools/benchmark.py', '## (f) FLUX.1 blocks', "## (f') Speed levers"):
        assert heading in md
    print(f'gpu_check --dry-run: {wall:.0f} s; stages ' + ', '.join(f"{n} {s['wall_s']} s" for n, s in stages.items()))
