"""
Accounting: the one place that counts a GPT's parameters, its training FLOPs per token, the bytes a decoded
token reads and the memory a GPU holds while training, for train.py's run log and MFU, bench.py and scaling.py.
The parameters are read off GPT(config) built on the meta device (as nanochat: shapes, no storage, no
initialisation compute), so a change to model.py counts without a change here and a 175B model counts in a second.

References: Kaplan et al. 2020, "Scaling Laws for Neural Language Models", Table 1; Chowdhery et al. 2022,
"PaLM", Appendix B (model FLOPs utilisation); nanoGPT's estimate_mfu; gpt-fast's memory-bandwidth utilisation;
Rajbhandari et al. 2019, "ZeRO" (model state per GPU); Korthikanti et al. 2022, "Reducing Activation Recomputation
in Large Transformer Models" (activations).
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
    """(name, shape) of GPT(GPTConfig(*fields))'s parameters on the meta device, tied ones once, vocabulary padded."""
    with torch.device('meta'):
        model = GPT(GPTConfig(*fields))
    return tuple((name, tuple(p.shape)) for name, p in model.named_parameters())


def parameter_shapes(config):
    """(name, shape) of GPT(config)'s parameters, in the model's order, tied ones once: built once per config."""
    return _parameters(dataclasses.astuple(config))


def count_params(config):
    """Parameters of GPT(config). n_params: all, vocab counted unpadded (padding rows never affect the output or get
    a gradient). n_params_nonembed: Kaplan et al. 2020's N: all but the token and position embeddings and an untied
    lm_head (the per-vocabulary matrices); norms and biases included."""
    params = parameter_shapes(config)
    pad = (config.padded_vocab_size - config.vocab_size) * config.n_embd
    return dict(n_params=sum(math.prod(s) - pad * (name in _VOCAB_MATRICES) for name, s in params),
                n_params_nonembed=sum(math.prod(s) for name, s in params if name not in _EMBEDDINGS))


def flops_per_token(config, formula='palm', seq_len=None):
    """Training FLOPs (forward + backward) per token at context length seq_len (default block_size), matmuls only
    (norms, activations, qk_norm and logit_softcap add nothing; relu2 has gelu's matmuls).
    'palm': PaLM Appendix B, as nanoGPT's estimate_mfu: 6N + 12*L*H*Q*T, N = the parameters in matmuls: all but
        the position embedding (and an untied token embedding, a lookup; the lm_head matmul counts once either
        way). 12*L*H*Q*T counts QK^T and AV in full (the causal mask's saving is not subtracted, as in PaLM).
    'kaplan': Kaplan et al. 2020 Table 1: C_forward = 2N + 2*n_layer*n_ctx*d_attn with N non-embedding;
        training = 3 x forward (C ~ 6ND). It leaves out the de-embedding matmul (2*d_model*n_vocab)."""
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
    """Bytes read from memory per generated token when batch_size sequences each decode one token per step over
    kv_len cached positions. Decoding is memory-bound, so bytes/token x tokens/s / peak bandwidth is the
    memory-bandwidth utilisation (MBU, as gpt-fast). Counted at dtype_bytes per number: the weights in a matmul or
    norm (n_params_nonembed) and the whole padded lm_head, read once per step for the batch; per sequence one row
    of wte (and wpe) and the keys + values, 2 * n_layer * kv_heads * head_dim * kv_len. Activations, logits and
    RoPE tables are left out (small at batch 1). generate.decode_step attends over the whole block_size cache, so
    for it kv_len = block_size."""
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


def activation_bytes_per_token_layer(config, compute_dtype='float32', tp=1):
    """Bytes one block's forward keeps for its backward, per token: the tensors autograd saves in model.py's Block
    (checked tensor by tensor, tests/test_memory.py), counted as Korthikanti et al. 2022 sec. 4.1 count their
    16-bit GPT block (34sbh bytes, plus 5as^2b for the attention matrices, which flash attention never keeps).
    a = bytes of the compute dtype; the residual stream and the norms stay float32 under autocast.
      ln_1, ln_2 (_norm_bytes): LayerNorm keeps its input, mean and 1/std (4C + 8), RMSNorm its input, the
        normalised x and 1/rms (8C + 4)
      c_q, c_k, c_v: their input aC (under 16-bit autocast each casts it anew: 3aC); attention (SDPA,
        flash/efficient kernels) keeps q, k and v as it gets them (projected, normalised, rotated: RoPE keeps only
        its tables) a(H+2Hkv)hd, its output aC (c_proj's input) and the float32 log-sum-exp 4H
      qk_norm: its float32 input (the projections' outputs, or autocast's copies of them) 4(H+Hkv)hd, 1/rms per
        head 4(H+Hkv), and a copy of the attention output for c_proj aC (normalised q is head-major:
        transpose(1, 2).contiguous() copies)
      c_fc: its input aC (swiglu's c_gate and c_fc: 2aC under 16-bit autocast, as for q, k, v); gelu and relu2 keep
        the hidden twice (2aF), swiglu c_fc's 2F output, silu(gate) and the product (4aF)
      dropout (p > 0): a 1-byte mask per residual dropout (2C), as on CUDA (not modelled: CPU's float32 masks and,
        for attention dropout, the math path's T x T matrices; no pretraining config uses dropout)
    Tensor parallelism over tp ranks (parallel.py, with sequence parallelism) splits all of it but the matmuls'
    inputs, which q, k, v and the MLP save as gathered (PyTorch's DTensor keeps the gathered input where Megatron-LM
    keeps its shard and gathers again: Korthikanti et al.'s eq. 4 counts all 34 / t); tests/test_tp_pp.py measures
    it on a rank."""
    c = config
    a = _DTYPE_BYTES[compute_dtype]
    C, H, Hkv, hd, F = c.n_embd, c.n_head, c.kv_heads, c.head_dim, c.hidden_dim
    copies = 1 if a == 4 else 3   # autocast casts a float32 input once per matmul
    whole = copies * a * C + (2 if c.mlp == 'swiglu' and a < 4 else 1) * a * C
    split = 2 * _norm_bytes(c) + a * (H + 2 * Hkv) * hd + a * C + 4 * H + (4 if c.mlp == 'swiglu' else 2) * a * F
    if c.qk_norm:
        split += 4 * (H + Hkv) * hd + 4 * (H + Hkv) + a * C
    if c.dropout > 0:
        split += 2 * C
    return whole + -(-split // tp)


# torch.utils.checkpoint (preserve_rng_state=True, its default) keeps per checkpointed block the CPU generator's
# state (torch.get_rng_state(): 5,056 bytes, the Mersenne Twister's), and on CUDA a few bytes more, to replay dropout.
CHECKPOINT_RNG_BYTES = 5056


def _loss_bytes(config, tokens, compute_dtype, parallel, plain=False):
    """(saved, transient): bytes the training loss (GPT.forward, return_logits=False) keeps after ln_f for the
    backward, and the largest extra it allocates at once, for `tokens` = B x T rows (measured on CPU by
    tests/test_memory.py). a = bytes of the compute dtype, V the vocabulary, Vp the padded one.
    Plain path (float32 logits within lm_loss.CE_PLAIN_MAX_BYTES): saved: lm_head's input aC, under DDP in 16 bits
    autocast's copy of the lm_head weight a*Vp*C, logit_softcap's float32 tanh 4Vp, log_softmax's float32 output
    4V, the int64 targets 8 and a float32 scalar. Transient: the backward's first two float32 (tokens, V) gradients,
    8V per token, the step's peak (left out: a padded float32 vocabulary's 4(Vp - V), softcap's forward peak).
    Chunked path (lm_loss.linear_cross_entropy): saved: its float32 dL/dh (4C per token) and dL/dW (4*Vp*C).
    Transient: the same two before their division by the token count, 16-bit copies of h and W, and three float32
    (rows, Vp) buffers for one chunk of rows = CE_CHUNK_ELEMENTS // Vp (within one buffer of the CPU peak).
    plain: the plain path whatever the size (a pipeline's last stage: its output is the logits)."""
    from pretrain.lm_loss import CE_CHUNK_ELEMENTS, CE_PLAIN_MAX_BYTES   # at each call: they may be lowered
    c = config
    a = _DTYPE_BYTES[compute_dtype]
    C, V, Vp = c.n_embd, c.vocab_size, c.padded_vocab_size
    if plain or tokens * Vp * 4 <= CE_PLAIN_MAX_BYTES:
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


STAGES_PER_RANK = {'gpipe': 1, '1f1b': 1, 'interleaved1f1b': 2}   # the pipeline schedules parallel.py runs


def pipeline_part(rank, pp, per_rank, n_layer, tie_weights):
    """What pipeline rank `rank` of pp holds: the one placement, which parallel._split makes and train_memory counts.
    Its stages are looped as torch's interleaved schedules place them (stage s on rank s mod pp); stage s of
    n = pp * per_rank holds blocks s*L//n .. (s+1)*L//n - 1 (the remainder spread: Llama 3's 126 blocks in 16 stages,
    7 or 8), the first stage the embeddings, the last ln_f and the head, and a tied embedding is on the last as on
    the first (Megatron-LM keeps a copy there too) -> (stage ids, n, block indices, holds(parameter name))."""
    n = pp * per_rank
    ids = [rank + k * pp for k in range(per_rank)]
    blocks = {i for s in ids for i in range(s * n_layer // n, (s + 1) * n_layer // n)}
    first, last = 0 in ids, n - 1 in ids

    def holds(name):
        if name.startswith('transformer.h.'):
            return int(name.split('.')[2]) in blocks
        if name in ('transformer.wte.weight', 'transformer.wpe.weight'):
            return first or name == 'transformer.wte.weight' and tie_weights and last
        return last
    return ids, n, blocks, holds


def in_flight(schedule, pp, n, rank):
    """The micro-batches whose activations pipeline rank `rank` of pp holds at once, with n micro-batches a step, in
    units of its whole part of the model, under torch.distributed.pipelining's schedules: GPipe, all n (every
    forward before any backward); 1F1B, min(n, pp - rank) (its warm-up forwards, then a backward for each forward:
    Narayanan et al. 2021, sec. 2.2); interleaved (2 stages a rank, each half the part), its warm-up of n/rounds + 2
    (pp - 1 - rank) stage-forwards plus one (torch's _get_warmup_ops), at most all 2n. tests/test_tp_pp.py counts
    them in a run."""
    if schedule == 'gpipe':
        return n
    if schedule == '1f1b':
        return min(n, pp - rank)
    return min(2 * n, n // max(1, n // pp) + 2 * (pp - 1 - rank) + 1) / 2


def _tp_shape(name, shape, tp):
    """A parameter's shape on one of tp tensor-parallel ranks (parallel.wrap's plan: q, k, v, gate and up split by
    rows, the output projections by columns; the rest whole), the first (largest) chunk."""
    kind = name.split('.')[-2]
    if tp == 1 or not name.startswith('transformer.h.'):
        return shape
    if kind in ('c_q', 'c_k', 'c_v', 'c_fc', 'c_gate'):
        return (-(-shape[0] // tp),) + shape[1:]
    return (shape[0], -(-shape[1] // tp)) if kind == 'c_proj' and len(shape) == 2 else shape


def train_memory(config, micro_batch, world_size=1, parallel='ddp', activation_checkpointing=False,
                 compute_dtype='bfloat16', optimizer='adamw', tp=1, pp=1, schedule='1f1b', micro_batches=1, rank=None):
    """Estimated bytes per GPU while training GPT(config) on micro_batch sequences of block_size tokens:
    {'weights', 'grads', 'optimizer', 'activations', 'total'} (ints). total, their sum, is the step's peak: the start
    of the backward with the gradients held (as in gradient accumulation); allocator caching, the CUDA context
    (~0.5-1 GB) and communication buffers come on top. world_size GPUs: tp tensor-parallel x pp pipeline stages
    (micro_batches a step, the schedule's) x the rest data parallel (parallel.py).
    Model state, 16 bytes per parameter with AdamW (ZeRO, Rajbhandari et al. 2019 sec. 3.1, the float32 weights
    being the master weights): weights 4, gradients 4, exp_avg and exp_avg_sq 8, plus a float32 step count per
    tensor; Muon keeps one momentum buffer (4) for the blocks' matrices, AdamW's state for the rest. Weights include
    the RoPE tables. Of the parameters, a GPU holds its tensor-parallel part (_tp_shape) of its pipeline stages'
    (n_layer / pp blocks; the first stage the embeddings, the last ln_f, the lm_head and a tied embedding's copy).
    'ddp': all of that. 'fsdp' (FSDP2 fully_shard per block, then the root; ZeRO-3): every tensor's rows split over
    the data-parallel ranks (rank 0's shard, the largest), plus the parameters gathered at once in the compute dtype
    (the root's for the whole step, two blocks': computing and prefetched; a pipeline stage's all, kept between its
    micro-batches) and unsharded float32 gradients before their reduce-scatter (one block's; a pipeline stage's all,
    accumulated over its micro-batches).
    Activations, for eager PyTorch (torch.compile's fused loss keeps less; tests/test_memory.py measures on CPU):
      held: the blocks' activation_bytes_per_token_layer; outside the blocks the int64 token ids, wpe's position
        ids, ln_f's input and statistics and the loss's saved bytes (_loss_bytes); with DDP in 16 bits, autocast's
        copies of the blocks' matrices (with FSDP those are the gathered parameters, freed after each block).
        Under pipeline parallelism all of it for each micro-batch in flight (in_flight), plus a stage's output
        (float32 4C per token, / tp: the residual stream is split along the sequence) kept until its gradient comes
        back; the last stage's loss and logits (a*Vp) for one micro-batch (its backward follows), for all under GPipe.
      transient: the loss's (_loss_bytes).
    With activation checkpointing (torch.utils.checkpoint per block, Chen et al. 2016):
      held: each block's float32 input (4C per token, / tp) and RNG state (CHECKPOINT_RNG_BYTES), the same outside.
      transient: the largest of the loss's, one recomputed block's activations and, with DDP in 16 bits,
        autocast's copies of every block's matrices (cached until the forward ends). The loss's wins at GPT-2's
        vocabulary (8V = 402 KB per token; a Llama-7B block keeps 219 KB in bf16); the recomputed block's backward
        temporaries, which matter only for narrow vocabularies, are not counted.
    A pipeline's figure is pipeline rank `rank`'s, by default its first stage's or its last's, whichever is larger
    (the first holds the most micro-batches, the last the logits). Not modelled: dropout's masks on CPU; under
    FSDP2's bf16 param_dtype the residual stream in bf16 (counted as float32: slightly high); pipeline send and
    receive buffers."""
    if parallel not in ('ddp', 'fsdp'):
        raise ModelError(f"parallel={parallel!r}, expected 'ddp' or 'fsdp'")
    if compute_dtype not in _DTYPE_BYTES:
        raise ModelError(f"compute_dtype={compute_dtype!r}, expected one of {sorted(_DTYPE_BYTES)}")
    if optimizer not in ('adamw', 'muon'):
        raise ModelError(f"optimizer={optimizer!r}, expected 'adamw' or 'muon'")
    if schedule not in STAGES_PER_RANK:
        raise ModelError(f"schedule={schedule!r}, expected one of {tuple(STAGES_PER_RANK)}")
    whole = (world_size, micro_batch, tp, pp, micro_batches)
    if not all(isinstance(v, int) and v >= 1 for v in whole) or world_size % (tp * pp):
        raise ModelError(f"world_size, micro_batch, tp, pp and micro_batches must be ints >= 1, tp x pp dividing "
                         f"world_size; got {whole}")
    ranks = [_rank_memory(config, micro_batch, world_size // (tp * pp), parallel, activation_checkpointing,
                          compute_dtype, optimizer, tp, pp, schedule, micro_batches, r)
             for r in ({0, pp - 1} if rank is None else {rank})]
    return max(ranks, key=lambda m: m['total'])


def _rank_memory(c, micro_batch, dp, parallel, activation_checkpointing, compute_dtype, optimizer, tp, pp, schedule,
                 n_micro, rank):
    """train_memory of pipeline rank `rank` (0 without a pipeline)."""
    a = _DTYPE_BYTES[compute_dtype]
    W = dp if parallel == 'fsdp' else 1
    stages, S, layers, held = pipeline_part(rank, pp, STAGES_PER_RANK[schedule] if pp > 1 else 1, c.n_layer,
                                            c.tie_weights)
    first, last = 0 in stages, S - 1 in stages
    # (shape on this GPU before FSDP, in a block): one FSDP group per block of transformer.h, the rest in the root group
    shapes = [(_tp_shape(name, s, tp), name.startswith('transformer.h.'))
              for name, s in parameter_shapes(c) if held(name)]
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
        block = sum(_numel(s) for s, blk in shapes if blk) // len(layers)
        root = sum(_numel(s) for s, blk in shapes if not blk)
        weights += a * (root + (2 if pp == 1 else len(layers)) * block)
        grads += 4 * (max(block, root) if pp == 1 or n_micro == 1 else root + len(layers) * block)

    tokens = micro_batch * c.block_size
    per_layer = activation_bytes_per_token_layer(c, compute_dtype, tp) * tokens
    k = in_flight(schedule, pp, n_micro, rank) if pp > 1 else 1   # micro-batches held at once
    # the last stage's: a micro-batch's backward follows its forward there, but under GPipe (all forwards first)
    k_last = n_micro if pp > 1 and schedule == 'gpipe' else 1
    # outside the blocks: the int64 token ids (the embedding keeps them), wpe's position ids, the embedding
    # dropout's mask; a pipeline stage's output; ln_f's input and statistics, then the loss (a pipeline: the logits)
    outside = 0
    if first:
        outside += tokens * (8 + c.n_embd * (c.dropout > 0)) + (8 * c.block_size if c.pos_emb == 'learned' else 0)
    if not last:
        outside += 4 * c.n_embd * tokens // tp   # the residual stream: split along the sequence under TP
    loss_saved, loss_transient = _loss_bytes(c, tokens, compute_dtype, parallel, plain=pp > 1) if last else (0, 0)
    if last:
        loss_saved += tokens * (_norm_bytes(c) + (a * c.padded_vocab_size if pp > 1 else 0))
    # autocast's 16-bit copies of the blocks' matrices (DDP: the weights are float32); a pipeline's each forward's
    copies = a * sum(_numel(s) for s in matrices) if parallel == 'ddp' and a < 4 else 0
    if activation_checkpointing:
        held_bytes = k * (len(layers) * (4 * c.n_embd * tokens // tp + CHECKPOINT_RNG_BYTES) + outside)
        activations = held_bytes + k_last * loss_saved + max(loss_transient, per_layer, copies)
    else:
        activations = k * (len(layers) * per_layer + copies + outside) + k_last * loss_saved + loss_transient
    out = {k: int(v) for k, v in dict(weights=weights, grads=grads, optimizer=opt, activations=activations).items()}
    out['total'] = sum(out.values())
    return out
