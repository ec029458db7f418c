"""Bad values that used to reach the first forward (or pass silently) fail when the backbone is built, naming the
value, what is allowed and the fix (issue 27); a LoRA only partly for the model builds with a warning."""
import logging

import pytest
from safetensors.torch import load_file, save_file

from conftest import backbone_cfg, build, canny_net, lora

TAP = 'transformer_blocks.1'


def _dit(tiny_dit, name, **kw):
    """A one-tap, no-amalgamation DiT backbone config (the checks run before any forward)."""
    return dict(dict(type='GATEDiffusionBackbone', pretrained=str(tiny_dit / name), prompt='a photo', noise='fixed',
                     taps=(TAP,), amalgamation=None), **kw)


@pytest.mark.parametrize('sigma, error, match', [
    ('high', TypeError, r"sigma='high': give a number in \[0, 1\] \(the flow-matching noise level\), e.g. sigma=0.111"),
    (1.5, ValueError, r'sigma=1.5: give a number in \[0, 1\]'),
    (-0.1, ValueError, r'sigma=-0.1: give a number in \[0, 1\]'),
    ([0.1, 0.2], TypeError, r'sigma=\[0.1, 0.2\]: .*one for all branches; per branch: their own timestep='),
])
def test_sigma_must_be_a_noise_level(tiny_dit, sigma, error, match):
    with pytest.raises(error, match=match):
        build(_dit(tiny_dit, 'sd3', sigma=sigma))


def test_drop_channels_beyond_the_taps_channels(tiny_dit):
    with pytest.raises(ValueError, match=rf"drop_channels=\[100000\] on tap '{TAP}': it has \d+ channels: give "
                                         r'indices in 0\.\.\d+'):
        build(_dit(tiny_dit, 'sd3', drop_channels=[100000]))


@pytest.mark.parametrize('drop, error', [('all', ValueError), ([1.5], TypeError), ({TAP: 3}, TypeError)])
def test_drop_channels_of_another_form(tiny_dit, drop, error):
    with pytest.raises(error, match=r"drop_channels=.*: give channel indices for every tap .*\{tap: indices\}.*"
                                    r"or 'auto'"):
        build(_dit(tiny_dit, 'sd3', drop_channels=drop))


def test_quantization_given_as_a_string(tiny):
    with pytest.raises(TypeError, match=r"quantization='int8': give a config dict, e.g. dict\(type='TorchAoConfig', "
                                        r"quant_type='Int8WeightOnlyConfig'\)"):
        build(backbone_cfg(tiny, quantization='int8'))


def test_union_controlnet_mode_beyond_its_modes(tiny_dit):
    net = dict(path=str(tiny_dit / 'flux-controlnet-union'), mode=99)
    with pytest.raises(ValueError, match=r"flux-controlnet-union' is a union ControlNet with 10 modes: give the "
                                         r"branch's controlnet a mode in 0\.\.9 \(it has mode=99;"):
        build(_dit(tiny_dit, 'flux', branches=[dict(name='u', controlnets=[net])]))
    net['mode'] = 'canny'  # a name instead of the index: int('canny') said only "invalid literal"
    with pytest.raises(TypeError, match=r"branch 'u' controlnet mode='canny': give the union ControlNet's control "
                                        r"type as its index \(an int; FLUX InstantX union: canny 0"):
        build(_dit(tiny_dit, 'flux', branches=[dict(name='u', controlnets=[net])]))


@pytest.mark.parametrize('name, block', [('sd3', 'JointTransformerBlock'), ('flux', 'FluxTransformerBlock')])
def test_adaln_token_norm_on_a_tap_inside_a_block(tiny_dit, name, block):
    with pytest.raises(ValueError, match=rf"token_norm='adaln' on taps \{{'{TAP}.attn': '\w+'\}}.*{block}.*tap the "
                                         rf"block itself \(e.g. \['{TAP}'\]\) or leave token_norm=None"):
        build(_dit(tiny_dit, name, taps=(f'{TAP}.attn',), token_norm='adaln'))


@pytest.mark.parametrize('family, net, found, owner, takes', [
    ('sd3', 'sd', 'ControlNetModel', 'sd/sdxl families', 'SD3ControlNetModel'),
    ('flux', 'sd', 'ControlNetModel', 'sd/sdxl families', 'FluxControlNetModel'),
    ('sd3', 'flux-controlnet', 'FluxControlNetModel', 'flux family', 'SD3ControlNetModel'),
])
def test_controlnet_of_another_family(tiny, tiny_dit, family, net, found, owner, takes):
    path = canny_net(tiny)['path'] if net == 'sd' else str(tiny_dit / net)
    with pytest.raises(ValueError, match=rf"ControlNet '{path}' is a {found} \(its config.json's _class_name, a "
                                         rf'ControlNet for the {owner}\); the {family} family takes {takes} folders'):
        build(_dit(tiny_dit, family, branches=[dict(name='c', controlnets=[dict(path=path)])]))


@pytest.mark.parametrize('file, kind', [('sd3-lora/b', r'SD3 or FLUX \(a diffusion transformer\)'),
                                        ('flux-lora/kohya', 'FLUX'), ('flux-lora/xlabs', 'FLUX')])
def test_lora_of_another_family_is_refused(tiny, tiny_dit, file, kind):
    """An SD3 LoRA (transformer and CLIP layers) on SD1.5 built silently, its CLIP layers applied."""
    path = str(tiny_dit / f'{file}.safetensors')
    with pytest.raises(ValueError, match=rf"LoRA file '{path}' is a LoRA for another family: \d+ tensors \(e.g. "
                                         rf"'.*'\) for {kind}, none for this sd unet, which takes LoRAs for "
                                         r'SD1.x/2.x/SDXL \(a UNet\)'):
        build(backbone_cfg(tiny, amalgamation=None, branches=[dict(name='x', loras=[dict(path=path)])]))


def test_sd_lora_on_a_dit_is_refused(tiny, tiny_dit):
    with pytest.raises(ValueError, match=r"a\.safetensors' is a LoRA for another family: \d+ tensors .* for "
                                         r'SD1.x/2.x/SDXL \(a UNet\), none for this flux transformer'):
        build(_dit(tiny_dit, 'flux', branches=[dict(name='x', loras=[lora(tiny, 'a')])]))


def test_lora_partly_for_the_model_warns_with_counts(tiny, tiny_dit, tmp_path):
    from mmengine.logging import MMLogger
    own = load_file(lora(tiny, 'a')['path'])
    other = load_file(str(tiny_dit / 'sd3-lora' / 'a.safetensors'))
    save_file({**own, **other}, str(tmp_path / 'mixed.safetensors'))

    class Records(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    logger, records = MMLogger.get_current_instance(), Records()
    logger.addHandler(records)
    try:
        build(backbone_cfg(tiny, amalgamation=None,
                           branches=[dict(name='x', loras=[dict(path=str(tmp_path / 'mixed.safetensors'))])]))
    finally:
        logger.removeHandler(records)
    total = len(own) + len(other)
    assert any(f'{len(own)} of its {total} tensors are for this sd model (unet, text_encoder); not matched, ignored: '
               f'{len(other)} tensors' in m for m in records.messages), records.messages
