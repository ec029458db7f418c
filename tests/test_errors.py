"""Bad configurations fail at build time with a message naming the bad value and the fix."""
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import backbone_cfg, build, canny_net, lora


def test_missing_pretrained(tmp_path):
    with pytest.raises(FileNotFoundError, match='not found at .*nope.*make_tiny_sd'):
        build(backbone_cfg(tmp_path, pretrained=str(tmp_path / 'nope')))


def test_relative_default_path_is_not_mistaken_for_a_hub_id(tmp_path, monkeypatch):
    """The configs' default 'checkpoints/...' is a valid hub id too: a new user without weights gets our
    message, not the hub's, for the model and for the ControlNet."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="Stable Diffusion model not found at "
                                                "'checkpoints/stable-diffusion-v1-5'.*Download it.*tried it as a hub id"):
        build(backbone_cfg(tmp_path, pretrained='checkpoints/stable-diffusion-v1-5'))


def test_relative_controlnet_path_message(tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    net = dict(path='checkpoints/sd-controlnet-canny', condition='canny')
    with pytest.raises(FileNotFoundError, match="ControlNet not found at 'checkpoints/sd-controlnet-canny'"):
        build(backbone_cfg(tiny, branches=[dict(name='c', controlnets=[net])]))


def test_pretrained_not_a_diffusers_folder(tmp_path):
    (tmp_path / 'sd').mkdir()
    with pytest.raises(FileNotFoundError, match="missing \\['unet'"):
        build(backbone_cfg(tmp_path))


def test_missing_lora_file(tiny):
    with pytest.raises(FileNotFoundError, match="LoRA file .*missing.safetensors.* not found"):
        build(backbone_cfg(tiny, branches=[dict(name='x', loras=[lora(tiny, 'missing')])]))


def test_lora_for_another_model(tiny, tmp_path):
    # a LoRA whose layers have another width (made for the SD2-shaped UNet's cross-attention)
    sd = load_file(str(tiny / 'lora' / 'a.safetensors'))
    bad = {k: (torch.zeros(v.shape[0], 999) if 'attn2.to_k.lora_A' in k else v) for k, v in sd.items()}
    save_file(bad, str(tmp_path / 'bad.safetensors'))
    with pytest.raises(ValueError, match='bad.safetensors.*does not match'):
        build(backbone_cfg(tiny, branches=[dict(name='x', loras=[dict(path=str(tmp_path / 'bad.safetensors'))])]))


def test_lora_with_unknown_layers(tiny, tmp_path):
    sd = load_file(str(tiny / 'lora' / 'a.safetensors'))
    renamed = {k.replace('up_blocks.1.', 'up_blocks.7.'): v for k, v in sd.items()}
    save_file(renamed, str(tmp_path / 'other.safetensors'))
    with pytest.raises(ValueError, match='other.safetensors'):
        build(backbone_cfg(tiny, branches=[dict(name='x', loras=[dict(path=str(tmp_path / 'other.safetensors'))])]))


def test_not_a_lora_file(tiny, tmp_path):
    save_file({'foo.weight': torch.zeros(2)}, str(tmp_path / 'foo.safetensors'))
    with pytest.raises(ValueError, match='foo.safetensors'):
        build(backbone_cfg(tiny, branches=[dict(name='x', loras=[dict(path=str(tmp_path / 'foo.safetensors'))])]))


def test_unknown_tap(tiny):
    with pytest.raises(KeyError, match="up_blocks.0.upsampler.0.*close matches.*up_blocks.0.upsamplers.0"):
        build(backbone_cfg(tiny, taps=('up_blocks.0.upsampler.0',)))


def test_unknown_condition(tiny):
    with pytest.raises(ValueError, match="unknown condition type 'depth'.*canny"):
        build(backbone_cfg(tiny, branches=[dict(name='x', controlnets=[dict(canny_net(tiny), condition='depth')])]))


def test_empty_and_duplicate_branches(tiny):
    with pytest.raises(ValueError, match='branches is empty'):
        build(backbone_cfg(tiny, branches=[]))
    with pytest.raises(ValueError, match="duplicate branch name 'a'"):
        build(backbone_cfg(tiny, branches=[dict(name='a'), dict(name='a')]))


def test_unknown_branch_key(tiny):
    with pytest.raises(ValueError, match="unknown keys \\['lora'\\]"):
        build(backbone_cfg(tiny, branches=[dict(name='a', lora=[])]))


def test_bad_dtype_and_noise(tiny):
    with pytest.raises(ValueError, match="dtype='half'"):
        build(backbone_cfg(tiny, dtype='half'))
    with pytest.raises(ValueError, match="noise='gauss'"):
        build(backbone_cfg(tiny, noise='gauss'))


@pytest.mark.parametrize('channels', [1, 4])
def test_wrong_channel_count(tiny, channels):
    m = build(backbone_cfg(tiny))
    with pytest.raises(ValueError, match=f'expects \\[B, 3, H, W\\].*\\(1, {channels}, 64, 64\\)'):
        m(torch.zeros(1, channels, 64, 64))


def test_input_without_batch_dimension(tiny):
    # before: "ValueError: not enough values to unpack" from `b, _, h, w = img.shape`
    m = build(backbone_cfg(tiny))
    with pytest.raises(ValueError, match=r'one image of shape \(3, 64, 64\).*img\.unsqueeze\(0\)'):
        m(torch.zeros(3, 64, 64))
