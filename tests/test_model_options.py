"""The modded-nanogpt / nanochat block options (qk_norm, mlp='relu2', zero_init_proj, logit_softcap), the
fixed-shape decode step behind generate(compile_decode=True), and decode_bytes_per_token."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import conftest
from conftest import cache_setup, make_gpt
from pretrain import accounting
from pretrain.accounting import count_params, decode_bytes_per_token
from model import GPT, PRESETS, GPTConfig, ModelError
from pretrain import generate as generation
from pretrain.generate import decode_step, generate


pytestmark = pytest.mark.usefixtures('one_thread')   # tests/conftest.py


tiny = conftest.tiny_config


OPTIONS = [dict(qk_norm=True), dict(mlp='relu2'), dict(zero_init_proj=True), dict(logit_softcap=15.0),
           dict(qk_norm=True, mlp='relu2', zero_init_proj=True, logit_softcap=30.0, norm='rmsnorm', pos_emb='rope',
                n_kv_head=2, bias=False, tie_weights=False, pad_vocab_multiple=64)]


# ----------------------------------------------------------------------------- config and accounting

def test_options_default_off_and_gpt2_unchanged():
    c = GPTConfig()
    assert (c.qk_norm, c.zero_init_proj, c.logit_softcap, c.mlp) == (False, False, None, 'gelu')
    assert count_params(GPTConfig(**PRESETS['gpt2']))['n_params'] == 124_439_808
    # no option adds, removes or reshapes a parameter: the same state_dict as GPT-2's
    ref = {k: v.shape for k, v in make_gpt(tiny()).state_dict().items()}
    for kw in OPTIONS[:4]:
        assert {k: v.shape for k, v in make_gpt(tiny(**kw)).state_dict().items()} == ref, kw
    assert GPTConfig(mlp='relu2').hidden_dim == 3072


@pytest.mark.parametrize('bad', [dict(logit_softcap=0), dict(logit_softcap=-1.0), dict(logit_softcap=math.inf),
                                 dict(logit_softcap=math.nan), dict(logit_softcap=True), dict(logit_softcap='30'),
                                 dict(mlp='foo'), dict(qk_norm='yes'), dict(zero_init_proj=1)])
def test_bad_option_values_raise_one_line_model_error(bad):
    with pytest.raises(ModelError) as e:
        tiny(**bad)
    assert '\n' not in str(e.value) and 'bad model config' in str(e.value) and next(iter(bad)) in str(e.value)


def test_count_params_equals_built_model_for_every_combination():
    n = 0
    for norm, bias, tie, mlp, qk, kv, pe in itertools.product(('layernorm', 'rmsnorm'), (True, False), (True, False),
                                                              ('gelu', 'swiglu', 'relu2'), (False, True), (1, 2, 4),
                                                              ('learned', 'rope')):
        c = tiny(norm=norm, bias=bias, tie_weights=tie, mlp=mlp, qk_norm=qk, n_kv_head=kv, pos_emb=pe,
                 logit_softcap=15.0 if n % 2 else None, zero_init_proj=n % 3 == 0)
        with torch.device('meta'):   # shapes only
            m = GPT(c)
        assert sum(p.numel() for p in m.parameters()) == count_params(c)['n_params'], c
        n += 1
    assert n == 288


def test_flops_unchanged_by_options_that_add_no_matmul():
    base = accounting.flops_per_token(tiny())
    for kw in OPTIONS[:4]:
        for f in ('palm', 'kaplan'):
            assert accounting.flops_per_token(tiny(**kw), f) == accounting.flops_per_token(tiny(), f), kw
    assert base == 6 * (count_params(tiny())['n_params_nonembed'] + 61 * 32) + 12 * 2 * 4 * 8 * 16


def test_decode_bytes_per_token_hand_count():
    # learned positions, tied, bias: per layer 2 norms (32 + 32 each), c_q/c_k/c_v 3*(32*32 + 32), c_proj 32*32 + 32,
    # c_fc 32*128 + 128, mlp c_proj 128*32 + 32; ln_f 64; lm_head 61*32 (tied: read by the matmul)
    layer = 2 * 64 + 32 * 96 + 96 + 32 * 32 + 32 + 32 * 128 + 128 + 128 * 32 + 32
    weights = 2 * layer + 64 + 61 * 32
    kv = 2 * 2 * 4 * 8 * 10   # k and v, 2 layers, 4 heads of 8, 10 positions
    assert decode_bytes_per_token(tiny(), 2, 10) == 2 * (weights + 32 + 32 + kv)   # + a wte row and a wpe row
    # GQA with one kv head, rope (no wpe row), no bias, rmsnorm, padded vocab 64, batch 4 (weights shared)
    c = tiny(n_kv_head=1, pos_emb='rope', bias=False, norm='rmsnorm', pad_vocab_multiple=64, tie_weights=False)
    layer = 2 * 32 + 32 * (4 + 2) * 8 + 32 * 32 + 32 * 128 + 128 * 32
    weights = 2 * layer + 32 + 64 * 32
    kv = 2 * 2 * 1 * 8 * 16
    assert decode_bytes_per_token(c, 4, 16, batch_size=4) == 4 * (weights / 4 + 32 + kv)
    # GPT-2 124M in bf16 at batch 1 with a full cache: 247.3 MB of weights (N + the lm_head) + 37.7 MB of
    # keys and values: 285 MB a token, so ~17,000 tokens/s would saturate an H200's 4.8 TB/s
    gpt2 = 2 * (85_056_000 + 50257 * 768 + 2 * 768 + 2 * 12 * 768 * 1024)
    assert decode_bytes_per_token(GPTConfig(**PRESETS['gpt2']), 2, 1024) == gpt2 == 285_058_560


# ----------------------------------------------------------------------------- each option trains

@pytest.mark.parametrize('kw', OPTIONS)
def test_option_forward_backward_and_adamw_reduces_loss(kw):
    c = tiny(**kw)
    model = make_gpt(c).train()
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 61, (4, 16), generator=g)
    targets = torch.randint(0, 61, (4, 16), generator=g)
    logits, loss = model(idx, targets)
    assert logits.shape == (4, 16, c.padded_vocab_size) and loss.dtype == torch.float32
    assert abs(loss.item() - math.log(61)) < 0.3   # near uniform at init
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        _, loss = model(idx, targets)
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.2, losses


def test_zero_init_proj_zeroes_only_the_residual_projections():
    c = tiny(zero_init_proj=True, n_layer=3)
    zero, ref = make_gpt(c), make_gpt(tiny(n_layer=3))
    zp, rp = dict(zero.named_parameters()), dict(ref.named_parameters())
    projs = [n for n in zp if n.endswith('c_proj.weight')]
    assert len(projs) == 6 and all('.attn.c_proj' in n or '.mlp.c_proj' in n for n in projs)
    for n, p in zp.items():
        if n in projs:
            assert (p == 0).all() and rp[n].abs().sum() > 0, n
        else:   # everything else as GPT-2's init, draw for draw
            assert torch.equal(p, rp[n]), n
    # every block starts as the identity: the logits are the lm_head of ln_f of the embeddings
    idx = torch.randint(0, 61, (2, 10))
    t = zero.transformer
    h = t.ln_f(t.wte(idx) + t.wpe(torch.arange(10)))
    assert torch.allclose(zero(idx)[0], zero.lm_head(h), atol=1e-6)
    # and they learn: the projections get a gradient at the first step
    zero(idx, idx)[1].backward()
    assert all(zp[n].grad.abs().sum() > 0 for n in projs)


def test_qk_norm_makes_attention_invariant_to_the_scale_of_q_and_k():
    """Parameter-free RMS norm per head: scaling the query and key projections changes nothing (exactly so
    with a negligible eps); without qk_norm it sharpens the attention."""
    idx = torch.randint(0, 61, (2, 12))
    for qk, same in ((True, True), (False, False)):
        model = make_gpt(tiny(qk_norm=qk, pos_emb='rope', n_kv_head=2, norm_eps=1e-12))
        before = model(idx)[0]
        with torch.no_grad():
            for block in model.transformer.h:
                for lin in (block.attn.c_q, block.attn.c_k):   # the query (4 heads) and key (2 heads) projections
                    lin.weight *= 30.0
                    lin.bias *= 30.0
        assert torch.allclose(model(idx)[0], before, atol=1e-5) == same


def test_relu2_mlp_is_squared_relu():
    model = make_gpt(tiny(mlp='relu2'))
    mlp = model.transformer.h[0].mlp
    x = torch.randn(2, 5, 32)
    assert mlp.c_fc.weight.shape == (128, 32)
    assert torch.allclose(mlp(x), mlp.c_proj(F.relu(mlp.c_fc(x)) ** 2), atol=1e-6)


def test_logit_softcap_bounds_logits_for_the_loss_and_for_sampling(monkeypatch):
    cap = 3.0
    capped, raw = make_gpt(tiny(logit_softcap=cap)), make_gpt(tiny())
    with torch.no_grad():   # large weights: uncapped logits far beyond the cap
        for m in (capped, raw):
            m.lm_head.weight.mul_(300.0)
    idx = torch.randint(0, 61, (2, 12))
    logits, loss = capped(idx, idx)
    raw_logits = raw(idx)[0]
    assert raw_logits.abs().max() > 10 * cap
    assert logits.dtype == torch.float32 and logits.abs().max() <= cap
    assert torch.allclose(logits, cap * torch.tanh(raw_logits / cap), atol=1e-5)
    assert torch.allclose(loss, F.cross_entropy(logits.view(-1, 61), idx.view(-1)))
    # generation samples from the capped logits, on every path
    seen = []
    real_sample_next = generation.sample_next
    monkeypatch.setattr(generation, 'sample_next', lambda lg, *a: seen.append(lg) or real_sample_next(lg, *a))
    monkeypatch.setattr(torch, 'compile', lambda fn, **kw: fn)
    for kv, fast in ((False, False), (True, False), (True, True)):
        generate(capped, idx[:, :3], 20, temperature=1.0, kv_cache=kv, compile_decode=fast,
                        generator=torch.Generator().manual_seed(0))
    assert len(seen) == 60 and max(s.abs().max() for s in seen) <= cap


# ----------------------------------------------------------------------------- static decode step

DECODE_COMBOS = [dict(), dict(norm='rmsnorm', pos_emb='rope', mlp='swiglu', n_kv_head=2, bias=False,
                              tie_weights=False, pad_vocab_multiple=64),
                 dict(pos_emb='rope', n_kv_head=1, qk_norm=True, mlp='relu2', logit_softcap=5.0)]


@pytest.fixture
def no_compile(monkeypatch):
    """torch.compile replaced by the identity: the static path runs eagerly, and calls are counted."""
    calls = []
    monkeypatch.setattr(torch, 'compile', lambda fn, **kw: calls.append(kw) or fn)
    return calls


@pytest.mark.parametrize('kw', DECODE_COMBOS)
def test_decode_step_logits_equal_full_forward(kw):
    model, idx, full, cache = cache_setup(kw)
    with torch.no_grad():
        model.features(idx[:, :5], cache)   # prefill positions 0..4
        shapes = set()
        for t in range(5, 16):
            logits = decode_step(model, idx[:, t:t + 1], cache, torch.tensor([t]))
            shapes.add((tuple(logits.shape), tuple(cache.k[0].shape)))
            assert torch.allclose(logits, full[:, t], atol=1e-5), t
    assert shapes == {((2, model.config.padded_vocab_size), (2, model.config.kv_heads, 16, 8))}   # fixed shapes
    assert cache.pos == 5   # left to the caller


@pytest.mark.parametrize('kw', DECODE_COMBOS)
def test_compile_decode_same_tokens_as_cache_and_no_cache_past_block_size(kw, no_compile):
    model = make_gpt(tiny(**kw))
    prompt = torch.randint(0, 61, (3, 5))
    runs = [generate(model, prompt, 30, temperature=0, compile_decode=True),   # 35 > block_size 16: slides
            generate(model, prompt, 30, temperature=0),
            generate(model, prompt, 30, temperature=0, kv_cache=False)]
    assert runs[0].shape == (3, 35) and all(torch.equal(runs[0], r) for r in runs[1:])
    # sampling too, with the same seed
    run = lambda **k: generate(model, prompt, 25, temperature=0.9, top_k=30,
                               generator=torch.Generator().manual_seed(3), **k)
    assert torch.equal(run(compile_decode=True), run())
    # a prompt longer than the window, and a window that is never filled
    long = torch.randint(0, 61, (2, 20))
    assert torch.equal(generate(model, long, 5, temperature=0, compile_decode=True),
                       generate(model, long, 5, temperature=0))
    assert torch.equal(generate(model, prompt, 4, temperature=0, compile_decode=True), runs[1][:, :9])


def test_compile_decode_compiles_once_per_model_and_keeps_its_cache(no_compile):
    model = make_gpt(tiny(pos_emb='rope'))
    prompt = torch.randint(0, 61, (2, 4))
    a = generate(model, prompt, 6, temperature=0, compile_decode=True)
    cache = model._decode['cache']
    buffers = [t.data_ptr() for t in cache.k]
    b = generate(model, prompt, 6, temperature=0, compile_decode=True)
    assert torch.equal(a, b) and no_compile == [dict(fullgraph=True)]   # once; plain compile off CUDA
    assert model._decode['cache'] is cache and [t.data_ptr() for t in cache.k] == buffers
    generate(model, prompt[:1], 6, temperature=0, compile_decode=True)   # a new batch size: a new cache only
    assert len(no_compile) == 1 and model._decode['cache'] is not cache
    generate(model, prompt, 6, temperature=0, kv_cache=False, compile_decode=True)   # ignored without the cache
    assert 'decode' not in ''.join(model.state_dict())
    with torch.autocast('cpu', dtype=torch.bfloat16):   # another dtype: the kept cache is reallocated
        generate(model, prompt, 3, temperature=0, compile_decode=True)
    assert model._decode['cache'].k[0].dtype == torch.bfloat16


@pytest.mark.slow
@pytest.mark.filterwarnings('ignore::DeprecationWarning')   # torch.jit deprecation notes from inside inductor
def test_compile_decode_really_compiled_on_cpu():
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    model = make_gpt(tiny(pos_emb='rope', n_kv_head=2, qk_norm=True))
    prompt = torch.randint(0, 61, (2, 3))
    fast = generate(model, prompt, 20, temperature=0, compile_decode=True)   # 23 > 16: the window slides
    assert torch.equal(fast, generate(model, prompt, 20, temperature=0, kv_cache=False))
    assert torch.equal(generate(model, prompt, 20, temperature=0, compile_decode=True), fast)
    generate(model, torch.randint(0, 61, (2, 9)), 5, temperature=0, compile_decode=True)
    assert counters['stats']['unique_graphs'] == 1   # one graph for every position, prompt and call


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_compile_decode_on_cuda_with_cuda_graphs_bf16():
    """CUDA graphs (mode='reduce-overhead'): in float32 the same greedy tokens as without the cache; in bf16
    autocast the compiled step's logits match the full forward up to bf16 rounding (err), which rounds
    differently in fused kernels than in eager ops: greedy tokens then agree up to the first near-tie
    (top-2 logits closer than the rounding), where either token is a correct argmax."""
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    model = make_gpt(tiny(pos_emb='rope', n_kv_head=2, block_size=64, n_layer=4, n_embd=128)).cuda()
    prompt = torch.randint(0, 61, (3, 5), device='cuda', generator=torch.Generator(device='cuda').manual_seed(0))
    with torch.no_grad():
        fp32 = generate(model, prompt, 80, temperature=0, compile_decode=True)   # past block_size 64
        assert torch.equal(fp32, generate(model, prompt, 80, temperature=0, kv_cache=False))
        with torch.autocast('cuda', dtype=torch.bfloat16):
            fast = [generate(model, prompt, 80, temperature=0, compile_decode=True) for _ in range(2)]
            ref = generate(model, prompt, 80, temperature=0, kv_cache=False)
            assert torch.equal(fast[0], fast[1])   # the second call replays the same graph
            # the compiled step itself, position by position, against the full forward
            seq = ref[:, :64]
            full = model(seq)[0][..., :61].float()
            step, cache = model._decode['step'], model._decode['cache']
            cache.pos = 0
            model.features(seq[:, :8], cache)
            pos, err = torch.tensor([8], device='cuda'), 0.0
            for t in range(8, 64):
                torch.compiler.cudagraph_mark_step_begin()
                logits = step(model, seq[:, t:t + 1].contiguous(), cache, pos)   # contiguous: generate's strides
                err = max(err, (logits[:, :61].float() - full[:, t]).abs().max().item())
                pos += 1
            assert err < 0.04 * full.abs().max().item(), (err, full.abs().max().item())   # a few bf16 ulps
            for row in range(3):
                diff = (fast[0][row] != ref[row]).nonzero()
                if len(diff):
                    t = diff[0].item()
                    top2 = model(ref[row:row + 1, max(0, t - 64):t])[0][0, -1, :61].float().topk(2).values
                    assert top2[0] - top2[1] < 4 * err, (row, t, top2, err)
    assert counters['inductor']['cudagraph_skips'] == 0, dict(counters['inductor'])
