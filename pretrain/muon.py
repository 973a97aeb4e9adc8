"""
Muon for the hidden weight matrices of a GPT, AdamW for everything else, in one torch.optim.Optimizer.

    from pretrain.muon import Muon, muon_param_groups
    optimizer = Muon(muon_param_groups(model, lr_adam=6e-3, weight_decay=0.1, betas=(0.9, 0.95)))

Muon (MomentUm Orthogonalized by Newton-Schulz) keeps SGD momentum M for a weight matrix and steps along U V^T for
M = U S V^T: every singular value set to 1, so the rare directions of a near-low-rank transformer gradient get the
same step as the dominant ones (Jordan 2024); U V^T is the steepest-descent direction in the spectral norm
(Bernstein & Newhouse 2024), and a few Newton-Schulz iterations, matrix products only, approximate it fast. Only
2-D hidden matrices take Muon; embeddings, the lm_head, biases and norm gains get AdamW (Jordan 2024; Liu et al.
2025 sec. 2.2) in the same optimizer object, so a training loop, a GradScaler and a checkpoint see one. Data
parallel: every rank runs the same deterministic step on the same all-reduced gradient, with no communication.

References:
1) K. Jordan, Y. Jin, V. Boza, J. You, F. Cesista, L. Newhouse, J. Bernstein 2024, "Muon: An optimizer for hidden
   layers in neural networks" (blog post): the update, the quintic Newton-Schulz iteration and its coefficients,
   Nesterov momentum 0.95, the sqrt(max(1, out/in)) scale, AdamW for the other parameters.
2) J. Liu, J. Su et al. (Moonshot AI) 2025, "Muon is Scalable for LLM Training" (Moonlight), arXiv:2502.16982:
   Muon's momentum form (sec. 2.1); decoupled weight decay for Muon and the 0.2 * sqrt(max(A, B)) scale that
   gives Muon's update the RMS of AdamW's, so Muon reuses AdamW's learning rate and weight decay (sec. 2.2).
3) I. Loshchilov & F. Hutter 2019, "Decoupled Weight Decay Regularization" (AdamW, Algorithm 2); D. Kingma &
   J. Ba 2015, "Adam" (Algorithm 1: bias correction). The AdamW branch is torch.optim.AdamW's arithmetic.
4) J. Bernstein & L. Newhouse 2024, "Old Optimizer, New Norm: An Anthology" (steepest descent in the spectral norm).
"""

import math

import torch

from model import is_hidden
from pretrain.runtime import cpu_has_fast_bf16

# Jordan 2024: the quintic p(x) = a x + b x^3 + c x^5 with the largest slope at 0 (a) that still maps the
# interval where the singular values start, (0, 1], into a band around 1 within 5 iterations.
NS_COEFFS = (3.4445, -4.7750, 2.0315)


def newton_schulz(G, steps=5, dtype=None, eps=1e-7):
    """~ U V^T for G = U S V^T (..., m, n), a matrix or a batch, in G's dtype and shape (Jordan 2024). Each step
    X <- a X + (b A + c A^2) X, A = X X^T, maps the singular values by p(s) = a s + b s^3 + c s^5 and nothing else.
    After division by the Frobenius norm (s <= 1), 5 steps put every s / ||G||_F >= 1.6e-3 in [0.68, 1.21] (p has
    no fixed point at 1: speed over accuracy; tests/test_muon.py); a smaller one grows ~a^5 = 489x and stays below,
    harmless in practice (Jordan 2024). bfloat16 rounding widens the band a little.
    dtype: the compute dtype, default default_ns_dtype(G.device); the norm is taken in at least float32. eps keeps
    a zero matrix (no gradient) at zero. A tall matrix is transposed first, so the Gram matrix A is the smaller."""
    if G.ndim < 2:
        raise ValueError(f"newton_schulz needs a matrix or a batch of matrices, got shape {tuple(G.shape)}")
    dtype = dtype or default_ns_dtype(G.device)
    a, b, c = NS_COEFFS
    X = G.to(torch.promote_types(dtype, torch.float32))
    X = (X / (torch.linalg.matrix_norm(X, keepdim=True) + eps)).to(dtype)   # Frobenius norm per matrix: s_max <= 1
    tall = G.size(-2) > G.size(-1)
    X = X.mT if tall else X                                       # tall (..., m, n) -> (..., n, m): rows <= cols
    shape = X.shape
    X = X.reshape(-1, *shape[-2:])                                # (batch, rows, cols), batch 1 for a matrix
    for _ in range(steps):
        A = X @ X.mT                                              # (batch, rows, rows) Gram matrix
        # B = b A + c A^2, then X = a X + B X; baddbmm(input, P, Q, beta, alpha) = beta input + alpha P Q does
        # each sum inside the matrix product, faster than separate ops
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)
        X = torch.baddbmm(X, B, X, beta=a)
    X = X.reshape(shape)
    return (X.mT if tall else X).to(G.dtype)


def _update_scale(rows, cols, rule):
    """The factor on an orthogonalised (rows x cols) update.
    'moonlight' (Liu et al. 2025 sec. 2.2): 0.2 * sqrt(max(rows, cols)). A semi-orthogonal matrix has RMS
        1 / sqrt(max(rows, cols)), so the update's RMS is 0.2 whatever the shape, about AdamW's (0.2-0.4, sec. 2.2):
        Muon can share AdamW's lr and weight decay (5 Newton-Schulz steps give 0.16-0.18, tests/test_muon.py).
    'jordan' (Jordan 2024): sqrt(max(1, rows/cols)) (rows = fan-out): a tall matrix's RMS-to-RMS operator norm is
        1. Its RMS is 1/sqrt(in), so it needs its own, larger lr (~0.02)."""
    if rule == 'moonlight':
        return 0.2 * math.sqrt(max(rows, cols))
    return math.sqrt(max(1.0, rows / cols))


def default_ns_dtype(device):
    """Newton-Schulz's compute dtype: bfloat16 where bf16 matmuls are fast (CUDA, as Jordan 2024; a CPU with
    AVX-512-BF16 or AMX), float32 elsewhere (with AVX2 alone bf16 runs ~130x slower; README, Performance)."""
    if device.type == 'cuda' or (device.type == 'cpu' and cpu_has_fast_bf16()):
        return torch.bfloat16
    return torch.float32


def _orthogonalised_updates(blocks, ns_steps, scale, dtype):
    """The scaled Newton-Schulz updates for momenta (out x in each), each orthogonalised and scaled on its own.
    Matrices of one shape (tall ones transposed) go through newton_schulz as one batch: a few large matrix products
    run faster than many small ones."""
    wide = [b.mT if b.size(0) > b.size(1) else b for b in blocks]
    by_shape = {}
    for i, w in enumerate(wide):
        by_shape.setdefault(tuple(w.shape), []).append(i)
    out = [None] * len(blocks)
    for idx in by_shape.values():
        O = newton_schulz(torch.stack([wide[i] for i in idx]), ns_steps, dtype=dtype)
        for i, o in zip(idx, O.unbind(0)):
            b = blocks[i]
            out[i] = (o.mT if b.size(0) > b.size(1) else o) * _update_scale(b.size(0), b.size(1), scale)
    return out


class Muon(torch.optim.Optimizer):
    """Muon for param groups with use_muon=True (2-D matrices), AdamW for groups with use_muon=False; every
    group must say which (muon_param_groups builds them for a GPT). Options, any group may override them:
      all groups:  lr, weight_decay (decoupled: W <- W * (1 - lr * weight_decay) before the update)
      use_muon:    momentum (0.95), nesterov (True), ns_steps (5), scale ('moonlight' | 'jordan'),
                   ns_dtype (None: default_ns_dtype(device); or 'float32', 'bfloat16', 'float64')
      AdamW:       betas ((0.9, 0.999)), eps (1e-8): the defaults of torch.optim.AdamW, as is weight_decay 0.01;
                   the step is torch.optim.AdamW's single-tensor arithmetic, with its state layout
    All state is in self.state, so state_dict() / load_state_dict() resume exactly; a GradScaler works as usual."""

    def __init__(self, params, lr=1e-3, weight_decay=0.01, momentum=0.95, nesterov=True, ns_steps=5,
                 scale='moonlight', ns_dtype=None, betas=(0.9, 0.999), eps=1e-8):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ns_steps=ns_steps, scale=scale, ns_dtype=ns_dtype, betas=betas, eps=eps)
        self._default_ns_dtypes = {}   # device -> default_ns_dtype(device), read once (it reads /proc/cpuinfo)
        super().__init__(params, defaults)

    def add_param_group(self, param_group):
        """torch's add_param_group, after checking the group's options (ValueError, one line)."""
        if not isinstance(param_group, dict) or 'use_muon' not in param_group:
            raise ValueError("Muon: every param group needs 'use_muon': True (2-D hidden matrices) or False "
                             "(AdamW); build them with muon_param_groups(model, ...)")
        group, params = dict(param_group), param_group['params']
        group['params'] = [params] if isinstance(params, torch.Tensor) else list(params)
        o = {**self.defaults, **group}

        def check(ok, msg):
            if not ok:
                raise ValueError(f"Muon: {msg}")
        check(isinstance(o['use_muon'], bool), f"use_muon must be True or False, got {o['use_muon']!r}")
        check(o['lr'] >= 0, f"lr={o['lr']} must be >= 0")
        check(o['weight_decay'] >= 0, f"weight_decay={o['weight_decay']} must be >= 0")
        if o['use_muon']:
            check(0 <= o['momentum'] < 1, f"momentum={o['momentum']} must be in [0, 1)")
            check(isinstance(o['ns_steps'], int) and o['ns_steps'] >= 1,
                  f"ns_steps={o['ns_steps']!r} must be an int >= 1")
            check(o['scale'] in ('moonlight', 'jordan'), f"scale={o['scale']!r}, expected 'moonlight' or 'jordan'")
            check(o['ns_dtype'] in (None, 'float32', 'bfloat16', 'float64'),
                  f"ns_dtype={o['ns_dtype']!r}, expected None, 'float32', 'bfloat16' or 'float64'")
            for p in group['params']:
                check(p.ndim == 2, f"a use_muon group holds a parameter of shape {tuple(p.shape)}; Muon "
                                   f"orthogonalises 2-D matrices only: put it in a use_muon=False (AdamW) group")
        else:
            b1, b2 = o['betas']
            check(0 <= b1 < 1 and 0 <= b2 < 1, f"betas={o['betas']} must be in [0, 1)")
            check(o['eps'] >= 0, f"eps={o['eps']} must be >= 0")
        super().add_param_group(group)

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient. closure: re-evaluates the model, returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group['params'] if p.grad is not None]
            if any(p.grad.is_sparse for p in params):
                branch = "Muon" if group['use_muon'] else "Muon's AdamW branch"
                raise RuntimeError(f"{branch} does not support sparse gradients")
            if params:
                (self._muon_step if group['use_muon'] else self._adamw_step)(group, params)
        return loss

    def _muon_step(self, group, params):   # Jordan 2024; Liu et al. 2025 sec. 2.1-2.2
        lr, wd, mu = group['lr'], group['weight_decay'], group['momentum']
        grads = [p.grad for p in params]                                       # (out, in) each
        for p in params:
            if 'momentum_buffer' not in self.state[p]:
                self.state[p]['momentum_buffer'] = torch.zeros_like(p, memory_format=torch.preserve_format)
        bufs = [self.state[p]['momentum_buffer'] for p in params]
        torch._foreach_mul_(bufs, mu)                                          # M_t = mu M_{t-1} + G_t
        torch._foreach_add_(bufs, grads)
        updates = torch._foreach_add(grads, bufs, alpha=mu) if group['nesterov'] else bufs  # Nesterov: G_t + mu M_t
        dtype = self._ns_dtype(group, params[0].device)
        updates = _orthogonalised_updates(updates, group['ns_steps'], group['scale'], dtype)
        if wd != 0:
            torch._foreach_mul_(params, 1 - lr * wd)                           # decoupled (Liu et al. 2025 sec. 2.2)
        torch._foreach_add_(params, updates, alpha=-lr)

    def _ns_dtype(self, group, device):
        if group.get('ns_dtype'):          # .get: a checkpoint from before the option has no such key
            return getattr(torch, group['ns_dtype'])
        if device not in self._default_ns_dtypes:
            self._default_ns_dtypes[device] = default_ns_dtype(device)
        return self._default_ns_dtypes[device]

    def _adamw_step(self, group, params):
        lr, wd, eps = group['lr'], group['weight_decay'], group['eps']
        beta1, beta2 = group['betas']
        grads = [p.grad for p in params]
        for p in params:
            if 'step' not in self.state[p]:   # torch.optim.AdamW's state layout: a float32 scalar tensor counts steps
                self.state[p].update(step=torch.tensor(0.0, dtype=torch.float32),
                                     exp_avg=torch.zeros_like(p, memory_format=torch.preserve_format),
                                     exp_avg_sq=torch.zeros_like(p, memory_format=torch.preserve_format))
        states = [self.state[p] for p in params]
        exp_avgs, exp_avg_sqs = [s['exp_avg'] for s in states], [s['exp_avg_sq'] for s in states]
        torch._foreach_add_([s['step'] for s in states], 1)
        ts = [s['step'].item() for s in states]      # one count per parameter, as torch's (they agree in practice)
        # the single-tensor arithmetic of torch.optim.AdamW, each op over all of the group's tensors in one call
        if wd != 0:
            torch._foreach_mul_(params, 1 - lr * wd)                           # decoupled (Loshchilov & Hutter)
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)                       # m = b1 m + (1 - b1) g
        torch._foreach_mul_(exp_avg_sqs, beta2)                                # v = b2 v + (1 - b2) g^2
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denom, [(1 - beta2 ** t) ** 0.5 for t in ts])    # sqrt(v) / sqrt(1 - b2^t) + eps
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(params, exp_avgs, denom, [-lr / (1 - beta1 ** t) for t in ts])


def muon_param_groups(model, lr_adam, lr_muon=None, weight_decay=0.0, betas=(0.9, 0.95), eps=1e-8):
    """Param groups for Muon(groups) from a GPT (model.py): Muon for every 2-D parameter inside the blocks
    (model.is_hidden), AdamW for the rest; weight decay on matrices only, as training.configure_optimizer. Each
    trainable parameter lands in exactly one group (a tied lm_head is wte's tensor); empty groups are left out.
    lr_muon: default lr_adam. With the 'moonlight' scale one lr fits both (Liu et al. 2025 sec. 2.2), so a loop
    that writes one scheduled lr into every group (train.py) is right. q, k and v (and SwiGLU's gate and up) are
    separate matrices in model.py, each orthogonalised on its own, as modded-nanogpt and nanochat do."""
    lr_muon = lr_adam if lr_muon is None else lr_muon
    muon, adam_decay, adam_no_decay = [], [], []
    for name, p in model.named_parameters():     # de-duplicated: a tied weight comes once
        if not p.requires_grad:
            continue
        if is_hidden(name, p):
            muon.append(p)
        else:
            (adam_decay if p.dim() >= 2 else adam_no_decay).append(p)
    groups = [dict(params=muon, use_muon=True, lr=lr_muon, weight_decay=weight_decay)]
    adam = dict(use_muon=False, lr=lr_adam, betas=tuple(betas), eps=eps)
    groups += [dict(adam, params=adam_decay, weight_decay=weight_decay),
               dict(adam, params=adam_no_decay, weight_decay=0.0)]
    groups = [g for g in groups if g['params']]
    ids = [id(p) for g in groups for p in g['params']]
    assert len(ids) == len(set(ids)), "a parameter is in two groups"
    return groups
