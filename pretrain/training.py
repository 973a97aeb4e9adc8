"""
What train.py (and bench.py) run, in the order a run meets it: every train.py knob checked once (check_knobs), the
optimizer (AdamW, or Muon for the hidden matrices), the learning-rate schedule as one multiplier, one optimizer step
(train_step), the gradient noise scale, the val-loss evaluation (also eval.py's bits per byte) and the divergence
guard.
"""
import importlib.util
import math
import os

import torch

from model import is_hidden
from pretrain.checkpoint import CKPT_NAME, checkpoint_path, init_from_kind
from pretrain.configurator import ConfigError
from pretrain.parallel import (MODES, Pipeline, check_layout, check_micro_batches, clip_grad_norm_, local, no_sync,
                               sync_grads)


# -----------------------------------------------------------------------------
# the knobs: every train.py knob is checked here, once, before any device, process group, directory or data is touched
# (the model's knobs are GPTConfig's own checks, run when the model's config is made)

def _whole(v, low):
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_knobs(c, world=1):
    """c: train.py's knobs (attributes). ConfigError in one line naming the knob; returns the micro-steps per
    optimizer step per process (micro_steps)."""
    def need(ok, msg):
        if not ok:
            raise ConfigError(msg)
    for k in ('batch_size', 'block_size', 'total_batch_size', 'max_iters', 'eval_iters', 'log_interval',
              'eval_interval'):
        need(_whole(getattr(c, k), 1), f"{k}={getattr(c, k)!r} is not allowed: must be an int >= 1")
    for k in ('checkpoint_interval', 'keep_checkpoints', 'warmup_iters', 'min_lr', 'weight_decay', 'grad_clip',
              'hellaswag_interval'):
        need(getattr(c, k) >= 0, f"{k}={getattr(c, k)!r} is not allowed: must be >= 0")
    need(c.spike_factor == 0 or c.spike_factor > 1,
         f"spike_factor={c.spike_factor!r} is not allowed: must be 0 (off) or > 1 (a factor over the best val loss)")
    need(c.learning_rate > 0, f"learning_rate={c.learning_rate!r} is not allowed: must be > 0")
    need(c.muon_lr is None or _number(c.muon_lr) and c.muon_lr > 0, f"muon_lr={c.muon_lr!r} is not allowed: must "
         f"be None or a number > 0")
    for k in ('muon_momentum', 'beta1', 'beta2'):
        need(0 <= getattr(c, k) < 1, f"{k}={getattr(c, k)!r} is not allowed: must be in [0, 1)")
    need(0 <= c.cooldown_fraction <= 1, f"cooldown_fraction={c.cooldown_fraction!r} is not allowed: must be in [0, 1]")
    need(c.cooldown_iters is None or _whole(c.cooldown_iters, 0),
         f"cooldown_iters={c.cooldown_iters!r} is not allowed: must be None or an int >= 0")
    need(c.lr_decay_iters is None or _whole(c.lr_decay_iters, 1),
         f"lr_decay_iters={c.lr_decay_iters!r} is not allowed: must be None or an int >= 1")
    for k, allowed in (('schedule', ('cosine', 'wsd')), ('cooldown_shape', ('linear', '1-sqrt')),
                       ('optimizer', ('adamw', 'muon')), ('muon_ns_dtype', ('auto', 'float32', 'bfloat16')),
                       ('parallel', MODES)):
        words = ', '.join(map(repr, allowed[:-1])) + f" or {allowed[-1]!r}"
        need(getattr(c, k) in allowed, f"{k}={getattr(c, k)!r} is not allowed: must be {words}")
    for k in ('out_dir', 'data_dir'):
        need(getattr(c, k).strip() != '', f"{k}={getattr(c, k)!r} is not allowed: must be a directory name")
    for k in ('branch_from', 'hellaswag_path', 'tensorboard_dir'):
        v = getattr(c, k)
        need(v is None or isinstance(v, str) and v.strip() != '', f"{k}={v!r} is not allowed: must be None or a path")
    need(c.wandb_project is None or isinstance(c.wandb_project, str) and c.wandb_project.strip() != '',
         f"wandb_project={c.wandb_project!r} is not allowed: must be None or a project name")
    for k, package in (('wandb_project', 'wandb'), ('tensorboard_dir', 'tensorboard')):   # found, not imported
        need(getattr(c, k) is None or importlib.util.find_spec(package), f"{k} needs {package}: pip install {package}")
    init_from_kind(c.init_from, ('scratch', 'resume', 'auto', 'gpt2'))
    dp = check_layout(c, world)   # the data-parallel ranks: those tensor and pipeline parallelism leave
    accum = micro_steps(c.total_batch_size, c.batch_size, c.block_size, dp)
    check_micro_batches(c.pipeline_schedule, c.pipeline_parallel, accum)
    need(c.min_lr <= c.learning_rate, f"min_lr={c.min_lr} exceeds learning_rate={c.learning_rate}")
    need(c.warmup_iters <= c.max_iters, f"warmup_iters={c.warmup_iters} exceeds max_iters={c.max_iters}")
    need(c.schedule != 'wsd' or cooldown_steps(c) <= c.max_iters - c.warmup_iters,
         f"the cooldown ({cooldown_steps(c)} steps) is longer than the run after warm-up ({c.max_iters} - "
         f"{c.warmup_iters} steps)")
    need(c.optimizer != 'muon' or c.muon_lr is not None,
         "optimizer='muon' needs muon_lr, the peak learning rate of its matrices (e.g. --muon_lr=0.02)")
    need(c.optimizer != 'muon' or c.parametrization == 'sp', f"optimizer='muon' with parametrization="
         f"{c.parametrization!r}: Muon scales each matrix's update to its shape itself; use optimizer='adamw'")
    if c.branch_from is not None:
        need(c.init_from == 'resume', "branch_from starts a branch from a parent's checkpoint: it needs "
                                      "init_from='resume'")
        parent_dir = os.path.dirname(checkpoint_path(c.branch_from)) or '.'
        need(os.path.realpath(parent_dir) != os.path.realpath(c.out_dir),
             f"branch_from={c.branch_from!r} is in out_dir={c.out_dir!r}: a branch writes to its own out_dir and "
             f"only reads its parent; give --out_dir a new directory")
    need(not c.noise_scale or accum * world >= 2, "noise_scale needs at least two micro-batches per step "
                                                  "(total_batch_size >= 2 x batch_size x block_size)")
    return accum


def micro_steps(total_batch_size, batch_size, block_size, world=1):
    """Micro-steps per optimizer step per process: the one batch rule (train.py, bench.py, scaling sweeps). A step
    is total_batch_size tokens, made of micro-batches of batch_size x block_size tokens on each of world data-parallel
    ranks (all processes, unless tensor or pipeline parallelism take some: parallel.check_layout)."""
    per_micro = batch_size * block_size * world
    if total_batch_size % per_micro:
        raise ConfigError(f"total_batch_size={total_batch_size} is not a multiple of batch_size*block_size*world_size "
                          f"= {batch_size}*{block_size}*{world} = {per_micro}")
    return total_batch_size // per_micro


# -----------------------------------------------------------------------------
# optimizer and schedule

def configure_optimizer(model, c, device):
    """AdamW (weight decay on matrices and embeddings only, not on biases and norm gains), or with
    optimizer='muon' Muon on the blocks' 2-D weights and AdamW on the rest, in one optimizer object. A group's peak
    learning rate is peak_lr(group, c); the schedule scales it (lr_multiplier)."""
    betas = (c.beta1, c.beta2)
    if c.optimizer == 'muon':
        from pretrain.muon import Muon, muon_param_groups
        groups = muon_param_groups(model, lr_adam=c.learning_rate, lr_muon=c.muon_lr, weight_decay=c.weight_decay,
                                   betas=betas)
        return Muon(groups, momentum=c.muon_momentum, ns_dtype=None if c.muon_ns_dtype == 'auto' else c.muon_ns_dtype)
    # muP and CompleteP (model.py, references 11-12): the hidden matrices' LR is learning_rate / m_N (Yang et al. 2022,
    # Table 3; CompleteP's m_L^(alpha-1) is 1 at its alpha = 1), their lr_scale, fixed by the shape. torch's AdamW
    # decays by lr * weight_decay, so under muP their per-step decay shrinks as 1/m_N too; CompleteP (Dey et al. 2025,
    # Table 1) gives them weight_decay * m_N instead, a per-step decay that stays the base's, and eps / (m_N m_L).
    conf = model.config
    m, completep = conf.width_mult, conf.parametrization == 'completep'
    split = {}   # (lr_scale, decays) -> params: 'sp', and any model at its base shape, gets sp's two groups
    for name, p in model.named_parameters():
        if p.requires_grad:
            split.setdefault((1 / m if is_hidden(name, p) else 1.0, p.dim() >= 2), []).append(p)
    groups = [{'params': ps, 'lr_scale': s, 'lr': c.learning_rate * s,
               'weight_decay': (c.weight_decay / s if completep else c.weight_decay) if decays else 0.0}
              for (s, decays), ps in split.items()]
    extra = {'fused': True} if device.type == 'cuda' else {}  # one kernel for all params on CUDA
    eps = 1e-8 / (m * conf.depth_mult) if completep else 1e-8   # torch's default at the base
    return torch.optim.AdamW(groups, lr=c.learning_rate, betas=betas, eps=eps, **extra)


def peak_lr(group, c):
    """A param group's peak learning rate: muon_lr for Muon's matrices, learning_rate x the group's lr_scale (muP's
    shape rule, set by configure_optimizer; absent: 1) for AdamW's. Read from the knobs at every step (not from the
    group's lr, which a resumed optimizer state would bring back)."""
    return c.muon_lr if group.get('use_muon') else c.learning_rate * group.get('lr_scale', 1.0)


def lr_multiplier(step, c):
    """The schedule: the learning rate of optimizer step `step` (0-based) over its peak, for every group.
    cosine: linear warm-up, then a cosine to min_lr / learning_rate at lr_decay_iters. wsd: warm-up, stable, then the
    last cooldown_iters steps (default cooldown_fraction of max_iters) decay to min_lr / learning_rate, linearly or as
    1 - sqrt (Hägele et al. 2024, sec. 3). A decay that starts at step k depends only on k and its length, so a
    cooldown branched from step k of a constant-LR run repeats a run scheduled so from the start."""
    floor = c.min_lr / c.learning_rate
    if step < c.warmup_iters:
        return (step + 1) / c.warmup_iters
    if c.schedule == 'cosine':
        decay_iters = c.lr_decay_iters or c.max_iters
        if step >= decay_iters:
            return floor
        progress = (step - c.warmup_iters) / max(1, decay_iters - c.warmup_iters)
        return floor + 0.5 * (1 + math.cos(math.pi * progress)) * (1 - floor)
    decay_start = c.max_iters - cooldown_steps(c)
    if step < decay_start:
        return 1.0
    progress = (step - decay_start + 1) / cooldown_steps(c)  # reaches 1 at the last step
    shrink = progress if c.cooldown_shape == 'linear' else math.sqrt(progress)
    return floor + (1 - shrink) * (1 - floor)


def cooldown_steps(c):
    """wsd: the number of decay steps at the end of the run."""
    return c.cooldown_iters if c.cooldown_iters is not None else int(c.cooldown_fraction * c.max_iters)


# -----------------------------------------------------------------------------
# the gradient noise scale (McCandlish et al. 2018, "An Empirical Model of Large-Batch Training", appendix A)

class GradNoise:
    """B_simple = tr(Sigma) / |G|^2 from gradients the step computes anyway. Each micro-batch (B_small tokens)
    gives a gradient g_m; their mean over all micro-steps and ranks is the step's gradient (B_big tokens). Since
    E|g_B|^2 = |G|^2 + tr(Sigma)/B, the two sizes give unbiased estimates (McCandlish eqs. A.2, A.3):
        |G|^2    ~ (B_big |g_big|^2 - B_small |g_small|^2) / (B_big - B_small)
        tr(Sigma) ~ (|g_small|^2 - |g_big|^2) / (1/B_small - 1/B_big)
    Each estimate is noisy, so both are smoothed with an exponential moving average and B_simple is the ratio of
    the averages (McCandlish: average numerator and denominator separately, not the ratio). Batch sizes are in
    tokens, as Kaplan et al. 2020 sec. 5.1. |g_small|^2 averages every micro-batch of every rank, the same
    micro-batches at any world size, so the estimate does not depend on the number of processes."""
    EMA = 0.95   # ~20-step memory: the estimates are noisy step to step, B_simple drifts slowly with the loss

    def __init__(self, params, b_small, b_big):   # b_big > b_small: train.py's check_knobs asks for 2+ micro-batches
        self.params, self.b_small, self.b_big = params, b_small, b_big
        self.prev = self.small = None
        self.ema_G2 = self.ema_S = None
        self.last = None

    def start(self):
        self.small, self.prev = [], [torch.zeros_like(p) for p in self.params]

    def after_micro(self, accum, grad_scale):
        """After micro-step m's backward: g_m = accum * (grad now - grad before) / the GradScaler's scale. Its
        per-tensor norms stay on the device until finish (no wait for the device per micro-step)."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        diff = torch._foreach_sub(grads, self.prev)
        self.small.append(torch.stack(torch._foreach_norm(diff)) * (accum / grad_scale))
        self.prev = [g.detach().clone() for g in grads]

    def finish(self, rt, grad_scale):
        """After all micro-steps: average the gradient over ranks ourselves (DDP was kept from doing it, so each
        rank's micro-batch gradients could be seen), then update the estimates. Returns nothing; see .last.
        Squared norms are summed in float64 on the CPU (MPS has no float64), across ranks in float32."""
        grads = [p.grad for p in self.params if p.grad is not None]
        small = [_sum_squares(torch.stack(self.small)), float(len(self.small))]
        if rt.ddp:
            for g in grads:
                torch.distributed.all_reduce(g)
                g.div_(rt.world)
            small = _all_reduce(small, rt)
        g2_small = small[0] / small[1]
        g2_big = _sum_squares(torch.stack(torch._foreach_norm(grads))) / grad_scale ** 2
        bs, bb = self.b_small, self.b_big
        G2 = (bb * g2_big - bs * g2_small) / (bb - bs)
        S = (g2_small - g2_big) / (1 / bs - 1 / bb)
        e = self.EMA
        self.ema_G2 = G2 if self.ema_G2 is None else e * self.ema_G2 + (1 - e) * G2
        self.ema_S = S if self.ema_S is None else e * self.ema_S + (1 - e) * S
        self.last = dict(b_small=bs, b_big=bb, g2_small=g2_small, g2_big=g2_big, G2=self.ema_G2, S=self.ema_S,
                         B_simple=self.ema_S / self.ema_G2 if self.ema_G2 > 0 else None)

    def state_dict(self):
        return {'ema_G2': self.ema_G2, 'ema_S': self.ema_S}

    def load_state_dict(self, state):
        self.ema_G2, self.ema_S = state.get('ema_G2'), state.get('ema_S')


# -----------------------------------------------------------------------------
# one optimizer step

def train_step(model, optimizer, scaler, batches, rt, grad_clip, noise=None, mark=None):
    """One optimizer step over this process's micro-batches [(x, y), ...] (TokenLoader.micro_batches): forward and
    backward each, gradients synchronised on the last one only (DDP all-reduces, FSDP reduce-scatters: parallel.
    no_sync), or, through a pipeline (parallel.Pipeline), the schedule's forwards and backwards over them; then the
    all-reduces no wrapper made (parallel.sync_grads), clip the global norm (sharded or not), step, zero_grad. noise,
    a GradNoise, measures the gradient noise scale (then GradNoise.finish averages the gradients over ranks instead of
    DDP). mark(phase), if given, is called after each phase ('data', 'forward', 'backward', 'optimizer'; a pipeline's
    forwards and backwards interleave: all 'backward'): bench.py times them. Returns the summed micro-step losses as
    a device tensor, so the caller decides when to wait for the device."""
    mark = mark or (lambda phase: None)
    accum, loss_sum = len(batches), torch.zeros((), device=rt.device)
    if noise is not None:
        noise.start()
    mark('data')
    if isinstance(model, Pipeline):   # the schedule runs every micro-batch's forward and backward
        loss_sum = model.step(batches)
        mark('backward')
    else:
        for micro, (x, y) in enumerate(batches):
            sync = (micro == accum - 1 and noise is None) or not rt.ddp
            with no_sync(model, skip=not sync):
                with rt.autocast:
                    _, loss = model(x, y, return_logits=False)   # logits not kept; chunked past CE_PLAIN_MAX_BYTES
                mark('forward')
                scaler.scale(loss / accum).backward()
                mark('backward')
            if noise is not None:
                noise.after_micro(accum, scaler.get_scale() if scaler.is_enabled() else 1.0)
            loss_sum += loss.detach()
    if noise is not None:
        noise.finish(rt, scaler.get_scale() if scaler.is_enabled() else 1.0)
    sync_grads(model, rt)
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        clip_grad_norm_(model, grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    mark('optimizer')
    return loss_sum


# -----------------------------------------------------------------------------
# evaluation

def _sum_squares(t):
    """The sum of t's squares in float64, computed on the CPU (MPS has no float64)."""
    return t.detach().cpu().double().square().sum().item()


def _all_reduce(values, rt, group=None):
    """Python floats summed over ranks (of group: default all), sent as a float32 tensor on the device (nccl reduces
    device tensors, and MPS has no float64)."""
    t = torch.tensor(values, device=rt.device)
    torch.distributed.all_reduce(t, group=group)
    return t.tolist()


@torch.no_grad()
def evaluate(model, loader, n_seqs, rt, batch_size):
    """Mean loss (nats per token) over val sequences 0..n_seqs-1. Each rank takes a contiguous part and the sums
    are all-reduced, so the number does not depend on the world size (up to float rounding). Every forward has
    the same shape (batch_size rows; a short last batch is filled with rows whose targets are ignored), so a
    compiled model compiles its evaluation graph once, not again for a last batch of another size. Every rank
    runs the same number of forwards (a rank with fewer sequences runs a batch it does not count): an FSDP
    forward all-gathers weights, a collective all ranks must join."""
    model.eval()
    losses, counts = [], []   # each counted forward's mean loss (kept on the device: no wait per batch), its tokens
    rank, world = rt.dp_rank, rt.dp_world   # tensor- and pipeline-parallel ranks of one group read the same part
    lo, hi = rank * n_seqs // world, (rank + 1) * n_seqs // world
    n_forwards = math.ceil(math.ceil(n_seqs / world) / batch_size)   # the largest part's, on every rank
    for i in range(n_forwards):
        first = lo + i * batch_size
        n = max(0, min(batch_size, hi - first))
        x, y = loader.batch(first if n else 0, n or 1, rt.device)
        if n < batch_size:
            x = torch.cat([x, x[:1].expand(batch_size - x.size(0), -1)])
            y = torch.cat([y, torch.full_like(y[:1], -1).expand(batch_size - y.size(0), -1)])
        with rt.autocast:
            _, loss = model(x, y, return_logits=False)
        if n:   # a batch of ignored targets only has a NaN mean loss: not counted
            losses.append(loss.float())
            counts.append(n * y.size(1))
    # summed in float64 on the CPU (MPS has no float64)
    total = [float(torch.stack(losses).cpu().double() @ torch.tensor(counts, dtype=torch.float64)) if losses else 0.0,
             float(sum(counts))]
    if world > 1:
        total = _all_reduce(total, rt, rt.dp_group)
    model.train()
    return total[0] / total[1]


def bits_per_byte(loss_nats_per_token, n_tokens, n_bytes):
    """Summed nats / (ln 2 x UTF-8 bytes of the text scored): comparable across tokenizers."""
    return loss_nats_per_token * n_tokens / (math.log(2) * n_bytes)


# -----------------------------------------------------------------------------
# the divergence guard

class Guard:
    """A checkpoint is judged before it is written, by the val loss of the very weights it would hold (train.py
    evaluates at every checkpoint), so no blown-up update is ever saved: a NaN or inf in the loss or the weights stops
    the run (FloatingPointError); a finite blow-up, a val loss over spike_factor x the best so far, is not written and
    the run goes on. best_val_loss travels in the checkpoint, so a resumed run is judged against the whole run. Every
    decision rests on all-reduced values, so all ranks make the same one."""

    def __init__(self, spike_factor, out_dir, best_val_loss=math.inf):
        self.spike_factor, self.out_dir, self.best_val_loss = spike_factor, out_dir, best_val_loss
        self.refused = None   # (step, val loss) of the last checkpoint refused, while no later one was written

    def judge(self, step, val_loss, rt, weights=None):
        """After an evaluation; weights (the model's parameters) at a checkpoint. -> True: keep the checkpoint."""
        bad = torch.zeros((), device=rt.device)
        for p in weights or ():
            bad += (~torch.isfinite(local(p))).sum()   # fsdp: each rank checks its own shards
        if rt.ddp:
            torch.distributed.all_reduce(bad)
        if not math.isfinite(val_loss) or bad.item():
            self.diverged(step)
        if weights is not None and self.spike_factor and val_loss > self.spike_factor * self.best_val_loss:
            self.refused = (step, val_loss)
            if rt.master:
                print(f"warning: step {step}: val loss {val_loss:.4f} is over {self.spike_factor}x the best "
                      f"{self.best_val_loss:.4f}; not checkpointing (the last good checkpoint stays)")
            return False
        self.refused = None if weights is not None else self.refused
        self.best_val_loss = min(self.best_val_loss, val_loss)
        return True

    def kept(self):
        have = os.path.exists(os.path.join(self.out_dir, CKPT_NAME))
        return f"the last good checkpoint in {self.out_dir} is kept" if have else "no checkpoint was written"

    def diverged(self, step):
        raise FloatingPointError(f"loss or weights became NaN or infinite by step {step}; stopped without saving, "
                                 f"{self.kept()} (try a lower learning_rate or grad_clip)")

    def finish(self):
        """At the end of the run: a refused last checkpoint means the run diverged."""
        if self.refused:
            raise FloatingPointError(f"the run diverged: val loss {self.refused[1]:.4f} at step {self.refused[0]} is "
                                     f"over {self.spike_factor}x the best {self.best_val_loss:.4f}; {self.kept()} "
                                     f"(lower learning_rate)")
