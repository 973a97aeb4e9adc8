"""The GPU suite: what only a CUDA device exercises. Every test is marked `gpu` and skipped without CUDA; on one
H100/H200 the whole file runs in well under 3 minutes (tiny models; one GPT-2-sized compile is the slowest part).

    python -m pytest -m gpu            # or: bash benchmarks/gpu.sh (these tests, then the benchmarks)
"""
import contextlib
import json
import os
from functools import partial
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import conftest
from pretrain.checkpoint import load_checkpoint, load_model
from pretrain.data import write_json
from conftest import ROOT, compared, rel, write_shard
from model import GPT, GPTConfig
from pretrain.generate import generate
from pretrain.runtime import setup_runtime
from pretrain.training import configure_optimizer, train_step

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')]

SMALL = dict(block_size=128, vocab_size=512, n_layer=2, n_head=4, n_embd=128)


@contextlib.contextmanager
def full_float32_matmuls():
    """float32 matmuls in float32, not TF32 (setup_runtime turns TF32 on; it rounds to 10 mantissa bits), restored
    afterwards: comparisons at 1e-5 need it."""
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision('highest')
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(precision)


def loss_grads(model, x, y, dtype=None, scale=1.0):
    """Parameter gradients (float64, by name) of the training loss path, model(x, y, return_logits=False), with
    CUDA autocast in dtype (None: float32) and the loss multiplied by scale before backward, divided after."""
    model.zero_grad(set_to_none=True)
    with torch.autocast('cuda', dtype=dtype or torch.float32, enabled=dtype is not None):
        _, loss = model(x, y, return_logits=False)
    (loss * scale).backward()
    return {n.removeprefix('_orig_mod.'): p.grad.double() / scale
            for n, p in model.named_parameters() if p.grad is not None}


run = partial(conftest.run_python, timeout=600, one_thread=False)   # (args) -> CompletedProcess


def knobs(**over):
    from pretrain.configurator import script_defaults
    return SimpleNamespace(**{**script_defaults(os.path.join(ROOT, 'train.py')), **over})


def batches(vocab, B=8, T=128, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(vocab, (B, T + 1), generator=g).cuda() for _ in range(n)]


def steps(model, cfg, rt, data, n_steps=8):
    """Train on a fixed batch cycle; return the losses."""
    opt = configure_optimizer(model, cfg, rt.device)
    scaler = torch.amp.GradScaler('cuda', enabled=rt.dtype == 'float16')
    out = []
    for s in range(n_steps):
        buf = data[s % len(data)]
        loss = train_step(model, opt, scaler, [(buf[:, :-1], buf[:, 1:])], rt, 1.0)
        out.append(loss.item())
    return out, opt, scaler


def learnable_gpt2_ids(n, seed):
    """GPT-2 ids a small model learns within a few steps: a fixed 16-token phrase of rare ids (spread over the
    whole vocabulary, so the padded rows' neighbours are used) repeated, an <|endoftext|> every 500 tokens. Loss
    falls from ln(50257) = 10.8 toward 0, so a resume that lost optimizer state or data position shows."""
    phrase = np.random.default_rng(seed).integers(0, 50256, 16)
    ids = np.resize(phrase, n)
    ids[::500] = 50256
    return ids


@pytest.fixture(scope='module')
def gpt2_data(tmp_path_factory):
    """GPT-2-token shards of a learnable sequence (learnable_gpt2_ids)."""
    d = tmp_path_factory.mktemp('data') / 'phrase_gpt2'
    d.mkdir()
    train_ids, val_ids = learnable_gpt2_ids(400_000, 0), learnable_gpt2_ids(40_000, 0)
    write_shard(str(d / 'phrase_train_000000.bin'), train_ids.astype(np.uint16))
    write_shard(str(d / 'phrase_val_000000.bin'), val_ids.astype(np.uint16))
    write_json(str(d / 'meta.json'), {'tokenizer': 'gpt2', 'vocab_size': 50257, 'eot': 50256, 'complete': True,
                                      'train': {'shards': 1, 'tokens': 400_000, 'max_token': int(train_ids.max())},
                                      'val': {'shards': 1, 'tokens': 40_000, 'max_token': int(val_ids.max())}})
    return str(d)


def test_device_setup_resolves_an_index():
    """The crash this suite exists for: 'cuda' without an index must reach set_device as cuda:N."""
    for name in ('auto', 'cuda', 'cuda:0'):
        rt = setup_runtime({'device': name, 'dtype': 'auto'})
        assert rt.device.type == 'cuda' and rt.device.index is not None
        assert rt.dtype == ('bfloat16' if torch.cuda.is_bf16_supported() else 'float16')


@pytest.mark.parametrize('dtype', ['bfloat16', 'float16', 'float32'])
def test_mixed_precision_training_steps_learn(dtype):
    """bf16 autocast, fp16 autocast with GradScaler (the scaler must actually scale), and TF32 float32: the loss
    of a fixed batch cycle falls, and stays finite."""
    if dtype == 'bfloat16' and not torch.cuda.is_bf16_supported():
        pytest.skip('no bf16 on this GPU')
    rt = setup_runtime({'device': 'cuda', 'dtype': dtype})
    torch.manual_seed(0)
    model = GPT(GPTConfig(**SMALL)).cuda()
    losses, opt, scaler = steps(model, knobs(learning_rate=3e-3), rt, batches(512, n=2), 30)
    assert all(np.isfinite(losses)) and losses[-1] < 0.8 * losses[0], losses
    if dtype == 'float16':
        assert scaler.is_enabled() and scaler.get_scale() > 1.0


@pytest.mark.parametrize('chunked', [False, True])
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_low_precision_gradients_equal_float32_through_the_training_loss(dtype, chunked, monkeypatch):
    """fp16 autocast with a GradScaler's 65536 (the scale train_step's GradScaler starts at), and bf16: gradients
    through the training loss path within 1e-2 of float32's, per parameter, on GPT-2's padded vocabulary and a
    realistic token count (8 x 1024: the per-token gradient 1/8192 is already near fp16's smallest normal), on
    both loss paths. The fused path formed its gradient in fp16: NaN and 83% zeroed entries on an H200."""
    import pretrain.lm_loss as L
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip('no bf16 on this GPU')
    if chunked:
        monkeypatch.setattr(L, 'CE_PLAIN_MAX_BYTES', 0)
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=1024, vocab_size=50257, n_layer=2, n_head=4, n_embd=128, pad_vocab_multiple=64)
    model = GPT(cfg).cuda()
    buf = torch.randint(50257, (8, 1025), device='cuda')
    x, y = buf[:, :-1], buf[:, 1:]
    with full_float32_matmuls():
        want = loss_grads(model, x, y)
    got = loss_grads(model, x, y, dtype, 65536.0 if dtype == torch.float16 else 1.0)
    for n in compared(want):
        assert torch.isfinite(got[n]).all(), n
        assert rel(got[n], want[n]) < 1e-2, (n, rel(got[n], want[n]))


def test_fused_adamw_is_used_and_matches_the_foreach_step():
    """The fused AdamW step equals the foreach one given the same gradients. Both optimizers are fed the same
    gradient tensors (not each its own forward/backward: after one step the weights differ by rounding, and TF32
    forwards amplified that beyond rtol 1e-4 in wte)."""
    rt = setup_runtime({'device': 'cuda', 'dtype': 'float32'})
    torch.manual_seed(0)
    a = GPT(GPTConfig(**SMALL)).cuda()
    b = GPT(GPTConfig(**SMALL)).cuda()
    b.load_state_dict(a.state_dict())
    cfg = knobs(learning_rate=1e-3)
    opt = configure_optimizer(a, cfg, rt.device)
    assert opt.defaults.get('fused') is True
    ref = torch.optim.AdamW([{'params': [p for p in b.parameters() if p.dim() >= 2], 'weight_decay': 0.1},
                             {'params': [p for p in b.parameters() if p.dim() < 2], 'weight_decay': 0.0}],
                            lr=1e-3, betas=(0.9, 0.95), foreach=True)
    g = torch.Generator(device='cuda').manual_seed(1)
    for _ in range(3):
        for p, q in zip(a.parameters(), b.parameters()):
            p.grad = torch.randn(p.shape, device='cuda', generator=g) * 1e-2
            q.grad = p.grad.clone()
        opt.step()
        ref.step()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7, msg=n)


@pytest.mark.parametrize('chunked', [False, True])
def test_compiled_training_gradients_equal_eager(chunked, monkeypatch):
    """torch.compile through the training loss path, model(x, y, return_logits=False), in float32 (no TF32): the
    loss and every parameter's gradient equal eager's (relative 1e-5), on both loss paths, with GPT-2's padded
    vocabulary, tied weights and ignored targets. On torch 2.11 the fused path's compiled gradients were all zero."""
    import torch._dynamo
    import pretrain.lm_loss as L
    if chunked:
        monkeypatch.setattr(L, 'CE_PLAIN_MAX_BYTES', 0)
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**SMALL, 'vocab_size': 50257, 'pad_vocab_multiple': 64})).cuda()
    buf = torch.randint(50257, (8, 129), device='cuda')
    x, y = buf[:, :-1], buf[:, 1:].clone()
    y[0, :10] = -1
    with full_float32_matmuls():
        want = loss_grads(model, x, y)
        got = loss_grads(torch.compile(model), x, y)
    torch._dynamo.reset()
    assert set(got) == set(want)
    for n in compared(want):
        assert got[n].abs().sum() > 0 and rel(got[n], want[n]) < 1e-5, (n, rel(got[n], want[n]))


def test_compile_matches_eager_and_evaluation_does_not_recompile_per_eval():
    """torch.compile gives eager's loss; evaluation (eval mode, no_grad, a short last batch padded to full) adds
    one compiled graph the first time and none at later evaluations."""
    import torch._dynamo
    from pretrain.training import evaluate
    torch._dynamo.reset()
    rt = setup_runtime({'device': 'cuda', 'dtype': 'bfloat16' if torch.cuda.is_bf16_supported() else 'float16'})
    torch.manual_seed(0)
    model = GPT(GPTConfig(**SMALL)).cuda()
    compiled = torch.compile(model)
    buf = batches(512, n=1)[0]
    with rt.autocast:
        eager = model(buf[:, :-1], buf[:, 1:], return_logits=False)[1].item()
        comp = compiled(buf[:, :-1], buf[:, 1:], return_logits=False)[1].item()
    assert abs(eager - comp) < 2e-2 * eager

    class Loader:   # 10 sequences: batch 4 leaves a short last batch of 2
        n_chunks = 10

        def batch(self, first, n, device):
            b = torch.cat([buf] * 2)[first:first + n]
            return b[:, :-1].to(device), b[:, 1:].to(device)
    counts = []
    for _ in range(3):
        evaluate(compiled, Loader(), 10, rt, 4)
        counts.append(torch._dynamo.utils.counters['stats']['unique_graphs'])
    assert counts[1] == counts[0] == counts[2], counts


def test_sdpa_flash_path_runs_for_the_model_shape():
    """Training attention goes through SDPA's flash (or cuDNN/efficient) kernel, not the math fallback: with only
    the fused backends allowed, a bf16 forward/backward must still run."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    if not torch.cuda.is_bf16_supported():
        pytest.skip('flash attention needs bf16-capable hardware here')
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**SMALL, 'n_embd': 256, 'n_head': 4})).cuda()
    buf = batches(512, n=1)[0]
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]), \
            torch.autocast('cuda', dtype=torch.bfloat16):
        loss = model(buf[:, :-1], buf[:, 1:])[1]
    loss.backward()
    assert torch.isfinite(loss)


def test_kv_cache_equals_no_cache_greedy_in_bf16():
    if not torch.cuda.is_bf16_supported():
        pytest.skip('no bf16')
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**SMALL, 'pos_emb': 'rope'})).cuda().eval()
    idx = torch.randint(512, (2, 8), device='cuda')
    with torch.autocast('cuda', dtype=torch.bfloat16):
        a = generate(model, idx, 40, temperature=0, kv_cache=True)
        b = generate(model, idx, 40, temperature=0, kv_cache=False)
    # bf16 rounding differs between a one-token step and a full-window forward: a near-tie may flip a token, so
    # the rows must agree on a long common prefix and at least 90% of the tokens
    assert (a == b).float().mean() > 0.9 and torch.equal(a[:, :16], b[:, :16])


def test_eager_generation_never_runs_cudnn_attention():
    """Eager decoding gives attention a new key length at every step, and cuDNN attention (torch 2.11's first choice
    on Hopper) builds a plan per length: batch-1 decoding ran ~10x slow on its first pass on an H200. Generation's
    attention goes through flash/efficient kernels: no cuDNN attention op runs, with or without the KV cache."""
    from torch.profiler import ProfilerActivity, profile
    if not torch.cuda.is_bf16_supported():
        pytest.skip('no bf16')
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**SMALL, 'pos_emb': 'rope'})).cuda().eval()
    idx = torch.randint(512, (1, 8), device='cuda')
    for kv_cache in (True, False):
        with torch.autocast('cuda', dtype=torch.bfloat16), \
                profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            generate(model, idx, 12, temperature=0, kv_cache=kv_cache)
        ops = {e.name for e in prof.events()}
        assert any('scaled_dot_product' in n for n in ops), sorted(ops)[:20]
        assert not any('cudnn_attention' in n for n in ops), sorted(n for n in ops if 'cudnn' in n)


def test_train_resume_sample_end_to_end_on_cuda(gpt2_data, tmp_path):
    """train.py on CUDA (bf16, compile), resume to the same final loss as one uninterrupted run, the checkpoint
    loads on the CPU, and sample.py prints text from it on CUDA."""
    out, ref = tmp_path / 'run', tmp_path / 'ref'
    common = ['train.py', f'--data_dir={gpt2_data}', '--n_layer=2', '--n_head=4', '--n_embd=128', '--block_size=128',
              '--batch_size=8', '--total_batch_size=2048', '--warmup_iters=2', '--eval_interval=5', '--eval_iters=2',
              '--log_interval=1', '--checkpoint_interval=5', '--device=cuda', '--compile=True', '--pad_vocab_multiple=64']
    r = run(common + [f'--out_dir={out}', '--max_iters=5'])
    assert r.returncode == 0, r.stderr[-2000:]
    r = run(common + [f'--out_dir={out}', '--max_iters=10', '--init_from=resume'])
    assert r.returncode == 0, r.stderr[-2000:]
    r = run(common + [f'--out_dir={ref}', '--max_iters=10'])
    assert r.returncode == 0, r.stderr[-2000:]
    final, first = {}, {}
    for d in (out, ref):
        recs = [json.loads(line) for line in open(d / 'log.jsonl')]
        evals = {x['step']: x['val_loss'] for x in recs if x['type'] == 'eval'}
        first[d], final[d] = evals[min(evals)], evals[10]
    assert final[ref] < 0.7 * first[ref], (first[ref], final[ref])   # it learns (CPU float32: 10.9 -> 5.6)
    assert abs(final[out] - final[ref]) < 1e-2 * final[ref]   # bf16 + compile: bit-exactness is not promised on GPU
    ckpt = load_checkpoint(str(out), for_resume=True)            # written on CUDA, read on the CPU
    assert all(t.device.type == 'cpu' for t in ckpt['model'].values())
    model = load_model('resume', str(out))[0]
    assert model(torch.zeros(1, 4, dtype=torch.long))[0].shape[-1] == 50304
    r = run(['sample.py', f'--out_dir={out}', '--device=cuda', '--max_new_tokens=20', '--start=Hello'])
    assert r.returncode == 0 and r.stdout.startswith('Hello') and 'tokens/s' in r.stderr, r.stderr


def test_cpu_checkpoint_resumes_on_cuda(gpt2_data, tmp_path):
    common = ['train.py', f'--data_dir={gpt2_data}', '--n_layer=1', '--n_head=2', '--n_embd=64', '--block_size=64',
              '--batch_size=4', '--total_batch_size=256', '--warmup_iters=1', '--eval_interval=3', '--eval_iters=1',
              f'--out_dir={tmp_path}', '--dtype=float32']
    assert run(common + ['--max_iters=3', '--device=cpu']).returncode == 0
    r = run(common + ['--max_iters=6', '--device=cuda', '--init_from=resume'])
    assert r.returncode == 0, r.stderr[-2000:]
    assert load_checkpoint(str(tmp_path))['step'] == 6


def test_bench_record_on_cuda_has_mfu_from_the_peak_table():
    r = run(['bench.py', '--device=cuda', '--n_layer=2', '--n_head=4', '--n_embd=128', '--block_size=128',
             '--batch_size=8', '--data=random', '--vocab_size=512', '--warmup_steps=2', '--timed_steps=3',
             '--repeats=2', '--sample_tokens=16', '--json=-'])
    assert r.returncode == 0, r.stderr[-2000:]
    rec = json.loads(r.stdout.strip().splitlines()[-1])
    from pretrain.hardware import gpu_peak_tflops
    peak = gpu_peak_tflops(torch.cuda.get_device_name(0), getattr(torch, rec['dtype']))
    if peak is None:
        assert rec['mfu'] is None and 'unknown' in rec['peak_source']
    else:
        assert rec['peak_tflops_per_device'] == pytest.approx(peak)
        assert 0 < rec['mfu']['palm'] < 1 and rec['peak_source'].startswith('datasheet')
    assert rec['device'].startswith('cuda:') and rec['peak_memory_bytes'] > 0 and rec['sampling']['kv_cache_tok_s'] > 0
