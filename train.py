"""
Train a GPT, from one CPU core to many GPUs, with exact resume and a JSONL run log.

    python train.py                                   # quick start: small byte-level model on Shakespeare, CPU
    python train.py config/gpt2.py --batch_size=32    # a config file, then --key=value overrides
    torchrun --nproc_per_node=8 train.py config/gpt2.py
    torchrun --nproc_per_node=8 train.py config/gpt2.py --parallel=fsdp   # sharded: models DDP cannot hold
    torchrun --nproc_per_node=8 train.py config/gpt2.py --parallel=fsdp --tensor_parallel=2 --pipeline_parallel=2
    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --master_addr=... train.py config/gpt2.py

The knobs below are the quick start; config files are plain Python that reassign some of them, then --key=value;
pretrain/training.py's check_knobs checks every one before anything is written. The run's directory gets ckpt.pt
(checkpoints) and log.jsonl (the run log): both are described in DESIGN.md.
"""
from pretrain.cli import cli, run_script  # first: Ctrl-C from here on, the import of torch included, is one line and exit 130
import dataclasses
import errno
import json
import math
import os
import sys
import time
from types import SimpleNamespace

import torch

from model import GPT, GPTConfig, ModelError
from pretrain import hellaswag
from pretrain.accounting import count_params, flops_per_token
from pretrain.checkpoint import (CKPT_NAME, CheckpointError, checkpoint_path, load_model, model_config_from,
                                 numbered_checkpoints, read_shards, save_checkpoint, save_sharded_checkpoint,
                                 sweep_stale, unfuse_optimizer)
from pretrain.configurator import ConfigError, knobs, parse_config
from pretrain.data import DataError, TokenLoader, get_tokenizer, read_meta, tokenizer_id
from pretrain.hardware import device_name, mfu, peak_flops
from pretrain.parallel import layout, load_full_optimizer, load_state, sharded_state, wrap
from pretrain.runtime import end_of_run, setup_runtime
from pretrain.scaling.runlog import LOG_NAME
from pretrain.training import (GradNoise, Guard, bits_per_byte, check_knobs, configure_optimizer, cooldown_steps,
                               evaluate, lr_multiplier, peak_lr, train_step)

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
wandb_project = None               # also send every record to Weights & Biases, this project (pip install wandb)
tensorboard_dir = None             # also write every record as TensorBoard events here (pip install tensorboard)
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
parametrization = 'sp'             # 'sp' | 'mup' (LR transfers across width) | 'completep' (and depth): AdamW only
base_n_embd = None                 # the width the LR was tuned at (None: this model's; docs/parametrization.md)
base_n_layer = None                # completep: the depth it was tuned at (None: this model's)
base_head_dim = None               # the head size it was tuned at (None: this model's)
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
tensor_parallel = 1                # processes that split each block's matrices (Megatron-LM; within a node)
pipeline_parallel = 1              # processes that split the blocks into stages; data parallel is the rest of the world
pipeline_schedule = '1f1b'         # 'gpipe' | '1f1b' | 'interleaved1f1b'; its micro-batches are the step's micro-steps
activation_checkpointing = False   # recompute each block in the backward: ~1/3 more compute, far less activation memory
seed = 1337                        # model init, data order and dropout all derive from it
# -----------------------------------------------------------------------------
DEFAULTS = knobs(globals())


def train(cfg):
    """The run, top to bottom: knobs checked, runtime, model, data, optimizer; then evaluate, checkpoint and step
    until max_iters. cfg: every knob (DEFAULTS with a config file and overrides). Returns the trained raw model."""
    c = SimpleNamespace(**cfg)
    # every knob checked once, before any device, process group, directory or data is touched: the model's
    # (GPTConfig's own checks; its vocab_size is the data's, set when the data is read), then the run's
    model_config = model_config_from(cfg)
    accum = check_knobs(c, world=int(os.environ.get('WORLD_SIZE', 1)))
    # the device mesh when tensor or pipeline parallelism or FSDP split the model: then every rank writes its part
    # of each checkpoint (DCP), and the data-parallel ranks (rt.dp_rank of rt.dp_world) read the data
    rt = layout(setup_runtime(cfg), c.parallel, c.tensor_parallel, c.pipeline_parallel)
    say = print if rt.master else (lambda *a, **k: None)
    if rt.master:
        open_out_dir(c.out_dir)   # proven writable before minutes of loading
    meta = read_meta(c.data_dir)
    if c.hellaswag_interval and meta['tokenizer'] != 'gpt2':
        raise ConfigError(f"hellaswag_interval needs GPT-2 tokens; {c.data_dir} has {meta['tokenizer']}")
    model_config.vocab_size = meta['vocab_size']
    model, ckpt = build_model(c, rt, meta, model_config)   # on rt.device: from scratch, a checkpoint or GPT-2
    B, T = c.batch_size, c.block_size
    if T > model.config.block_size:
        raise ConfigError(f"block_size {T} exceeds the model's {model.config.block_size}")
    train_loader = TokenLoader(c.data_dir, 'train', T, seed=c.seed, vocab_size=model.config.vocab_size)
    val_loader = TokenLoader(c.data_dir, 'val', T, vocab_size=model.config.vocab_size)
    n_val_seqs = min(c.eval_iters * B, val_loader.n_chunks)
    val_targets = val_loader.batch(0, n_val_seqs, torch.device('cpu'))[1]   # the same sequences at every evaluation
    tokenizer = get_tokenizer(meta['tokenizer'], source=c.data_dir)   # a trained BPE: its file, checked by its sha256
    val_bytes = tokenizer.count_bytes(val_targets.flatten().numpy())       # for bits per byte, counted once
    examples = hellaswag.load_examples(c.hellaswag_path, None, rt) if c.hellaswag_interval else None

    # wrapped before the optimizer is built: parallel.wrap replaces the parameters by this rank's parts
    wrapped = wrap(model, rt, c.parallel, c.compile, c.activation_checkpointing, c.pipeline_schedule, accum)
    optimizer = configure_optimizer(model, c, rt.device)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.dtype == 'float16')
    noise = GradNoise([p for p in model.parameters() if p.requires_grad], B * T, c.total_batch_size) \
        if c.noise_scale else None
    seqs_per_step = c.total_batch_size // T
    step, next_seq, best = restore(ckpt, c, rt, model, optimizer, scaler, noise, seqs_per_step, say)
    del ckpt   # the optimizer state can be twice the model's size
    guard = Guard(c.spike_factor, c.out_dir, best)

    fpt = flops_per_token(model.config, formula='palm', seq_len=T)   # for the log and MFU (accounting.py)
    peak = peak_flops(rt.device, rt.ptdtype, measure=False)   # a GPU's datasheet; else the best recorded measurement
    if peak is None and rt.device.type != 'cuda' and rt.master:   # a CPU or Mac never measured: once, ~1-2 s
        peak = peak_flops(rt.device, rt.ptdtype)
    log = RunLog(os.path.join(c.out_dir, LOG_NAME), rt.master, c.total_batch_size, fpt, c)
    counts = count_params(model.config)
    log.write('run', **counts, flops_per_token=fpt, flops_formula='palm: 6N + 12*L*H*Q*T (PaLM appendix B; N = '
              'matmul parameters, as nanoGPT)', tokens_per_step=c.total_batch_size, world_size=rt.world,
              device=str(rt.device), device_name=device_name(rt.device), dtype=rt.dtype, tokenizer=meta['tokenizer'],
              model=dataclasses.asdict(model.config), config=cfg, resumed=step > 0, start_step=step,
              val_bytes=val_bytes, val_tokens=val_targets.numel(), time=time.time())
    say(f"{counts['n_params'] / 1e6:.2f}M parameters ({counts['n_params_nonembed'] / 1e6:.2f}M non-embedding), "
        f"{rt.world} process(es) on {rt.device} in {rt.dtype}, {accum} micro-step(s) of {B}x{T} per rank per step, "
        f"{c.total_batch_size} tokens/step, {max(0, c.max_iters - step)} steps to go")

    start_step, window_loss, window_steps = step, torch.zeros((), device=rt.device), 0
    t_start = t_last = time.time()
    while True:
        last = step == c.max_iters
        checkpoint_due = step > start_step and (last or c.checkpoint_interval and step % c.checkpoint_interval == 0)
        if step % c.eval_interval == 0 or last or checkpoint_due:
            t0 = time.time()
            # a pipeline evaluates a step's worth of rows per forward, split into its micro-batches
            val_loss = evaluate(wrapped, val_loader, n_val_seqs, rt, B * (accum if c.pipeline_parallel > 1 else 1))
            val_bpb = bits_per_byte(val_loss, val_targets.numel(), val_bytes) if val_bytes else None
            say(f"step {step}: val loss {val_loss:.4f}" + (f", {val_bpb:.4f} bits/byte" if val_bpb else ""))
            log.write('eval', step=step, val_loss=val_loss, val_bpb=val_bpb)
            # the guard: NaN stops the run, a spike keeps the last good checkpoint
            if guard.judge(step, val_loss, rt, model.parameters() if checkpoint_due else None) and checkpoint_due:
                write_checkpoint(c, rt, model, optimizer, scaler, noise, step, next_seq, seqs_per_step, tokenizer,
                                 guard)
            t_last += time.time() - t0   # evaluation is not training time
        if examples and (step % c.hellaswag_interval == 0 or last):
            t0 = time.time()
            hs = hellaswag.score(model, tokenizer, examples, rt, B, progress=False)
            say(f"step {step}: hellaswag acc {hs['acc']:.4f}, acc_norm {hs['acc_norm']:.4f} ({hs['n']} examples)")
            log.write('hellaswag', step=step, acc=hs['acc'], acc_norm=hs['acc_norm'], n=hs['n'])
            t_last += time.time() - t0
        if last:
            break

        # one optimizer step: accum micro-steps per rank, gradients synchronised on the last one only
        # dropout masks depend on (rank, step); the ranks of a tensor-parallel group (adjacent) draw the same masks
        torch.manual_seed(c.seed * 1_000_003 + rt.rank // c.tensor_parallel * 10_007 + step)
        lrm = lr_multiplier(step, c)
        for group in optimizer.param_groups:
            group['lr'] = peak_lr(group, c) * lrm
        batches = train_loader.micro_batches(next_seq, accum, B, rt.device, rt.dp_rank, rt.dp_world)
        window_loss += train_step(wrapped, optimizer, scaler, batches, rt, c.grad_clip, noise) / accum
        step, next_seq, window_steps = step + 1, next_seq + seqs_per_step, window_steps + 1

        if step % c.log_interval == 0 or step == c.max_iters:
            if rt.ddp:
                torch.distributed.all_reduce(window_loss, op=torch.distributed.ReduceOp.AVG)
            loss = window_loss.item() / window_steps   # waits for the device: the loop's only sync
            if not math.isfinite(loss):
                guard.diverged(step)
            now = time.time()
            dt, t_last, window_steps = (now - t_last) / window_steps, now, 0
            window_loss.zero_()
            tok_per_s = c.total_batch_size / dt
            util = mfu(fpt, tok_per_s, peak, rt.world)
            say(f"step {step}/{c.max_iters} | loss {loss:.4f} | lr {c.learning_rate * lrm:.2e} | "
                f"{tok_per_s / 1e3:.1f}k tok/s | mfu {f'{100 * util:.1f}%' if util is not None else 'n/a'} | "
                f"{hms(now - t_start)} elapsed, {hms(dt * (c.max_iters - step))} left")
            log.write('train', step=step, lr=c.learning_rate * lrm, loss=loss, dt=dt, tok_per_s=tok_per_s, mfu=util)
            if noise is not None and noise.last is not None:
                log.write('noise', step=step, loss=loss, **noise.last)
    end_of_run(rt)
    log.close()
    guard.finish()   # a refused last checkpoint: the run diverged
    return model


# -----------------------------------------------------------------------------
# setup

def build_model(c, rt, meta, model_config):
    """-> (the raw model on rt.device, the checkpoint or None): from scratch (model_config), from a checkpoint (this
    out_dir's, or branch_from's for a new branch), or from GPT-2's weights (check_knobs knows init_from's words)."""
    own = os.path.join(c.out_dir, CKPT_NAME)
    scratch = c.init_from == 'scratch' or c.init_from == 'auto' and not os.path.exists(own)
    torch.manual_seed(c.seed)
    if scratch:
        return GPT(model_config).to(rt.device), None
    if c.init_from not in ('resume', 'auto'):   # OpenAI's GPT-2 weights
        if meta['tokenizer'] != 'gpt2':
            raise ConfigError(f"init_from={c.init_from} needs GPT-2 tokens, {c.data_dir} has {meta['tokenizer']}")
        return load_model(c.init_from, cfg=vars(c))[0].to(rt.device), None
    source = own if os.path.exists(own) or c.branch_from is None else checkpoint_path(c.branch_from)
    if source != own and not os.path.isfile(source):
        steps = [s for s, _ in numbered_checkpoints(os.path.dirname(source))]
        raise ConfigError(f"no checkpoint {source} to branch from" +
                          (f" (the parent has steps {', '.join(map(str, steps))})" if steps else ""))
    # a rank that holds part of the model reads only its part of a sharded checkpoint, after the split (restore)
    model, _, where, ckpt = load_model('resume', source, vars(c), for_resume=True, shards=rt.mesh is None)
    # the model comes from the checkpoint; a config that asks for another shape is a mistake, not a wish
    shape = [f.name for f in dataclasses.fields(GPTConfig) if f.name not in ('dropout', 'vocab_size')]
    differ = {k: (getattr(model.config, k), getattr(c, k)) for k in shape if getattr(c, k) != getattr(model.config, k)}
    if differ:
        raise ConfigError("checkpoint model differs from this config: " +
                          ", ".join(f"{k} is {a} in the checkpoint, {b} here" for k, (a, b) in differ.items()))
    if tokenizer_id(ckpt) != tokenizer_id(meta):
        raise ConfigError(f"checkpoint was trained on {tokenizer_id(ckpt)} tokens, {c.data_dir} has "
                          f"{tokenizer_id(meta)}")
    if ckpt['step'] > c.max_iters:
        raise ConfigError(f"{where} is at step {ckpt['step']}, past max_iters={c.max_iters}")
    if source != own and c.schedule == 'wsd' and ckpt['step'] > c.max_iters - cooldown_steps(c):
        raise ConfigError(f"the branch starts at step {ckpt['step']} but its cooldown starts at step "
                          f"{c.max_iters - cooldown_steps(c)}: lower cooldown_iters or raise max_iters")
    if rt.master:
        print(f"resuming from {where}")
    return model.to(rt.device), ckpt


def open_out_dir(path):
    """Create out_dir and prove it writable now, in one line naming the path if not (a full disk fails the write,
    not the open; the probe file is removed whatever happens); then sweep what a killed writer left there."""
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


def restore(ckpt, c, rt, model, optimizer, scaler, noise, seqs_per_step, say):
    """A resumed run's optimizer, loss scaler and noise-scale state -> (step, next sequence, best val loss); a
    fresh run's (0, 0, inf)."""
    if ckpt is None:
        return 0, 0, math.inf
    if 'sharded' not in ckpt and (ckpt.get('fused') or rt.mesh is not None):   # a single file: its optimizer state
        # is by position over the whole model's parameters, in configure_optimizer's groups
        with torch.device('meta'):
            whole = GPT(model.config)
        names = {id(p): n for n, p in whole.named_parameters()}
        groups = [[names[id(p)] for p in g['params']]
                  for g in configure_optimizer(whole, c, torch.device('meta')).param_groups]
    if ckpt.get('fused'):   # an older checkpoint's fused q/k/v: its weights were split on load, now its AdamW state
        ckpt['optimizer'] = unfuse_optimizer(ckpt['optimizer'], groups, model.config)
    if rt.mesh is not None and 'sharded' in ckpt:   # each rank reads its part, at any layout
        load_state(model, optimizer, read_shards(ckpt, into=sharded_state(model, optimizer, rt)))
    elif rt.mesh is not None:   # a single-file checkpoint: the weights were loaded before the split (build_model)
        load_full_optimizer(model, optimizer, ckpt['optimizer'], [n for g in groups for n in g])
    else:
        optimizer.load_state_dict(ckpt['optimizer'])
    if 'scaler' in ckpt:
        scaler.load_state_dict(ckpt['scaler'])
    if noise is not None and 'noise' in ckpt:
        noise.load_state_dict(ckpt['noise'])
    if ckpt['loader']['seqs_per_step'] != seqs_per_step:
        say(f"note: tokens per step changed on resume; data continues at sequence {ckpt['loader']['next_seq']}")
    return ckpt['step'], ckpt['loader']['next_seq'], ckpt.get('guard', {}).get('best_val_loss', math.inf)


# -----------------------------------------------------------------------------
# what a run writes

class RunLog:
    """log.jsonl (DESIGN.md, the run log), written by rank 0: one JSON object per line, flushed as it goes. Step
    records get the tokens and FLOPs up to their step. With wandb_project or tensorboard_dir the same records also go
    there (each imported only then): every number as '<type>/<field>' at its step, the 'run' record as the config."""

    def __init__(self, path, master, tokens_per_step, flops_per_token, c):
        self.path, self.master, self.tokens_per_step, self.flops_per_token = path, master, tokens_per_step, \
            flops_per_token
        self.wandb = self.tensorboard = None
        if master and c.wandb_project:
            import wandb
            try:   # not logged in, no network (WANDB_MODE=offline works without either): one line
                self.wandb = wandb.init(project=c.wandb_project, name=os.path.basename(os.path.abspath(c.out_dir)),
                                        dir=c.out_dir)
            except Exception as e:
                raise ConfigError(f"wandb_project={c.wandb_project!r}: Weights & Biases did not start "
                                  f"({type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}); run `wandb "
                                  f"login`, or set WANDB_MODE=offline") from None
        if master and c.tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter
            self.tensorboard = SummaryWriter(c.tensorboard_dir)

    def write(self, kind, **fields):
        if not self.master:
            return
        if 'step' in fields:
            tokens = fields['step'] * self.tokens_per_step
            fields = {'step': fields.pop('step'), 'tokens': tokens, **({} if kind == 'noise' else
                                                                       {'flops': self.flops_per_token * tokens}),
                      **fields}
        try:
            with open(self.path, 'a') as f:
                f.write(json.dumps({'type': kind, **fields}) + '\n')
        except OSError as e:   # a full disk: cli's one line names the log
            raise OSError(e.errno, e.strerror, self.path) from None
        if kind == 'run':   # the run's config (knobs, model, sizes): the trackers' config
            if self.wandb is not None:
                self.wandb.config.update(fields, allow_val_change=True)
            if self.tensorboard is not None:
                self.tensorboard.add_text('run', f"```\n{json.dumps(fields, indent=2)}\n```")
        numbers = {f"{kind}/{k}": v for k, v in fields.items()
                   if k != 'step' and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.wandb is not None and 'step' in fields:
            self.wandb.log(numbers, step=fields['step'])
        if self.tensorboard is not None:
            for tag, v in numbers.items() if 'step' in fields else ():
                self.tensorboard.add_scalar(tag, v, fields['step'])
            self.tensorboard.flush()   # a run ends by os._exit under torchrun (cli.run_script): nothing waits in memory

    def close(self):
        if self.wandb is not None:
            self.wandb.finish()
        if self.tensorboard is not None:
            self.tensorboard.close()


def write_checkpoint(c, rt, model, optimizer, scaler, noise, step, next_seq, seqs_per_step, tokenizer, guard):
    """The checkpoint of DESIGN.md: enough to continue exactly. When ranks hold parts of the model (fsdp, tensor or
    pipeline parallel) every rank writes its part of the weights and the optimizer state to a shard directory, and
    rank 0 the rest to the manifest ckpt.pt. The tokenizer goes in whole (a trained BPE's file too), so sample.py,
    eval.py and export.py need the checkpoint alone."""
    state = {'model_config': dataclasses.asdict(model.config), 'scaler': scaler.state_dict(), 'step': step,
             'tokens': step * c.total_batch_size, 'loader': {'next_seq': next_seq, 'seqs_per_step': seqs_per_step},
             'config': vars(c), **tokenizer.record(), 'guard': {'best_val_loss': guard.best_val_loss}}
    if noise is not None:
        state['noise'] = noise.state_dict()
    if rt.mesh is not None:
        save_sharded_checkpoint(c.out_dir, state, sharded_state(model, optimizer, rt), keep=c.keep_checkpoints)
    elif rt.master:
        save_checkpoint(c.out_dir, {**state, 'model': model.state_dict(), 'optimizer': optimizer.state_dict()},
                        keep=c.keep_checkpoints)


def hms(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def main(argv):
    cli(lambda: train(parse_config(argv, DEFAULTS, __doc__)),
        (ConfigError, DataError, ModelError, CheckpointError, FloatingPointError, torch.OutOfMemoryError),
        interrupted="interrupted: resume from the last checkpoint, if one was written, with --init_from=resume")


if __name__ == '__main__':
    run_script(main, sys.argv[1:])
