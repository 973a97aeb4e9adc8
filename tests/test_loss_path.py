"""The training and evaluation loss, model(x, y, return_logits=False), on each of its two paths (plain cross-entropy
of the padded logits; the chunked linear_cross_entropy used when the logits would not fit): compiled gradients
equal eager ones, fp16 and bf16 autocast gradients stay near float32, evaluation does no gradient work, padded
vocabulary rows never count, against an independent float64 computation."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import pretrain.lm_loss as L
from conftest import compared, rel
from model import GPT, GPTConfig

PATHS = ['plain', 'chunked']



@pytest.fixture
def loss_path(monkeypatch, request):
    """Force one loss path: 'chunked' by a zero byte budget for the plain logits, with 7-row chunks (several
    chunks, the last one short)."""
    if request.param == 'chunked':
        monkeypatch.setattr(L, 'CE_PLAIN_MAX_BYTES', 0)
        monkeypatch.setattr(L, 'CE_CHUNK_ELEMENTS', 7 * 320)
    return request.param


def tiny(**over):
    """vocab 257 padded to 320 (the quick start's byte vocabulary; 50257 -> 50304 in small)."""
    return GPTConfig(**{**dict(block_size=16, vocab_size=257, n_layer=1, n_head=2, n_embd=32, pad_vocab_multiple=64),
                        **over})


def batch(cfg, B=3, T=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, cfg.vocab_size, (B, T), generator=g)
    y = torch.randint(0, cfg.vocab_size, (B, T), generator=g)
    y[0, :5] = -1   # ignored targets (evaluate() pads a short last batch so)
    return x, y


def grads(net, x, y, autocast=None, scale=1.0):
    """Parameter gradients of the training loss, as train_step computes them: autocast around the forward, the loss
    times a GradScaler-like scale backwards, then unscaled in float32."""
    net.zero_grad(set_to_none=True)
    with torch.autocast('cpu', dtype=autocast, enabled=autocast is not None):
        _, loss = net(x, y, return_logits=False)
    (loss * scale).backward()
    return loss.detach(), {n.removeprefix('_orig_mod.'): p.grad.double() / scale   # a compiled net's names
                           for n, p in net.named_parameters() if p.grad is not None}


def loss64(net, x, y):
    """Independent float64 reference: logits of the real vocabulary rows only, soft cap, logsumexp - target."""
    cfg = net.config
    ref = GPT(cfg).double()
    ref.load_state_dict(net.state_dict())
    h = ref.features(x).reshape(-1, cfg.n_embd)
    z = h @ ref.lm_head.weight[:cfg.vocab_size].t()
    if cfg.logit_softcap:
        z = cfg.logit_softcap * torch.tanh(z / cfg.logit_softcap)
    t = y.reshape(-1)
    keep = t != -1
    loss = (torch.logsumexp(z[keep], -1) - z[keep].gather(1, t[keep][:, None])[:, 0]).mean()
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in ref.named_parameters() if p.grad is not None}


# (tie_weights, logit_softcap): the options that change the loss
OPTIONS = [(True, None), (False, 15.0)]


@pytest.mark.slow
@pytest.mark.parametrize('loss_path', PATHS, indirect=True)
@pytest.mark.parametrize('tie,softcap', OPTIONS)
def test_compiled_gradients_through_the_training_loss_equal_eager(loss_path, tie, softcap):
    """torch 2.11's compile gave all-zero gradients through the fused loss (PyTorch issue 180642): the compiled
    model's loss and every gradient equal the eager ones in float32."""
    torch.manual_seed(0)
    cfg = tiny(tie_weights=tie, logit_softcap=softcap)
    net = GPT(cfg)
    x, y = batch(cfg)
    want_loss, want = grads(net, x, y)
    torch._dynamo.reset()
    got_loss, got = grads(torch.compile(net), x, y)
    torch._dynamo.reset()
    assert abs(got_loss.item() - want_loss.item()) < 1e-5 * want_loss.item()
    assert set(got) == set(want)
    for n in compared(want):
        assert rel(got[n], want[n]) < 1e-5, n


@pytest.mark.parametrize('loss_path', PATHS, indirect=True)
@pytest.mark.parametrize('tie,softcap', OPTIONS)
def test_loss_and_gradients_equal_a_float64_reference_over_the_real_vocabulary(loss_path, tie, softcap):
    """Padded columns never enter the softmax: the float32 loss and gradients equal a float64 cross-entropy over
    the first vocab_size logits, even with huge values in the padded weight rows; those rows get no gradient."""
    torch.manual_seed(0)
    cfg = tiny(tie_weights=tie, logit_softcap=softcap)
    net = GPT(cfg)
    with torch.no_grad():
        net.lm_head.weight[cfg.vocab_size:] = 50.0   # would dominate any softmax that let them in
    x, y = batch(cfg)
    ref_loss, ref = loss64(net, x, y)
    loss, got = grads(net, x, y)
    assert abs(loss.item() - ref_loss.item()) < 1e-5 * ref_loss.item()
    for n in compared(ref):
        assert rel(got[n], ref[n]) < 1e-4, n
    assert (net.lm_head.weight.grad[cfg.vocab_size:] == 0).all()   # tied: the same tensor as wte's


@pytest.mark.parametrize('loss_path', PATHS, indirect=True)
def test_the_loss_path_in_float64_is_exact(loss_path):
    """In float64 the path is the reference's function up to float64 rounding (several chunks, padding, a cap)."""
    torch.manual_seed(0)
    cfg = tiny(logit_softcap=15.0, tie_weights=False)
    net = GPT(cfg).double()
    x, y = batch(cfg)
    ref_loss, ref = loss64(net, x, y)
    loss, got = grads(net, x, y)
    assert loss.dtype == torch.float64 and abs(loss.item() - ref_loss.item()) < 1e-12
    for n in compared(ref):
        assert rel(got[n], ref[n]) < 1e-10, n


@pytest.mark.parametrize('loss_path', PATHS, indirect=True)
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_low_precision_gradients_stay_near_float32(loss_path, dtype):
    """fp16 autocast with a GradScaler's loss scale of 65536 (then unscaled), and bf16 autocast: every gradient
    within 1e-2 of float32's (relative, by norm), and finite. 32,768 tokens put the per-token gradient 1/n_tokens
    (3e-5) below fp16's normal range (6.1e-5): a loss gradient formed so in fp16 loses most of its bits (relative
    error 0.65 before the fix; 83% of the entries zeroed at 65,536 tokens of GPT-2)."""
    if loss_path == 'chunked':   # 7-row chunks of 32,768 rows would take long: 8 chunks of 4096 rows
        L.CE_CHUNK_ELEMENTS = 4096 * 320
    torch.manual_seed(0)
    cfg = tiny(block_size=128)
    net = GPT(cfg)
    x, y = batch(cfg, B=256, T=128)
    _, want = grads(net, x, y)
    loss, got = grads(net, x, y, autocast=dtype, scale=65536.0 if dtype == torch.float16 else 1.0)
    assert torch.isfinite(loss)
    for n in compared(want):
        assert torch.isfinite(got[n]).all(), n
        assert rel(got[n], want[n]) < 1e-2, (n, rel(got[n], want[n]))


@pytest.mark.parametrize('loss_path', PATHS, indirect=True)
def test_evaluation_under_no_grad_does_no_gradient_work(loss_path):
    """Under no_grad the loss costs the forward matmuls only: the FLOPs of model(x, y, return_logits=False) equal
    those of the logits forward, and the vocabulary matmul is one (N x C) @ (C x V_padded) product: the padded,
    aligned weight, not its first vocab_size rows."""
    torch.manual_seed(0)
    cfg = tiny()
    net = GPT(cfg)
    x, y = batch(cfg)
    with torch.no_grad():
        with FlopCounterMode(display=False) as logits_path:
            net(x)
        with FlopCounterMode(display=False) as loss_path_flops:
            _, loss = net(x, y, return_logits=False)
        with FlopCounterMode(display=False) as head:
            h = net.features(x)
        head_flops = logits_path.get_total_flops() - head.get_total_flops()
    assert loss.requires_grad is False
    assert head_flops == 2 * x.numel() * cfg.n_embd * cfg.padded_vocab_size
    assert loss_path_flops.get_total_flops() == logits_path.get_total_flops()
    assert torch.isfinite(loss)
    del h


def test_the_path_is_chosen_by_the_size_of_the_float32_logits(monkeypatch):
    """Plain cross-entropy while B*T*V_padded*4 bytes fit CE_PLAIN_MAX_BYTES, the chunked path beyond."""
    calls = []
    real = L.linear_cross_entropy
    monkeypatch.setattr(L, 'linear_cross_entropy', lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = tiny()
    net = GPT(cfg)
    x, y = batch(cfg)
    need = x.numel() * cfg.padded_vocab_size * 4
    for budget, chunked in ((need, False), (need - 1, True)):
        calls.clear()
        monkeypatch.setattr(L, 'CE_PLAIN_MAX_BYTES', budget)
        net(x, y, return_logits=False)
        assert bool(calls) == chunked
    logits, _ = net(x, y)   # return_logits=True always makes the logits
    assert logits.shape == (3, 16, 320)


@pytest.mark.parametrize('loss_path', PATHS, indirect=True)
def test_the_compiled_graph_does_not_grow_with_the_batch(loss_path):
    """Compile time follows the graph's size: the graphs torch.compile builds for the training loss have as many
    nodes at batch 8 as at batch 2 (the chunk loop, 7 rows a chunk here, is not unrolled into them)."""
    sizes = {}
    for B in (2, 8):
        nodes = []

        def count(gm, example_inputs):   # nodes of each graph and of the subgraphs inside it (autograd.Function)
            nodes.append(sum(len(m.graph.nodes) for m in gm.modules() if isinstance(m, torch.fx.GraphModule)))
            return gm.forward
        torch._dynamo.reset()
        torch.manual_seed(0)
        cfg = tiny()
        x, y = batch(cfg, B=B)
        _, loss = torch.compile(GPT(cfg), backend=count)(x, y, return_logits=False)
        loss.backward()
        sizes[B] = nodes
    torch._dynamo.reset()
    assert sizes[2] and sizes[2] == sizes[8], sizes
