"""
Accounting: the one place that counts a GPT's parameters, its training FLOPs per token, the bytes a decoded
token reads and the memory a GPU holds while training (train_memory). The parameters are read off GPT(config)
itself, built on the meta device (as nanochat does: tensors with shapes and no storage, whose initialisation
computes nothing), so a change to model.py counts without a change here and a 175B model counts in a fraction of a
second. train.py's run log and MFU, bench.py, scaling.py's plans and fits all use these numbers.

References: Kaplan et al. 2020, "Scaling Laws for Neural Language Models", Table 1; Chowdhery et al. 2022,
"PaLM", Appendix B (model FLOPs utilisation); nanoGPT's estimate_mfu; gpt-fast's memory-bandwidth utilisation;
Rajbhandari et al. 2019, "ZeRO" (model state per GPU); Korthikanti et al. 2022, "Reducing Activation Recomputation
in Large Transformer Models" (activations).
Pinned by tests: GPT-2 124M has 124,439,808 parameters (124,337,664 without biases) and 875,062,886,400 PaLM
FLOPs per 1024-token sequence without biases.
"""
import dataclasses
import functools
import math

import torch

from model import GPT, GPTConfig, ModelError

_VOCAB_MATRICES = ('transformer.wte.weight', 'lm_head.weight')   # padded_vocab_size rows; a tied lm_head is wte
_EMBEDDINGS = (*_VOCAB_MATRICES, 'transformer.wpe.weight')


@functools.lru_cache(maxsize=256)   # keyed on the config's fields: the planner counts many shapes, some many times
def _parameters(fields):
    """(name, shape) of every parameter of GPT(GPTConfig(*fields)) built on the meta device, tied weights once
    (named_parameters), as the model holds them (vocabulary rows padded)."""
    with torch.device('meta'):
        model = GPT(GPTConfig(*fields))
    return tuple((name, tuple(p.shape)) for name, p in model.named_parameters())


def count_params(config):
    """Parameters of GPT(config), as the model built on the meta device holds them.
    n_params: all parameters, vocab counted unpadded (padding rows never affect the output or get a gradient).
    n_params_nonembed: Kaplan et al. 2020's N: everything except the token embedding, the position embedding
    and an untied lm_head (the per-vocabulary matrices). Norms and biases are included."""
    params = _parameters(dataclasses.astuple(config))
    pad = (config.padded_vocab_size - config.vocab_size) * config.n_embd
    return dict(n_params=sum(math.prod(s) - pad * (name in _VOCAB_MATRICES) for name, s in params),
                n_params_nonembed=sum(math.prod(s) for name, s in params if name not in _EMBEDDINGS))


def flops_per_token(config, formula='palm', seq_len=None):
    """Training FLOPs (forward + backward) per token at context length seq_len (default block_size).
    'palm': PaLM Appendix B, as nanoGPT's estimate_mfu: 6N + 12*L*H*Q*T, N = the parameters that take part in
        matmuls: all parameters minus the position embedding (for untied weights also minus the token
        embedding, which is a lookup; the lm_head matmul is counted once either way). 12*L*H*Q*T counts
        QK^T and AV in full (the causal mask's saving is not subtracted, as in PaLM).
    'kaplan': Kaplan et al. 2020 Table 1: C_forward = 2N + 2*n_layer*n_ctx*d_attn with N non-embedding;
        training = 3 x forward (C ~ 6ND). It leaves out the de-embedding matmul (2*d_model*n_vocab).
    Both count matmuls only: norms, activations, qk_norm and logit_softcap (element-wise) add nothing; relu2
    has gelu's matmuls."""
    T = config.block_size if seq_len is None else seq_len
    L, H, Q = config.n_layer, config.n_head, config.head_dim
    n_nonembed = count_params(config)['n_params_nonembed']
    if formula == 'palm':
        N = n_nonembed + config.vocab_size * config.n_embd
        return 6 * N + 12 * L * H * Q * T
    if formula == 'kaplan':
        return 3 * (2 * n_nonembed + 2 * L * T * H * Q)
    raise ModelError(f"unknown FLOP formula {formula!r}, expected 'palm' or 'kaplan'")


def decode_bytes_per_token(config, dtype_bytes, kv_len, batch_size=1):
    """Bytes read from memory per generated token when batch_size sequences decode one token per step,
    each attending over kv_len cached positions. A decode step is memory-bound: it reads every weight once
    (shared by the batch) for ~2 FLOPs per weight and row. So bytes/token x tokens/s / peak bandwidth is the
    memory-bandwidth utilisation (MBU, as gpt-fast reports it). Counted, at dtype_bytes per number:
    the weights that take part in a matmul or a norm (n_params_nonembed, biases and norms included) and the
    whole lm_head matrix, padding rows included (the matmul reads them); per sequence, one row of wte (and
    of wpe) for the lookups, and keys + values: 2 * n_layer * kv_heads * head_dim * kv_len. Not counted:
    activations, logits, RoPE tables (all small next to the weights at batch 1). generate.decode_step attends
    over the whole block_size cache whatever the position, so for it kv_len = block_size is what it reads."""
    c = config
    weights = count_params(c)['n_params_nonembed'] + c.padded_vocab_size * c.n_embd
    rows = c.n_embd * (2 if c.pos_emb == 'learned' else 1)
    kv = 2 * c.n_layer * c.kv_heads * c.head_dim * kv_len
    return dtype_bytes * (weights + batch_size * (rows + kv)) / batch_size


# -----------------------------------------------------------------------------
# per-GPU training memory

_DTYPE_BYTES = {'float32': 4, 'bfloat16': 2, 'float16': 2}


def _numel(shape, world=1):
    """Elements of one rank's shard: FSDP2 splits dim 0 into world_size chunks of ceil(dim0 / world_size) rows
    (torch.chunk, the last ones shorter or empty); this counts the first (largest) chunk, rank 0's."""
    return -(-shape[0] // world) * math.prod(shape[1:])


def _norm_bytes(config):
    """Bytes per token one norm keeps for the backward pass (float32, also under autocast)."""
    return 4 * config.n_embd + 8 if config.norm == 'layernorm' else 8 * config.n_embd + 4


def activation_bytes_per_token_layer(config, compute_dtype='float32'):
    """Bytes that one block's forward keeps for its backward, per token: the tensors autograd saves, read off
    model.py's Block, as Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models",
    sec. 4.1) count them for their 16-bit GPT block (34*s*b*h bytes plus 5*a*s^2*b for the attention matrices,
    which flash attention never keeps). Checked tensor by tensor on CPU (tests/test_memory.py).
    a = bytes of the compute dtype; the residual stream stays float32 under autocast (the sum of a float32 and
    a 16-bit tensor), and the norms run in float32:
      ln_1, ln_2 (_norm_bytes): float32; LayerNorm keeps its input (4C) and the row's mean and 1/std (8);
        RMSNorm (torch's F.rms_norm is a composite of ops) keeps its input, 1/rms and the normalised x (8C + 4)
      c_attn: its input aC and its output a(H+2Hkv)hd (v is a view of it and is saved by attention)
      RoPE: the rotated q and k, new tensors: a(H+Hkv)hd; qk_norm: 1/rms per head 4(H+Hkv), under a 16-bit
        autocast the float32 copies of q and k it normalises, 4(H+Hkv)hd, and a copy of the attention output
        for c_proj, aC (the normalised q is laid out head-major, so transpose(1, 2).contiguous() copies)
      attention (SDPA, flash/efficient kernels): q, k, v (counted above), its output aC (c_proj's input, the same
        storage) and the float32 log-sum-exp per head 4H; the T x T attention matrix is never kept
      c_fc: its input aC; the MLP: gelu and relu2 keep the hidden twice (the activation's input and c_proj's
        input: 2aF), swiglu keeps c_fc's 2F output plus silu(gate) and the product (4aF)
      dropout (p > 0): a 1-byte mask for each of the two residual dropouts (2C), as CUDA's kernels keep them (and
        flash attention's dropout keeps only its RNG state); CPU kernels keep float32 masks and, for attention
        with dropout, the T x T matrices of the math path: not modelled (no pretraining config uses dropout)."""
    c = config
    a = _DTYPE_BYTES[compute_dtype]
    C, H, Hkv, hd, F = c.n_embd, c.n_head, c.kv_heads, c.head_dim, c.hidden_dim
    n = 2 * _norm_bytes(c)
    n += a * C + a * (H + 2 * Hkv) * hd
    if c.qk_norm:
        n += 4 * (H + Hkv) + (4 * (H + Hkv) * hd if a < 4 else 0) + a * C
    if c.pos_emb == 'rope':
        n += a * (H + Hkv) * hd
    n += a * C + 4 * H
    n += a * C + (4 if c.mlp == 'swiglu' else 2) * a * F
    if c.dropout > 0:
        n += 2 * C
    return n


# torch.utils.checkpoint (preserve_rng_state=True, its default) keeps, per checkpointed block, the CPU generator's
# state (torch.get_rng_state(): a 5,056-byte uint8 tensor, the Mersenne Twister's) and on CUDA also a few bytes of
# the CUDA generator's state, to replay dropout exactly in the recomputation.
CHECKPOINT_RNG_BYTES = 5056


def _loss_bytes(config, tokens, compute_dtype, parallel):
    """(saved, transient): bytes the training loss (model.GPT.forward with return_logits=False) keeps for the
    backward pass after ln_f, and the largest extra it allocates at once, for `tokens` = B x T rows.
    a = bytes of the compute dtype, V the vocabulary, Vp the padded one.
    Plain path (the float32 logits fit lm_loss.CE_PLAIN_MAX_BYTES): lm_head keeps its input in the compute dtype
    (aC per token: ln_f's float32 output, or autocast's 16-bit copy of it) and, under DDP with a 16-bit dtype,
    autocast's copy of the lm_head weight (a*Vp*C; FSDP's gathered weights are already 16-bit); the logits themselves
    (a*Vp per token) and their float32 copy are not kept. logit_softcap keeps tanh's float32 output (4Vp);
    log_softmax its float32 output (4V); nll_loss the int64 targets (8) and a float32 scalar. Transient: the
    backward starts with two more float32 (tokens, V) tensors at once, nll_loss's gradient and log_softmax's (8V
    per token): the step's peak, with every block's activations still held. (Measured on CPU, tests/test_memory.py;
    with a padded vocabulary in float32 the slice's padded gradient adds 4(Vp - V), with logit_softcap the forward's
    float32 capped logits can peak a little higher: both left out.)
    Chunked path (lm_loss.linear_cross_entropy): only its float32 gradients dL/dh (4C per token) and dL/dW (4*Vp*C).
    Transient, inside its forward: the same two gradients again before their division by the token count, the
    compute-dtype copies of h and W (16-bit dtypes only) and, for one chunk of rows = CE_CHUNK_ELEMENTS // Vp, three
    float32 (rows, Vp) buffers (the logits, logits - lse, softmax): within one such buffer of the peak measured on
    CPU, where the exact figure depends on when Python frees the loop's last chunk."""
    from pretrain.lm_loss import CE_CHUNK_ELEMENTS, CE_PLAIN_MAX_BYTES   # at each call: they may be lowered
    c = config
    a = _DTYPE_BYTES[compute_dtype]
    C, V, Vp = c.n_embd, c.vocab_size, c.padded_vocab_size
    if tokens * Vp * 4 <= CE_PLAIN_MAX_BYTES:
        saved = tokens * (a * C + 4 * V + 8) + 4
        if c.logit_softcap is not None:
            saved += tokens * 4 * Vp
        if parallel == 'ddp' and a < 4:
            saved += a * Vp * C
        return saved, tokens * 8 * V
    rows = min(tokens, max(1, CE_CHUNK_ELEMENTS // Vp))
    copies = a * (tokens + Vp) * C if a < 4 else 0
    grads = 4 * (tokens + Vp) * C
    return grads, grads + copies + 3 * 4 * rows * Vp


def train_memory(config, micro_batch, world_size=1, parallel='ddp', activation_checkpointing=False,
                 compute_dtype='bfloat16', optimizer='adamw'):
    """Estimated bytes per GPU while training GPT(config) on micro_batch sequences of block_size tokens per
    forward: {'weights', 'grads', 'optimizer', 'activations', 'total'} (ints). total is their sum: the step's peak,
    which comes at the start of the backward pass with the gradients already held (as during gradient accumulation)
    and the activations at their largest; allocator caching and fragmentation, the CUDA context (~0.5-1 GB) and
    communication buffers come on top.

    Model state, 16 bytes per parameter with AdamW (ZeRO: Rajbhandari et al. 2019, sec. 3.1, "mixed-precision
    training with Adam" holds 4 + 4 + 8 here since the master weights are the float32 weights themselves):
    float32 weights (4), float32 gradients (4), AdamW's exp_avg and exp_avg_sq (8) plus its step count (a float32
    scalar tensor per parameter tensor); Muon keeps one momentum buffer (4) for the blocks' matrices and AdamW's
    state for the rest. Weights also count the RoPE tables (buffers).
    'ddp': all of it on every GPU. 'fsdp' (ZeRO-3 / FSDP2 fully_shard per block, then the root): every tensor's
    rows split world_size ways (rank 0's shard, the largest, is counted), and on top the unsharded parameters
    gathered at once: the root group's for the whole step (FSDP2 keeps the root unsharded between forward and
    backward) and two blocks' (the one computing and the next one prefetched) in the compute dtype (FSDP2's
    MixedPrecisionPolicy), plus one block's unsharded gradients in float32 before their reduce-scatter.

    Activations: what the forward pass leaves allocated for the backward pass, plus the largest transient on
    top of it in the backward pass, for eager PyTorch (torch.compile fuses the loss and keeps less). Measured on
    CPU by tests/test_memory.py: the saved tensors byte for byte, and the step's peak from the allocator's record.
      held: n_layer blocks' activations (activation_bytes_per_token_layer, per token); outside the blocks the
        int64 token ids, wpe's position ids, ln_f's input and statistics and what the loss keeps (_loss_bytes);
        with DDP and a 16-bit compute dtype, autocast's 16-bit copies of the blocks' matrices (a bytes per weight;
        with FSDP those are the gathered parameters, freed after each block).
      transient: the loss's (_loss_bytes): in the plain path two float32 (tokens, V) gradients, the step's peak.
    Activation checkpointing (GPT.activation_checkpointing, torch.utils.checkpoint per block, Chen et al. 2016):
      held: each block's float32 input (4C per token) and its RNG state (CHECKPOINT_RNG_BYTES), and the same
        outside the blocks; the blocks' own activations and weight copies are not kept.
      transient: the largest of the loss's; one block's activations, recomputed in the backward pass; and, with
        DDP in 16 bits, autocast's copies of every block's matrices, which its cache holds until the forward ends.
        The loss's wins at GPT-2's vocabulary (8V = 402 KB per token; one Llama-7B block keeps 219 KB in bf16).
        The recomputed block's backward temporaries (the gradients of its activations) are not counted: they
        decide the peak only when one block's activations rival 8V bytes per token (narrow vocabularies).
    Not modelled: dropout's masks on CPU (see activation_bytes_per_token_layer) and, under FSDP2's bf16
    param_dtype, the residual stream in bf16 rather than float32 (counted as float32: slightly high)."""
    if parallel not in ('ddp', 'fsdp'):
        raise ModelError(f"parallel={parallel!r}, expected 'ddp' or 'fsdp'")
    if compute_dtype not in _DTYPE_BYTES:
        raise ModelError(f"compute_dtype={compute_dtype!r}, expected one of {sorted(_DTYPE_BYTES)}")
    if optimizer not in ('adamw', 'muon'):
        raise ModelError(f"optimizer={optimizer!r}, expected 'adamw' or 'muon'")
    if not (isinstance(world_size, int) and world_size >= 1 and isinstance(micro_batch, int) and micro_batch >= 1):
        raise ModelError(f"world_size={world_size!r} and micro_batch={micro_batch!r} must be ints >= 1")
    c = config
    a = _DTYPE_BYTES[compute_dtype]
    W = world_size if parallel == 'fsdp' else 1
    # (shape, in a block): one FSDP group per block of transformer.h, the rest in the root group
    shapes = [(s, name.startswith('transformer.h.')) for name, s in _parameters(dataclasses.astuple(c))]
    matrices = [s for s, blk in shapes if blk and len(s) == 2]   # Muon's parameters; autocast copies these
    local = sum(_numel(s, W) for s, _ in shapes)
    weights = 4 * local + (2 * c.block_size * c.head_dim * 4 if c.pos_emb == 'rope' else 0)
    grads = 4 * local
    if optimizer == 'adamw':
        opt = 8 * local + 4 * len(shapes)
    else:   # muon_param_groups: the blocks' 2-D weights get a momentum buffer, the rest AdamW
        rest = [s for s, blk in shapes if not (blk and len(s) == 2)]
        opt = 4 * sum(_numel(s, W) for s in matrices) + 8 * sum(_numel(s, W) for s in rest) + 4 * len(rest)
    if parallel == 'fsdp':
        block = sum(_numel(s) for s, blk in shapes if blk) // c.n_layer
        root = sum(_numel(s) for s, blk in shapes if not blk)
        weights += a * (root + 2 * block)
        grads += 4 * max(block, root)

    tokens = micro_batch * c.block_size
    per_layer = activation_bytes_per_token_layer(c, compute_dtype) * tokens
    # outside the blocks: the int64 token ids (the embedding keeps them), wpe's position ids, the embedding
    # dropout's mask, ln_f's input and statistics, then the loss
    outside = tokens * (8 + _norm_bytes(c))
    if c.pos_emb == 'learned':
        outside += 8 * c.block_size
    if c.dropout > 0:
        outside += tokens * c.n_embd
    loss_saved, loss_transient = _loss_bytes(c, tokens, compute_dtype, parallel)
    copies = 0   # autocast's 16-bit copies of the blocks' matrices (DDP: the weights are float32)
    if parallel == 'ddp' and a < 4:
        copies = a * sum(_numel(s) for s in matrices)
    if activation_checkpointing:
        held = c.n_layer * (4 * c.n_embd * tokens + CHECKPOINT_RNG_BYTES) + outside + loss_saved
        activations = held + max(loss_transient, per_layer, copies)
    else:
        activations = c.n_layer * per_layer + copies + outside + loss_saved + loss_transient
    out = dict(weights=weights, grads=grads, optimizer=opt, activations=activations)
    out = {k: int(v) for k, v in out.items()}
    out['total'] = sum(out.values())
    return out
