"""The README's "Reproducing GATE" commands run as written on the tiny assets (paths swapped)."""
import re
import shlex
import shutil
import sys

import pytest
from mmengine.config import Config

from test_lora import merged  # noqa: F401  (fixture: the tiny base with a LoCon merged, as one .ckpt)
from test_tools_e2e import REPO, SHORT, run, workspace  # noqa: F401  (workspace: a fixture)

pytestmark = pytest.mark.e2e  # the tools through subprocesses: make test-e2e


def recipe_commands() -> list[str]:
    text = (REPO / 'README.md').read_text()
    block = re.search(r'<!-- recipe -->\n```bash\n(.*?)```\n<!-- /recipe -->', text, re.S).group(1)
    commands = block.replace('\\\n', ' ').splitlines()
    return [' '.join(c.split()) for c in commands if c.strip() and not c.startswith('#')]


def test_readme_recipe_runs_on_the_tiny_assets(workspace, merged):  # noqa: F811
    from mmseg_gate.testing import make_tiny_captioner
    make_tiny_captioner(workspace / 'blip')
    swaps = {'configs/lora/lora_ade20k_a.py': str(REPO / 'configs/demo/lora_tiny_ade20k.py'),
             'configs/lora/lora_ade20k_b.py': str(REPO / 'configs/demo/lora_tiny_ade20k.py'),
             'configs/gate_ade20k.py': str(REPO / 'configs/demo/gate_tiny_ade20k.py'),
             'checkpoints/stable-diffusion-v1-5': 'data/tiny_sd/sd',
             'checkpoints/blip-image-captioning-large': 'blip',
             'data/ade/ADEChallengeData2016': 'data/demo/ADEChallengeData2016',
             'downloads/lora2a.ckpt': str(merged / 'merged.ckpt'), 'downloads/lora2b.ckpt': str(merged / 'merged.ckpt'),
             'iter_80000.pth': 'iter_2.pth', 'python tools/': f'{sys.executable} {REPO}/tools/'}
    # the recipe writes the LoRAs where configs/gate_ade20k.py reads them: no LoRA options on its train and test
    gate = Config.fromfile(str(REPO / 'configs/gate_ade20k.py'))
    gate_loras = {k: gate[k] for k in ('lora_a', 'lora_b')}
    assert gate_loras == {'lora_a': 'work_dirs/lora_ade20k_a/lora.safetensors',
                          'lora_b': 'work_dirs/lora_ade20k_b/lora.safetensors'}
    commands = recipe_commands()
    assert len(commands) == 7, commands  # caption, 2 LoRA trainings, 2 extractions, train, test
    ran = {}  # swapped command with LoRA b's paths read as a's -> LoRA a's output path
    for command in commands:
        for old, new in swaps.items():
            command = command.replace(old, new)
        # LoRA b's training and extraction become LoRA a's after the swaps (one tiny config, one merged file):
        # run a's once and copy its output to b's path (the suite's time budget)
        as_a = command.replace('lora_ade20k_b', 'lora_ade20k_a')
        if as_a in ran and as_a != command:
            target = workspace / re.search(r'(work_dirs/lora_ade20k_b\S*)', command).group(1)
            source = workspace / ran[as_a]
            shutil.copytree(source, target) if source.is_dir() else shutil.copy(source, target)
            continue
        ran[command] = next(iter(re.findall(r'(work_dirs/lora_ade20k_a\S*)', command)), None)
        args = shlex.split(command)
        if 'lora_tiny' in command:  # a few iterations: the LoRA test checks the training itself
            args += ['--cfg-options', 'train_cfg.max_iters=4', 'default_hooks.checkpoint.interval=4']
        elif 'gate_tiny_ade20k' in command:  # the tiny config reads the tiny LoRAs: give it configs/gate_ade20k.py's
            args += ['--cfg-options', *(f'{k}={v}' for k, v in gate_loras.items())]
            args += SHORT if 'train.py' in command else []
        if 'caption.py' in command:
            args += ['--max-new-tokens', '4']
        _, out = run(workspace, *args)
        if 'test.py' in command:
            assert re.search(r'mIoU: [\d.]+', out), out[-2000:]
    assert (workspace / 'work_dirs/gate_ade20k/iter_2.pth').exists()
