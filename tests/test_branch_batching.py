"""Branches batched into one UNet / ControlNet call give the features of one call per branch."""
import pytest
import torch

from conftest import backbone_cfg, build, canny_net, gate_branches, lora
from mmseg_gate.models.branch_batching import plan_branch_groups


@pytest.mark.parametrize('keys, groups', [
    ([(), (('a', 1.0),), (('b', 1.0),)], [[0, 1, 2]]),                 # the paper's branches: one call
    ([(('a', 1.0),), (('a', 0.5),), ()], [[0, 2], [1]]),                # one scale per adapter and call
    ([(('a', 1.0), ('b', 1.0)), (), (('a', 1.0),)], [[0], [1, 2]]),     # two adapters on one branch: alone
])
def test_plan_branch_groups(keys, groups):
    assert plan_branch_groups(keys) == groups
    assert plan_branch_groups(keys, enabled=False) == [[i] for i in range(len(keys))]


def count_calls(module):
    calls = []
    handle = module.register_forward_pre_hook(lambda m, a: calls.append(1))
    return calls, handle


@pytest.mark.parametrize('batch', [1, 2])
def test_batched_branches_equal_one_call_per_branch(tiny, image, batch):
    branches = gate_branches(tiny) + [
        dict(name='a_half', loras=[lora(tiny, 'a', 0.5)]),                          # scale conflict: own call
        dict(name='two_loras', loras=[lora(tiny, 'a'), lora(tiny, 'b')]),            # two adapters: own call
        dict(name='canny_only', prompt='another prompt', controlnets=[canny_net(tiny, 0.7)])]
    batched = build(backbone_cfg(tiny, branches=branches, amalgamation=dict(hidden_channels=8)))
    single = build(backbone_cfg(tiny, branches=branches, amalgamation=dict(hidden_channels=8),
                                batch_branches=False))
    assert batched.branch_groups == [[0, 1, 2, 5], [3], [4]]
    images = torch.cat([image, image.flip(-1)][:batch])

    unet_calls, h1 = count_calls(batched.frozen_modules().unet)
    net_calls, h2 = count_calls(batched.frozen_modules().controlnets['0'])
    ours = batched.extract(images)
    h1.remove(), h2.remove()
    assert len(unet_calls) == 3
    assert len(net_calls) == 2  # scale 1.0 with the a- and b-prompt batched; scale 0.7 alone

    theirs = single.extract(images)
    for level in range(3):
        for i in range(len(branches)):
            torch.testing.assert_close(ours[level][i], theirs[level][i], atol=2e-5, rtol=1e-4)
    # the branches really differ (a batching mix-up would make some of them equal)
    assert (ours[0][1] - ours[0][2]).abs().max() > 1e-3
    assert (ours[0][0] - ours[0][3]).abs().max() > 1e-3


def test_compile_switch_gives_the_same_features(tiny, image):
    """compile=True: VAE encoder and ControlNet compiled (inductor), features as eager."""
    branches = gate_branches(tiny)[:2]
    eager = build(backbone_cfg(tiny, branches=branches, amalgamation=dict(hidden_channels=8)))
    compiled = build(backbone_cfg(tiny, branches=branches, amalgamation=dict(hidden_channels=8), compile=True))
    sd = compiled.frozen_modules()
    assert sd.vae.encoder._compiled_call_impl is not None and sd.controlnets['0']._compiled_call_impl is not None
    ours, theirs = compiled.extract(image), eager.extract(image)
    for level in range(3):
        for i in range(len(branches)):
            torch.testing.assert_close(ours[level][i], theirs[level][i], atol=1e-4, rtol=1e-3)
