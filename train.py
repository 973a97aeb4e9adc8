"""
Train a GPT, from one CPU core to many GPUs, with exact resume and a JSONL run log.

    python train.py                                   # quick start: small byte-level model on Shakespeare, CPU
    python train.py config/gpt2.py --batch_size=32    # a config file, then --key=value overrides
    torchrun --nproc_per_node=8 train.py config/gpt2.py
    torchrun --nproc_per_node=8 train.py config/gpt2.py --parallel=fsdp   # sharded: models DDP cannot hold
    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --master_addr=... train.py config/gpt2.py

The defaults below are the quick start; config files are plain Python that reassign some of them.
The run's directory gets ckpt.pt (checkpoints) and log.jsonl (the run log): both are described in DESIGN.md.
"""
from pretrain.cli import cli, run_script  # first: Ctrl-C from here on, the import of torch included, is one line and exit 130
import dataclasses
import errno
import json
import math
import os
import sys
import time

import torch

from pretrain import hellaswag
from pretrain.accounting import count_params, flops_per_token
from pretrain.checkpoint import (CKPT_NAME, CheckpointError, checkpoint_path, init_from_kind, load_model,
                                 model_config_from, numbered_checkpoints, read_shards, save_checkpoint,
                                 save_sharded_checkpoint, sweep_stale)
from pretrain.configurator import ConfigError, knobs, parse_config
from pretrain.data import DataError, TokenLoader, get_tokenizer, read_meta
from pretrain.parallel import MODES, check_fsdp, load_full_optimizer, load_state, local, sharded_state, wrap
from pretrain.scaling.runlog import LOG_NAME
from model import GPTConfig, ModelError
from pretrain.hardware import device_name, peak_flops
from pretrain.runtime import end_of_run, setup_runtime
from pretrain.training import (GradNoise, bits_per_byte, configure_optimizer, cooldown_steps, evaluate, get_lr,
                               micro_steps, reset_peak_lr, set_lr, train_step)

# -----------------------------------------------------------------------------
# defaults: the CPU quick start (byte-level Shakespeare, 0.83M parameters, about 4 minutes on 2 cores; why these
# settings: config/shakespeare.py)
# I/O
out_dir = 'out'                    # checkpoints (ckpt.pt) and the run log (log.jsonl)
data_dir = 'data/shakespeare_bytes'  # shards written by prepare.py
init_from = 'scratch'              # 'scratch' | 'resume' (out_dir's ckpt.pt) | 'auto' (resume if there is one, else
                                   # scratch: for a restart loop) | 'gpt2' ... 'gpt2-xl' | a Hugging Face GPT-2 dir
branch_from = None                 # with init_from='resume': a parent run's dir or ckpt_<step>.pt to start from, writing
                                   # to this out_dir (a cooldown branch); the parent is only read
# checkpoints
checkpoint_interval = 500          # steps between checkpoints (and one at the end); 0 = only at the end
keep_checkpoints = 1               # 1: ckpt.pt only; k > 1: also ckpt_<step>.pt of the last k; 0: of every one
spike_factor = 1.3                 # a checkpoint whose val loss is > this x the run's best is not written; 0 = off
                                   # (healthy runs: val rose at most 1.024x its best in experiments/' 103 logs)
# evaluation and logging
eval_interval = 200                # steps between val-loss evaluations (and one at every checkpoint and the last step)
eval_iters = 40                    # val batches per evaluation: always the same first val sequences (80 of 512)
log_interval = 10                  # steps between console lines and log.jsonl records
hellaswag_interval = 0             # steps between HellaSwag evaluations (llm.c's scoring; GPT-2 tokens only); 0 = off
hellaswag_path = None              # a local HellaSwag-format .jsonl instead of the downloaded val set
noise_scale = False                # log the gradient noise scale B_simple (McCandlish et al. 2018); >= 2 micro-batches
# data
batch_size = 2                     # micro-batch, sequences per process per forward/backward; 2 x 512 x 2 micro-steps
                                   # = 2048 on one process, 1 micro-step each under torchrun --nproc_per_node=2
block_size = 512                   # context length, tokens (sample.py's 500 new tokens fit: its KV cache never slides)
total_batch_size = 2048            # tokens per optimizer step, over all processes and micro-steps
# model (GPTConfig fields, see model.py)
n_layer = 4
n_head = 8
n_embd = 128
n_kv_head = None                   # None = n_head (multi-head); fewer = grouped-query attention
dropout = 0.0
bias = True
norm = 'layernorm'                 # 'layernorm' | 'rmsnorm'
pos_emb = 'rope'                   # 'rope' (Llama; the quick start learns far faster with it) | 'learned' (GPT-2)
mlp = 'gelu'                       # 'gelu' | 'swiglu' | 'relu2'
tie_weights = True
pad_vocab_multiple = 1             # 64 pads GPT-2's 50257 to 50304 for faster matmuls on GPU
mlp_hidden = None                  # None = 4*n_embd (gelu, relu2) or 8/3*n_embd rounded to 64 (swiglu)
rope_theta = 10000.0               # RoPE base (Llama 3 uses 5e5)
norm_eps = 1e-5
qk_norm = False                    # RMS-normalize queries and keys (modded-nanogpt, nanochat)
zero_init_proj = False             # residual output projections start at zero (modded-nanogpt)
logit_softcap = None               # cap * tanh(logits / cap) (Gemma 2; modded-nanogpt 30, nanochat 15); None = off
# optimizer
optimizer = 'adamw'                # 'adamw' | 'muon' (Muon on the blocks' matrices, AdamW on the rest: muon.py)
learning_rate = 6e-3               # peak LR of AdamW (best of experiments/isoflop-shakespeare's LR sweep at 0.95M params)
muon_lr = None                     # peak LR of Muon's matrices (required with optimizer='muon')
muon_momentum = 0.95               # Muon's (Nesterov) momentum
muon_ns_dtype = 'auto'             # Newton-Schulz dtype: 'auto' (bf16 on CUDA and CPUs with bf16 matmuls), 'float32'
weight_decay = 0.1                 # decoupled, on matrices and embeddings only
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0                    # max global grad norm; 0 = off
# learning-rate schedule
max_iters = 1000                   # optimizer steps; 1000 * 2048 = 2.0M tokens, 0.45 epoch of the 4.55M train bytes
schedule = 'cosine'                # 'cosine' (warm-up, cosine to min_lr) | 'wsd' (warm-up, stable, decay)
warmup_iters = 50                  # linear warm-up steps
lr_decay_iters = None              # cosine: step where lr reaches min_lr (None = max_iters)
min_lr = 6e-4                      # floor of the schedule (Chinchilla: ~lr/10)
cooldown_fraction = 0.2            # wsd: last fraction of max_iters spent decaying (Hägele et al. 2024)
cooldown_iters = None              # wsd: decay steps at the end, instead of cooldown_fraction (0 = constant LR)
cooldown_shape = '1-sqrt'          # wsd: 'linear' | '1-sqrt' (Hägele et al. 2024, sec. 3)
# system
device = 'auto'                    # 'auto' | 'cpu' | 'cuda' | 'cuda:1' | 'mps'
dtype = 'auto'                     # 'auto' (bf16 on CUDA, fp16 on GPUs without bf16, else float32) | 'float32' | 'bfloat16' | 'float16'
compile = False                    # torch.compile the model (no gain at quick-start size on CPU; the GPU configs turn it on)
parallel = 'ddp'                   # 'ddp' (each process holds the whole model) | 'fsdp' (each holds 1/N of weights,
                                   # gradients and AdamW state: FSDP2; AdamW, bf16/float32 only; docs/parallel.md)
activation_checkpointing = False   # recompute each block in the backward: ~1/3 more compute, far less activation memory
seed = 1337                        # model init, data order and dropout all derive from it
# -----------------------------------------------------------------------------
DEFAULTS = knobs(globals())


def _whole(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# the optimizer, schedule and run knobs' allowed values (the model's are GPTConfig's own checks), checked before
# anything is written: (knob, test, what is allowed). A knob whose default is None takes any type from the
# configurator, so its test checks the type too.
RULES = [(k, lambda v: v >= 1, 'an int >= 1') for k in ('batch_size', 'block_size', 'total_batch_size',
                                                         'max_iters', 'eval_iters', 'log_interval', 'eval_interval')]
RULES += [(k, lambda v: v >= 0, '>= 0') for k in ('checkpoint_interval', 'keep_checkpoints', 'warmup_iters',
                                                   'min_lr', 'weight_decay', 'grad_clip', 'hellaswag_interval')]
RULES += [
    ('spike_factor', lambda v: v == 0 or v > 1, '0 (off) or > 1 (a factor over the best val loss)'),
    ('learning_rate', lambda v: v > 0, '> 0'),
    ('muon_lr', lambda v: v is None or _number(v) and v > 0, 'None or a number > 0'),
    ('muon_momentum', lambda v: 0 <= v < 1, 'in [0, 1)'),
    ('muon_ns_dtype', lambda v: v in ('auto', 'float32', 'bfloat16'), "'auto', 'float32' or 'bfloat16'"),
    ('beta1', lambda v: 0 <= v < 1, 'in [0, 1)'),
    ('beta2', lambda v: 0 <= v < 1, 'in [0, 1)'),
    ('cooldown_fraction', lambda v: 0 <= v <= 1, 'in [0, 1]'),
    ('cooldown_iters', lambda v: v is None or _whole(v) and v >= 0, 'None or an int >= 0'),
    ('lr_decay_iters', lambda v: v is None or _whole(v) and v >= 1, 'None or an int >= 1'),
    ('schedule', lambda v: v in ('cosine', 'wsd'), "'cosine' or 'wsd'"),
    ('cooldown_shape', lambda v: v in ('linear', '1-sqrt'), "'linear' or '1-sqrt'"),
    ('optimizer', lambda v: v in ('adamw', 'muon'), "'adamw' or 'muon'"),
    ('parallel', lambda v: v in MODES, "'ddp' or 'fsdp'"),
    ('out_dir', lambda v: v.strip() != '', 'a directory name'),
    ('data_dir', lambda v: v.strip() != '', 'a directory name'),
    ('branch_from', lambda v: v is None or isinstance(v, str) and v.strip() != '',
     "None or a parent run's directory or ckpt_<step>.pt"),
    ('hellaswag_path', lambda v: v is None or isinstance(v, str) and v.strip() != '', 'None or a .jsonl path'),
]


def check_train_knobs(cfg, world):
    """Every knob checked, before any device, process group, directory or data is touched: ConfigError (or the
    model's ModelError) in one line. Returns the gradient-accumulation steps per optimizer step."""
    for key, ok, allowed in RULES:
        try:
            good = ok(cfg[key])
        except TypeError:   # e.g. a string for muon_lr: not a number, so not allowed
            good = False
        if not good:
            raise ConfigError(f"{key}={cfg[key]!r} is not allowed: must be {allowed}")
    init_from_kind(cfg['init_from'], ('scratch', 'resume', 'auto', 'gpt2'))
    model_config_from(cfg, vocab_size=1)   # GPTConfig checks the model knobs; the data's vocabulary comes later
    accum = micro_steps(cfg['total_batch_size'], cfg['batch_size'], cfg['block_size'], world)
    if cfg['min_lr'] > cfg['learning_rate']:
        raise ConfigError(f"min_lr={cfg['min_lr']} exceeds learning_rate={cfg['learning_rate']}")
    if cfg['warmup_iters'] > cfg['max_iters']:
        raise ConfigError(f"warmup_iters={cfg['warmup_iters']} exceeds max_iters={cfg['max_iters']}")
    if cfg['schedule'] == 'wsd' and cooldown_steps(cfg) > cfg['max_iters'] - cfg['warmup_iters']:
        raise ConfigError(f"the cooldown ({cooldown_steps(cfg)} steps) is longer than the run after warm-up "
                          f"({cfg['max_iters']} - {cfg['warmup_iters']} steps)")
    if cfg['optimizer'] == 'muon' and cfg['muon_lr'] is None:
        raise ConfigError("optimizer='muon' needs muon_lr, the peak learning rate of its matrices (e.g. --muon_lr=0.02)")
    if cfg['branch_from'] is not None:
        if cfg['init_from'] != 'resume':
            raise ConfigError("branch_from starts a branch from a parent's checkpoint: it needs init_from='resume'")
        parent_dir = os.path.dirname(checkpoint_path(cfg['branch_from'])) or '.'
        if os.path.realpath(parent_dir) == os.path.realpath(cfg['out_dir']):
            raise ConfigError(f"branch_from={cfg['branch_from']!r} is in out_dir={cfg['out_dir']!r}: a branch writes "
                              f"to its own out_dir and only reads its parent; give --out_dir a new directory")
    if cfg['parallel'] == 'fsdp':
        check_fsdp(cfg, cfg['dtype'])
    if cfg['noise_scale'] and accum * world < 2:
        raise ConfigError("noise_scale needs at least two micro-batches per step (total_batch_size >= "
                          "2 x batch_size x block_size)")
    return accum


def open_out_dir(path):
    """Create out_dir and prove it writable now, before minutes of loading: one line naming the path if not. The
    probe file is removed whatever happens (a full disk fails the write, not the open)."""
    probe = os.path.join(path, f'.write-test.{os.getpid()}')
    try:
        os.makedirs(path, exist_ok=True)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            os.write(fd, b'ok')
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        what = 'the disk is full' if e.errno == errno.ENOSPC else (e.strerror or str(e))
        raise ConfigError(f"out_dir {path} is not a writable directory ({what}); free space or choose another "
                          f"--out_dir") from None
    finally:
        if os.path.lexists(probe):
            os.remove(probe)
    sweep_stale(path)


def resume_source(cfg):
    """Which checkpoint a resume reads: this out_dir's own (a run, or a branch continuing), else branch_from."""
    own = os.path.join(cfg['out_dir'], CKPT_NAME)
    if os.path.exists(own) or cfg['branch_from'] is None:
        return own
    parent = checkpoint_path(cfg['branch_from'])
    if not os.path.isfile(parent):
        steps = [s for s, _ in numbered_checkpoints(os.path.dirname(parent))]
        raise ConfigError(f"no checkpoint {parent} to branch from" +
                          (f" (the parent has steps {', '.join(map(str, steps))})" if steps else ""))
    return parent


def log_record(path, record):
    """One line of the run log; a failed write names the log (a full disk says so in cli's line)."""
    try:
        with open(path, 'a') as f:
            f.write(json.dumps(record) + '\n')
            f.flush()
    except OSError as e:
        raise OSError(e.errno, e.strerror, path) from None


# -----------------------------------------------------------------------------
# the run

@dataclasses.dataclass
class Run:
    """What a run holds from setup() to its end; train() advances step, next_seq and best_val_loss."""
    cfg: dict                       # every knob (DEFAULTS with the config file and overrides)
    rt: object                      # runtime.setup_runtime(): device, dtype, autocast, rank, world, ddp, master
    meta: dict                      # the dataset's meta.json
    raw_model: torch.nn.Module      # the GPT itself (under fsdp, sharded in place): checkpoints, HellaSwag
    model: torch.nn.Module          # what steps run through: raw_model, compiled and/or wrapped (parallel.wrap)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler    # fp16 loss scaling (disabled otherwise)
    noise: GradNoise | None         # the gradient noise scale (noise_scale=True)
    train_loader: TokenLoader
    val_loader: TokenLoader
    tokenizer: object               # data.get_tokenizer(meta['tokenizer']), for bits per byte and HellaSwag
    hellaswag_examples: list | None  # HellaSwag's examples (hellaswag_interval > 0)
    accum: int                      # micro-steps per optimizer step per process
    seqs_per_step: int              # sequences of block_size tokens per optimizer step, all processes
    n_val_seqs: int                 # val sequences per evaluation
    val_tokens: int                 # target tokens of those sequences ...
    val_bytes: int                  # ... and the UTF-8 bytes they spell: bits per byte
    flops_per_token: float          # training FLOPs per token (accounting.flops_per_token, PaLM's formula)
    peak_flops: float | None        # per device, FLOP/s, for MFU; None if unknown
    log_path: str                   # out_dir/log.jsonl
    start_step: int                 # the step this process started (or resumed) at
    step: int                       # optimizer steps taken
    next_seq: int                   # the loader's position: the first sequence of the next step
    best_val_loss: float            # the divergence guard's memory, kept in the checkpoint: inf until an evaluation

    def say(self, *args, **kw):
        if self.rt.master:
            print(*args, **kw)


def build(cfg, rt, meta):
    """-> (raw model on the device, checkpoint or None). From scratch, from a checkpoint, or from GPT-2."""
    init_from = init_from_kind(cfg['init_from'], ('scratch', 'resume', 'auto', 'gpt2'))
    if init_from == 'auto':
        init_from = 'resume' if os.path.exists(os.path.join(cfg['out_dir'], CKPT_NAME)) else 'scratch'
    torch.manual_seed(cfg['seed'])
    if init_from == 'resume':
        source = resume_source(cfg)
        # under fsdp each rank reads only its part of a sharded checkpoint, after sharding (setup)
        model, tokenizer, where, ckpt = load_model('resume', source, cfg, for_resume=True,
                                                   shards=cfg['parallel'] != 'fsdp')
        # the model comes from the checkpoint; a config that asks for another shape is a mistake, not a wish
        shape_keys = {f.name for f in dataclasses.fields(GPTConfig)} - {'dropout', 'vocab_size'}
        differ = {k: (v, cfg[k]) for k, v in ckpt['model_config'].items() if k in shape_keys and k in cfg and cfg[k] != v}
        if differ:
            raise ConfigError("checkpoint model differs from this config: " +
                              ", ".join(f"{k} is {a} in the checkpoint, {b} here" for k, (a, b) in differ.items()))
        if tokenizer != meta['tokenizer']:
            raise ConfigError(f"checkpoint was trained on {tokenizer} tokens, {cfg['data_dir']} has {meta['tokenizer']}")
        if ckpt['step'] > cfg['max_iters']:
            raise ConfigError(f"{where} is at step {ckpt['step']}, past max_iters={cfg['max_iters']}")
        if cfg['branch_from'] and cfg['schedule'] == 'wsd' and ckpt['step'] > cfg['max_iters'] - cooldown_steps(cfg) \
                and source != os.path.join(cfg['out_dir'], CKPT_NAME):
            raise ConfigError(f"the branch starts at step {ckpt['step']} but its cooldown starts at step "
                              f"{cfg['max_iters'] - cooldown_steps(cfg)}: lower cooldown_iters or raise max_iters")
        if rt.master:
            print(f"resuming from {where}")
        return model.to(rt.device), ckpt
    if init_from == 'scratch':
        model, _, _, _ = load_model('scratch', cfg=cfg, vocab_size=meta['vocab_size'])
        return model.to(rt.device), None
    if meta['tokenizer'] != 'gpt2':
        raise ConfigError(f"init_from={cfg['init_from']} needs GPT-2 tokens, {cfg['data_dir']} has {meta['tokenizer']}")
    model, _, _, _ = load_model(cfg['init_from'], cfg=cfg)
    return model.to(rt.device), None


def setup(cfg):
    """Everything a run needs, in order: checked knobs, runtime, out_dir, data, model, optimizer, the log's run
    record -> Run."""
    accum = check_train_knobs(cfg, int(os.environ.get('WORLD_SIZE', 1)))  # before any device or process group
    rt = setup_runtime(cfg)
    if cfg['parallel'] == 'fsdp':
        check_fsdp(cfg, rt.dtype)   # dtype='auto' is float16 on GPUs without bf16
    if rt.master:
        open_out_dir(cfg['out_dir'])
    meta = read_meta(cfg['data_dir'])
    if cfg['hellaswag_interval'] and meta['tokenizer'] != 'gpt2':
        raise ConfigError(f"hellaswag_interval needs GPT-2 tokens; {cfg['data_dir']} has {meta['tokenizer']}")
    model, ckpt = build(cfg, rt, meta)
    mconf = model.config
    B, T = cfg['batch_size'], cfg['block_size']
    if T > mconf.block_size:
        raise ConfigError(f"block_size {T} exceeds the model's {mconf.block_size}")
    train_loader = TokenLoader(cfg['data_dir'], 'train', T, seed=cfg['seed'], vocab_size=mconf.vocab_size)
    val_loader = TokenLoader(cfg['data_dir'], 'val', T, vocab_size=mconf.vocab_size)
    n_val_seqs = min(cfg['eval_iters'] * B, val_loader.n_chunks)
    # bits per byte: the val sequences' text is fixed, so its UTF-8 byte count is counted once
    val_targets = val_loader.batch(0, n_val_seqs, torch.device('cpu'))[1]
    tokenizer = get_tokenizer(meta['tokenizer'])
    examples = hellaswag.load_examples(cfg['hellaswag_path'], None, rt) if cfg['hellaswag_interval'] else None

    # wrapped before the optimizer is built: under fsdp, parallel.wrap replaces the parameters by their shards
    wrapped = wrap(model, rt, cfg['parallel'], cfg['compile'], cfg['activation_checkpointing'])
    optimizer = configure_optimizer(model, cfg, rt.device)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.dtype == 'float16')
    noise = GradNoise([p for p in model.parameters() if p.requires_grad], B * T, cfg['total_batch_size']) \
        if cfg['noise_scale'] else None
    step, next_seq, best_val_loss = 0, 0, math.inf
    seqs_per_step = cfg['total_batch_size'] // T
    if ckpt is not None:
        if cfg['parallel'] == 'fsdp' and 'sharded' in ckpt:   # each rank reads its part, at any world size
            load_state(model, optimizer, read_shards(ckpt, into=sharded_state(model, optimizer)))
        elif cfg['parallel'] == 'fsdp':   # a single-file checkpoint: weights loaded before sharding (build)
            load_full_optimizer(model, optimizer, ckpt['optimizer'])
        else:
            optimizer.load_state_dict(ckpt['optimizer'])
        reset_peak_lr(optimizer, cfg)
        if 'scaler' in ckpt:
            scaler.load_state_dict(ckpt['scaler'])
        if noise is not None and 'noise' in ckpt:
            noise.load_state_dict(ckpt['noise'])
        step, next_seq = ckpt['step'], ckpt['loader']['next_seq']
        best_val_loss = ckpt.get('guard', {}).get('best_val_loss', math.inf)   # checkpoints before the guard had none
        if ckpt['loader']['seqs_per_step'] != seqs_per_step and rt.master:
            print(f"note: tokens per step changed on resume; data continues at sequence {next_seq}")
    del ckpt

    # accounting for the log and MFU (accounting.py holds the formulas and their sources)
    counts = count_params(mconf)
    r = Run(cfg=cfg, rt=rt, meta=meta, raw_model=model, model=wrapped, optimizer=optimizer, scaler=scaler,
            noise=noise, train_loader=train_loader, val_loader=val_loader, tokenizer=tokenizer,
            hellaswag_examples=examples, accum=accum, seqs_per_step=seqs_per_step, n_val_seqs=n_val_seqs,
            val_tokens=val_targets.numel(), val_bytes=tokenizer.count_bytes(val_targets.flatten().numpy()),
            flops_per_token=flops_per_token(mconf, formula='palm', seq_len=T),
            peak_flops=peak_flops(rt.device, rt.ptdtype, measure=False),
            log_path=os.path.join(cfg['out_dir'], LOG_NAME), start_step=step, step=step, next_seq=next_seq,
            best_val_loss=best_val_loss)
    if rt.master:
        log_record(r.log_path, {
            'type': 'run', **counts, 'flops_per_token': r.flops_per_token,
            'flops_formula': 'palm: 6N + 12*L*H*Q*T (PaLM appendix B; N = matmul parameters, as nanoGPT)',
            'tokens_per_step': cfg['total_batch_size'], 'world_size': rt.world, 'device': str(rt.device),
            'device_name': device_name(rt.device), 'dtype': rt.dtype, 'tokenizer': meta['tokenizer'],
            'model': dataclasses.asdict(mconf), 'config': cfg, 'resumed': step > 0, 'start_step': step,
            'val_bytes': r.val_bytes, 'val_tokens': r.val_tokens, 'time': time.time()})
    r.say(f"{counts['n_params'] / 1e6:.2f}M parameters ({counts['n_params_nonembed'] / 1e6:.2f}M non-embedding), "
          f"{rt.world} process(es) on {rt.device} in {rt.dtype}, {accum} micro-step(s) of {B}x{T} per rank per step, "
          f"{cfg['total_batch_size']} tokens/step, {max(0, cfg['max_iters'] - step)} steps to go")
    return r


def evaluate_now(r, step, val_due, hellaswag_due):
    """The val loss (and bits per byte) and/or HellaSwag, logged. Returns the val loss, or None if not due."""
    c, rt = r.cfg, r.rt
    tokens = step * c['total_batch_size']
    val_loss = None
    if val_due:
        val_loss = evaluate(r.model, r.val_loader, r.n_val_seqs, rt, c['batch_size'])
        val_bpb = bits_per_byte(val_loss, r.val_tokens, r.val_bytes) if r.val_bytes else None
        r.say(f"step {step}: val loss {val_loss:.4f}" + (f", {val_bpb:.4f} bits/byte" if val_bpb else ""))
        if rt.master:
            log_record(r.log_path, {'type': 'eval', 'step': step, 'tokens': tokens,
                                    'flops': r.flops_per_token * tokens, 'val_loss': val_loss, 'val_bpb': val_bpb})
    if hellaswag_due:
        hs = hellaswag.score(r.raw_model, r.tokenizer, r.hellaswag_examples, rt, c['batch_size'], progress=False)
        r.say(f"step {step}: hellaswag acc {hs['acc']:.4f}, acc_norm {hs['acc_norm']:.4f} ({hs['n']} examples)")
        if rt.master:
            log_record(r.log_path, {'type': 'hellaswag', 'step': step, 'tokens': tokens,
                                    'flops': r.flops_per_token * tokens, 'acc': hs['acc'], 'acc_norm': hs['acc_norm'],
                                    'n': hs['n']})
    return val_loss


def train(cfg):
    """The run: evaluate, checkpoint and step until max_iters. Returns the trained (unwrapped) model.
    The divergence guard: a checkpoint is judged before it is written, by the val loss of the very weights it
    would hold (an evaluation runs at every checkpoint), so no blown-up update is ever saved; a NaN or inf stops
    the run; a finite blow-up (val loss > spike_factor x the best so far) is not written. The best val loss is
    kept in the checkpoint, so a resumed run remembers it."""
    r = setup(cfg)
    c, rt = r.cfg, r.rt
    nonfinite = torch.zeros((), device=rt.device)  # checked at sync points, so the hot loop never waits on the GPU
    window_loss = torch.zeros((), device=rt.device)  # summed step losses since the last log line
    refused = None   # (step, val loss) of the last checkpoint the guard refused, while no later one was written
    t_start, t_last, steps_since_log = time.time(), time.time(), 0
    while True:
        step = r.step
        last = step == c['max_iters']
        checkpoint_due = step > r.start_step and (last or (c['checkpoint_interval'] and
                                                           step % c['checkpoint_interval'] == 0))
        val_due = step % c['eval_interval'] == 0 or last or checkpoint_due
        hellaswag_due = bool(r.hellaswag_examples) and (step % c['hellaswag_interval'] == 0 or last)
        val_loss = None
        if val_due or hellaswag_due:
            if diverged(nonfinite, rt):
                break
            t0 = time.time()
            val_loss = evaluate_now(r, step, val_due, hellaswag_due)
            t_last += time.time() - t0  # keep evaluation out of the training tokens/s
            if val_loss is not None and not math.isfinite(val_loss):
                nonfinite += 1
        if checkpoint_due:
            # a finite loss can still follow an update with inf gradients: check the weights we are about to keep
            nonfinite += sum((~torch.isfinite(local(p))).sum() for p in r.raw_model.parameters())  # fsdp: own shards
            if diverged(nonfinite, rt):
                break
            if c['spike_factor'] and val_loss > c['spike_factor'] * r.best_val_loss:
                refused = (step, val_loss)
                r.say(f"warning: step {step}: val loss {val_loss:.4f} is over {c['spike_factor']}x the best "
                      f"{r.best_val_loss:.4f}; not checkpointing (the last good checkpoint stays)")
            else:
                refused = None
                r.best_val_loss = min(r.best_val_loss, val_loss)
                if rt.master or c['parallel'] == 'fsdp':   # a sharded checkpoint: every rank writes its part
                    write_checkpoint(r, step)
        elif val_loss is not None:
            r.best_val_loss = min(r.best_val_loss, val_loss)
        if last:
            break

        # one optimizer step: accum micro-steps per rank, gradients synchronised on the last one only
        torch.manual_seed(c['seed'] * 1_000_003 + rt.rank * 10_007 + step)  # dropout masks depend on (rank, step)
        lr = get_lr(step, cfg)
        set_lr(r.optimizer, lr, cfg)
        loss_sum = train_step(r.model, r.optimizer, r.scaler, r.accum, rt, c['grad_clip'],
                              lambda micro: r.train_loader.batch(r.next_seq + (micro * rt.world + rt.rank) *
                                                                 c['batch_size'], c['batch_size'], rt.device),
                              noise=r.noise)
        nonfinite += ~torch.isfinite(loss_sum)
        window_loss += loss_sum / r.accum
        r.step = step = step + 1
        r.next_seq += r.seqs_per_step
        steps_since_log += 1

        if step % c['log_interval'] == 0 or step == c['max_iters']:
            loss_mean = window_loss / steps_since_log
            if rt.ddp:
                torch.distributed.all_reduce(loss_mean, op=torch.distributed.ReduceOp.AVG)
            loss_val = loss_mean.item()  # waits for the device: the only sync in the loop
            window_loss.zero_()
            if not math.isfinite(loss_val):
                nonfinite += 1
                break
            now = time.time()
            dt = (now - t_last) / steps_since_log
            t_last, steps_since_log = now, 0
            log_step(r, step, lr, loss_val, dt, now - t_start)
    end_of_run(rt)
    if nonfinite.item():
        raise FloatingPointError(
            f"loss or weights became NaN or infinite by step {r.step}; stopped without saving, the last good "
            f"checkpoint in {c['out_dir']} is kept (try a lower learning_rate or grad_clip)")
    if refused:
        raise FloatingPointError(
            f"the run diverged: val loss {refused[1]:.4f} at step {refused[0]} is over {c['spike_factor']}x the "
            f"best {r.best_val_loss:.4f}; the last good checkpoint in {c['out_dir']} is kept (lower learning_rate)")
    return r.raw_model


def log_step(r, step, lr, loss, dt, elapsed):
    """The console line and the run log's train (and noise) record."""
    c = r.cfg
    tok_per_s = c['total_batch_size'] / dt
    mfu = r.flops_per_token * tok_per_s / (r.peak_flops * r.rt.world) if r.peak_flops else None
    r.say(f"step {step}/{c['max_iters']} | loss {loss:.4f} | lr {lr:.2e} | {tok_per_s / 1e3:.1f}k tok/s | "
          f"mfu {f'{100 * mfu:.1f}%' if mfu is not None else 'n/a'} | "
          f"{_hms(elapsed)} elapsed, {_hms(dt * (c['max_iters'] - step))} left")
    if r.rt.master:
        tokens = step * c['total_batch_size']
        log_record(r.log_path, {'type': 'train', 'step': step, 'tokens': tokens, 'flops': r.flops_per_token * tokens,
                                'lr': lr, 'loss': loss, 'dt': dt, 'tok_per_s': tok_per_s, 'mfu': mfu})
        if r.noise is not None and r.noise.last is not None:
            log_record(r.log_path, {'type': 'noise', 'step': step, 'tokens': tokens, 'loss': loss, **r.noise.last})


def diverged(nonfinite, rt):
    """Has any rank seen a non-finite loss or weight? All ranks must agree, or one would wait forever."""
    if rt.ddp:
        torch.distributed.all_reduce(nonfinite, op=torch.distributed.ReduceOp.MAX)
    return nonfinite.item() > 0


def write_checkpoint(r, step):
    """The checkpoint of DESIGN.md: enough to continue exactly (weights, optimizer, scaler, step, data position,
    the divergence guard's memory). Under fsdp every rank calls this: the weights and optimizer state go to a
    shard directory, the rest to the manifest ckpt.pt."""
    c = r.cfg
    state = {'model_config': dataclasses.asdict(r.raw_model.config), 'scaler': r.scaler.state_dict(), 'step': step,
             'tokens': step * c['total_batch_size'],
             'loader': {'next_seq': r.next_seq, 'seqs_per_step': r.seqs_per_step},
             'config': c, 'tokenizer': r.meta['tokenizer'], 'guard': {'best_val_loss': r.best_val_loss}}
    if r.noise is not None:
        state['noise'] = r.noise.state_dict()
    if c['parallel'] == 'fsdp':
        save_sharded_checkpoint(c['out_dir'], state, sharded_state(r.raw_model, r.optimizer), keep=c['keep_checkpoints'])
    else:
        save_checkpoint(c['out_dir'], {**state, 'model': r.raw_model.state_dict(), 'optimizer': r.optimizer.state_dict()},
                        keep=c['keep_checkpoints'])


def _hms(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def main(argv):
    cli(lambda: train(parse_config(argv, DEFAULTS, __doc__)),
        (ConfigError, DataError, ModelError, CheckpointError, FloatingPointError, torch.OutOfMemoryError),
        interrupted="interrupted: resume from the last checkpoint, if one was written, with --init_from=resume")


if __name__ == '__main__':
    run_script(main, sys.argv[1:])
