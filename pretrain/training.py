"""
One optimizer step and what it needs, shared by train.py and bench.py: the optimizer (AdamW, or Muon for the
hidden matrices), the learning-rate schedule, train_step(), the gradient noise scale, and the val-loss evaluation
(also eval.py's bits per byte).
"""
import math

import torch

from pretrain.configurator import ConfigError
from pretrain.parallel import clip_grad_norm_, no_sync


# -----------------------------------------------------------------------------
# the batch

def micro_steps(total_batch_size, batch_size, block_size, world=1):
    """Micro-steps per optimizer step per process: the one batch rule (train.py, bench.py, scaling sweeps). A step
    is total_batch_size tokens, made of micro-batches of batch_size x block_size tokens on each of world processes."""
    per_micro = batch_size * block_size * world
    if total_batch_size % per_micro:
        raise ConfigError(f"total_batch_size={total_batch_size} is not a multiple of batch_size*block_size*world_size "
                          f"= {batch_size}*{block_size}*{world} = {per_micro}")
    return total_batch_size // per_micro


# -----------------------------------------------------------------------------
# optimizer and schedule

def configure_optimizer(model, cfg, device):
    """AdamW (weight decay on matrices and embeddings only, not on biases and norm gains), or with
    optimizer='muon' Muon on the blocks' 2-D weights and AdamW on the rest, in one optimizer object. Every group
    records its peak learning rate as 'lr_peak'; set_lr() scales it by the schedule."""
    params = [p for p in model.parameters() if p.requires_grad]
    betas = (cfg['beta1'], cfg['beta2'])
    if cfg['optimizer'] == 'muon':
        from pretrain.muon import Muon, muon_param_groups
        groups = muon_param_groups(model, lr_adam=cfg['learning_rate'], lr_muon=cfg['muon_lr'],
                                   weight_decay=cfg['weight_decay'], betas=betas)
        ns_dtype = None if cfg['muon_ns_dtype'] == 'auto' else cfg['muon_ns_dtype']  # None: muon.default_ns_dtype
        optimizer = Muon(groups, momentum=cfg['muon_momentum'], ns_dtype=ns_dtype)
    else:
        groups = [{'params': [p for p in params if p.dim() >= 2], 'weight_decay': cfg['weight_decay']},
                  {'params': [p for p in params if p.dim() < 2], 'weight_decay': 0.0}]
        extra = {'fused': True} if device.type == 'cuda' else {}  # one kernel for all params on CUDA
        optimizer = torch.optim.AdamW(groups, lr=cfg['learning_rate'], betas=betas, **extra)
    reset_peak_lr(optimizer, cfg)
    return optimizer


def reset_peak_lr(optimizer, cfg):
    """Each group's peak LR from the knobs (after a checkpoint's load_state_dict brought back the old ones)."""
    for group in optimizer.param_groups:
        group['lr_peak'] = cfg['muon_lr'] if group.get('use_muon') else cfg['learning_rate']


def get_lr(step, cfg):
    """Learning rate of the AdamW groups for optimizer step `step` (0-based); the Muon groups follow the same
    shape scaled to muon_lr. cosine: linear warm-up, cosine to min_lr at lr_decay_iters. wsd: warm-up, stable,
    then the last cooldown_iters steps (default cooldown_fraction of max_iters) decay to min_lr, linearly or as
    1 - sqrt (Hägele et al. 2024, sec. 3). A decay that starts at step k depends only on k and its length, so a
    cooldown branched from step k of a constant-LR run repeats a run scheduled so from the start."""
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
        cooldown = cooldown_steps(cfg)
        decay_start = max_iters - cooldown
        if step < decay_start:
            return lr
        progress = (step - decay_start + 1) / cooldown  # reaches 1 at the last step
        shrink = progress if cfg['cooldown_shape'] == 'linear' else math.sqrt(progress)
        return min_lr + (1 - shrink) * (lr - min_lr)
    raise ConfigError(f"schedule must be 'cosine' or 'wsd', got {cfg['schedule']!r}")


def cooldown_steps(cfg):
    """wsd: the number of decay steps at the end of the run."""
    if cfg['cooldown_iters'] is not None:
        return cfg['cooldown_iters']
    return int(cfg['cooldown_fraction'] * cfg['max_iters'])


def set_lr(optimizer, lr, cfg):
    """Apply the schedule: every group at lr_peak * lr / learning_rate."""
    scale = lr / cfg['learning_rate']
    for group in optimizer.param_groups:
        group['lr'] = group['lr_peak'] * scale


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

    def __init__(self, params, b_small, b_big):
        if b_big <= b_small:
            raise ConfigError("noise_scale needs at least two micro-batches per step (total_batch_size >= "
                              "2 x batch_size x block_size)")
        self.params, self.b_small, self.b_big = params, b_small, b_big
        self.prev = None
        self.ema_G2 = self.ema_S = None
        self.last = None

    def start(self):
        self.small_sum, self.n_small = 0.0, 0
        self.prev = [torch.zeros_like(p) for p in self.params]

    def after_micro(self, accum, grad_scale):
        """After micro-step m's backward: g_m = accum * (grad now - grad before) / the GradScaler's scale."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        diff = torch._foreach_sub(grads, self.prev)
        sq = sum(n.double() ** 2 for n in torch._foreach_norm(diff)) * (accum / grad_scale) ** 2
        self.small_sum = self.small_sum + sq
        self.n_small += 1
        self.prev = [g.detach().clone() for g in grads]

    def finish(self, rt, grad_scale):
        """After all micro-steps: average the gradient over ranks ourselves (DDP was kept from doing it, so each
        rank's micro-batch gradients could be seen), then update the estimates. Returns nothing; see .last."""
        grads = [p.grad for p in self.params if p.grad is not None]
        small = torch.stack([torch.as_tensor(self.small_sum, dtype=torch.float64, device=grads[0].device),
                             torch.tensor(float(self.n_small), dtype=torch.float64, device=grads[0].device)])
        if rt.ddp:
            for g in grads:
                torch.distributed.all_reduce(g)
                g.div_(rt.world)
            torch.distributed.all_reduce(small)
        g2_small = (small[0] / small[1]).item()
        g2_big = (sum(n.double() ** 2 for n in torch._foreach_norm(grads)) / grad_scale ** 2).item()
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

def train_step(model, optimizer, scaler, accum, rt, grad_clip, get_batch, mark=None, noise=None):
    """One optimizer step: accum micro-steps of forward/backward (DDP all-reduces, FSDP reduce-scatters gradients
    on the last one only: parallel.no_sync), clip (the global norm, sharded or not), step, zero_grad.
    get_batch(micro) -> (x, y). mark(phase), if given, is called after each phase ('data', 'forward',
    'backward', 'optimizer'): bench.py times them. noise, a GradNoise, measures the
    gradient noise scale (then DDP's all-reduce is done by GradNoise.finish instead). Returns the summed
    micro-step losses as a device tensor, so the caller decides when to wait for the device."""
    mark = mark or (lambda phase: None)
    loss_sum = torch.zeros((), device=rt.device)
    if noise is not None:
        noise.start()
    for micro in range(accum):
        x, y = get_batch(micro)
        mark('data')
        sync = (micro == accum - 1 and noise is None) or not rt.ddp
        with no_sync(model, skip=not sync):
            with rt.autocast:
                _, loss = model(x, y, return_logits=False)   # logits not kept; chunked past lm_loss.CE_PLAIN_MAX_BYTES
            mark('forward')
            scaler.scale(loss / accum).backward()
            mark('backward')
        if noise is not None:
            noise.after_micro(accum, scaler.get_scale() if scaler.is_enabled() else 1.0)
        loss_sum += loss.detach()
    if noise is not None:
        noise.finish(rt, scaler.get_scale() if scaler.is_enabled() else 1.0)
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    mark('optimizer')
    return loss_sum


# -----------------------------------------------------------------------------
# evaluation

@torch.no_grad()
def evaluate(model, loader, n_seqs, rt, batch_size):
    """Mean loss (nats per token) over val sequences 0..n_seqs-1. Each rank takes a contiguous part and the sums
    are all-reduced, so the number does not depend on the world size (up to float rounding). Every forward has
    the same shape (batch_size rows; a short last batch is filled with rows whose targets are ignored), so a
    compiled model compiles its evaluation graph once, not again for a last batch of another size. Every rank
    runs the same number of forwards (a rank with fewer sequences runs a batch it does not count): an FSDP
    forward all-gathers weights, a collective all ranks must join."""
    model.eval()
    total = torch.zeros(2, device=rt.device, dtype=torch.float64)  # [sum of token losses, token count]
    lo, hi = rt.rank * n_seqs // rt.world, (rt.rank + 1) * n_seqs // rt.world
    n_forwards = math.ceil(math.ceil(n_seqs / rt.world) / batch_size)   # the largest part's, on every rank
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
            count = n * y.size(1)
            total[0] += loss.double() * count
            total[1] += count
    if rt.ddp:
        torch.distributed.all_reduce(total)
    model.train()
    return (total[0] / total[1]).item()


def bits_per_byte(loss_nats_per_token, n_tokens, n_bytes):
    """Summed nats / (ln 2 x UTF-8 bytes of the text scored): comparable across tokenizers."""
    return loss_nats_per_token * n_tokens / (math.log(2) * n_bytes)
