import dataclasses
import itertools
import json
import math

import pytest
import torch

import conftest
from conftest import cache_setup, make_gpt
from pretrain import data
from pretrain.gpt2_weights import hf_tensors
from pretrain.accounting import count_params, flops_per_token
from model import GPT, PRESETS, GPTConfig, ModelError, apply_rope, rope_tables
from pretrain.generate import GENERATE_SDPA_BACKENDS, generate, sample_next


pytestmark = pytest.mark.usefixtures('one_thread')   # tests/conftest.py


tiny = conftest.tiny_config


def n_weights(model):
    return sum(p.numel() for p in model.parameters())   # parameters() counts a tied tensor once


COMBOS = [dict(norm=n, pos_emb=p, mlp=m, tie_weights=t, bias=b, n_kv_head=k, pad_vocab_multiple=v)
          for n, p, m, t, b, k, v in itertools.product(('layernorm', 'rmsnorm'), ('learned', 'rope'),
                                                       ('gelu', 'swiglu'), (True, False), (True, False),
                                                       (1, 2, 4), (1, 64))]


# ----------------------------------------------------------------------------- config

def test_config_roundtrips_through_asdict_and_presets_build():
    for name, fields in PRESETS.items():
        c = GPTConfig(**fields)
        assert GPTConfig(**dataclasses.asdict(c)) == c, name
        assert all(v is None or type(v) in (str, int, float, bool) for v in dataclasses.asdict(c).values())
    assert GPTConfig(pad_vocab_multiple=64).padded_vocab_size == 50304
    assert GPTConfig(mlp='swiglu').hidden_dim == 2048          # 8/3 * 768, param-matched to 4 * 768 GELU
    assert GPTConfig(mlp='swiglu', n_embd=32, n_head=4).hidden_dim == 128   # 85.3 rounded up to 64s


@pytest.mark.parametrize('bad', [dict(norm='batchnorm'), dict(pos_emb='alibi'), dict(mlp='relu'),
                                 dict(n_embd=30), dict(n_kv_head=3), dict(n_kv_head=0), dict(n_layer=0),
                                 dict(dropout=1.0), dict(pos_emb='rope', n_embd=12, n_head=4)])
def test_bad_config_raises_one_line_model_error(bad):
    with pytest.raises(ModelError) as e:
        tiny(**bad)
    assert '\n' not in str(e.value) and 'bad model config' in str(e.value)


# ----------------------------------------------------------------------------- forward, loss, init

def test_every_option_combination_shapes_loss_grads_and_param_count():
    B, T = 2, 8
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 61, (B, T), generator=g)
    targets = torch.randint(0, 61, (B, T), generator=g)
    targets[0, 0] = -1   # ignored
    for kw in COMBOS:
        c = tiny(**kw)
        model = make_gpt(c)
        logits, loss = model(idx, targets)
        assert logits.shape == (B, T, c.padded_vocab_size), kw
        assert model(idx)[1] is None
        # at init the logits are small (std-0.02 weights): the loss is near uniform over the real vocabulary
        assert loss.dtype == torch.float32 and abs(loss.item() - math.log(61)) < 0.3, kw
        # the loss is over the real vocabulary only and skips targets == -1
        ref = torch.nn.functional.cross_entropy(logits[..., :61].reshape(-1, 61)[1:], targets.reshape(-1)[1:])
        assert torch.allclose(loss, ref, atol=1e-6), kw
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters()), kw
        assert model.lm_head.weight.grad[61:].abs().sum() == 0   # padding rows never learn
        # count_params counts the module's parameters, less the padding rows
        pad_rows = (c.padded_vocab_size - 61) * 32 * (1 if c.tie_weights else 2)
        assert n_weights(model) == count_params(c)['n_params'] + pad_rows, kw
        if not kw['bias']:
            assert all(not n.endswith('.bias') for n, _ in model.named_parameters())


def test_gpt2_init_std_and_tying():
    c = tiny(n_layer=8, n_embd=256, n_head=4, vocab_size=1000)
    model = make_gpt(c)
    assert model.lm_head.weight is model.transformer.wte.weight
    sd = dict(model.named_parameters())
    assert abs(sd['transformer.h.0.attn.c_q.weight'].std().item() - 0.02) < 0.001
    assert abs(sd['transformer.h.0.mlp.c_fc.weight'].std().item() - 0.02) < 0.001
    resid = 0.02 / math.sqrt(2 * 8)
    for n in ('transformer.h.3.attn.c_proj.weight', 'transformer.h.3.mlp.c_proj.weight'):
        assert abs(sd[n].std().item() - resid) < 0.05 * resid, n
    assert sd['transformer.h.0.attn.c_v.bias'].abs().sum() == 0
    assert (sd['transformer.h.0.ln_1.weight'] == 1).all()
    untied = make_gpt(tiny(tie_weights=False))
    assert untied.lm_head.weight is not untied.transformer.wte.weight


def test_padded_model_is_the_same_function():
    a, b = make_gpt(tiny()), make_gpt(tiny(pad_vocab_multiple=64))
    with torch.no_grad():
        for (n, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
            pb[:pa.size(0)].copy_(pa)
    idx = torch.randint(0, 61, (2, 10))
    (la, lossa), (lb, lossb) = a(idx, idx), b(idx, idx)
    assert lb.shape[-1] == 64
    assert torch.allclose(la, lb[..., :61], atol=1e-6) and torch.allclose(lossa, lossb, atol=1e-6)


@pytest.mark.parametrize('pos_emb', ['learned', 'rope'])
def test_causality_future_tokens_never_change_past_logits(pos_emb):
    model = make_gpt(tiny(pos_emb=pos_emb, n_kv_head=2))
    idx = torch.randint(0, 61, (1, 12))
    changed = idx.clone()
    changed[0, 7:] = (changed[0, 7:] + 1) % 61
    a, b = model(idx)[0], model(changed)[0]
    assert torch.allclose(a[:, :7], b[:, :7], atol=1e-6)
    assert not torch.allclose(a[:, 7:], b[:, 7:], atol=1e-3)   # the test can fail: later logits do move


def test_forward_longer_than_block_size_is_a_clear_error():
    with pytest.raises(ModelError, match='block_size'):
        make_gpt(tiny())(torch.zeros(1, 17, dtype=torch.long))


# ----------------------------------------------------------------------------- GQA

@pytest.mark.parametrize('n_kv_head', [1, 2])
def test_gqa_equals_multi_head_with_shared_kv_heads(n_kv_head):
    """A GQA model is the MHA model whose query heads in each group read the same k/v head (query head h
    uses kv head h // (n_head / n_kv_head)). Build that MHA model from the GQA weights and compare."""
    H, hd = 4, 8
    gqa = make_gpt(tiny(n_kv_head=n_kv_head, pos_emb='rope'))
    mha = make_gpt(tiny(n_kv_head=H, pos_emb='rope'), seed=1)
    assert gqa.transformer.h[0].attn.c_k.weight.shape == (n_kv_head * hd, 32)
    assert mha.transformer.h[0].attn.c_k.weight.shape == (H * hd, 32)
    with torch.no_grad():
        for (name, p), q in zip(gqa.state_dict().items(), mha.state_dict().values()):
            if '.c_k.' not in name and '.c_v.' not in name:
                q.copy_(p)
                continue
            q.copy_(p.view(n_kv_head, hd, *p.shape[1:]).repeat_interleave(H // n_kv_head, 0).flatten(0, 1))
    idx = torch.randint(0, 61, (2, 12))
    assert torch.allclose(gqa(idx)[0], mha(idx)[0], atol=1e-5)
    c = tiny(n_kv_head=n_kv_head)
    saved = 2 * (H - n_kv_head) * hd * (32 + 1) * c.n_layer   # smaller k and v projections (+ biases)
    assert count_params(tiny())['n_params'] - count_params(c)['n_params'] == saved


# ----------------------------------------------------------------------------- RoPE

def roformer_reference(x, positions, theta):
    """RoFormer (Su et al. 2021) eq. 14-15 literally, in float64: the d x d block-diagonal rotation
    R^d_{theta,m} with 2x2 blocks [[cos m t_i, -sin m t_i], [sin m t_i, cos m t_i]] on the pairs
    (x_{2i}, x_{2i+1}), t_i = theta^(-2(i-1)/d), i = 1 .. d/2; applied as R @ x for each position m."""
    d = x.size(-1)
    out = torch.empty_like(x, dtype=torch.float64)
    for t, m in enumerate(positions):
        R = torch.zeros(d, d, dtype=torch.float64)
        for i in range(d // 2):
            a = m * theta ** (-2.0 * i / d)
            R[2 * i, 2 * i], R[2 * i, 2 * i + 1] = math.cos(a), -math.sin(a)
            R[2 * i + 1, 2 * i], R[2 * i + 1, 2 * i + 1] = math.sin(a), math.cos(a)
        out[..., t, :] = x[..., t, :].double() @ R.T
    return out


def test_rope_matches_float64_roformer_reference():
    d, T, theta = 16, 40, 10000.0
    x = torch.randn(2, 3, T, d)
    cos, sin = rope_tables(d, 1024, theta)
    offset = 900   # large positions: where float32 angles would lose precision
    ours = apply_rope(x, cos[offset:offset + T], sin[offset:offset + T])
    # we pair dim i with i + d/2 (rotate-half); the paper pairs 2i with 2i+1: the same rotation after
    # interleaving the two halves
    perm = torch.stack([torch.arange(d // 2), torch.arange(d // 2) + d // 2], dim=1).flatten()
    ref = roformer_reference(x[..., perm], range(offset, offset + T), theta)
    assert torch.allclose(ours[..., perm].double(), ref, atol=2e-6)
    # and the point of RoPE: <R_m q, R_n k> depends only on m - n
    q, k = torch.randn(d, dtype=torch.float64), torch.randn(d, dtype=torch.float64)
    dot = lambda m, n: (roformer_reference(q.view(1, d), [m], theta) * roformer_reference(k.view(1, d), [n], theta)).sum()
    assert torch.allclose(dot(5, 2), dot(103, 100)) and not torch.allclose(dot(5, 2), dot(5, 3))


def test_rope_model_has_no_position_table():
    """Positions enter only through RoPE: the logits of a window depend on its tokens, not on anything else
    (no learned position table exists, and none is saved)."""
    model = make_gpt(tiny(pos_emb='rope'))
    assert 'transformer.wpe.weight' not in model.state_dict() and 'rope_cos' not in model.state_dict()
    assert 'transformer.wpe.weight' in make_gpt(tiny()).state_dict()


# ----------------------------------------------------------------------------- KV cache and generation

GEN_COMBOS = [dict(), dict(norm='rmsnorm', pos_emb='rope', mlp='swiglu', n_kv_head=2, bias=False,
                           tie_weights=False, pad_vocab_multiple=64),
              dict(pos_emb='rope', n_kv_head=1)]


@pytest.mark.parametrize('kw', GEN_COMBOS)
def test_kv_cache_logits_equal_full_forward(kw):
    model, idx, full, cache = cache_setup(kw)
    parts = [model(idx[:, :5], kv_cache=cache)[0]]               # prefill into an empty cache
    parts.append(model(idx[:, 5:9], kv_cache=cache)[0])          # a chunk after a cached prefix
    parts += [model(idx[:, t:t + 1], kv_cache=cache)[0] for t in range(9, 16)]   # one token at a time
    assert cache.pos == 16
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-5)
    with pytest.raises(ModelError):   # the cache is full: a 17th position does not exist
        model(idx[:, :1], kv_cache=cache)


@pytest.mark.parametrize('kw', GEN_COMBOS)
def test_generate_cached_equals_uncached_greedy_past_block_size(kw):
    model = make_gpt(tiny(**kw))
    prompt = torch.randint(0, 61, (3, 5))
    n_new = 30   # 35 tokens with block_size 16: the window slides 19 times
    cached = generate(model, prompt, n_new, temperature=0)
    uncached = generate(model, prompt, n_new, temperature=0, kv_cache=False)
    assert cached.shape == (3, 35) and torch.equal(cached[:, :5], prompt)
    assert torch.equal(cached, uncached)
    # the uncached path is the definition: each token is the argmax given the last block_size tokens
    for t in (5, 16, 34):
        ctx = cached[:, max(0, t - 16):t]
        assert torch.equal(model(ctx)[0][:, -1, :61].argmax(-1), cached[:, t])


def test_generate_sampling_is_seeded_and_equal_with_and_without_cache():
    model = make_gpt(tiny(pos_emb='rope', n_kv_head=2))
    prompt = torch.randint(0, 61, (2, 4))
    run = lambda seed, **kw: generate(model, prompt, 25, temperature=0.8, top_k=20, top_p=0.9,
                                            generator=torch.Generator().manual_seed(seed), **kw)
    a = run(1)
    assert torch.equal(a, run(1)) and torch.equal(a, run(1, kv_cache=False))
    assert not torch.equal(a, run(2))


def test_generate_restores_training_mode_and_handles_zero_tokens():
    model = make_gpt(tiny(dropout=0.1)).train()
    prompt = torch.randint(0, 61, (1, 3))
    assert torch.equal(generate(model, prompt, 0), prompt)
    a, b = generate(model, prompt, 10, temperature=0), generate(model, prompt, 10, temperature=0, kv_cache=False)
    assert model.training and torch.equal(a, b)   # dropout was off during generation


def test_padded_ids_are_never_generated():
    model = make_gpt(tiny(pad_vocab_multiple=64))
    with torch.no_grad():
        model.lm_head.weight[61:] = torch.randn(3, 32) * 5   # padding logits would dominate if not dropped
    prompt = torch.randint(0, 61, (4, 2))
    assert model(prompt)[0][..., 61:].max() > model(prompt)[0][..., :61].max()
    for kw in (dict(temperature=0), dict(temperature=1.0), dict(temperature=2.0, top_k=200, top_p=1.0)):
        assert generate(model, prompt, 20, generator=torch.Generator().manual_seed(0), **kw).max() < 61


def test_sample_next_filters():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    g = torch.Generator().manual_seed(0)
    draw = lambda n=400, **kw: {sample_next(logits, 4, generator=g, **kw).item() for _ in range(n)}
    assert draw(temperature=0) == {0}
    assert draw(top_k=1) == {0}
    assert draw(top_k=0) == {0, 1, 2, 3}   # 0 = off, as in Hugging Face
    assert draw(top_k=2) == {0, 1}
    assert draw(top_p=0.7) == {0, 1}          # 0.5 < 0.7 <= 0.5 + 0.3
    assert draw(top_p=0.85) == {0, 1, 2}
    assert draw(top_p=0.3) == {0}
    assert draw() == {0, 1, 2, 3}
    assert draw(top_k=3, top_p=0.85) == {0, 1, 2}
    assert sample_next(torch.tensor([[0.0, 1.0, 9.0]]), 2, temperature=0).item() == 1   # padded column 2 dropped
    # temperature sharpens: at 0.1 the top token is drawn almost always
    draws = [sample_next(logits, 4, temperature=0.1, generator=g).item() for _ in range(200)]
    assert draws.count(0) > 190


# ----------------------------------------------------------------------------- Hugging Face GPT-2

def hf_model(tmp_path, **save_kw):
    transformers = pytest.importorskip('transformers')
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=97, n_positions=24, n_embd=32, n_layer=2, n_head=4)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():   # HF init zeroes biases and sets norms to 1: randomise everything
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    hf.save_pretrained(tmp_path, **save_kw)
    return hf


def test_from_pretrained_matches_hugging_face_logits(tmp_path):
    hf = hf_model(tmp_path)
    assert (tmp_path / 'model.safetensors').exists()
    model = GPT.from_pretrained(str(tmp_path)).eval()
    assert model.config.block_size == 24 and model.config.vocab_size == 97
    c = model.config   # GPT-2: the modded-nanogpt options stay off
    assert (c.qk_norm, c.zero_init_proj, c.logit_softcap, c.mlp) == (False, False, None, 'gelu')
    idx = torch.randint(0, 97, (2, 24))
    with torch.no_grad():
        ref = hf(idx).logits
    ours = model(idx)[0]
    assert ref.abs().max() > 1   # not a trivially small comparison
    assert torch.allclose(ours, ref, atol=1e-5, rtol=1e-5), (ours - ref).abs().max()
    # the same model from pytorch_model.bin, and padded to a multiple of 64
    sd = dict(hf_tensors(str(tmp_path)))
    safetensors_torch = pytest.importorskip('safetensors.torch')
    for k, v in safetensors_torch.load_file(tmp_path / 'model.safetensors').items():
        assert torch.equal(sd[k], v), k
    (tmp_path / 'model.safetensors').unlink()
    torch.save({k: v.clone() for k, v in sd.items()}, tmp_path / 'pytorch_model.bin')
    padded = GPT.from_pretrained(str(tmp_path), pad_vocab_multiple=64).eval()
    assert padded.lm_head.weight.shape[0] == 128
    assert torch.allclose(padded(idx)[0][..., :97], ref, atol=1e-5, rtol=1e-5)
    g = generate(padded, idx[:, :4], 8, temperature=0)
    assert torch.equal(g, generate(model, idx[:, :4], 8, temperature=0, kv_cache=False))


def test_from_pretrained_errors_are_one_line(tmp_path):
    def err(*a, **kw):
        with pytest.raises(ModelError) as e:
            GPT.from_pretrained(*a, **kw)
        assert '\n' not in str(e.value)
        return str(e.value)
    assert 'neither a local directory' in err('no-such-model')
    assert 'override' in err('gpt2', n_layer=3)
    assert 'override' in err('gpt2', qk_norm=True)
    (tmp_path / 'config.json').write_text(json.dumps({'model_type': 'llama'}))
    assert "only 'gpt2'" in err(str(tmp_path))
    hf_model(tmp_path)
    (tmp_path / 'model.safetensors').write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"a": ')
    assert 'cannot read weights' in err(str(tmp_path))
    (tmp_path / 'model.safetensors').unlink()
    assert 'no model.safetensors' in err(str(tmp_path))


def test_from_pretrained_by_name_downloads_and_caches(tmp_path, monkeypatch):
    """By name: files fetched from $HF_ENDPOINT (a local server standing in for huggingface.co)."""
    repo = tmp_path / 'srv' / 'openai-community' / 'gpt2' / 'resolve' / 'main'
    repo.mkdir(parents=True)
    hf_model(repo)
    with conftest.serve_dir(tmp_path / 'srv') as url:
        monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
        monkeypatch.setenv('HF_ENDPOINT', url)
        model = GPT.from_pretrained('gpt2')
    cached = tmp_path / 'cache' / 'gpt-scaling' / 'gpt2'
    assert (cached / 'model.safetensors').read_bytes() == (repo / 'model.safetensors').read_bytes()
    assert model.config.vocab_size == 97
    assert GPT.from_pretrained('gpt2').config == model.config   # from the cache: the server is gone
    # offline (nothing listens on the port), with no cache: a clear one-line error
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'empty'))
    monkeypatch.setattr(data.time, 'sleep', lambda s: None)   # the downloader's back-off, without the wait
    with pytest.raises(ModelError, match='cannot download .*offline') as e:
        GPT.from_pretrained('gpt2-medium')
    assert '\n' not in str(e.value)


# ----------------------------------------------------------------------------- accounting

def test_accounting_pinned_gpt2_values():
    c = GPTConfig(**PRESETS['gpt2'])
    assert count_params(c)['n_params'] == 124_439_808
    nobias = GPTConfig(**{**PRESETS['gpt2'], 'bias': False})
    assert count_params(nobias)['n_params'] == 124_337_664
    assert flops_per_token(nobias, 'palm') * 1024 == 875_062_886_400          # nanoGPT's estimate_mfu
    # Kaplan: N excludes both embeddings; 12 * L * d^2 (+ biases and norms)
    n = count_params(c)['n_params_nonembed']
    assert n == 124_439_808 - 50257 * 768 - 1024 * 768 == 85_056_000
    assert flops_per_token(c, 'kaplan') == 3 * (2 * n + 2 * 12 * 1024 * 768)
    assert flops_per_token(c, 'kaplan', seq_len=256) < flops_per_token(c, 'kaplan')
    with pytest.raises(ModelError):
        flops_per_token(c, 'chinchilla')


def test_accounting_matches_built_models_and_gpt3_nominal_sizes():
    nominal = {'gpt2': 124e6, 'gpt2-medium': 350e6, 'gpt2-large': 774e6, 'gpt2-xl': 1558e6,
               'gpt3-small': 125e6, 'gpt3-medium': 350e6, 'gpt3-large': 760e6, 'gpt3-2.7b': 2.7e9,
               'gpt3-6.7b': 6.7e9, 'gpt3-175b': 175e9}
    for name, fields in PRESETS.items():
        c = GPTConfig(**fields)
        n = count_params(c)['n_params']
        if name in nominal:
            assert abs(n / nominal[name] - 1) < 0.02, (name, n)
        if name in ('gpt2', 'gpt3-175b', 'llama-small'):   # meta device: shapes only, no memory, no init cost
            with torch.device('meta'):
                model = GPT(c)
            pad_rows = (c.padded_vocab_size - c.vocab_size) * c.n_embd * (1 if c.tie_weights else 2)
            assert n_weights(model) == n + pad_rows, name
    # untied weights: PaLM's N counts the lm_head matmul once and the token-embedding lookup not at all
    llama = GPTConfig(**PRESETS['llama-small'])
    p = count_params(llama)
    assert flops_per_token(llama) == 6 * (p['n_params_nonembed'] + 50257 * 768) + 12 * 12 * 12 * 64 * 1024


def test_a_weight_added_to_block_is_counted_in_the_run_log(monkeypatch, tmp_path_factory):
    """A fork that adds a parameter to Block, in model.py alone, gets the right n_params and FLOPs in train.py's run
    log: accounting counts the model itself (built on the meta device), not a formula of its architecture."""
    import model
    import train
    from pretrain import accounting
    from pretrain.scaling.runlog import LOG_NAME
    block_init = model.Block.__init__

    def forked_init(self, config, layer_idx):
        block_init(self, config, layer_idx)
        self.gain = torch.nn.Parameter(torch.ones(config.n_embd))

    data_dir = conftest.word_corpus(tmp_path_factory, 10, 40)
    out = tmp_path_factory.mktemp('fork')
    monkeypatch.setattr(model.Block, '__init__', forked_init)
    accounting._parameters.cache_clear()   # this process has counted the unforked model
    try:
        train.train({**train.DEFAULTS, 'data_dir': data_dir, 'out_dir': str(out), 'n_layer': 2, 'n_head': 2,
                     'n_embd': 32, 'block_size': 32, 'pad_vocab_multiple': 64, 'batch_size': 2,
                     'total_batch_size': 64, 'max_iters': 2, 'warmup_iters': 1, 'eval_interval': 2, 'eval_iters': 1,
                     'device': 'cpu', 'dtype': 'float32'})
        run = next(r for r in map(json.loads, open(out / LOG_NAME)) if r['type'] == 'run')
        c = GPTConfig(**run['model'])
        pad_rows = (c.padded_vocab_size - c.vocab_size) * c.n_embd
        assert run['n_params'] == n_weights(GPT(c)) - pad_rows
    finally:
        monkeypatch.undo()
        accounting._parameters.cache_clear()
    added = c.n_layer * c.n_embd
    assert run['n_params'] - count_params(c)['n_params'] == added
    assert run['n_params_nonembed'] - count_params(c)['n_params_nonembed'] == added
    assert run['flops_per_token'] - flops_per_token(c, seq_len=c.block_size) == 6 * added   # PaLM's 6N


def test_eager_generation_attends_without_cudnn_and_restores_the_backends():
    """Eager generation runs attention with GENERATE_SDPA_BACKENDS (cuDNN attention builds a plan per new key
    length: ~10x slower first-pass decoding on an H200), only inside its own steps; the tokens are those of the
    plain forward (test_generate_cached_equals_uncached_greedy_past_block_size checks them against model(ctx))."""
    from torch.nn.attention import SDPBackend
    assert SDPBackend.CUDNN_ATTENTION not in GENERATE_SDPA_BACKENDS
    model = make_gpt(tiny())
    seen = []
    backends = torch.backends.cuda
    hook = model.transformer.h[0].attn.register_forward_pre_hook(
        lambda mod, args: seen.append((backends.cudnn_sdp_enabled(), backends.flash_sdp_enabled())))
    try:
        prompt = torch.randint(0, 61, (1, 5))
        for kv_cache in (True, False):
            seen.clear()
            out = generate(model, prompt, 6, temperature=0, kv_cache=kv_cache)
            assert seen == [(False, True)] * 6
            assert torch.equal(out[:, 5], model(prompt)[0][:, -1, :61].argmax(-1))
    finally:
        hook.remove()
    assert torch.backends.cuda.cudnn_sdp_enabled()   # restored: training keeps torch's own choice
