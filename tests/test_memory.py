"""The per-GPU training memory estimate (pretrain/accounting.train_memory) against what torch allocates."""
import contextlib

import pytest
import torch

from model import GPT, GPTConfig, ModelError
from pretrain.accounting import train_memory

SHAPES = [  # GPT-2's block; the Llama block (RMSNorm, RoPE, GQA, SwiGLU, untied); the modded-nanogpt options
    dict(),
    dict(norm='rmsnorm', pos_emb='rope', mlp='swiglu', n_kv_head=2, bias=False, tie_weights=False, pad_vocab_multiple=64),
    dict(pos_emb='rope', qk_norm=True, mlp='relu2'),
]


def tiny(**kw):
    return GPTConfig(block_size=32, vocab_size=300, n_layer=3, n_head=4, n_embd=64, **kw)


def saved_activation_bytes(model, x, y, autocast):
    """Bytes of the distinct storages autograd keeps for the backward pass, parameters and buffers left out:
    what the forward adds to memory until the backward frees it."""
    own = {t.untyped_storage().data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    kept = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in own:
            kept[st.data_ptr()] = st.nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
        model(x, y, return_logits=False)
    return sum(kept.values())


@pytest.mark.parametrize('shape', range(len(SHAPES)))
@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_activation_estimate_is_what_autograd_keeps(shape, dtype):
    """train_memory's activations = the bytes autograd saves in a training forward (CPU kernels), exactly, plus the
    fused loss's transient chunk (logits and softmax, float32), which lives only inside its forward."""
    from model import CE_CHUNK_ELEMENTS
    config = tiny(**SHAPES[shape])
    torch.manual_seed(0)
    model = GPT(config)
    B = 3
    x = torch.randint(0, config.vocab_size, (B, config.block_size))
    y = torch.randint(0, config.vocab_size, (B, config.block_size))
    autocast = torch.autocast('cpu', dtype=torch.bfloat16) if dtype == 'bfloat16' else contextlib.nullcontext()
    measured = saved_activation_bytes(model, x, y, autocast)
    est = train_memory(config, B, compute_dtype=dtype)
    chunk = 2 * 4 * min(B * config.block_size, CE_CHUNK_ELEMENTS // config.vocab_size) * config.vocab_size
    assert est['activations'] - chunk == measured
    assert est['total'] == est['weights'] + est['grads'] + est['optimizer'] + est['activations']


@pytest.mark.parametrize('optimizer', ['adamw', 'muon'])
def test_model_state_estimate_is_the_tensors_after_a_step(optimizer):
    """weights, grads and optimizer (DDP, one process: everything on the GPU) = the bytes of the model's
    parameters and buffers, of their gradients and of the optimizer's state after one step, exactly."""
    from pretrain.training import configure_optimizer
    for shape in SHAPES[:2]:
        config = tiny(**shape)
        model = GPT(config)
        cfg = dict(optimizer=optimizer, learning_rate=1e-3, muon_lr=0.02, muon_momentum=0.95, muon_ns_dtype='float32',
                   weight_decay=0.1, beta1=0.9, beta2=0.95)
        opt = configure_optimizer(model, cfg, torch.device('cpu'))
        x = torch.randint(0, config.vocab_size, (2, config.block_size))
        _, loss = model(x, x, return_logits=False)
        loss.backward()
        grads = sum(p.grad.nbytes for p in model.parameters())
        opt.step()
        est = train_memory(config, 2, compute_dtype='float32', optimizer=optimizer)
        nbytes = lambda ts: sum(t.nbytes for t in ts)
        assert est['weights'] == nbytes(model.parameters()) + nbytes(model.buffers())
        assert est['grads'] == grads
        assert est['optimizer'] == sum(nbytes(v for v in s.values() if torch.is_tensor(v)) for s in opt.state.values())


def test_memory_estimate_fsdp_shards_model_state():
    """FSDP: weights, grads and AdamW state per GPU ~ 1/world_size of DDP's, plus the gathered groups; a
    known figure: GPT-2 XL under DDP holds 16 bytes x 1,557,611,200 parameters (+ padding rows) before activations."""
    config = GPTConfig(n_layer=48, n_head=25, n_embd=1600, pad_vocab_multiple=64)
    ddp = train_memory(config, 1, 8, 'ddp')
    n = 1_557_611_200 + (50304 - 50257) * 1600
    assert ddp['weights'] == 4 * n and ddp['grads'] == 4 * n
    assert ddp['optimizer'] == 8 * n + 4 * (2 + 12 * 48 + 2)
    fsdp = train_memory(config, 1, 8, 'fsdp')
    assert ddp['optimizer'] / 8 <= fsdp['optimizer'] < ddp['optimizer'] / 8 * 1.001
    block = 12 * 1600 ** 2 + 13 * 1600
    root = 50304 * 1600 + 1024 * 1600 + 2 * 1600
    assert fsdp['weights'] - ddp['weights'] // 8 == pytest.approx(2 * (root + 2 * block), rel=1e-3)
    assert fsdp['activations'] < ddp['activations']   # no autocast copies of the weights kept
    ckpt = train_memory(config, 1, 8, 'fsdp', activation_checkpointing=True)
    assert ckpt['activations'] < fsdp['activations'] / 3
    with pytest.raises(ModelError):
        train_memory(config, 1, 8, 'zero')
    with pytest.raises(ModelError):
        train_memory(config, 1, 8, compute_dtype='fp8')
