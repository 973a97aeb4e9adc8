"""Tests for training.py: the learning-rate schedules, the optimizer's groups, train_step with the gradient noise
scale (checked against a problem whose gradient mean and covariance are known exactly), evaluate() and bits per
byte. The knobs are train.py's (train.DEFAULTS) with a few changed."""
import contextlib
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pretrain import data
import train
from pretrain import training
import conftest
from pretrain.configurator import ConfigError
from model import GPT, GPTConfig

CPU = SimpleNamespace(ddp=False, device=torch.device('cpu'), autocast=contextlib.nullcontext(), world=1, rank=0,
                     mesh=None, dp_rank=0, dp_world=1)


def lr_at(step, cfg):
    """The AdamW learning rate of a step: the peak times the schedule's multiplier, as train.py sets it."""
    return cfg['learning_rate'] * training.lr_multiplier(step, SimpleNamespace(**cfg))


# -----------------------------------------------------------------------------
# schedules

def test_cosine_schedule():
    cfg = {**train.DEFAULTS, 'learning_rate': 1.0, 'min_lr': 0.1, 'warmup_iters': 10, 'max_iters': 110,
           'lr_decay_iters': None, 'schedule': 'cosine'}
    lrs = [lr_at(s, cfg) for s in range(120)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))  # halfway: mean of max and min
    assert lrs[110] == pytest.approx(0.1) and lrs[119] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_cosine_schedule_with_lr_decay_iters():
    cfg = {**train.DEFAULTS, 'learning_rate': 1.0, 'min_lr': 0.1, 'warmup_iters': 10, 'max_iters': 200,
           'lr_decay_iters': 110, 'schedule': 'cosine'}
    lrs = [lr_at(s, cfg) for s in range(200)]
    assert lrs[60] == pytest.approx(0.55) and lrs[110] == pytest.approx(0.1) and set(lrs[110:]) == {0.1}


@pytest.mark.parametrize('shape', ['linear', '1-sqrt'])
def test_wsd_schedule(shape):
    cfg = {**train.DEFAULTS, 'learning_rate': 1.0, 'min_lr': 0.0, 'warmup_iters': 10, 'max_iters': 100,
           'schedule': 'wsd', 'cooldown_fraction': 0.2, 'cooldown_shape': shape}
    lrs = [lr_at(s, cfg) for s in range(100)]
    assert all(lr == 1.0 for lr in lrs[10:80])  # stable phase
    assert lrs[99] == pytest.approx(0.0)  # the last step trains at min_lr
    mid = lrs[89]  # half-way through the cooldown: progress 0.5
    assert mid == pytest.approx(0.5 if shape == 'linear' else 1 - math.sqrt(0.5))


@pytest.mark.parametrize('shape', ['linear', '1-sqrt'])
def test_wsd_cooldown_iters(shape):
    """cooldown_iters=c: exactly the last c steps decay, the last one at min_lr (it overrides cooldown_fraction)."""
    c, lr, min_lr = 5, 1.0, 0.1
    cfg = {**train.DEFAULTS, 'learning_rate': lr, 'min_lr': min_lr, 'warmup_iters': 2, 'max_iters': 20,
           'schedule': 'wsd', 'cooldown_iters': c, 'cooldown_fraction': 0.5, 'cooldown_shape': shape}
    assert training.cooldown_steps(SimpleNamespace(**cfg)) == c
    lrs = [lr_at(s, cfg) for s in range(20)]
    assert lrs[:2] == [pytest.approx(0.5), pytest.approx(1.0)]   # warm-up
    assert all(x == lr for x in lrs[2:15])                       # stable up to step 20 - 5 - 1
    decay = lrs[15:]
    assert all(x < lr for x in decay) and all(a > b for a, b in zip(decay, decay[1:]))
    assert decay[-1] == pytest.approx(min_lr)
    shrink = [(k + 1) / c if shape == 'linear' else math.sqrt((k + 1) / c) for k in range(c)]
    assert decay == pytest.approx([min_lr + (1 - s) * (lr - min_lr) for s in shrink])


def test_wsd_cooldown_zero_is_constant_after_warmup():
    cfg = {**train.DEFAULTS, 'learning_rate': 1.0, 'min_lr': 0.1, 'warmup_iters': 4, 'max_iters': 50,
           'schedule': 'wsd', 'cooldown_iters': 0}
    lrs = [lr_at(s, cfg) for s in range(50)]
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0]) and all(x == 1.0 for x in lrs[4:])


def test_a_cooldown_branch_repeats_the_schedule_of_a_run_planned_so():
    """The branch of tests/test_train.py: a constant-LR parent (8 steps, no cooldown) branched at step 4 into a
    2-step cooldown ending at 6 trains every step at the rate of a run scheduled 6 steps with that cooldown."""
    base = {**train.DEFAULTS, 'learning_rate': 1.0, 'min_lr': 0.1, 'warmup_iters': 2, 'schedule': 'wsd'}
    parent = {**base, 'max_iters': 8, 'cooldown_iters': 0}
    planned = {**base, 'max_iters': 6, 'cooldown_iters': 2}
    branch = [lr_at(s, parent) for s in range(4)] + [lr_at(s, planned) for s in range(4, 6)]
    assert branch == [lr_at(s, planned) for s in range(6)]


def test_unknown_schedule():
    with pytest.raises(ConfigError, match="schedule='step' is not allowed: must be 'cosine' or 'wsd'"):
        training.check_knobs(SimpleNamespace(**{**train.DEFAULTS, 'schedule': 'step'}))


def test_muon_ns_dtype_knob():
    """muon_ns_dtype reaches every Muon group: 'auto' as None (muon.default_ns_dtype decides per device)."""
    model = GPT(GPTConfig(block_size=16, vocab_size=64, n_layer=1, n_head=2, n_embd=16))
    for knob, expect in (('auto', None), ('float32', 'float32'), ('bfloat16', 'bfloat16')):
        cfg = {**train.DEFAULTS, 'optimizer': 'muon', 'muon_lr': 0.01, 'muon_ns_dtype': knob}
        opt = training.configure_optimizer(model, SimpleNamespace(**cfg), torch.device('cpu'))
        assert {g['ns_dtype'] for g in opt.param_groups if g['use_muon']} == {expect}


def test_optimizer_groups_and_their_peak_lr():
    """AdamW's two groups (decay on matrices only) peak at learning_rate, Muon's matrices at muon_lr: read from the
    knobs, so a resumed optimizer state (whose groups hold the old run's values) follows this run's knobs."""
    model = GPT(GPTConfig(block_size=16, vocab_size=64, n_layer=1, n_head=2, n_embd=16))
    c = SimpleNamespace(**{**train.DEFAULTS, 'learning_rate': 0.01, 'weight_decay': 0.1})
    opt = training.configure_optimizer(model, c, torch.device('cpu'))
    decay, no_decay = opt.param_groups
    assert decay['weight_decay'] == 0.1 and all(p.dim() >= 2 for p in decay['params'])
    assert no_decay['weight_decay'] == 0.0 and all(p.dim() < 2 for p in no_decay['params'])
    assert sum(len(g['params']) for g in opt.param_groups) == len(list(model.parameters()))
    opt.load_state_dict({**opt.state_dict(), 'param_groups': [{**g, 'lr': 0.5} for g in opt.state_dict()['param_groups']]})
    assert [training.peak_lr(g, c) for g in opt.param_groups] == [0.01, 0.01]
    muon = SimpleNamespace(**{**vars(c), 'optimizer': 'muon', 'muon_lr': 0.02})
    opt = training.configure_optimizer(model, muon, torch.device('cpu'))
    assert {training.peak_lr(g, muon) for g in opt.param_groups if g['use_muon']} == {0.02}
    assert {training.peak_lr(g, muon) for g in opt.param_groups if not g['use_muon']} == {0.01}


# -----------------------------------------------------------------------------
# the gradient noise scale on a problem with a known answer

class LinearRegression(torch.nn.Module):
    """y ~ x.w with mean-squared error, called as train_step calls a GPT: model(x, y, return_logits=False) ->
    (prediction or None, loss)."""

    def __init__(self, w):
        super().__init__()
        self.lin = torch.nn.Linear(len(w), 1, bias=False)
        with torch.no_grad():
            self.lin.weight.copy_(w[None])

    def forward(self, x, y, return_logits=True):
        pred = self.lin(x).squeeze(-1)
        return pred if return_logits else None, torch.nn.functional.mse_loss(pred, y)


D, SIGMA = 8, 1.0
W_STAR = torch.linspace(-1, 1, D, dtype=torch.float64)
DELTA = torch.full((D,), 1 / math.sqrt(D), dtype=torch.float64)   # w - w*, |delta|^2 = 1


def exact_noise():
    """The per-example gradient of (x.w - y)^2 with y = x.w* + e, x ~ N(0, I_D), e ~ N(0, SIGMA^2), at w = w* + delta:
    g = 2 (x.delta - e) x. Its mean G = 2 E[x x^T] delta = 2 delta, so |G|^2 = 4 |delta|^2. Its second moment
    E[g g^T] = 4 (E[(x.delta)^2 x x^T] + SIGMA^2 I) = 4 (|delta|^2 I + 2 delta delta^T + SIGMA^2 I) (Isserlis), so
    tr(Sigma) = tr E[g g^T] - |G|^2 = 4 ((D + 1) |delta|^2 + D SIGMA^2)."""
    d2 = DELTA.square().sum().item()
    return 4 * d2, 4 * ((D + 1) * d2 + D * SIGMA ** 2)


def test_exact_noise_matches_a_huge_batch_in_float64():
    """The algebra above, against 400k per-example gradients in float64: the sample mean and trace are within
    1% (their standard errors at this size are ~0.1% for tr(Sigma) and ~0.3% for |G|^2)."""
    G2, S = exact_noise()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(400_000, D, generator=g, dtype=torch.float64)
    y = x @ W_STAR + SIGMA * torch.randn(400_000, generator=g, dtype=torch.float64)
    per_example = 2 * (x @ (W_STAR + DELTA) - y)[:, None] * x
    mean = per_example.mean(0)
    assert mean.square().sum().item() == pytest.approx(G2, rel=0.01)
    assert (per_example - mean).square().sum(1).mean().item() == pytest.approx(S, rel=0.01)


def test_grad_noise_recovers_the_exact_gradient_noise():
    """GradNoise through train_step: 4 micro-batches of B=4 examples (a token here is an example) per step, with
    a fixed w (SGD at lr 0), for N=2000 steps of fresh data. Per step, E|g_B|^2 = |G|^2 + tr(Sigma)/B exactly, and
    McCandlish's estimates of |G|^2 and tr(Sigma) are unbiased, so their means over the N independent steps must
    land within 4 standard errors of the exact values (the SE measured from the N per-step values; a normal
    4-sigma miss has probability 6e-5, and the data are seeded so the test is deterministic). The tolerance is
    itself checked to be tight: 4 SE is ~10% of |G|^2 and ~5% of tr(Sigma) at N=2000, while the mistakes it is
    for (a micro-batch gradient without its accum factor, batch sizes in other units, a missing 1/B) are off by
    factors of 2 or more."""
    B, accum, N = 4, 4, 2000
    G2, S = exact_noise()
    model = LinearRegression((W_STAR + DELTA).float())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    scaler = torch.amp.GradScaler('cpu', enabled=False)
    noise = training.GradNoise(list(model.parameters()), b_small=B, b_big=B * accum)
    gen = torch.Generator().manual_seed(0)

    def micro_batch():
        x = torch.randn(B, D, generator=gen)
        return x, x @ W_STAR.float() + SIGMA * torch.randn(B, generator=gen)
    rows, ema = [], None
    for _ in range(N):
        training.train_step(model, optimizer, scaler, [micro_batch() for _ in range(accum)], CPU, 0.0, noise=noise)
        last = noise.last
        assert (last['b_small'], last['b_big']) == (B, B * accum)
        bs, bb, small, big = B, B * accum, last['g2_small'], last['g2_big']
        est = ((bb * big - bs * small) / (bb - bs), (small - big) / (1 / bs - 1 / bb))   # McCandlish A.2, A.3
        ema = est if ema is None else tuple(noise.EMA * e + (1 - noise.EMA) * x for e, x in zip(ema, est))
        assert (last['G2'], last['S']) == pytest.approx(ema, rel=1e-9)   # smoothed as documented
        assert last['B_simple'] == pytest.approx(ema[1] / ema[0], rel=1e-9)
        rows.append((small, big, *est))
    assert torch.equal(model.lin.weight.double()[0], (W_STAR + DELTA).float().double())   # w stayed fixed
    rows = np.array(rows)
    means, se = rows.mean(0), rows.std(0, ddof=1) / math.sqrt(N)
    for name, mean, err, exact in zip(('|g_small|^2', '|g_big|^2', '|G|^2', 'tr(Sigma)'), means, se,
                                      (G2 + S / B, G2 + S / (B * accum), G2, S)):
        assert 4 * err < 0.11 * exact, (name, err)          # the tolerance is tight enough to mean something
        assert abs(mean - exact) < 4 * err, (name, mean, exact, err)
    assert means[3] / means[2] == pytest.approx(S / G2, rel=0.15)   # B_simple = 17: within the two 4-SE bands


def test_grad_noise_needs_two_micro_batches():
    one = {**train.DEFAULTS, 'noise_scale': True, 'batch_size': 4, 'block_size': 512, 'total_batch_size': 2048}
    with pytest.raises(ConfigError, match='at least two micro-batches'):
        training.check_knobs(SimpleNamespace(**one))
    two = {**one, 'total_batch_size': 4096}   # two micro-steps, or one on each of two ranks
    assert training.check_knobs(SimpleNamespace(**two)) == 2 and training.check_knobs(SimpleNamespace(**two), 2) == 1


def test_grad_noise_state_round_trip():
    noise = training.GradNoise([torch.nn.Parameter(torch.zeros(2))], 1, 2)
    noise.load_state_dict({'ema_G2': 1.5, 'ema_S': 3.0})
    assert noise.state_dict() == {'ema_G2': 1.5, 'ema_S': 3.0}


# -----------------------------------------------------------------------------
# evaluation

@pytest.fixture(scope='module')
def val_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp('val')
    rng = np.random.default_rng(0)
    for split in ('train', 'val'):
        conftest.write_shard(str(d / f'v_{split}_000000.bin'), rng.integers(0, 257, 12 * 16 + 1).astype(np.uint16))
    data.write_json(str(d / 'meta.json'), {'tokenizer': 'bytes', 'vocab_size': 257, 'eot': 256, 'source': 'test',
                                           'complete': True})
    return str(d)


def test_evaluate_is_the_same_for_any_batch_size(val_dir):
    """12 val sequences: batch sizes that divide 12 and ones that do not (the last batch filled with ignored rows)
    give the mean over the same 12 x 16 tokens, the loss of one forward over all of them."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=257, n_layer=1, n_head=2, n_embd=16, dropout=0.2))
    loader = data.TokenLoader(val_dir, 'val', 16, vocab_size=257)
    assert loader.n_chunks == 12
    model.eval()
    with torch.no_grad():
        reference = model(*loader.batch(0, 12, torch.device('cpu')))[1].item()
    model.train()
    for batch_size in (1, 4, 12, 5, 7, 16):
        loss = training.evaluate(model, loader, 12, CPU, batch_size)
        assert loss == pytest.approx(reference, rel=1e-6), batch_size
        assert model.training   # back to training mode (dropout was off while evaluating: the same number)
    first8 = training.evaluate(model, loader, 8, CPU, 3)   # fewer sequences: their own mean
    with torch.no_grad():
        model.eval()
        assert first8 == pytest.approx(model(*loader.batch(0, 8, torch.device('cpu')))[1].item(), rel=1e-6)


def test_bits_per_byte_by_hand():
    # ln 2 nats per token over 10 tokens = 10 bits, spelled by 5 bytes: 2 bits per byte
    assert training.bits_per_byte(math.log(2), 10, 5) == pytest.approx(2.0)
    # byte-level tokens are bytes: bits per byte = nats per token / ln 2
    assert training.bits_per_byte(1.5, 1000, 1000) == pytest.approx(1.5 / math.log(2))


# -----------------------------------------------------------------------------
# issue 35: Apple silicon's MPS has no float64, and step 0's evaluation made a float64 tensor on the device

class NoFloat64OffTheCPU(torch.overrides.TorchFunctionMode):
    """Fails the test at any float64 tensor on a device other than the CPU. The meta device stands in for a GPU
    (this torch has no other): shapes without data, so what the code copies back to the CPU comes back as zeros."""
    BACK = {torch.Tensor.cpu: lambda t, *a, **k: torch.zeros(t.shape, dtype=t.dtype),
            torch.Tensor.item: lambda t: 0.0, torch.Tensor.tolist: lambda t: torch.zeros(t.shape).tolist()}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.BACK and args[0].is_meta:
            return self.BACK[func](*args, **kwargs)
        out = func(*args, **kwargs)
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dtype == torch.float64 and t.device.type != 'cpu':
                raise AssertionError(f"{getattr(func, '__name__', func)} made a float64 tensor on {t.device}")
        return out


def test_no_float64_tensor_on_the_device(val_dir):
    """evaluate, the gradient noise scale and HellaSwag's scoring keep float64 on the CPU: each fails on MPS
    otherwise (`python train.py` died at step 0 on every Apple-silicon Mac)."""
    from pretrain import hellaswag
    meta = SimpleNamespace(**{**vars(CPU), 'device': torch.device('meta')})
    model = GPT(GPTConfig(block_size=16, vocab_size=257, n_layer=1, n_head=2, n_embd=16)).to('meta')
    loader = data.TokenLoader(val_dir, 'val', 16, vocab_size=257)
    rendered = [([[1, 2, 3, 4], [1, 2, 5], [1, 2, 6, 7, 8], [1, 2, 9]], [2, 1, 3, 1], False)]
    params = [torch.zeros(3, device='meta', requires_grad=True), torch.zeros(2, 2, device='meta', requires_grad=True)]
    with NoFloat64OffTheCPU():
        training.evaluate(model, loader, 12, meta, 5)
        sums, means = hellaswag.ending_losses(model, rendered, meta)
        noise = training.GradNoise(params, 16, 64)
        noise.start()
        for step in range(2):
            for p in params:
                p.grad = torch.ones_like(p) * step
            noise.after_micro(2, 1.0)
        noise.finish(meta, 1.0)
    assert sums.shape == means.shape == (1, 4) and sums.dtype == torch.float64 and noise.last is not None
