"""Cost of one FLUX.1 block at real width, and what it extrapolates to for the whole transformer.

Measures one randomly initialised diffusers ``FluxTransformerBlock`` (double-stream) and one
``FluxSingleTransformerBlock`` (single-stream) of FLUX.1's width (3072, 24 heads x 128), called as
``FluxTransformer2DModel`` calls them: ``hidden_states`` (the image tokens), ``encoder_hidden_states`` (512 T5
text tokens, after the context embedder), ``temb`` and ``image_rotary_emb`` from ``FluxPosEmbed(theta=10000,
axes_dim=(16, 56, 56))`` of the text and image ids. Inputs of 512x512 (1024 image tokens) and 1024x1024 (4096),
batch 1 (one branch) and 3 (GATE's three branches batched), under ``torch.no_grad``:

* time: the median of ``--repeats`` forwards after ``--warmup`` (fewer repeats where one forward takes longer than
  ``--budget-s`` / repeats; where the first forward alone takes longer than ``--budget-s`` it is the only
  measurement, without warm-up: the number used is reported);
* activation memory, of the first forward: on CUDA ``torch.cuda.max_memory_allocated()`` during it minus what
  was allocated before it (weights, inputs); on CPU the process's peak resident set size (``VmHWM``, reset
  through ``/proc/self/clear_refs``) during it minus the resident set before it, after ``malloc_trim`` (the
  whole process's new pages: the allocator's and the GEMM library's scratch included);
* parameters per block.

Then, **extrapolated** (not measured: per-block times and block counts multiplied; blocks only, without the
embedders, the VAE, the text encoders or a ControlNet): the full FLUX.1 transformer (19 double + 38 single
blocks) per image and per 3-branch batch, the reference code's three separate full passes, and ours, which stops
after the deepest tap of configs/dit/gate_flux1_dev_ade20k.py (``single_transformer_blocks.16``: 19 double + 17
single blocks). Under ``no_grad`` blocks run one after another and free their intermediates, so a full forward's
activation peak is about the largest block's (plus the tapped features ours keeps). And the weight budget of
the full transformer (parameters counted from FLUX.1-dev's config on the meta device) in bf16, int8 and 4 bits.

  python tools/benchmark_flux_blocks.py --json flux_blocks.json                       # CPU, fp32
  python tools/benchmark_flux_blocks.py --device cuda --dtype bf16 --repeats 10 --json flux_blocks_gpu.json
"""
from __future__ import annotations

import argparse
import ctypes
import json
import re
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DTYPES = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}
#: black-forest-labs/FLUX.1-dev's transformer configuration
FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                axes_dims_rope=(16, 56, 56))
DIM = FLUX_DEV['num_attention_heads'] * FLUX_DEV['attention_head_dim']
TEXT_TOKENS = 512  # FluxPipeline's max_sequence_length
CONFIG = REPO / 'configs' / 'dit' / 'gate_flux1_dev_ade20k.py'


# ---------------------------------------------------------------------------------------------- memory probes
class CpuMemory:
    """Peak RSS increase of this process during a call (Linux: VmHWM reset by ``clear_refs``)."""
    method = 'CPU: peak RSS (VmHWM, reset via /proc/self/clear_refs) minus RSS before the forward, after malloc_trim'

    def __init__(self) -> None:
        self.libc = ctypes.CDLL('libc.so.6')
        Path('/proc/self/clear_refs').write_text('5')  # fails early where the kernel does not allow it

    @staticmethod
    def _status(key: str) -> int:
        return int(re.search(rf'^{key}:\s+(\d+) kB', Path('/proc/self/status').read_text(), re.M).group(1)) * 1024

    def start(self) -> None:
        self.libc.malloc_trim(0)
        Path('/proc/self/clear_refs').write_text('5')
        self.base = self._status('VmRSS')

    def peak(self) -> int:
        return self._status('VmHWM') - self.base


class CudaMemory:
    method = 'CUDA: torch.cuda.max_memory_allocated() during the forward minus memory_allocated() before it'

    def start(self) -> None:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        self.base = torch.cuda.memory_allocated()

    def peak(self) -> int:
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - self.base


# ---------------------------------------------------------------------------------------------- blocks
def make_blocks() -> dict:
    from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock, FluxTransformerBlock
    heads, head_dim = FLUX_DEV['num_attention_heads'], FLUX_DEV['attention_head_dim']
    torch.manual_seed(0)
    return dict(double=FluxTransformerBlock(dim=DIM, num_attention_heads=heads, attention_head_dim=head_dim),
                single=FluxSingleTransformerBlock(dim=DIM, num_attention_heads=heads, attention_head_dim=head_dim))


def block_inputs(size: int, batch: int, device: str, dtype: torch.dtype) -> dict:
    """What FluxTransformer2DModel hands each block for a ``size`` x ``size`` image: 16x16 pixels a token."""
    from diffusers.models.transformers.transformer_flux import FluxPosEmbed
    side = size // 16
    img_ids = torch.zeros(side, side, 3)
    img_ids[..., 1] += torch.arange(side)[:, None]
    img_ids[..., 2] += torch.arange(side)[None, :]
    ids = torch.cat([torch.zeros(TEXT_TOKENS, 3), img_ids.reshape(-1, 3)]).to(device)
    rotary = FluxPosEmbed(theta=10000, axes_dim=list(FLUX_DEV['axes_dims_rope']))(ids)
    g = torch.Generator().manual_seed(1)
    rand = lambda *shape: torch.randn(*shape, generator=g).to(device, dtype)  # noqa: E731
    return dict(hidden_states=rand(batch, side * side, DIM), encoder_hidden_states=rand(batch, TEXT_TOKENS, DIM),
                temb=rand(batch, DIM), image_rotary_emb=rotary)


@torch.no_grad()
def measure(block: torch.nn.Module, inputs: dict, memory, device: str, warmup: int, repeats: int,
            budget_s: float) -> dict:
    sync = torch.cuda.synchronize if device.startswith('cuda') else (lambda: None)

    def forward() -> float:
        sync()
        t0 = time.perf_counter()
        out = block(**inputs)
        sync()
        elapsed = time.perf_counter() - t0
        del out
        return elapsed

    memory.start()
    first = forward()
    peak = memory.peak()  # the first forward's: fresh pages (later ones reuse the allocator's)
    if first >= budget_s or not warmup:  # too slow to repeat (or no warm-up asked): it is the measurement
        warm, times = [], [first]
        times += [forward() for _ in range(0 if first >= budget_s else repeats - 1)]
    else:
        warm = [first] + [forward() for _ in range(warmup - 1)]
        times = [forward() for _ in range(max(1, min(repeats, int(budget_s / first))))]
    return dict(median_s=statistics.median(times), times_s=[round(t, 4) for t in times], repeats=len(times),
                warmup_s=[round(t, 4) for t in warm], activation_peak_mb=peak / 2 ** 20)


# ---------------------------------------------------------------------------------------------- extrapolation
def deepest_tap(config: Path) -> tuple[int, int]:
    """Double- and single-stream blocks run up to the config's deepest tap."""
    from mmengine.config import Config
    taps = Config.fromfile(str(config)).model.backbone.taps
    order = [(0, int(t.rsplit('.', 1)[1])) if t.startswith('transformer_blocks.') else (1, int(t.rsplit('.', 1)[1]))
             for t in taps]
    kind, index = max(order)
    return (index + 1, 0) if kind == 0 else (FLUX_DEV['num_layers'], index + 1)


def weight_budget() -> dict:
    """FLUX.1-dev's transformer parameters (meta device: nothing allocated) and weight bytes per format."""
    from diffusers import FluxTransformer2DModel
    with torch.device('meta'):
        model = FluxTransformer2DModel(**FLUX_DEV)
    total = sum(p.numel() for p in model.parameters())
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    linear_w = sum(m.weight.numel() for m in linears)
    rows = sum(m.out_features for m in linears)
    rest = total - linear_w
    gb = lambda n: n / 1e9  # noqa: E731
    return dict(
        params=total, linear_weights=linear_w, other_params=rest,
        bf16_gb=gb(2 * total),
        # torchao Int8WeightOnlyConfig: Linear weights 1 byte + one bf16 scale per output channel; the rest bf16
        int8_gb=gb(linear_w + 2 * rows + 2 * rest),
        # bitsandbytes NF4 (no double quantisation): Linear weights 4 bits + one fp32 absmax per 64; the rest bf16
        nf4_gb=gb(linear_w / 2 + 4 * linear_w / 64 + 2 * rest),
        formats=dict(bf16='2 bytes per parameter',
                     int8='torchao Int8WeightOnlyConfig: Linear weights 1 byte + a bf16 scale per output channel, '
                          'other parameters bf16',
                     nf4='bitsandbytes NF4: Linear weights 4 bits + an fp32 absmax per 64 weights (no double '
                         'quantisation), other parameters bf16'))


def extrapolate(results: dict, sizes, batches, depth_ours: tuple[int, int], dtype_bytes: int) -> dict:
    nd, ns = FLUX_DEV['num_layers'], FLUX_DEV['num_single_layers']
    out = {}
    for size in sizes:
        r = {b: results[f'{size}_b{b}'] for b in batches}

        def cost(doubles, singles, b):
            return doubles * r[b]['double']['median_s'] + singles * r[b]['single']['median_s']

        def peak(b):
            return max(r[b]['double']['activation_peak_mb'], r[b]['single']['activation_peak_mb'])

        tokens = (size // 16) ** 2
        taps_mb = lambda b: 4 * b * tokens * DIM * dtype_bytes / 2 ** 20  # noqa: E731  (the config's 4 taps)
        e = {}
        if 1 in r:
            e['full_per_image_s'] = cost(nd, ns, 1)
            e['reference_3_branches_s'] = 3 * cost(nd, ns, 1)  # three pipelines, full depth, one after another
            e['ours_1_branch_s'] = cost(*depth_ours, 1)
            e['activation_peak_b1_mb'] = peak(1)
        if 3 in r:
            e['full_3_branch_batch_s'] = cost(nd, ns, 3)
            e['ours_3_branch_batch_s'] = cost(*depth_ours, 3)
            e['activation_peak_b3_mb'] = peak(3)
            e['ours_taps_b3_mb'] = taps_mb(3)
        if {1, 3} <= r.keys():
            e['ours_b3_vs_reference'] = e['reference_3_branches_s'] / e['ours_3_branch_batch_s']
        out[str(size)] = e
    return out


# ---------------------------------------------------------------------------------------------- driver
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--sizes', type=int, nargs='+', default=[512, 1024], help='square input sides (pixels)')
    parser.add_argument('--batches', type=int, nargs='+', default=[1, 3], help='1: one branch; 3: three batched')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--dtype', choices=list(DTYPES), default='fp32')
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--repeats', type=int, default=3, help='timed forwards per measurement (at most)')
    parser.add_argument('--budget-s', type=float, default=60.0,
                        help='seconds of timed forwards per measurement: fewer repeats where one takes longer; a '
                             'first forward longer than this is the only one (no warm-up)')
    parser.add_argument('--threads', type=int, default=None, help='torch threads on CPU (default: torch\'s)')
    parser.add_argument('--config', default=str(CONFIG.relative_to(REPO)), help='the GATE config whose deepest tap ours stops after')
    parser.add_argument('--json', default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    memory = CudaMemory() if args.device.startswith('cuda') else CpuMemory()
    blocks = {k: b.to(args.device, dtype).eval() for k, b in make_blocks().items()}
    params = {k: sum(p.numel() for p in b.parameters()) for k, b in blocks.items()}
    print(f'FLUX.1 blocks (random weights, width {DIM}, {TEXT_TOKENS} text tokens), {args.device} {args.dtype}, '
          f'{torch.get_num_threads()} threads, torch {torch.__version__}')
    print(f'memory: {memory.method}')
    print(f"parameters per block: double {params['double'] / 1e6:.1f} M, single {params['single'] / 1e6:.1f} M")
    print(f"\n{'MEASURED':10s}{'image':>7s}{'tokens':>8s}{'batch':>6s}{'block':>8s}{'median s':>10s}{'repeats':>8s}"
          f"{'act. peak MB':>14s}")
    results = {}
    for size in args.sizes:
        for batch in args.batches:
            inputs = block_inputs(size, batch, args.device, dtype)
            row = results[f'{size}_b{batch}'] = {}
            for kind, block in blocks.items():
                row[kind] = m = measure(block, inputs, memory, args.device, args.warmup, args.repeats, args.budget_s)
                print(f"{'':10s}{size:>7d}{(size // 16) ** 2:>8d}{batch:>6d}{kind:>8s}{m['median_s']:>10.3f}"
                      f"{m['repeats']:>8d}{m['activation_peak_mb']:>14.1f}", flush=True)
            del inputs

    depth = deepest_tap(REPO / args.config)
    est = extrapolate(results, args.sizes, args.batches, depth, torch.finfo(dtype).bits // 8)
    budget = weight_budget()
    print(f'\nEXTRAPOLATED (measured per-block medians x block counts; transformer blocks only: no embedders, VAE, '
          f'text encoders or ControlNet). Full FLUX.1: 19 double + 38 single blocks; ours: {depth[0]} double + '
          f'{depth[1]} single (up to the deepest tap of {Path(args.config).name}). Activation peak: the largest '
          f'block\'s (no_grad frees each block\'s intermediates).')
    labels = [('full_per_image_s', 'full transformer, 1 image, 1 branch (s)'),
              ('reference_3_branches_s', 'reference: 3 branches as 3 full passes (s)'),
              ('full_3_branch_batch_s', 'full transformer, 3 branches batched (s)'),
              ('ours_1_branch_s', 'ours, 1 branch (s)'),
              ('ours_3_branch_batch_s', 'ours, 3 branches batched (s)'),
              ('ours_b3_vs_reference', 'reference 3 passes / ours batched (x)'),
              ('activation_peak_b1_mb', 'activation peak, batch 1 (MB)'),
              ('activation_peak_b3_mb', 'activation peak, batch 3 (MB)'),
              ('ours_taps_b3_mb', "ours' 4 kept tap features, batch 3 (MB)")]
    print(f"{'':46s}" + ''.join(f'{s:>12d}' for s in args.sizes))
    for key, label in labels:
        if all(key in est[str(s)] for s in args.sizes):
            print(f'{label:46s}' + ''.join(f'{est[str(s)][key]:12.1f}' for s in args.sizes))
    print(f"\nWEIGHTS of the full FLUX.1-dev transformer (counted from its config on the meta device): "
          f"{budget['params'] / 1e9:.3f} B parameters ({budget['linear_weights'] / 1e9:.3f} B in Linear weights)")
    for key, fmt in (('bf16_gb', 'bf16'), ('int8_gb', 'int8'), ('nf4_gb', 'nf4')):
        print(f"  {fmt:5s} {budget[key]:6.2f} GB  ({budget['formats'][fmt]})")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(
            setup=dict(device=args.device, dtype=args.dtype, threads=torch.get_num_threads(), torch=torch.__version__,
                       text_tokens=TEXT_TOKENS, width=DIM, date=time.strftime('%Y-%m-%d'), memory_method=memory.method,
                       warmup=args.warmup, max_repeats=args.repeats, budget_s=args.budget_s, argv=sys.argv[1:]),
            params_per_block=params, measured=results,
            extrapolated=dict(note='per-block medians x block counts, blocks only; not measured',
                              full_blocks=[FLUX_DEV['num_layers'], FLUX_DEV['num_single_layers']],
                              ours_blocks=list(depth), ours_config=args.config, per_size=est),
            weights=budget), indent=2))


if __name__ == '__main__':
    main()
