"""Tests for the parametrizations (model.py's parametrization, base_n_embd, base_n_layer, base_head_dim; training.py's
per-group lr_scale): 'mup' and 'completep' at their base shape are 'sp' bit for bit (logits, gradients and losses
through AdamW steps, in float32 and under autocast); away from it every rule of the recipe acts as documented (init,
LR, weight decay, eps, the attention, output and branch multipliers); compiled gradients equal eager ones, bf16 and
fp16 stay near float32; train.py resumes such a run exactly, logs it, refuses another parametrization on resume and
Muon with it; the coordinate check's slopes; several processes, DDP and FSDP (slow). Export: tests/test_export.py."""
import importlib
import json
import math
import os
import re
from types import SimpleNamespace

import pytest
import torch

import conftest
import train
from conftest import compared, rel, torchrun
from model import GPT, GPTConfig, ModelError
from pretrain import training
from pretrain.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures('one_thread')   # tests/conftest.py

BODY = dict(block_size=16, vocab_size=61, n_layer=2, n_head=2, n_embd=32)
KNOBS = {**train.DEFAULTS, 'learning_rate': 1e-2, 'weight_decay': 0.1}


def build(seed=0, **fields):
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**BODY, **fields}))


def batch(B=4, T=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 61, (B, T), generator=g), torch.randint(0, 61, (B, T), generator=g)


def trajectory(fields, steps=4, autocast=None):
    """Losses, the first step's gradients and the final logits of `steps` AdamW steps (train.py's optimizer, each
    group at peak_lr), as train_step runs them."""
    model = build(**fields)
    c = SimpleNamespace(**KNOBS)
    opt = training.configure_optimizer(model, c, torch.device('cpu'))
    x, y = batch()
    out, first = [], None
    for _ in range(steps):
        for g in opt.param_groups:
            g['lr'] = training.peak_lr(g, c)
        with torch.autocast('cpu', dtype=autocast, enabled=autocast is not None):
            _, loss = model(x, y, return_logits=False)
        loss.backward()
        first = first or {n: p.grad.clone() for n, p in model.named_parameters()}
        out.append(loss.item())
        opt.step()
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        return out, first, model(x)[0]


# -----------------------------------------------------------------------------
# at the base shape: 'sp', bit for bit

SHAPES = [dict(), dict(pos_emb='learned', tie_weights=False, n_kv_head=1, mlp='swiglu', bias=False, norm='rmsnorm')]
AT_BASE = [dict(parametrization='mup'), dict(parametrization='mup', base_n_embd=32, base_head_dim=16),
           dict(parametrization='completep', base_n_embd=32, base_n_layer=2, base_head_dim=16)]


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('at_base', AT_BASE)
@pytest.mark.parametrize('autocast', [None, torch.bfloat16])
def test_at_the_base_shape_every_parametrization_is_sp_bit_for_bit(shape, at_base, autocast):
    losses_sp, grads_sp, logits_sp = trajectory(shape, autocast=autocast)
    got_losses, got_grads, got_logits = trajectory({**shape, **at_base}, autocast=autocast)
    assert got_losses == losses_sp
    assert all(torch.equal(got_grads[n], grads_sp[n]) for n in grads_sp)
    assert torch.equal(got_logits, logits_sp)


# -----------------------------------------------------------------------------
# away from it: the recipe, rule by rule

WIDE = dict(n_embd=64, n_head=4, n_layer=4)   # head size 16
CP = dict(WIDE, parametrization='completep', base_n_embd=16, base_n_layer=2, base_head_dim=4)   # m_N 4, m_L 2


def test_the_multipliers_and_the_init():
    c = GPTConfig(**{**BODY, **CP})
    assert (c.width_mult, c.depth_mult, c.attn_scale) == (4.0, 2.0, math.sqrt(4) / 16)
    assert GPTConfig(**{**BODY, **CP, 'parametrization': 'mup'}).depth_mult == 1.0   # depth is CompleteP's only
    assert GPTConfig(**{**BODY, **CP, 'parametrization': 'sp'}).width_mult == 1.0
    sp, cp = dict(build(**WIDE).named_parameters()), dict(build(**CP).named_parameters())
    for n, p in sp.items():
        if n.endswith('c_proj.weight'):   # std 0.02 / sqrt(2 L_base) / sqrt(m_N): per block the base depth's init
            torch.testing.assert_close(cp[n], p * math.sqrt(4 / 2) / 2)
        elif n.startswith('transformer.h.') and p.dim() == 2:   # the same draws, std 0.02 / sqrt(m_N)
            assert torch.equal(cp[n], p * 0.5), n
        else:   # embeddings (the lm_head is tied), gains, biases: as 'sp'
            assert torch.equal(cp[n], p), n
    model = build(**CP)
    assert {b.branch_mult for b in model.transformer.h} == {0.5}
    seen = []
    model.transformer.ln_f.register_forward_hook(lambda m, a, out: seen.append(out))
    h = model.features(batch()[0])
    assert torch.equal(h, seen[0] * 0.25)   # the output multiplier 1/m_N, before the lm_head


@pytest.mark.parametrize('parametrization', ['mup', 'completep'])
def test_adamw_groups_lr_weight_decay_and_eps(parametrization):
    """The hidden matrices at learning_rate / m_N; their decay times m_N under CompleteP only (torch's AdamW decays
    by lr x weight_decay: CompleteP keeps that product the base's); eps / (m_N m_L) under CompleteP."""
    model = build(**{**CP, 'parametrization': parametrization})
    c = SimpleNamespace(**KNOBS)
    opt = training.configure_optimizer(model, c, torch.device('cpu'))
    names = {id(p): n for n, p in model.named_parameters()}
    by_scale = {g['lr_scale']: g for g in opt.param_groups if g['weight_decay'] != 0}
    hidden, rest = by_scale[0.25], by_scale[1.0]
    assert {names[id(p)] for p in hidden['params']} == {n for n, p in model.named_parameters()
                                                       if n.startswith('transformer.h.') and p.dim() == 2}
    assert {names[id(p)] for p in rest['params']} == {'transformer.wte.weight', 'transformer.wpe.weight'}
    assert hidden['weight_decay'] == (0.4 if parametrization == 'completep' else 0.1) and rest['weight_decay'] == 0.1
    assert [training.peak_lr(g, c) for g in opt.param_groups] == [1e-2 * g['lr_scale'] for g in opt.param_groups]
    assert all(g['lr'] == training.peak_lr(g, c) for g in opt.param_groups)   # right before any schedule too
    assert {g['eps'] for g in opt.param_groups} == {1e-8 / 8 if parametrization == 'completep' else 1e-8}
    assert sum(len(g['params']) for g in opt.param_groups) == len(list(model.parameters()))
    # the scale travels in the optimizer's state (the shape cannot change on resume); a group without it is 'sp'
    fresh = training.configure_optimizer(build(**CP), c, torch.device('cpu'))
    fresh.load_state_dict(opt.state_dict())
    assert [g['lr_scale'] for g in fresh.param_groups] == [g['lr_scale'] for g in opt.param_groups]
    assert training.peak_lr({'params': []}, c) == 1e-2


@pytest.mark.parametrize('fields, words', [
    (dict(parametrization='muP'), "parametrization='muP', expected 'sp', 'mup' or 'completep'"),
    (dict(base_n_embd=0), 'base_n_embd=0 must be None or an int >= 1'),
    (dict(base_n_layer=2.5), 'base_n_layer=2.5 must be None or an int >= 1'),
    (dict(base_head_dim=True), 'base_head_dim=True must be None or an int >= 1'),
])
def test_bad_values_are_one_model_error(fields, words):
    with pytest.raises(ModelError, match=re.escape(words)):
        GPTConfig(**{**BODY, **fields})


def test_muon_is_refused_with_mup():
    with pytest.raises(training.ConfigError, match="optimizer='muon' with parametrization='mup'"):
        training.check_knobs(SimpleNamespace(**{**train.DEFAULTS, 'optimizer': 'muon', 'muon_lr': 0.02,
                                                'parametrization': 'mup'}))


def test_the_attention_scale_is_sqrt_base_head_dim_over_head_dim():
    """Scaling the query weights by sqrt(base_head_dim / head_dim) under 'sp' computes what the scale does."""
    mup = build(**{**BODY, 'n_embd': 32, 'n_head': 2, 'parametrization': 'mup', 'base_head_dim': 4})
    sp = build(**{**BODY, 'n_embd': 32, 'n_head': 2})
    with torch.no_grad():
        for b in sp.transformer.h:
            b.attn.c_q.weight *= math.sqrt(4 / 16)
            b.attn.c_q.bias *= math.sqrt(4 / 16)
        torch.testing.assert_close(mup(batch()[0])[0], sp(batch()[0])[0])


# -----------------------------------------------------------------------------
# compile and low precision

def grads(net, x, y, autocast=None, scale=1.0):
    net.zero_grad(set_to_none=True)
    with torch.autocast('cpu', dtype=autocast, enabled=autocast is not None):
        _, loss = net(x, y, return_logits=False)
    (loss * scale).backward()
    return loss.detach(), {n.removeprefix('_orig_mod.'): p.grad.double() / scale for n, p in net.named_parameters()}


@pytest.mark.slow
def test_compiled_gradients_equal_eager():
    net = build(**{**BODY, **CP})
    x, y = batch()
    want_loss, want = grads(net, x, y)
    torch._dynamo.reset()
    got_loss, got = grads(torch.compile(net), x, y)
    torch._dynamo.reset()
    assert abs(got_loss.item() - want_loss.item()) < 1e-5 * want_loss.item()
    for n in compared(want):
        assert rel(got[n], want[n]) < 1e-5, n


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_low_precision_gradients_stay_near_float32(dtype):
    net = build(**{**BODY, **CP, 'block_size': 64})
    x, y = batch(B=32, T=64)
    _, want = grads(net, x, y)
    loss, got = grads(net, x, y, autocast=dtype, scale=65536.0 if dtype == torch.float16 else 1.0)
    assert torch.isfinite(loss)
    for n in compared(want):
        assert rel(got[n], want[n]) < 1e-2, (n, rel(got[n], want[n]))


# -----------------------------------------------------------------------------
# train.py: exact resume, the run log, refusals

RUN = dict(parametrization='completep', base_n_embd=16, base_n_layer=1, base_head_dim=8, n_embd=32, n_head=2,
           n_layer=2)
TINY = dict(block_size=32, batch_size=4, total_batch_size=256, max_iters=20, warmup_iters=5, learning_rate=3e-3,
            min_lr=3e-4, eval_interval=10, eval_iters=2, log_interval=1, checkpoint_interval=10, dtype='float32',
            device='cpu', **RUN)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    return conftest.word_corpus(tmp_path_factory, 60, 80)


def knobs(data_dir, out_dir, **over):
    return {**train.DEFAULTS, **TINY, 'data_dir': data_dir, 'out_dir': str(out_dir), **over}


def argv(data_dir, out_dir, **over):
    return [f'--{k}={v!r}' for k, v in {**TINY, 'data_dir': data_dir, 'out_dir': str(out_dir), **over}.items()]


def log(out_dir, kind='train', field='loss'):
    """{step: value} of the run log's records of one type, the last per step (as the log's readers do)."""
    recs = [json.loads(line) for line in open(os.path.join(out_dir, 'log.jsonl'))]
    return {r['step']: r[field] for r in recs if r['type'] == kind}


def test_train_resumes_exactly_and_logs_the_parametrization(data_dir, tmp_path):
    train.train(knobs(data_dir, tmp_path / 'straight'))
    train.train(knobs(data_dir, tmp_path / 'split', max_iters=10, lr_decay_iters=20))
    train.train(knobs(data_dir, tmp_path / 'split', init_from='resume'))
    assert log(tmp_path / 'split') == log(tmp_path / 'straight')   # float32 on CPU: bit for bit
    run = json.loads(open(tmp_path / 'split' / 'log.jsonl').readline())
    assert {k: run['model'][k] for k in RUN} == RUN
    assert {k: load_checkpoint(str(tmp_path / 'split'))['model_config'][k] for k in RUN} == RUN
    with pytest.raises(train.ConfigError, match="parametrization is completep in the checkpoint, mup here"):
        train.train(knobs(data_dir, tmp_path / 'split', init_from='resume', parametrization='mup'))


def test_a_checkpoint_without_the_fields_is_sp_and_refuses_mup(data_dir, tmp_path):
    """A checkpoint whose model_config predates the fields resumes as 'sp', and refuses a config that asks for
    another parametrization."""
    sp = dict(parametrization='sp', base_n_embd=None, base_n_layer=None, base_head_dim=None)
    train.train(knobs(data_dir, tmp_path, max_iters=2, warmup_iters=1, lr_decay_iters=4, **sp))
    ckpt = torch.load(tmp_path / 'ckpt.pt', weights_only=True)
    for k in sp:
        del ckpt['model_config'][k]
    torch.save(ckpt, tmp_path / 'ckpt.pt')
    with pytest.raises(train.ConfigError, match="parametrization is sp in the checkpoint, mup here"):
        train.train(knobs(data_dir, tmp_path, init_from='resume', max_iters=4, warmup_iters=1,
                          **{**sp, 'parametrization': 'mup'}))
    train.train(knobs(data_dir, tmp_path, init_from='resume', max_iters=4, warmup_iters=1, **sp))
    assert list(log(tmp_path)) == [1, 2, 3, 4]


@pytest.mark.slow
def test_ddp_and_fsdp_match_one_process(data_dir, tmp_path):
    """2 processes (gloo), DDP and FSDP, against one: the same losses up to the order of the all-reduce's sums; and
    an FSDP run resumed from its sharded checkpoint (whose optimizer groups carry lr_scale) ends as the straight one."""
    over = dict(max_iters=6, warmup_iters=2, eval_interval=3, checkpoint_interval=3, batch_size=2, pos_emb='learned')
    train.train(knobs(data_dir, tmp_path / 'one', **over))
    for mode in ('ddp', 'fsdp'):
        r = torchrun(['train.py', *argv(data_dir, tmp_path / mode, parallel=mode, **over)])
        assert r.returncode == 0, r.stderr[-3000:]
        assert log(tmp_path / mode) == pytest.approx(log(tmp_path / 'one'), abs=1e-5)
    split = argv(data_dir, tmp_path / 'split', parallel='fsdp', **over)
    assert torchrun(['train.py', *split, '--max_iters=3', '--lr_decay_iters=6']).returncode == 0
    r = torchrun(['train.py', *split, "--init_from='resume'"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert log(tmp_path / 'split') == log(tmp_path / 'fsdp')


# -----------------------------------------------------------------------------
# the coordinate check (experiments/mup-transfer/coord_check.py)

def test_coordinate_check_slopes():
    """Widths 32..256, 6 steps at lr 1e-2 on random bytes: under muP no activation grows by half a doubling or more
    per doubling of width; under SP the attention outputs grow faster than the width itself."""
    cc = importlib.import_module('experiments.mup-transfer.coord_check')
    widths = [32, 64, 128, 256]
    data = cc.batches(None, 6, 4, 32)
    result = cc.coord_check(['sp', 'mup'], widths, data, 1e-2, base_n_embd=32)
    assert max(result['mup']['slopes'].values()) < 0.5, result['mup']['slopes']
    assert min(s for n, s in result['sp']['slopes'].items() if n.startswith('attn')) > 1, result['sp']['slopes']
    assert len(result['sp']['values']['attn.1'][256]) == 6
