"""The LoRA technique end to end: extraction from merged models, training through mmengine."""
import random
import re
import sys

import pytest
import torch

from conftest import backbone_cfg, build
from test_features_match_diffusers import crop, padded, reference_features
from test_tools_e2e import assert_resumed_exactly, config, kill_then_resume, run, tool, workspace  # noqa: F401
# (workspace: a fixture)


@pytest.fixture(scope='module')
def merged(tiny, tmp_path_factory):
    """The tiny base with the LoCon 'b' (attention + 3x3 convs + text encoder) fused in: as a diffusers
    folder and as one single file in SD's original layout, as the authors published theirs."""
    from diffusers import StableDiffusionPipeline
    from mmseg_gate.testing.ldm_layout import save_ldm_checkpoint
    out = tmp_path_factory.mktemp('merged')
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny / 'sd'), safety_checker=None)
    pipe.load_lora_weights(str(tiny / 'lora' / 'b.safetensors'), adapter_name='b')
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    pipe.save_pretrained(str(out / 'folder'))
    save_ldm_checkpoint(out / 'merged.safetensors', pipe.unet, pipe.text_encoder)
    from safetensors.torch import load_file  # the same as a pickle with Lightning extras, as .ckpt files are
    torch.save({'state_dict': load_file(out / 'merged.safetensors'), 'global_step': 1}, out / 'merged.ckpt')
    return out


@pytest.mark.e2e
def test_extracted_lora_reproduces_the_merged_model(tiny, merged, image, image_uint8):
    out = merged / 'extracted.safetensors'
    _, log = run(merged, sys.executable, tool('extract_lora.py'), '--base', str(tiny / 'sd'), '--tuned',
                 str(merged / 'merged.safetensors'), '--out', str(out), '--rank', '4', '--conv-rank', '4')
    error = float(re.search(r'relative error ([\d.e+-]+),', log).group(1))
    assert error < 1e-5, log[-2000:]
    assert 'conv3x3 (rank 4)' in log and 'text_encoder linear' in log
    # a branch with the extracted LoRA == diffusers' full forward on the merged model
    ours = build(backbone_cfg(tiny, amalgamation=None, branches=[dict(name='x', loras=[dict(path=str(out))])]))
    ours = [level[0] for level in ours.eval().extract(image)]
    ref = crop(reference_features(tiny, padded(image), None, sd=merged / 'folder'), image)
    for o, r in zip(ours, ref):
        assert ((o - r).norm() / r.norm()).item() <= 1e-4
    # diffusers' own loader reads it, alphas included
    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny / 'sd'), safety_checker=None)
    pipe.load_lora_weights(str(out))
    pipe.fuse_lora()
    want = StableDiffusionPipeline.from_pretrained(str(merged / 'folder'), safety_checker=None)
    fused = {k.replace('.base_layer', ''): v for k, v in pipe.unet.state_dict().items() if 'lora_' not in k}
    want = want.unet.state_dict()
    assert fused.keys() == want.keys()
    for name, value in want.items():
        torch.testing.assert_close(fused[name], value, atol=1e-5, rtol=1e-4, msg=name)


def test_lower_rank_reports_a_larger_error(tiny, merged):
    from mmseg_gate.lora.extract import extract_lora, load_models, relative_error
    base = load_models(str(tiny / 'sd'), str(tiny / 'sd'), '--base')
    tuned = load_models(str(merged / 'folder'), str(tiny / 'sd'), '--tuned')
    _, exact = extract_lora(base, tuned, rank=4, conv_rank=4, progress=False)
    _, low = extract_lora(base, tuned, rank=2, conv_rank=2, progress=False)
    assert relative_error(exact) < 1e-5 < 0.1 < relative_error(low)


def test_extraction_errors(tiny, merged):
    from mmseg_gate.lora.extract import extract_lora, load_models
    with pytest.raises(ValueError, match='is a pickle.*--allow-pickle'):
        load_models(str(merged / 'merged.ckpt'), str(tiny / 'sd'), '--tuned')
    from_pickle = load_models(str(merged / 'merged.ckpt'), str(tiny / 'sd'), '--tuned', allow_pickle=True)
    want = load_models(str(merged / 'folder'), str(tiny / 'sd'), '--tuned')
    for k, v in want['unet'].state_dict().items():
        assert torch.equal(from_pickle['unet'].state_dict()[k], v), k
    base = load_models(str(tiny / 'sd'), str(tiny / 'sd'), '--base')
    sd2 = load_models(str(tiny / 'sd2'), str(tiny / 'sd'), '--tuned')
    with pytest.raises(ValueError, match=r"different architectures: unet layer '.*': --base has shape \(.*\), "
                                         r'--tuned \(.*\)'):
        extract_lora(base, sd2, progress=False)
    with pytest.raises(ValueError, match='identical weights'):
        extract_lora(base, base, progress=False)
    with pytest.raises(FileNotFoundError, match='--tuned'):
        load_models(str(merged / 'nothing.safetensors'), str(tiny / 'sd'), '--tuned')


def _losses(log):
    return [float(x) for x in re.findall(r'loss_denoise: ([\d.]+)', log)]


@pytest.mark.e2e
def test_lora_training_config_end_to_end(tiny, workspace):  # noqa: F811
    wd = workspace / 'work_dirs' / 'lora'
    opts = ['log_processor.window_size=1', 'default_hooks.logger.interval=1']
    _, log = run(workspace, sys.executable, tool('train.py'), config('demo/lora_tiny_ade20k.py'), '--work-dir',
                 str(wd), '--cfg-options', *opts)
    losses = _losses(log)
    assert len(losses) == 40
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    print('loss curve:', [round(x, 4) for x in losses])
    assert last < 0.9 * first, (first, last)
    lora = wd / 'lora.safetensors'
    assert lora.exists() and (wd / 'lora_iter_20.safetensors').exists()
    ckpt = torch.load(wd / 'iter_40.pth', map_location='cpu', weights_only=False)
    assert all(k.startswith('lora.') for k in ckpt['state_dict']), list(ckpt['state_dict'])[:5]
    # the file loads into a branch and changes its features
    plain = build(backbone_cfg(tiny, amalgamation=None)).eval()
    tuned = build(backbone_cfg(tiny, amalgamation=None, branches=[dict(name='l', loras=[dict(path=str(lora))])])).eval()
    img = torch.rand(1, 3, 64, 64) * 2 - 1
    assert not torch.allclose(plain.extract(img)[0][0], tuned.extract(img)[0][0], atol=1e-4)
    # killed with SIGKILL after a random iteration past the checkpoint of iteration 20, --resume ends
    # bitwise as the uninterrupted run: noise, timesteps and posterior samples draw from torch's generator
    part = workspace / 'work_dirs' / 'lora_killed'
    kill_after = random.Random(21).randint(21, 39)
    killed_log, resumed_log = kill_then_resume(workspace, config('demo/lora_tiny_ade20k.py'), part, kill_after, opts)
    assert_resumed_exactly(wd, part, 40, log, resumed_log, killed_log, 20)
    from safetensors.torch import load_file
    written, want = load_file(part / 'lora.safetensors'), load_file(lora)
    assert written.keys() == want.keys() and all(torch.equal(written[k], want[k]) for k in want)
