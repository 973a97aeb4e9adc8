"""
Accounting: the one place that counts a GPT's parameters, its training FLOPs per token and the bytes a decoded
token reads, from its GPTConfig alone (so shapes too big to build count too). train.py's run log and MFU,
bench.py, scaling.py's plans and fits all use these numbers.

References: Kaplan et al. 2020, "Scaling Laws for Neural Language Models", Table 1; Chowdhery et al. 2022,
"PaLM", Appendix B (model FLOPs utilisation); nanoGPT's estimate_mfu; gpt-fast's memory-bandwidth utilisation.
Pinned by tests: GPT-2 124M has 124,439,808 parameters (124,337,664 without biases) and 875,062,886,400 PaLM
FLOPs per 1024-token sequence without biases.
"""
from model import ModelError


def count_params(config):
    """Parameters of GPT(config), from the config alone (works for shapes too big to build).
    n_params: all parameters, vocab counted unpadded (padding rows never affect the output or get a gradient).
    n_params_nonembed: Kaplan et al. 2020's N: everything except the token embedding, the position embedding
    and an untied lm_head (the per-vocabulary matrices). Norms and biases are included.
    qk_norm adds no parameters (parameter-free RMS norm), relu2 has gelu's two matrices, logit_softcap and
    zero_init_proj change no shapes."""
    c = config
    C, hd, H, Hkv, Fh, b = c.n_embd, c.head_dim, c.n_head, c.kv_heads, c.hidden_dim, int(c.bias)
    attn = C * (H + 2 * Hkv) * hd + b * (H + 2 * Hkv) * hd + C * C + b * C   # c_attn (q, k, v) + c_proj
    n_up = 2 if c.mlp == 'swiglu' else 1                                       # swiglu: gate and up; gelu, relu2: up
    mlp = n_up * (C * Fh + b * Fh) + Fh * C + b * C
    norm = C + (b * C if c.norm == 'layernorm' else 0)
    nonembed = c.n_layer * (attn + mlp + 2 * norm) + norm                      # + ln_f
    wte = c.vocab_size * C
    wpe = c.block_size * C if c.pos_emb == 'learned' else 0
    lm_head = 0 if c.tie_weights else c.vocab_size * C
    return dict(n_params=nonembed + wte + wpe + lm_head, n_params_nonembed=nonembed)


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
    activations, logits, RoPE tables (all small next to the weights at batch 1). GPT.decode_step attends
    over the whole block_size cache whatever the position, so for it kv_len = block_size is what it reads."""
    c = config
    weights = count_params(c)['n_params_nonembed'] + c.padded_vocab_size * c.n_embd
    rows = c.n_embd * (2 if c.pos_emb == 'learned' else 1)
    kv = 2 * c.n_layer * c.kv_heads * c.head_dim * kv_len
    return dtype_bytes * (weights + batch_size * (rows + kv)) / batch_size
