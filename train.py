"""
Train a GPT, from one CPU core to many GPUs, with exact resume and a JSONL run log.

    python train.py                                   # quick start: small byte-level model on Shakespeare, CPU
    python train.py config/gpt2.py --batch_size=32    # a config file, then --key=value overrides
    torchrun --nproc_per_node=8 train.py config/gpt2.py
    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --master_addr=... train.py config/gpt2.py

The defaults below are the quick start; config files are plain Python that reassign some of them.
"""
import ast
import builtins
import contextlib
import dataclasses
import difflib
import json
import math
import os
import sys
import time
from types import SimpleNamespace

import numpy as np
import torch

from model import GPT, GPTConfig, ModelError, count_params, flops_per_token
from prepare import DataError, read_meta, read_shard, shard_paths

# -----------------------------------------------------------------------------
# defaults: the CPU quick start (byte-level Shakespeare, 0.83M parameters, about 4 minutes on 2 cores; why these
# settings: config/shakespeare.py)
# I/O
out_dir = 'out'                    # checkpoints (ckpt.pt) and the run log (log.jsonl)
data_dir = 'data/shakespeare_bytes'  # shards written by prepare.py
init_from = 'scratch'              # 'scratch' | 'resume' (latest ckpt in out_dir) | 'gpt2' ... 'gpt2-xl' | HF dir
eval_interval = 200                # steps between val-loss evaluations (and one at the last step)
eval_iters = 20                    # val batches per evaluation: always the same first val sequences
log_interval = 10                  # steps between console lines and log.jsonl records
checkpoint_interval = 500          # steps between checkpoints (and one at the end); 0 = only at the end
# data
batch_size = 4                     # micro-batch, sequences per process per forward/backward
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
mlp = 'gelu'                       # 'gelu' | 'swiglu'
tie_weights = True
pad_vocab_multiple = 1             # 64 pads GPT-2's 50257 to 50304 for faster matmuls on GPU
mlp_hidden = None                  # None = 4*n_embd (gelu) or 8/3*n_embd rounded to 64 (swiglu)
rope_theta = 10000.0               # RoPE base (Llama 3 uses 5e5)
norm_eps = 1e-5
# optimizer: AdamW, weight decay on matrices only
learning_rate = 6e-3               # peak learning rate (the best of a sweep at this size: experiments/isoflop-shakespeare)
max_iters = 1000                   # optimizer steps; 1000 * 2048 = 2.0M tokens, 0.45 epoch of the 4.55M train bytes
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0                    # max global grad norm; 0 = off
# learning-rate schedule
schedule = 'cosine'                # 'cosine' (warm-up, cosine to min_lr) | 'wsd' (warm-up, stable, decay)
warmup_iters = 50                  # linear warm-up steps
lr_decay_iters = None              # cosine: step where lr reaches min_lr (None = max_iters)
min_lr = 6e-4                      # floor of the schedule (Chinchilla: ~lr/10)
cooldown_fraction = 0.2            # wsd: last fraction of max_iters spent decaying (Hägele et al. 2024)
cooldown_shape = '1-sqrt'          # wsd: 'linear' | '1-sqrt' (Hägele et al. 2024, sec. 3)
# system
device = 'auto'                    # 'auto' | 'cpu' | 'cuda' | 'cuda:1' | 'mps'
dtype = 'auto'                     # 'auto' (bf16 on CUDA, fp16 on GPUs without bf16, else float32) | 'float32' | 'bfloat16' | 'float16'
compile = False                    # torch.compile the model (measured: see README; True on GPUs in their configs)
seed = 1337                        # model init, data order and dropout all derive from it
# -----------------------------------------------------------------------------
DEFAULTS = {k: v for k, v in globals().items()
            if not k.startswith('_') and k != 'DEFAULTS' and isinstance(v, (int, float, str, bool, type(None)))}


class ConfigError(Exception):
    pass


# -----------------------------------------------------------------------------
# configuration: config file (plain Python) then --key=value, both checked against the defaults

def _check(key, value, defaults, where):
    if key not in defaults:
        close = difflib.get_close_matches(key, defaults, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown config key '{key}' in {where}{hint}")
    default = defaults[key]
    if default is None or value is None:
        return value
    if isinstance(default, bool) != isinstance(value, bool):  # bool is an int subclass: keep them apart
        raise ConfigError(f"{key} must be {type(default).__name__}, got {value!r} in {where}")
    if isinstance(default, float) and isinstance(value, int):
        return float(value)
    if not isinstance(value, type(default)):
        raise ConfigError(f"{key} must be {type(default).__name__}, got {value!r} in {where}")
    return value


def parse_config(argv, defaults):
    """[config.py] [--key=value ...] -> dict. Values parse with ast.literal_eval (bare words stay strings)."""
    cfg = dict(defaults)
    if '-h' in argv or '--help' in argv:
        print((sys.modules['__main__'].__doc__ or '').strip() + '\n\nknobs and their defaults:')
        print('\n'.join(f'  --{k}={v!r}' for k, v in defaults.items()))
        sys.exit(0)
    for arg in argv:
        if not arg.startswith('--'):
            if not os.path.isfile(arg):
                raise ConfigError(f"config file {arg} does not exist")
            namespace = {}
            try:
                exec(builtins.compile(open(arg).read(), arg, 'exec'), {}, namespace)  # `compile` is a knob here
            except Exception as e:
                raise ConfigError(f"{arg}: {type(e).__name__}: {e}")
            for k, v in namespace.items():
                if not k.startswith('_') and not callable(v) and not isinstance(v, type(sys)):
                    cfg[k] = _check(k, v, defaults, arg)
        else:
            key, eq, text = arg[2:].partition('=')
            if not eq:
                raise ConfigError(f"expected --key=value, got {arg}")
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                value = text  # --device=cuda rather than --device="'cuda'"
            cfg[key] = _check(key, value, defaults, arg)
    return cfg


# -----------------------------------------------------------------------------
# data: every step reads the same sequences whatever the world size

class TokenLoader:
    """
    The split's shards are cut into chunks of block_size+1 tokens (inputs and shifted targets). Global sequence
    number g reads chunk perm_e[g mod n] of epoch e = g div n, perm_e a seeded permutation per epoch (identity for
    val). Step s of a run with S sequences per step reads sequences s*S ... s*S+S-1, and micro-step m of rank r
    takes the slice (m*world + r)*B ... +B of those. So the data depends on the step alone, not on the world size,
    and resuming needs only the step.
    """

    def __init__(self, data_dir, split, block_size, seed=None):
        self.shards = [read_shard(p) for p in shard_paths(data_dir, split)]
        self.T = block_size
        chunks = [(len(s) - 1) // block_size for s in self.shards]
        self.first_chunk = np.cumsum([0] + chunks)
        self.n_chunks = int(self.first_chunk[-1])
        if self.n_chunks == 0:
            raise DataError(f"{split} split of {data_dir} has fewer than block_size+1 = {block_size + 1} tokens")
        self.seed, self._epoch, self._perm = seed, None, None

    def _chunk_ids(self, seqs):
        epoch, i = np.divmod(seqs, self.n_chunks)
        if self.seed is None:
            return i
        out = np.empty_like(i)
        for e in np.unique(epoch):
            if e != self._epoch:  # one permutation cached: sequences are read in order
                self._epoch, self._perm = e, np.random.default_rng([self.seed, int(e)]).permutation(self.n_chunks)
            out[epoch == e] = self._perm[i[epoch == e]]
        return out

    def batch(self, first_seq, n, device):
        chunk = self._chunk_ids(np.arange(first_seq, first_seq + n))
        shard = np.searchsorted(self.first_chunk, chunk, side='right') - 1
        rows = [self.shards[k][(c - self.first_chunk[k]) * self.T:][:self.T + 1] for k, c in zip(shard, chunk)]
        buf = torch.from_numpy(np.stack(rows).astype(np.int64))
        if device.type == 'cuda':
            buf = buf.pin_memory().to(device, non_blocking=True)
        else:
            buf = buf.to(device)
        return buf[:, :-1], buf[:, 1:]


# -----------------------------------------------------------------------------
# checkpoints (Contract 2): atomic, weights_only-loadable, enough to continue exactly

def save_checkpoint(path, obj):
    tmp = f"{path}.tmp"
    with open(tmp, 'wb') as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one, never half of one
    dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def load_checkpoint(path, map_location='cpu'):
    """Load <out_dir>/ckpt.pt (or a .pt path) with weights_only=True; ConfigError with one line if unusable."""
    if os.path.isdir(path):
        path = os.path.join(path, 'ckpt.pt')
    if not os.path.isfile(path):
        raise ConfigError(f"no checkpoint at {path} (train one with train.py, or start from GPT-2 with --init_from=gpt2)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ConfigError(f"checkpoint {path} is unreadable ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
    missing = {'model', 'model_config', 'step'} - set(ckpt)
    if missing:
        raise ConfigError(f"checkpoint {path} lacks {sorted(missing)}")
    return ckpt


# -----------------------------------------------------------------------------
# device, precision, processes

def setup_runtime(cfg):
    """Device, dtype, autocast context and DDP ranks. torchrun sets RANK/LOCAL_RANK/WORLD_SIZE."""
    ddp = int(os.environ.get('WORLD_SIZE', 1)) > 1
    rank, local_rank, world = (int(os.environ['RANK']), int(os.environ['LOCAL_RANK']),
                               int(os.environ['WORLD_SIZE'])) if ddp else (0, 0, 1)
    name = cfg['device']
    if name == 'auto':
        name = 'cuda' if torch.cuda.is_available() else 'mps' if torch.backends.mps.is_available() else 'cpu'
    if name == 'cuda' and ddp:
        name = f'cuda:{local_rank}'
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device must be auto, cpu, cuda, cuda:N or mps, got {name!r}")
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            raise ConfigError("device is cuda but torch sees no CUDA GPU")
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True  # float32 matmuls in TF32 on Ampere+: the usual speed lever
        torch.backends.cudnn.allow_tf32 = True
    elif device.type == 'cpu' and ddp:
        # processes on one machine share its cores: give each its part instead of oversubscribing
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get('LOCAL_WORLD_SIZE', world))))
    if ddp:
        torch.distributed.init_process_group(backend='nccl' if device.type == 'cuda' else 'gloo')
    dtype = cfg['dtype']
    if dtype == 'auto':
        # CPU and MPS: float32, as nanoGPT. bf16 autocast pays only for large matmuls on a CPU: on this project's
        # AVX-512-bf16 machine GPT-2 124M trains 1.5x faster in bf16, the quick start 0.96-1.12x (README)
        dtype = ('bfloat16' if torch.cuda.is_bf16_supported() else 'float16') if device.type == 'cuda' else 'float32'
    if dtype not in ('float32', 'bfloat16', 'float16'):
        raise ConfigError(f"dtype must be auto, float32, bfloat16 or float16, got {dtype!r}")
    if dtype == 'float16' and device.type != 'cuda':
        raise ConfigError("dtype float16 needs CUDA (its GradScaler); use bfloat16 or float32")
    ptdtype = getattr(torch, dtype)
    autocast = (contextlib.nullcontext() if dtype == 'float32'
                else torch.autocast(device_type=device.type, dtype=ptdtype))
    return SimpleNamespace(ddp=ddp, rank=rank, local_rank=local_rank, world=world, master=rank == 0,
                           device=device, dtype=dtype, ptdtype=ptdtype, autocast=autocast)


def model_config_from(cfg, vocab_size):
    fields = {f.name for f in dataclasses.fields(GPTConfig)}
    return GPTConfig(**{k: v for k, v in cfg.items() if k in fields and k != 'vocab_size'}, vocab_size=vocab_size)


def configure_optimizer(model, cfg, device):
    """AdamW; weight decay on matrices (linear weights, embeddings) only, not on biases and norm gains."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{'params': [p for p in params if p.dim() >= 2], 'weight_decay': cfg['weight_decay']},
              {'params': [p for p in params if p.dim() < 2], 'weight_decay': 0.0}]
    extra = {'fused': True} if device.type == 'cuda' else {}  # one kernel for all params on CUDA
    return torch.optim.AdamW(groups, lr=cfg['learning_rate'], betas=(cfg['beta1'], cfg['beta2']), **extra)


def get_lr(step, cfg):
    """Learning rate for optimizer step `step` (0-based)."""
    lr, min_lr, warmup, max_iters = cfg['learning_rate'], cfg['min_lr'], cfg['warmup_iters'], cfg['max_iters']
    if step < warmup:
        return lr * (step + 1) / warmup
    if cfg['schedule'] == 'cosine':
        decay_iters = cfg['lr_decay_iters'] or max_iters
        if step >= decay_iters:
            return min_lr
        progress = (step - warmup) / max(1, decay_iters - warmup)
        return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (lr - min_lr)
    if cfg['schedule'] == 'wsd':
        decay_start = max_iters - int(cfg['cooldown_fraction'] * max_iters)
        if step < decay_start:
            return lr
        progress = (step - decay_start + 1) / max(1, max_iters - decay_start)  # reaches 1 at the last step
        shrink = progress if cfg['cooldown_shape'] == 'linear' else math.sqrt(progress)
        return min_lr + (1 - shrink) * (lr - min_lr)
    raise ConfigError(f"schedule must be 'cosine' or 'wsd', got {cfg['schedule']!r}")


def check_config(cfg, world):
    """Reject inconsistent settings before any work is done; returns gradient-accumulation steps."""
    tokens_per_micro = cfg['batch_size'] * cfg['block_size'] * world
    if cfg['total_batch_size'] % tokens_per_micro:
        raise ConfigError(
            f"total_batch_size={cfg['total_batch_size']} is not a multiple of batch_size*block_size*world_size = "
            f"{cfg['batch_size']}*{cfg['block_size']}*{world} = {tokens_per_micro}")
    for key in ('schedule', 'cooldown_shape'):
        allowed = {'schedule': ('cosine', 'wsd'), 'cooldown_shape': ('linear', '1-sqrt')}[key]
        if cfg[key] not in allowed:
            raise ConfigError(f"{key} must be one of {allowed}, got {cfg[key]!r}")
    for key in ('batch_size', 'block_size', 'max_iters', 'eval_iters', 'log_interval', 'eval_interval'):
        if cfg[key] <= 0:
            raise ConfigError(f"{key} must be positive, got {cfg[key]}")
    return cfg['total_batch_size'] // tokens_per_micro


# -----------------------------------------------------------------------------
# the run

@torch.no_grad()
def evaluate(model, loader, n_seqs, rt, batch_size):
    """Mean loss over val sequences 0..n_seqs-1; each rank takes a contiguous part and the sums are all-reduced,
    so the number does not depend on the world size (up to float rounding)."""
    model.eval()
    total = torch.zeros(2, device=rt.device, dtype=torch.float64)  # [sum of token losses, token count]
    lo, hi = rt.rank * n_seqs // rt.world, (rt.rank + 1) * n_seqs // rt.world
    for first in range(lo, hi, batch_size):
        x, y = loader.batch(first, min(batch_size, hi - first), rt.device)
        with rt.autocast:
            _, loss = model(x, y)
        total[0] += loss.double() * y.numel()
        total[1] += y.numel()
    if rt.ddp:
        torch.distributed.all_reduce(total)
    model.train()
    return (total[0] / total[1]).item()


def train_step(model, optimizer, scaler, accum, rt, grad_clip, get_batch, mark=None):
    """One optimizer step: accum micro-steps of forward/backward (DDP all-reduces gradients on the last one
    only), clip, step, zero_grad. get_batch(micro) -> (x, y). mark(phase), if given, is called after each
    phase ('data', 'forward', 'backward', 'optimizer'): bench.py times them. Returns the summed micro-step
    losses as a device tensor, so the caller decides when to wait for the device."""
    mark = mark or (lambda phase: None)
    loss_sum = torch.zeros((), device=rt.device)
    for micro in range(accum):
        x, y = get_batch(micro)
        mark('data')
        sync = micro == accum - 1 or not rt.ddp
        with (contextlib.nullcontext() if sync else model.no_sync()):
            with rt.autocast:
                _, loss = model(x, y)
            mark('forward')
            scaler.scale(loss / accum).backward()
            mark('backward')
        loss_sum += loss.detach()
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    mark('optimizer')
    return loss_sum


def log_record(path, record):
    with open(path, 'a') as f:
        f.write(json.dumps(record) + '\n')
        f.flush()


def train(cfg):
    rt = setup_runtime(cfg)
    accum = check_config(cfg, rt.world)
    c = SimpleNamespace(**cfg)
    say = print if rt.master else (lambda *a, **k: None)
    meta = read_meta(c.data_dir)
    train_loader = TokenLoader(c.data_dir, 'train', c.block_size, seed=c.seed)
    val_loader = TokenLoader(c.data_dir, 'val', c.block_size)
    n_val_seqs = min(c.eval_iters * c.batch_size, val_loader.n_chunks)
    seqs_per_step = c.total_batch_size // c.block_size

    # model: from scratch, from a checkpoint of this out_dir, or from OpenAI's GPT-2 weights
    ckpt = None
    torch.manual_seed(c.seed)
    if c.init_from == 'resume':
        ckpt = load_checkpoint(c.out_dir)
        mconf = GPTConfig(**ckpt['model_config'])
        # the model comes from the checkpoint; a config that asks for another shape is a mistake, not a wish
        shape_keys = {f.name for f in dataclasses.fields(GPTConfig)} - {'dropout'}
        differ = {k: (v, cfg[k]) for k, v in ckpt['config'].items() if k in shape_keys and cfg.get(k) != v}
        if differ:
            raise ConfigError("checkpoint model differs from this config: " +
                              ", ".join(f"{k} is {a} in the checkpoint, {b} here" for k, (a, b) in differ.items()))
        if ckpt.get('tokenizer', meta['tokenizer']) != meta['tokenizer']:
            raise ConfigError(f"checkpoint was trained on {ckpt['tokenizer']} tokens, {c.data_dir} has {meta['tokenizer']}")
        model = GPT(mconf)
        model.load_state_dict(ckpt['model'])
    elif c.init_from == 'scratch':
        model = GPT(model_config_from(cfg, meta['vocab_size']))
    else:
        if meta['tokenizer'] != 'gpt2':
            raise ConfigError(f"init_from={c.init_from} needs GPT-2 tokens, {c.data_dir} has {meta['tokenizer']}")
        model = GPT.from_pretrained(c.init_from, dropout=c.dropout)
    mconf = model.config
    if c.block_size > mconf.block_size:
        raise ConfigError(f"block_size {c.block_size} exceeds the model's {mconf.block_size}")
    model.to(rt.device)
    optimizer = configure_optimizer(model, cfg, rt.device)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.dtype == 'float16')
    step = start_step = 0
    if ckpt is not None:
        optimizer.load_state_dict(ckpt['optimizer'])
        if 'scaler' in ckpt:
            scaler.load_state_dict(ckpt['scaler'])
        step = start_step = ckpt['step']
        if ckpt['loader']['seqs_per_step'] != seqs_per_step and rt.master:
            print(f"note: tokens per step changed on resume; data continues at sequence {ckpt['loader']['next_seq']}")
    next_seq = ckpt['loader']['next_seq'] if ckpt else 0
    del ckpt
    raw_model = model
    if c.compile:
        model = torch.compile(model)
    if rt.ddp:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[rt.local_rank] if rt.device.type == 'cuda' else None)

    # accounting for the log and MFU (model.py holds the formulas and their sources)
    counts = count_params(mconf)
    fpt = flops_per_token(mconf, formula='palm', seq_len=c.block_size)
    from bench import peak_flops  # the peak table lives in bench.py (lazy: bench imports this file)
    peak = peak_flops(rt.device, rt.ptdtype)  # per device, FLOP/s; None when unknown
    if rt.master:
        os.makedirs(c.out_dir, exist_ok=True)
    log_path = os.path.join(c.out_dir, 'log.jsonl')
    if rt.master:
        log_record(log_path, {
            'type': 'run', **counts, 'flops_per_token': fpt, 'flops_formula': 'palm: 6N + 12*L*H*Q*T (PaLM appendix B; N = matmul parameters, as nanoGPT)',
            'tokens_per_step': c.total_batch_size, 'world_size': rt.world, 'device': str(rt.device),
            'device_name': torch.cuda.get_device_name(rt.device) if rt.device.type == 'cuda' else rt.device.type,
            'dtype': rt.dtype, 'tokenizer': meta['tokenizer'], 'model': dataclasses.asdict(mconf), 'config': cfg,
            'resumed': step > 0, 'start_step': step, 'time': time.time()})
    say(f"{counts['n_params'] / 1e6:.2f}M parameters ({counts['n_params_nonembed'] / 1e6:.2f}M non-embedding), "
        f"{rt.world} process(es) on {rt.device} in {rt.dtype}, {accum} micro-step(s) of {c.batch_size}x{c.block_size} "
        f"per rank per step, {c.total_batch_size} tokens/step, {max(0, c.max_iters - step)} steps to go")

    def checkpoint():
        save_checkpoint(os.path.join(c.out_dir, 'ckpt.pt'), {
            'model': raw_model.state_dict(), 'model_config': dataclasses.asdict(mconf),
            'optimizer': optimizer.state_dict(), 'scaler': scaler.state_dict(), 'step': step,
            'tokens': step * c.total_batch_size, 'loader': {'next_seq': next_seq, 'seqs_per_step': seqs_per_step},
            'rng': {'seed': c.seed, 'scheme': 'torch.manual_seed(seed, rank, step) before each step'},
            'config': cfg, 'tokenizer': meta['tokenizer']})

    nonfinite = torch.zeros((), device=rt.device)  # checked at sync points, so the hot loop never waits on the GPU

    def diverged():
        """Has any rank seen a non-finite loss or weight? All ranks must agree, or one would wait forever."""
        if rt.ddp:
            torch.distributed.all_reduce(nonfinite, op=torch.distributed.ReduceOp.MAX)
        return nonfinite.item() > 0

    t_start, t_last, steps_since_log = time.time(), time.time(), 0
    while True:
        tokens = step * c.total_batch_size
        last = step == c.max_iters
        if step % c.eval_interval == 0 or last:
            if diverged():
                break
            t_eval = time.time()
            val_loss = evaluate(model, val_loader, n_val_seqs, rt, c.batch_size)
            t_last += time.time() - t_eval  # keep evaluation out of the training tokens/s
            say(f"step {step}: val loss {val_loss:.4f}")
            if rt.master:
                log_record(log_path, {'type': 'eval', 'step': step, 'tokens': tokens, 'flops': fpt * tokens,
                                      'val_loss': val_loss})
        if step > start_step and (last or (c.checkpoint_interval and step % c.checkpoint_interval == 0)):
            # a finite loss can still follow an update with inf gradients: check the weights we are about to keep
            nonfinite += sum((~torch.isfinite(p)).sum() for p in raw_model.parameters())
            if diverged():
                break
            if rt.master:
                checkpoint()
        if last:
            break

        # one optimizer step: accum micro-steps per rank, gradients synchronised on the last one only
        torch.manual_seed(c.seed * 1_000_003 + rt.rank * 10_007 + step)  # dropout masks depend on (rank, step) only
        lr = get_lr(step, cfg)
        for group in optimizer.param_groups:
            group['lr'] = lr
        loss_sum = train_step(model, optimizer, scaler, accum, rt, c.grad_clip, lambda micro: train_loader.batch(
            next_seq + (micro * rt.world + rt.rank) * c.batch_size, c.batch_size, rt.device))
        nonfinite += ~torch.isfinite(loss_sum)
        step += 1
        next_seq += seqs_per_step
        steps_since_log += 1

        if step % c.log_interval == 0 or step == c.max_iters:
            loss_mean = loss_sum / accum
            if rt.ddp:
                torch.distributed.all_reduce(loss_mean, op=torch.distributed.ReduceOp.AVG)
            loss_val = loss_mean.item()  # waits for the device: the only sync in the loop
            if not math.isfinite(loss_val):
                nonfinite += 1
                break
            now = time.time()
            dt = (now - t_last) / steps_since_log
            tok_per_s = c.total_batch_size / dt
            mfu = fpt * tok_per_s / (peak * rt.world) if peak else None
            t_last, steps_since_log = now, 0
            elapsed = now - t_start
            left = dt * (c.max_iters - step)
            say(f"step {step}/{c.max_iters} | loss {loss_val:.4f} | lr {lr:.2e} | {tok_per_s / 1e3:.1f}k tok/s | "
                f"mfu {f'{100 * mfu:.1f}%' if mfu is not None else 'n/a'} | "
                f"{_hms(elapsed)} elapsed, {_hms(left)} left")
            if rt.master:
                log_record(log_path, {'type': 'train', 'step': step, 'tokens': step * c.total_batch_size,
                                      'flops': fpt * step * c.total_batch_size, 'lr': lr, 'loss': loss_val,
                                      'dt': dt, 'tok_per_s': tok_per_s, 'mfu': mfu})
    if rt.ddp:
        torch.distributed.destroy_process_group()
    if nonfinite.item():
        raise FloatingPointError(
            f"loss or weights became NaN or infinite by step {step}; stopped without saving, the last good checkpoint "
            f"in {c.out_dir} is kept (try a lower learning_rate or grad_clip)")
    return raw_model


def _hms(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def main(argv):
    try:
        train(parse_config(argv, DEFAULTS))
    except (ConfigError, DataError, ModelError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted: the last checkpoint is intact; resume with --init_from=resume", file=sys.stderr)
        sys.exit(130)


if __name__ == '__main__':
    main(sys.argv[1:])
