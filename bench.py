"""
Benchmark training throughput, MFU against this device's peak, memory, and sampling speed.

    python bench.py                                   # the quick-start model (train.py's defaults) on this device
    python bench.py config/gpt2.py --batch_size=1 --compile=False --dtype=float32
    python bench.py config/gpt2.py --peak_tflops=312  # MFU against a peak you give (unknown GPU, or to compare)
    python -m benchmarks.scaling --nprocs=1,2         # strong and weak scaling under torchrun (gloo on CPU)
    python bench.py --json=- >> results.jsonl         # one JSON object per run (--json=FILE writes a file)
    python bench.py config/gpt2-xl.py --memory --world_size=8   # memory per GPU, DDP vs FSDP: an estimate, no run
    python bench.py config/gpt2-xl.py --memory --world_size=64 --tensor_parallel=8 --pipeline_parallel=2

Same configuration as train.py (a config file, then --key=value), plus the bench knobs below. A run builds the
model, runs `warmup_steps` untimed optimizer steps, then `repeats` x `timed_steps` timed ones (the device is
synchronized before and after each timed region) and reports the median and spread over repeats.
A second, separate pass synchronizes between phases to split a step into data / forward / backward / optimizer,
so the split never slows the headline number.

MFU = model FLOPs per token x tokens/s / (peak FLOP/s per device x devices). Model FLOPs come from
accounting.flops_per_token with two formulas side by side: PaLM's 6N + 12*L*H*Q*T (nanoGPT's estimate_mfu) and
Kaplan's 6N (+ 6*L*T*d_attn). The peak is the dense (not 2:4-sparse) datasheet figure for the GPU's name, a
matrix-product microbenchmark on CPU, or --peak_tflops; an unknown GPU gets no MFU rather than a guess.

Memory: a run prints its measured peak (CUDA: torch.cuda.max_memory_allocated) beside accounting.train_memory's
estimate per GPU. --memory prints only the estimate, for DDP and FSDP with and without activation checkpointing at
--world_size GPUs in the configured tensor and pipeline layout, from the model's shapes (built on the meta device: a
7B model need not fit this machine).
"""
from pretrain.cli import cli, run_script  # first: Ctrl-C from here on, the import of torch included, is one line and exit 130
import contextlib
import copy
import os
import statistics
import sys
import time
from types import SimpleNamespace

import torch

from pretrain.accounting import count_params, decode_bytes_per_token, flops_per_token, train_memory
from pretrain.checkpoint import (CheckpointError, checkpoint_path, init_from_kind, load_checkpoint, load_model,
                                 model_config_from)
from pretrain.configurator import ConfigError, knobs, parse_config, script_defaults
from pretrain.data import DataError, TokenLoader, json_output, read_meta, shard_paths
from model import PRESETS, GPTConfig, ModelError
from pretrain.hardware import copy_bandwidth, device_name, mfu, peak_info, peak_memory
from pretrain.runtime import device_sync, end_of_run, setup_runtime
from pretrain.parallel import MODES, check_layout, check_micro_batches, layout, wrap
from pretrain.training import configure_optimizer, micro_steps, train_step

# -----------------------------------------------------------------------------
# bench knobs, on top of train.py's (read from its file, not imported: scripts never import each other), so
# config/*.py files work unchanged; benchmarks/scaling.py runs this file under torchrun at several process counts
warmup_steps = 3        # untimed optimizer steps first: allocator, autotuning, torch.compile
timed_steps = 10        # timed optimizer steps per repeat
repeats = 3             # median and spread are over repeats
grad_accum = 1          # micro-steps per optimizer step per process; None = from total_batch_size, as train.py
data = 'auto'           # 'auto' (shards in data_dir if any, else random tokens) | 'shards' | 'random'
vocab_size = None       # random tokens: vocabulary (None: data_dir's meta.json if present, else GPT-2's 50257)
peak_tflops = None      # dense peak TFLOP/s of one device, instead of the table / the CPU microbenchmark
phases = True           # the separate, synchronized pass that splits a step into its phases
sample_tokens = 64      # tokens generated with and without the KV cache (0 = skip sampling)
sample_prompt = 32      # prompt length for sampling (random tokens)
sample_batch = 1        # sequences generated at once
sample_compile = False  # also time the compiled static-cache decode (GPU: CUDA graphs; weights in bf16/fp16)
json = ''               # FILE: also write the record there as JSON; '-': print it alone on stdout, in one line
scaling_totals = None   # tokens/step values to time in one launch (benchmarks/scaling.py's torchrun workers)
memory = False          # print train_memory's estimate per GPU (DDP, FSDP, with and without checkpointing), no run
world_size = None       # GPUs for --memory (None: WORLD_SIZE under torchrun, else 1)
# -----------------------------------------------------------------------------

TRAIN_PY = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'train.py')
DEFAULTS = {**script_defaults(TRAIN_PY), **knobs(globals())}
NULLABLE = ('grad_accum',)  # knobs that also take None although their default is a number
# what train_memory leaves out (its docstring): said next to every estimate
MEMORY_LEAVES_OUT = ('the CUDA context (~0.5-1 GB), allocator caching and fragmentation, NCCL buffers; '
                     'eager PyTorch (torch.compile keeps less for the loss)')
FORMULAS = {'palm': '6N + 12*L*H*Q*T (PaLM app. B, nanoGPT; N = params without wpe)',
            'kaplan': '6N + 6*L*T*d_attn (Kaplan et al. 2020; N non-embedding)'}


# -----------------------------------------------------------------------------
# the training benchmark (train.py's pieces: config, runtime, loader, optimizer, train_step)


def build_model(cfg, vocab_size):
    """The model to benchmark: train.py's config, a GPT-2/GPT-3 preset named by init_from (random weights: speed
    does not depend on them), or the checkpoint in out_dir for init_from='resume' (checkpoint.load_model)."""
    init_from_kind(cfg['init_from'], ('scratch', 'resume', 'preset'))
    return load_model(cfg['init_from'], cfg['out_dir'], cfg, vocab_size, pretrained=False)[0]


def make_batches(cfg, rt):
    """-> (batches(first_seq, accum) -> this rank's [(x, y)] of one step, vocab_size, description). Real shards as
    train.py reads them (the same sequences in the same order), or uniformly random tokens when there are none or
    data='random'."""
    data_dir, B, T = cfg['data_dir'], cfg['batch_size'], cfg['block_size']
    if cfg['data'] not in ('auto', 'shards', 'random'):
        raise ConfigError(f"data must be 'auto', 'shards' or 'random', got {cfg['data']!r}")
    use_shards = cfg['data'] == 'shards'
    if cfg['data'] == 'auto':
        try:
            use_shards = bool(shard_paths(data_dir, 'train'))
        except DataError:
            use_shards = False
    if use_shards:
        if cfg['vocab_size'] is not None:
            raise ConfigError("vocab_size is for random tokens; with shards it comes from their meta.json")
        meta = read_meta(data_dir)
        loader = TokenLoader(data_dir, 'train', T, seed=cfg['seed'])

        def batches(first_seq, accum):
            return loader.micro_batches(first_seq, accum, B, rt.device, rt.dp_rank, rt.dp_world)
        return batches, meta['vocab_size'], f"shards in {data_dir} ({meta['tokenizer']} tokens)"
    vocab = random_vocab(cfg)
    gen = torch.Generator().manual_seed(cfg['seed'] * 1000 + rt.dp_rank)   # a TP or PP group: the same batches
    pin = rt.device.type == 'cuda'

    def batches(first_seq, accum):
        out = []
        for _ in range(accum):
            buf = torch.randint(vocab, (B, T + 1), generator=gen)  # made on the CPU like a loader's batch
            buf = buf.pin_memory().to(rt.device, non_blocking=True) if pin else buf.to(rt.device)
            out.append((buf[:, :-1], buf[:, 1:]))
        return out
    why = 'data=random' if cfg['data'] == 'random' else f'no shards in {data_dir}'
    return batches, vocab, f"random tokens, vocab {vocab} ({why})"


def random_vocab(cfg):
    """The vocabulary of random tokens: --vocab_size, else data_dir's meta.json, else GPT-2's 50257."""
    has_meta = os.path.isfile(os.path.join(cfg['data_dir'], 'meta.json'))
    return cfg['vocab_size'] or (read_meta(cfg['data_dir'])['vocab_size'] if has_meta else 50257)


def _max_over_ranks(values, rt):
    """Per-rank timings -> the slowest rank's (a step is done when every rank is done)."""
    if not rt.ddp:
        return values
    t = torch.tensor(values, device=rt.device)   # float32: seconds to ~1e-7 (and MPS has no float64)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return t.tolist()


@torch.no_grad()
def sampling_throughput(model, rt, cfg, vocab):
    """Generation tokens/s with and without the KV cache: the first pass (a fresh process's first generate(): every
    new shape's first kernel selection, autotuning or plan, and for the compiled decode its compilation) apart from
    the median over the repeats that follow. With sample_compile, also the compiled static-cache decode and, on
    CUDA, its memory-bandwidth utilisation: bytes read per token (accounting.decode_bytes_per_token) x tokens/s over the
    measured copy bandwidth of the device."""
    from pretrain.generate import generate
    T = model.config.block_size
    prompt = max(1, min(cfg['sample_prompt'], T - cfg['sample_tokens']))
    new = min(cfg['sample_tokens'], T - prompt)  # stay inside the window: past it the cache is rebuilt per token
    B = cfg['sample_batch']
    idx = torch.randint(vocab, (B, prompt), generator=torch.Generator().manual_seed(cfg['seed'])).to(rt.device)
    out = {'batch': B, 'prompt': prompt, 'new_tokens': new}

    def timed(m, autocast, **kw):
        """-> (tokens/s of the first pass, median tokens/s of the repeats, seconds of the first pass)"""
        times = []
        with autocast:
            for _ in range(1 + cfg['repeats']):
                device_sync(rt.device)
                t0 = time.perf_counter()
                generate(m, idx, new, **kw)
                device_sync(rt.device)
                times.append(time.perf_counter() - t0)
        return B * new / times[0], B * new / statistics.median(times[1:]), times[0]
    for kv in (True, False):
        key = 'kv_cache' if kv else 'no_cache'
        out[f'{key}_first_pass_tok_s'], out[f'{key}_tok_s'], _ = timed(model, rt.autocast, kv_cache=kv)
    out['kv_cache_speedup'] = out['kv_cache_tok_s'] / out['no_cache_tok_s']
    if cfg['sample_compile']:
        low = rt.device.type == 'cuda' and rt.dtype != 'float32'   # as sample.py: weights in bf16/fp16 on GPUs
        m = copy.deepcopy(model).to(rt.ptdtype) if low else model
        _, out['compiled_tok_s'], out['compile_warmup_s'] = timed(m, contextlib.nullcontext() if low else rt.autocast,
                                                                  kv_cache=True, compile_decode=True)
        dtype_bytes = next(m.parameters()).element_size()
        out['bytes_per_token'] = decode_bytes_per_token(model.config, dtype_bytes, T, B)
        bw = copy_bandwidth(rt.device)
        out['bandwidth_bytes_s'] = bw
        out['bandwidth_util'] = out['bytes_per_token'] * out['compiled_tok_s'] / bw if bw else None
    return out


def check_bench_knobs(cfg):
    for key, low in (('warmup_steps', 0), ('timed_steps', 1), ('repeats', 1), ('sample_tokens', 0),
                     ('sample_prompt', 1), ('sample_batch', 1)):
        if isinstance(cfg[key], bool) or not isinstance(cfg[key], int) or cfg[key] < low:
            raise ConfigError(f"{key} must be an int >= {low}, got {cfg[key]!r}")
    ws = cfg['world_size']
    if ws is not None and (isinstance(ws, bool) or not isinstance(ws, int) or ws < 1):
        raise ConfigError(f"world_size must be an int >= 1 (GPUs for --memory) or None, got {ws!r}")
    if cfg['grad_accum'] is not None and (not isinstance(cfg['grad_accum'], int) or cfg['grad_accum'] < 1):
        raise ConfigError(f"grad_accum must be a positive int or None, got {cfg['grad_accum']!r}")
    totals = cfg['scaling_totals']
    if totals is not None and (not isinstance(totals, (tuple, list)) or not totals
                               or not all(isinstance(t, int) and t > 0 for t in totals)):
        raise ConfigError(f"scaling_totals must be a tuple of positive ints, got {totals!r}")
    if cfg['parallel'] not in MODES or not isinstance(cfg['activation_checkpointing'], bool):
        raise ConfigError(f"parallel must be one of {MODES} and activation_checkpointing True or False, got "
                          f"{cfg['parallel']!r} and {cfg['activation_checkpointing']!r}")
    p = cfg['peak_tflops']
    if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float)) or p <= 0):
        raise ConfigError(f"peak_tflops must be a positive number (dense TFLOP/s of one device), got {p!r}")


def timed(one_step, cfg, rt):
    """warmup_steps untimed, then `repeats` timings of timed_steps steps each, the device synchronized around each
    repeat only -> seconds per step per repeat (the slowest rank's: a step is done when every rank is done)."""
    for _ in range(cfg['warmup_steps']):
        one_step()
    step_times = []
    for _ in range(cfg['repeats']):
        device_sync(rt.device)
        t0 = time.perf_counter()
        for _ in range(cfg['timed_steps']):
            one_step()
        device_sync(rt.device)
        step_times.append((time.perf_counter() - t0) / cfg['timed_steps'])
    return _max_over_ranks(step_times, rt)


def phase_split(one_step, cfg, rt):
    """A separate pass that waits for the device after each phase of train_step (its mark): the median seconds of
    each phase per step, and of the whole step."""
    names, split = ('data', 'forward', 'backward', 'optimizer'), []
    for _ in range(cfg['timed_steps']):
        times, t = dict.fromkeys(names, 0.0), [time.perf_counter()]

        def mark(phase):
            device_sync(rt.device)
            times[phase] += time.perf_counter() - t[0]
            t[0] = time.perf_counter()
        device_sync(rt.device)
        t0 = t[0] = time.perf_counter()
        one_step(mark)
        device_sync(rt.device)
        split.append(_max_over_ranks([times[k] for k in names] + [time.perf_counter() - t0], rt))
    phases = {k: statistics.median(r[i] for r in split) for i, k in enumerate(names)}
    phases['sum'] = sum(phases.values())
    phases['step'] = statistics.median(r[-1] for r in split)   # the phases cover the step: sum ~ step
    return phases


def summarize(total, accum, step_times, fpt, peak, world):
    """Step times of one tokens/step setting -> median and spread, tokens/s, TFLOP/s and MFU by each formula."""
    t_med = statistics.median(step_times)
    tok_s = total / t_med
    return {'tokens_per_step': total, 'grad_accum': accum,
            'step_time_s': {'median': t_med, 'min': min(step_times), 'max': max(step_times),
                            'spread': (max(step_times) - min(step_times)) / t_med, 'repeats': step_times},
            'tokens_per_s': tok_s,
            'tflops_per_device': {f: v * tok_s / world / 1e12 for f, v in fpt.items()},
            'mfu': {f: mfu(v, tok_s, peak, world) for f, v in fpt.items()} if peak else None}


def bench(cfg):
    """Run the benchmark described by cfg -> (record dict, is_master)."""
    start_unix_s = time.time()
    check_bench_knobs(cfg)
    check_layout(SimpleNamespace(**cfg), int(os.environ.get('WORLD_SIZE', 1)))
    rt = layout(setup_runtime(cfg), cfg['parallel'], cfg['tensor_parallel'], cfg['pipeline_parallel'])
    cfg = dict(cfg)
    B, T = cfg['batch_size'], cfg['block_size']
    if cfg['grad_accum'] is not None:  # the bench's default: one micro-step per process, whatever the config says
        cfg['total_batch_size'] = B * T * rt.dp_world * cfg['grad_accum']
    totals = list(cfg['scaling_totals'] or [cfg['total_batch_size']])
    accums = [micro_steps(total, B, T, rt.dp_world) for total in totals]
    check_micro_batches(cfg['pipeline_schedule'], cfg['pipeline_parallel'], accums[0])
    batches, vocab, data_desc = make_batches(cfg, rt)
    torch.manual_seed(cfg['seed'])
    raw_model = build_model(cfg, vocab)
    mconf = raw_model.config
    if T > mconf.block_size:
        raise ConfigError(f"block_size {T} exceeds the model's {mconf.block_size}")
    if vocab > mconf.vocab_size:
        raise ConfigError(f"the data has {vocab} token ids, the model's vocabulary only {mconf.vocab_size}")
    raw_model = raw_model.to(rt.device)
    # as train.py: DDP or FSDP2 (parallel.wrap), compile and activation checkpointing; before the optimizer,
    # since under fsdp the parameters become their shards
    model = wrap(raw_model, rt, cfg['parallel'], cfg['compile'], cfg['activation_checkpointing'],
                 cfg['pipeline_schedule'], accums[0])
    optimizer = configure_optimizer(raw_model, SimpleNamespace(**cfg), rt.device)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.dtype == 'float16')
    seq, first_done_unix_s = [0], []   # the next sequence; when the first step (compilation included) had ended

    def step(total, accum, mark=None):
        """train.py's optimizer step on the benchmark's data, reading on through the sequences."""
        train_step(model, optimizer, scaler, batches(seq[0], accum), rt, cfg['grad_clip'], mark=mark)
        seq[0] += total // T
        if not first_done_unix_s:
            device_sync(rt.device)
            first_done_unix_s.append(time.time())

    if rt.device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(rt.device)
    runs = [(total, accum, timed(lambda: step(total, accum), cfg, rt)) for total, accum in zip(totals, accums)]
    mem_bytes, mem_kind = peak_memory(rt.device)
    phases = phase_split(lambda mark: step(totals[0], accums[0], mark), cfg, rt) if cfg['phases'] else None

    sampling = None
    if cfg['sample_tokens'] > 0 and not rt.ddp and cfg['parallel'] == 'ddp':   # decoding a sharded model: not here
        sampling = sampling_throughput(raw_model, rt, cfg, vocab)

    # accounting
    if cfg['peak_tflops'] is not None:
        peak, peak_source = cfg['peak_tflops'] * 1e12, 'given: --peak_tflops'
    else:
        peak, peak_source = peak_info(rt.device, rt.ptdtype)
    fpt = {f: flops_per_token(mconf, formula=f, seq_len=T) for f in FORMULAS}

    summaries = [summarize(total, accum, step_times, fpt, peak, rt.world) for total, accum, step_times in runs]
    first, run_layout = summaries[0], layout_knobs(cfg, accums[0])
    record = {
        'bench': 'train', 'time': time.time(), 'torch': torch.__version__,
        'device': str(rt.device),
        'device_name': device_name(rt.device), 'threads': torch.get_num_threads(), 'dtype': rt.dtype,
        'compile': cfg['compile'], 'world_size': rt.world,
        'model': {**{k: getattr(mconf, k) for k in ('n_layer', 'n_head', 'n_embd', 'block_size', 'vocab_size')},
                  **count_params(mconf)},
        'data': data_desc, 'batch_size': B, 'block_size': T, 'grad_accum': first['grad_accum'],
        'tokens_per_step': first['tokens_per_step'],
        'warmup_steps': cfg['warmup_steps'], 'timed_steps': cfg['timed_steps'], 'repeats': cfg['repeats'],
        'step_time_s': first['step_time_s'], 'tokens_per_s': first['tokens_per_s'], 'phases_s': phases,
        'flops_per_token': fpt, 'flops_formula': FORMULAS, 'tflops_per_device': first['tflops_per_device'],
        'peak_tflops_per_device': peak / 1e12 if peak else None, 'peak_source': peak_source, 'mfu': first['mfu'],
        'peak_memory_bytes': mem_bytes, 'peak_memory_kind': mem_kind,
        # the estimate for what this run does
        'parallel': cfg['parallel'], 'activation_checkpointing': cfg['activation_checkpointing'],
        'layout': run_layout,
        'memory_estimate': {'parallel': cfg['parallel'], 'activation_checkpointing': cfg['activation_checkpointing'],
                            **train_memory(mconf, B, rt.world, cfg['parallel'], cfg['activation_checkpointing'],
                                           compute_dtype=rt.dtype, optimizer=cfg['optimizer'], **run_layout),
                            'leaves_out': MEMORY_LEAVES_OUT},
        'sampling': sampling,
        # from the start of bench() (torch imported) to the end of the first optimizer step, compilation included;
        # the wall-clock end lets a caller count from its own start (benchmarks/gpu.sh)
        'first_step_s': first_done_unix_s[0] - start_unix_s, 'first_step_unix_s': first_done_unix_s[0],
    }
    if cfg['scaling_totals']:
        record['scaling_runs'] = summaries
    end_of_run(rt)
    return record, rt.master


# -----------------------------------------------------------------------------
# memory per GPU: the estimate alone, no model built

def memory_config(cfg):
    """The GPTConfig a run would build, without building it: from the knobs (init_from='scratch', the vocabulary
    as for random tokens), a PRESETS shape, or out_dir's checkpoint."""
    kind = init_from_kind(cfg['init_from'], ('scratch', 'resume', 'preset'))
    if kind == 'scratch':
        return model_config_from(cfg, random_vocab(cfg))
    if kind == 'preset':
        return GPTConfig(**{**PRESETS[cfg['init_from']], 'dropout': cfg['dropout']})
    return GPTConfig(**load_checkpoint(checkpoint_path(cfg['out_dir']))['model_config'])


def layout_knobs(cfg, micro_batches):
    """train_memory's tensor and pipeline layout, from the knobs."""
    return dict(tp=cfg['tensor_parallel'], pp=cfg['pipeline_parallel'], schedule=cfg['pipeline_schedule'],
                micro_batches=micro_batches)


def memory_plan(cfg):
    """train_memory per GPU for DDP and FSDP, each with and without activation checkpointing, at micro-batch
    batch_size x the model's block_size, world_size GPUs in the configured tensor and pipeline layout (a pipeline's
    micro-batches: the step's micro-steps, at least 1), and the run's dtype ('auto': bfloat16, a GPU's)."""
    check_bench_knobs(cfg)
    mconf = memory_config(cfg)
    world = cfg['world_size'] or int(os.environ.get('WORLD_SIZE', '1'))
    shape = {k: getattr(mconf, k) for k in ('n_head', 'n_kv_head', 'n_layer')}
    dp = check_layout(SimpleNamespace(**{**cfg, **shape, 'parallel': 'ddp'}), world)
    dtype = 'bfloat16' if cfg['dtype'] == 'auto' else cfg['dtype']
    if dtype not in ('float32', 'bfloat16', 'float16'):
        raise ConfigError(f"dtype must be 'auto', 'float32', 'bfloat16' or 'float16', got {cfg['dtype']!r}")
    micro = max(1, cfg['total_batch_size'] // (cfg['batch_size'] * cfg['block_size'] * dp))
    rows = [{'parallel': mode, 'activation_checkpointing': ckpt,
             **train_memory(mconf, cfg['batch_size'], world, mode, ckpt, compute_dtype=dtype,
                            optimizer=cfg['optimizer'], **layout_knobs(cfg, micro))}
            for mode in ('ddp', 'fsdp') for ckpt in (False, True)]
    return {'bench': 'memory', 'time': time.time(), 'torch': torch.__version__,
            'model': {**{k: getattr(mconf, k) for k in ('n_layer', 'n_head', 'n_embd', 'block_size', 'vocab_size')},
                      **count_params(mconf)},
            'batch_size': cfg['batch_size'], 'block_size': mconf.block_size, 'world_size': world, 'dtype': dtype,
            'optimizer': cfg['optimizer'], 'layout': {**layout_knobs(cfg, micro), 'dp': dp},
            # train.py's knobs from issue 26 (FSDP); a train.py without them runs DDP without checkpointing
            'configured': {'parallel': cfg['parallel'], 'activation_checkpointing': cfg['activation_checkpointing']},
            'estimates': rows, 'leaves_out': MEMORY_LEAVES_OUT}


# -----------------------------------------------------------------------------
# output

def _ms(seconds):
    ms = seconds * 1e3
    return f"{ms:.1f} ms" if ms >= 100 else f"{ms:.3g} ms"


def format_train(r):
    m, st = r['model'], r['step_time_s']
    lines = [
        f"model      {m['n_params'] / 1e6:.2f}M parameters ({m['n_params_nonembed'] / 1e6:.2f}M non-embedding): "
        f"n_layer={m['n_layer']} n_head={m['n_head']} n_embd={m['n_embd']} vocab={m['vocab_size']}",
        f"device     {r['device_name']} ({r['device']}, {r['threads']} threads), {r['dtype']}"
        f"{', torch.compile' if r['compile'] else ''}, {r['world_size']} process(es) ({r['parallel']}"
        f"{', activation checkpointing' if r['activation_checkpointing'] else ''}"
        f"{''.join(f', {k} {v}' for k, v in r['layout'].items() if k in ('tp', 'pp') and v > 1)}), torch {r['torch']}",
        f"batch      {r['batch_size']} x {r['block_size']} tokens x {r['grad_accum']} micro-step(s) x "
        f"{r['world_size'] // (r['layout']['tp'] * r['layout']['pp'])} data-parallel process(es) = "
        f"{r['tokens_per_step']:,} tokens/step; data: {r['data']}",
        f"timing     {r['warmup_steps']} warm-up steps, then {r['repeats']} repeats of {r['timed_steps']} optimizer "
        f"steps, device synchronized around each repeat",
        "",
        f"step time           {_ms(st['median'])} median (min {_ms(st['min'])}, max {_ms(st['max'])}, "
        f"spread {100 * st['spread']:.1f}%)",
        f"tokens/s            {r['tokens_per_s']:,.0f}",
    ]
    if r['phases_s']:
        p = r['phases_s']
        lines.append(f"step split          separate pass, synchronized after each phase (sum {_ms(p['sum'])}, "
                     f"whole steps of that pass {_ms(p['step'])}):")
        for k in ('data', 'forward', 'backward', 'optimizer'):
            lines.append(f"  {k:<18}{_ms(p[k])} ({100 * p[k] / p['sum']:.0f}%)")
    fpt, tf = r['flops_per_token'], r['tflops_per_device']
    lines += [
        f"FLOPs/token         palm {fpt['palm'] / 1e6:,.3f}M | kaplan {fpt['kaplan'] / 1e6:,.3f}M",
        f"achieved            palm {tf['palm']:.4g} | kaplan {tf['kaplan']:.4g} TFLOP/s per device",
    ]
    if r['mfu']:
        lines += [f"peak                {r['peak_tflops_per_device']:.4g} TFLOP/s per device ({r['peak_source']})",
                  f"MFU                 palm {100 * r['mfu']['palm']:.2f}% | kaplan {100 * r['mfu']['kaplan']:.2f}%"]
    else:
        lines += [f"peak                n/a ({r['peak_source']})", "MFU                 n/a (no known peak)"]
    mem = r['peak_memory_bytes']   # None where the system has no way to tell (Windows: hardware.peak_memory)
    lines.append(f"peak memory         {'n/a' if mem is None else f'{mem / 2 ** 20:,.1f} MiB'} "
                 f"({r['peak_memory_kind']})")
    e = r['memory_estimate']
    parts = ', '.join(f"{k} {e[k] / 2 ** 20:,.1f}" for k in ('weights', 'grads', 'optimizer', 'activations'))
    vs = (f"; measured / estimate = {r['peak_memory_bytes'] / e['total']:.2f}" if r['device'].startswith('cuda') else
          "; not comparable with a CPU's peak RSS, which also holds Python and its libraries")
    lines.append(f"  estimate          {e['total'] / 2 ** 20:,.1f} MiB per GPU ({parts} MiB; train_memory, "
                 f"{e['parallel']}{', activation checkpointing' if e['activation_checkpointing'] else ''}){vs}")
    lines.append(f"first step          {r['first_step_s']:.1f} s after set-up began (model, compile, first step)")
    s = r['sampling']
    if s:
        lines.append(f"sampling            KV cache {s['kv_cache_tok_s']:,.1f} tok/s | "
                     f"no cache {s['no_cache_tok_s']:,.1f} "
                     f"tok/s | {s['kv_cache_speedup']:.2f}x (batch {s['batch']}, prompt {s['prompt']}, "
                     f"{s['new_tokens']} new tokens; median of the repeats)")
        lines.append(f"  first pass        KV cache {s['kv_cache_first_pass_tok_s']:,.1f} tok/s | "
                     f"no cache {s['no_cache_first_pass_tok_s']:,.1f} tok/s (the process's first generate() calls)")
        if 'compiled_tok_s' in s:
            bw = f", {100 * s['bandwidth_util']:.1f}% of the device's copy bandwidth" if s['bandwidth_util'] else ''
            lines.append(f"  compiled decode   {s['compiled_tok_s']:,.1f} tok/s after {s['compile_warmup_s']:.1f} s "
                         f"of warm-up; {s['bytes_per_token'] / 1e6:,.1f} MB read per token{bw}")
    lines += ["", *(f"{k}: {v}" for k, v in r['flops_formula'].items())]
    return "\n".join(lines)


def format_memory(r):
    m, conf, gib = r['model'], r['configured'], 2 ** 30
    lines = [f"memory     per GPU, estimated by accounting.train_memory: {m['n_params'] / 1e6:,.2f}M parameters "
             f"(n_layer={m['n_layer']} n_embd={m['n_embd']} vocab={m['vocab_size']}), micro-batch {r['batch_size']} "
             f"x {r['block_size']} tokens, {r['dtype']}, {r['optimizer']}, {r['world_size']} GPU(s)"
             + (f" = TP {lay['tp']} x PP {lay['pp']} x DP {lay['dp']}" if (lay := r['layout'])['tp'] * lay['pp'] > 1
                else "") + (f" ({lay['schedule']}, {lay['micro_batches']} micro-batches)" if lay['pp'] > 1 else ""),
             "",
             f"  {'parallel':<8} {'checkpointing':<13} {'weights':>9} {'grads':>9} {'optimizer':>9} "
             f"{'activations':>11} {'total':>9}   GiB"]
    for e in r['estimates']:
        mark = ' *' if (e['parallel'], e['activation_checkpointing']) == (conf['parallel'],
                                                                          conf['activation_checkpointing']) else ''
        lines.append(f"  {e['parallel']:<8} {'yes' if e['activation_checkpointing'] else 'no':<13} "
                     f"{e['weights'] / gib:>9.2f} {e['grads'] / gib:>9.2f} {e['optimizer'] / gib:>9.2f} "
                     f"{e['activations'] / gib:>11.2f} {e['total'] / gib:>9.2f}{mark}")
    lines += ["", f"* the configured parallel={conf['parallel']!r}, "
                  f"activation_checkpointing={conf['activation_checkpointing']}",
              f"left out: {r['leaves_out']}"]
    return "\n".join(lines)


def main(argv):
    return cli(lambda: report(parse_config(argv, DEFAULTS, __doc__, NULLABLE)),
               (ConfigError, DataError, ModelError, CheckpointError))


def report(cfg):
    with json_output(cfg['json']) as emit:
        record, master = (memory_plan(cfg), True) if cfg['memory'] else bench(cfg)
        if master:   # the table (on stderr with --json=-: data.json_output), and the record for --json
            print((format_memory if cfg['memory'] else format_train)(record))
            emit(record)
    return record


if __name__ == '__main__':
    run_script(main, sys.argv[1:])
