"""The speed levers (gate_features/speed_levers.py): regional compilation of the denoiser's repeated blocks,
channels_last, the SDPA backends. Each gives the features of the plain extractor (within float reordering), the
compiled denoiser does not recompile when the adapters switch again, and bad values are refused at build.

``backend='eager'`` runs dynamo's capture, guards and graph breaks (where the traps are: hooks inside compiled
blocks, adapter switches) without inductor's code generation; one test runs inductor itself."""
import pytest
import torch

from conftest import assert_features_close, backbone_cfg, build, gate_branches, on_device

pytestmark = pytest.mark.device

#: a tap inside a repeated block (BasicTransformerBlock) besides GATE's upsampler taps
INNER_TAPS = ('up_blocks.0.upsamplers.0', 'up_blocks.1.attentions.0.transformer_blocks.0.attn1',
              'up_blocks.1.upsamplers.0')


def _features(cfg, image, device):
    """The extractor of the backbone config ``cfg`` (eval, on ``device``) and its levels of ``image``."""
    from gate_features import GATEFeatures
    kwargs = {k: v for k, v in cfg.items() if k not in ('type', 'amalgamation')}
    extractor = GATEFeatures.from_pretrained(kwargs.pop('pretrained'), **kwargs).to(device)
    return extractor, [extractor.extract(on_device(device, image))]


def _assert_levels_close(ours, plain, dtype='fp32', **tol):
    for a_level, b_level in zip(ours, plain, strict=True):
        for a, b in zip(a_level, b_level, strict=True):
            assert_features_close(a, b, dtype, **tol)


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize('batch_branches', [True, False], ids=['mixed-adapter-batch', 'adapter-switches'])
def test_compiled_blocks_equal_eager_and_do_not_recompile(tiny, image, device, dtype, batch_branches, fresh_dynamo):
    """GATE's three branches (two LoRAs, a ControlNet) and a tap inside a compiled block: the LoRA hooks of
    mixed-adapter batches and the tap hook run inside compiled code (without dynamo's guards on hooks the inner
    tap never fires)."""
    cfg = backbone_cfg(tiny, branches=gate_branches(tiny), taps=INNER_TAPS, batch_branches=batch_branches,
                       dtype=dtype)
    _, (plain,) = _features(cfg, image, device)
    compiled, (first,) = _features({**cfg, 'compile_denoiser': dict(backend='eager')}, image, device)
    assert compiled.levers.describe() == dict(compile_denoiser=dict(backend='eager'))
    _assert_levels_close(first, plain, dtype)
    # every adapter state was compiled by the first call: the second switches again and must not recompile
    with torch._dynamo.config.patch(error_on_recompile=True):
        second = compiled.extract(on_device(device, image))
    for a_level, b_level in zip(second, first):
        for a, b in zip(a_level, b_level):
            assert torch.equal(a, b)


def test_compiled_blocks_with_attention_maps(tiny, image, device, fresh_dynamo):
    """The attention-map layers run eager inside compiled blocks (graph breaks); dynamo's automatic dynamic shapes
    compile one more graph in the second pass, none after."""
    cfg = backbone_cfg(tiny, branches=gate_branches(tiny), attention=dict())
    _, (plain,) = _features(cfg, image, device)
    compiled, (first,) = _features({**cfg, 'compile_denoiser': dict(backend='eager')}, image, device)
    _assert_levels_close(first, plain)
    compiled.extract(on_device(device, image))
    with torch._dynamo.config.patch(error_on_recompile=True):
        third = compiled.extract(on_device(device, image))
    _assert_levels_close(third, plain)


def test_inductor_compiled_blocks_equal_eager(tiny, image, device, fresh_dynamo):
    """torch.compile's default backend (inductor's generated kernels) on the tiny UNet's transformer blocks, with
    a LoRA (one branch: inductor compiles on 2 CPU cores slowly)."""
    cfg = backbone_cfg(tiny, branches=gate_branches(tiny)[1:2])
    _, (plain,) = _features(cfg, image, device)
    _, (compiled,) = _features({**cfg, 'compile_denoiser': True}, image, device)
    _assert_levels_close(compiled, plain, rtol=1e-4, atol=1e-5)


def test_compiled_dit_blocks_equal_eager(tiny_dit, image, device, fresh_dynamo):
    """SD3: diffusers names no repeated blocks of its transformer; the family's (JointTransformerBlock) are
    compiled, and the taps are hooks on those very blocks."""
    cfg = dict(type='GATEDiffusionBackbone', pretrained=str(tiny_dit / 'sd3'), prompt='a photo', noise='fixed',
               taps=('transformer_blocks.0', 'transformer_blocks.1'))
    _, (plain,) = _features(cfg, image, device)
    compiled, (ours,) = _features({**cfg, 'compile_denoiser': dict(backend='eager')}, image, device)
    blocks = [m for m in compiled.sd.denoiser.modules() if type(m).__name__ == 'JointTransformerBlock']
    assert blocks and all(getattr(b, '_compiled_call_impl', None) is not None for b in blocks)
    _assert_levels_close(ours, plain)


def test_channels_last_equals_contiguous(tiny, image, device, dtype):
    cfg = backbone_cfg(tiny, branches=gate_branches(tiny), dtype=dtype)
    _, (plain,) = _features(cfg, image, device)
    backbone, (ours,) = _features({**cfg, 'channels_last': True}, image, device)
    for net in (backbone.sd.denoiser, *backbone.sd.controlnets.values()):
        assert net.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    _assert_levels_close(ours, plain, dtype, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('backends', [('math',), ('flash', 'math')])
def test_sdpa_backends_equal_the_default(tiny, image, device, dtype, backends):
    cfg = backbone_cfg(tiny, branches=gate_branches(tiny), dtype=dtype)
    _, (plain,) = _features(cfg, image, device)
    _, (ours,) = _features({**cfg, 'sdpa_backends': backends}, image, device)
    _assert_levels_close(ours, plain, dtype, rtol=1e-4, atol=1e-5)


def test_an_sdpa_backend_the_device_lacks_is_named(tiny, image):
    from gate_features.speed_levers import available_sdpa_backends
    missing = [b for b in ('efficient', 'cudnn') if b not in available_sdpa_backends(torch.device('cpu'))]
    if not missing:
        pytest.skip('this CPU build runs every SDPA backend')
    backbone = build(backbone_cfg(tiny, sdpa_backends=missing[:1])).eval()
    with pytest.raises(RuntimeError, match=rf"sdpa_backends=\['{missing[0]}'\]: none of them runs on this cpu .*"
                                           r"\['flash', 'math'\] can run there.*'math'"):
        backbone.extract(image)


@pytest.mark.parametrize('key, value, match', [
    ('compile_denoiser', 'yes', r"compile_denoiser='yes': give True, False or a dict of torch.compile kwargs"),
    ('compile', 1, r'compile=1: give True, False or a dict'),
    ('sdpa_backends', ('fast',), r"sdpa_backends=\('fast',\): give one or more of \['flash', 'efficient', "
                                 r"'cudnn', 'math'\]"),
    ('sdpa_backends', (), r'sdpa_backends=\(\): give one or more'),
])
def test_bad_lever_values_are_refused_before_loading(tiny, key, value, match):
    with pytest.raises(ValueError, match=match):
        build(backbone_cfg(tiny, pretrained='/nonexistent/no-weights-loaded', **{key: value}))


def test_channels_last_is_refused_on_transformers(tiny_dit):
    with pytest.raises(ValueError, match="channels_last=True: the sd3 family's denoiser is a transformer"):
        build(dict(type='GATEDiffusionBackbone', pretrained=str(tiny_dit / 'sd3'), channels_last=True,
                   taps=('transformer_blocks.0',)))


def test_the_levers_do_not_make_another_feature_cache():
    from mmseg_gate.cache.provenance import backbone_hash
    cfg = dict(type='GATEDiffusionBackbone', pretrained='sd', timestep=51)
    assert backbone_hash({**cfg, 'compile_denoiser': True, 'channels_last': True,
                          'sdpa_backends': ('flash',)}) == backbone_hash(cfg)
