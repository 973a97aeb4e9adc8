"""
The GPT language model, in one file.

GPT-2 exactly (so OpenAI's checkpoints load and published numbers reproduce), plus the architecture
changes of the Llama-3 block as plain config options: RMSNorm, rotary position embeddings (RoPE),
grouped-query attention (GQA), SwiGLU, untied embeddings; and, from modded-nanogpt / nanochat, QK-norm,
squared ReLU, zero-initialised residual projections and logit soft-capping (all off by default). Also
here: GPT-2 initialisation. The forward reads and extends a KV cache; generation is pretrain/generate.py,
the loss pretrain/lm_loss.py, OpenAI's weights pretrain/gpt2_weights.py, the counts pretrain/accounting.py.

References:
1) nanoGPT (Karpathy): the structure and names of this file.
2) OpenAI GPT-2 (TensorFlow) and Hugging Face transformers/models/gpt2/modeling_gpt2.py.
3) Su et al. 2021, "RoFormer: Enhanced Transformer with Rotary Position Embedding", eq. 34.
4) Ainslie et al. 2023, "GQA"; Shazeer 2019 (multi-query); Shazeer 2020, "GLU Variants Improve Transformer".
5) Zhang & Sennrich 2019, "Root Mean Square Layer Normalization".
6) Brown et al. 2020, "Language Models are Few-Shot Learners" (GPT-3), Table 2.1.
7) Dehghani et al. 2023, "Scaling Vision Transformers to 22 Billion Parameters", sec. 3.1 (QK layernorm);
   Wortsman et al. 2023, "Small-scale proxies for large-scale Transformer training instabilities", sec. 3.1.
8) So et al. 2021, "Primer: Searching for Efficient Transformers for Language Modeling" (squared ReLU).
9) Gemma Team 2024, "Gemma 2: Improving Open Language Models at a Practical Size", sec. 2 (logit soft-capping).
10) modded-nanogpt (K. Jordan et al.) and nanochat (Karpathy): where the four options above were taken from.
11) Yang et al. 2022, "Tensor Programs V: Tuning Large Neural Networks via Zero-Shot Hyperparameter Transfer" (muP),
    Table 3 and its multiplier form, Table 8; Dey, Anthony, Hestness 2024, "A Practitioner's Guide to muP", Table 1.
12) Dey et al. 2025, "Don't be lazy: CompleteP enables compute-efficient deep transformers" (arXiv 2505.01618),
    Table 1 (CompleteP: alpha = 1); EleutherAI/nanoGPT-mup (branch completep), its reference implementation.
"""

import math
from dataclasses import dataclass

import torch
import torch.utils.checkpoint
import torch.nn as nn
from torch.nn import functional as F

from pretrain import lm_loss


class ModelError(Exception):
    """A user-facing problem (bad config, missing or unreadable weights): the message is one line."""


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50257       # GPT-2's BPE: 50,000 merges + 256 bytes + <|endoftext|>
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True             # biases in Linear layers and LayerNorms (GPT-2: True; Llama: False)
    n_kv_head: int = None         # key/value heads: None or n_head = multi-head, 1 = multi-query, else GQA
    norm: str = 'layernorm'       # 'layernorm' (GPT-2) | 'rmsnorm' (Llama)
    pos_emb: str = 'learned'      # 'learned' absolute positions (GPT-2) | 'rope' (Llama)
    mlp: str = 'gelu'             # 'gelu' (GPT-2, tanh approximation) | 'swiglu' (Llama) | 'relu2' (Primer)
    tie_weights: bool = True      # lm_head shares the token embedding (GPT-2: True; Llama-3 8B: False)
    pad_vocab_multiple: int = 1   # 64 pads 50257 -> 50304 rows: faster matmuls, same function
    rope_theta: float = 10000.0   # RoPE base (RoFormer: 10000; Llama 3: 500000)
    norm_eps: float = 1e-5        # GPT-2's layer_norm_epsilon
    mlp_hidden: int = None        # None: 4*n_embd for gelu and relu2; for swiglu 8/3*n_embd rounded up to 64s
    # modded-nanogpt / nanochat options (references 7-10); off = GPT-2
    qk_norm: bool = False         # RMS-normalise each head's queries and keys (parameter-free), before RoPE
    zero_init_proj: bool = False  # attn.c_proj and mlp.c_proj weights start at 0 instead of N(0, 0.02/sqrt(2L))
    logit_softcap: float = None   # None, or cap > 0: logits = cap * tanh(logits / cap) (modded-nanogpt 30, nanochat 15)
    # the parametrization (references 11-12; docs/parametrization.md): how init, AdamW's LR and a few multipliers change
    # with width and depth, relative to a base shape (None: this model's own, where every rule is the identity)
    parametrization: str = 'sp'   # 'sp' (GPT-2's) | 'mup' (width) | 'completep' (width and depth)
    base_n_embd: int = None       # the proxy's width, where the base hyperparameters were tuned
    base_n_layer: int = None      # completep: the proxy's depth
    base_head_dim: int = None     # the proxy's head size (None: this model's, heads added with width as GPT-2's family)

    def __post_init__(self):
        def check(ok, msg):
            if not ok:
                raise ModelError(f"bad model config: {msg}")
        check(self.norm in ('layernorm', 'rmsnorm'), f"norm={self.norm!r}, expected 'layernorm' or 'rmsnorm'")
        check(self.pos_emb in ('learned', 'rope'), f"pos_emb={self.pos_emb!r}, expected 'learned' or 'rope'")
        check(self.mlp in ('gelu', 'swiglu', 'relu2'), f"mlp={self.mlp!r}, expected 'gelu', 'swiglu' or 'relu2'")
        check(self.parametrization in ('sp', 'mup', 'completep'),
              f"parametrization={self.parametrization!r}, expected 'sp', 'mup' or 'completep'")
        optional = ('n_kv_head', 'mlp_hidden', 'logit_softcap', 'base_n_embd', 'base_n_layer', 'base_head_dim')
        for k in ('block_size', 'vocab_size', 'n_layer', 'n_head', 'n_embd', 'pad_vocab_multiple', 'n_kv_head',
                  'mlp_hidden', 'base_n_embd', 'base_n_layer', 'base_head_dim'):
            v = getattr(self, k)
            check((v is None and k in optional) or (isinstance(v, int) and not isinstance(v, bool) and v >= 1),
                  f"{k}={v!r} must be {'None or ' * (k in optional)}an int >= 1")
        check(self.n_embd % self.n_head == 0, f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        check(self.n_head % self.kv_heads == 0, f"n_head={self.n_head} is not divisible by n_kv_head={self.n_kv_head}")
        check(self.pos_emb != 'rope' or self.head_dim % 2 == 0, f"rope needs an even head size, got {self.head_dim}")
        check(0.0 <= self.dropout < 1.0, f"dropout={self.dropout} must be in [0, 1)")
        for k in ('qk_norm', 'zero_init_proj', 'bias', 'tie_weights'):
            check(isinstance(getattr(self, k), bool), f"{k}={getattr(self, k)!r} must be True or False")
        for k in ('rope_theta', 'norm_eps', 'logit_softcap'):   # theta <= 0: NaN RoPE angles; eps <= 0: x / 0
            v = getattr(self, k)
            check((v is None and k in optional) or (isinstance(v, (int, float)) and not isinstance(v, bool)
                                                    and 0 < v < math.inf),
                  f"{k}={v!r} must be {'None or ' * (k in optional)}a finite number > 0")

    @property
    def head_dim(self):
        return self.n_embd // self.n_head

    # the parametrization's multipliers (references 11-12), exactly 1.0 (attn_scale None) under 'sp' and at the base
    # shape; model.py applies them, hf_export.py folds them into the weights
    @property
    def width_mult(self):   # muP's m_N
        return self.n_embd / self.base_n_embd if self.parametrization != 'sp' and self.base_n_embd else 1.0

    @property
    def depth_mult(self):   # CompleteP's m_L
        return self.n_layer / self.base_n_layer if self.parametrization == 'completep' and self.base_n_layer else 1.0

    @property
    def attn_scale(self):
        """None: SDPA's 1/sqrt(head_dim). muP's 1/head_dim (Yang et al. 2022: q.k grows like head_dim once q and k
        correlate) as sqrt(base_head_dim) / head_dim, microsoft/mup README's form (q @ k.T * 8 / d for a base 64)."""
        b = self.base_head_dim
        return None if self.parametrization == 'sp' or b in (None, self.head_dim) else math.sqrt(b) / self.head_dim

    @property
    def kv_heads(self):
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def padded_vocab_size(self):
        m = self.pad_vocab_multiple
        return (self.vocab_size + m - 1) // m * m

    @property
    def hidden_dim(self):
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        if self.mlp in ('gelu', 'relu2'):
            return 4 * self.n_embd
        # SwiGLU has three matrices instead of two: 2/3 of 4*n_embd keeps the parameter count of the GELU MLP
        # (Shazeer 2020); rounded up to a multiple of 64 for matmul efficiency (Llama rounds to 256).
        return (8 * self.n_embd // 3 + 63) // 64 * 64


_GPT2 = dict(vocab_size=50257, block_size=1024, bias=True)
_GPT3 = dict(vocab_size=50257, block_size=2048, bias=True)
PRESETS = {
    # OpenAI GPT-2 (Radford et al. 2019); nanoGPT's shapes. 124M, 350M, 774M, 1558M parameters.
    'gpt2':        dict(_GPT2, n_layer=12, n_head=12, n_embd=768),
    'gpt2-medium': dict(_GPT2, n_layer=24, n_head=16, n_embd=1024),
    'gpt2-large':  dict(_GPT2, n_layer=36, n_head=20, n_embd=1280),
    'gpt2-xl':     dict(_GPT2, n_layer=48, n_head=25, n_embd=1600),
    # GPT-3 paper Table 2.1 (n_ctx 2048). GPT-3 alternates dense and locally banded sparse attention; here
    # all layers are dense. Two rows do not fit a config where n_embd = n_head * head_dim and are left out:
    # GPT-3 XL (1.3B: d_model 2048, 24 heads of 128 = 3072) and 13B (d_model 5140, 40 heads of 128 = 5120).
    'gpt3-small':  dict(_GPT3, n_layer=12, n_head=12, n_embd=768),      # 125M
    'gpt3-medium': dict(_GPT3, n_layer=24, n_head=16, n_embd=1024),     # 350M
    'gpt3-large':  dict(_GPT3, n_layer=24, n_head=16, n_embd=1536),     # 760M
    'gpt3-2.7b':   dict(_GPT3, n_layer=32, n_head=32, n_embd=2560),     # 2.7B
    'gpt3-6.7b':   dict(_GPT3, n_layer=32, n_head=32, n_embd=4096),     # 6.7B
    'gpt3-175b':   dict(_GPT3, n_layer=96, n_head=96, n_embd=12288),    # 175B
    # The GPT-2 small shape with the Llama-3 block: RMSNorm, RoPE (Llama 3's theta), GQA with 4 kv heads,
    # SwiGLU (hidden 2048), no biases, untied embeddings. 75.5M non-embedding, 152.7M parameters.
    'llama-small': dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768, n_kv_head=4,
                        bias=False, norm='rmsnorm', pos_emb='rope', mlp='swiglu', tie_weights=False,
                        rope_theta=500000.0, pad_vocab_multiple=64),
}


# -----------------------------------------------------------------------------
# The model

def is_hidden(name, p):
    """muP's hidden weights: the blocks' matrices, whose fan-in (n_embd, or the MLP's hidden size) grows with width;
    the embeddings and the lm_head are its input and output weights, vectors (biases, gains) are input-like."""
    return name.startswith('transformer.h.') and p.dim() >= 2


def times(x, multiplier):
    """x * multiplier, or x itself for 1 (every multiplier under 'sp' and at the base shape): x * 1.0 is exact, so
    this saves an elementwise kernel and a pass over memory per use, not bits."""
    return x if multiplier == 1 else x * multiplier


def make_norm(config):
    if config.norm == 'rmsnorm':   # x / sqrt(mean(x^2) + eps) * weight (Zhang & Sennrich 2019): no centring, no bias
        return nn.RMSNorm(config.n_embd, eps=config.norm_eps)
    return nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)


def rope_tables(head_dim, length, theta):
    """cos and sin tables (length, head_dim) for apply_rope. Angles in float64: position m times
    theta_i = theta^(-2i/d), i = 0 .. d/2-1 (RoFormer eq. 15), each angle used for the pair (i, i + d/2)."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(length, dtype=torch.float64), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x, cos, sin):
    """Rotary embedding, x (B, H, T, d), cos and sin (T, d), in the rotate-half layout of GPT-NeoX and Hugging Face
    Llama checkpoints: dimension i pairs with i + d/2, not 2i with 2i+1 as in RoFormer, the same rotation up to a
    fixed permutation of the head dimensions (which the learned q/k weights absorb)."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    return (xf * cos + torch.cat((-x2, x1), dim=-1) * sin).type_as(x)


class CausalSelfAttention(nn.Module):

    def __init__(self, config, layer_idx):
        super().__init__()
        self.head_dim, self.layer_idx, self.dropout = config.head_dim, layer_idx, config.dropout
        self.qk_norm, self.norm_eps, self.scale = config.qk_norm, config.norm_eps, config.attn_scale
        # q, k and v as three matrices (GPT-2's c_attn is their rows stacked: gpt2_weights.unfuse maps it), so that a tensor-parallel
        # split of each by rows gives every rank whole heads; with GQA k and v have n_kv_head heads each
        self.c_q = nn.Linear(config.n_embd, config.n_head * config.head_dim, bias=config.bias)
        self.c_k = nn.Linear(config.n_embd, config.kv_heads * config.head_dim, bias=config.bias)
        self.c_v = nn.Linear(config.n_embd, config.kv_heads * config.head_dim, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, rope=None, kv_cache=None, pos=None):
        B, T, _ = x.size()
        hd = self.head_dim   # head counts from the shapes: a tensor-parallel rank holds some of the heads
        q = self.c_q(x).view(B, T, -1, hd).transpose(1, 2)   # (B, H, T, hd)
        k = self.c_k(x).view(B, T, -1, hd).transpose(1, 2)   # (B, Hkv, T, hd)
        v = self.c_v(x).view(B, T, -1, hd).transpose(1, 2)
        H, Hkv = q.size(1), k.size(1)
        if self.qk_norm:
            # QK-norm (Dehghani et al. 2023; Wortsman et al. 2023): bounds the attention logits, which otherwise
            # grow and make training diverge. Parameter-free RMS norm over each head, as modded-nanogpt and
            # nanochat (the papers' LayerNorm has a gain); before RoPE, a rotation that keeps the norm.
            q = F.rms_norm(q, (hd,), eps=self.norm_eps).type_as(q)   # type_as: CUDA autocast may give float32
            k = F.rms_norm(k, (hd,), eps=self.norm_eps).type_as(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if pos is not None:
            k, v = kv_cache.write(self.layer_idx, k, v, pos)
        elif kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)
        Tk = k.size(2)
        # GQA: query head h reads kv head h // (H/Hkv), as Hugging Face Llama's repeat_kv, without copying k and v
        sdpa = dict(dropout_p=self.dropout if self.training else 0.0, enable_gqa=Hkv != H, scale=self.scale)
        if pos is not None:   # decode_step: one token over the whole cache; positions after pos are masked out
            mask = (torch.arange(Tk, device=q.device) <= pos).view(1, Tk)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **sdpa)
        elif Tk == T:    # training, or the first chunk into an empty cache: plain causal attention
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, **sdpa)
        elif T == 1:     # one new token after a cached prefix: it may see every cached position
            y = F.scaled_dot_product_attention(q, k, v, **sdpa)
        else:            # a chunk after a cached prefix: is_causal would align the mask top-left, wrong here
            mask = torch.ones(T, Tk, dtype=torch.bool, device=q.device).tril(diagonal=Tk - T)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **sdpa)
        y = y.transpose(1, 2).contiguous().view(B, T, H * hd)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.swiglu, self.relu2 = config.mlp == 'swiglu', config.mlp == 'relu2'
        hidden = config.hidden_dim
        if self.swiglu:   # the gate (before c_fc, as the rows of a fused gate-and-up matrix come: gpt2_weights.unfuse)
            self.c_gate = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.c_fc = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        if self.swiglu:
            x = F.silu(self.c_gate(x)) * self.c_fc(x)
        elif self.relu2:
            x = F.relu(self.c_fc(x)).square()   # Primer (So et al. 2021) sec. 4: squared ReLU; modded-nanogpt, nanochat
        else:
            x = F.gelu(self.c_fc(x), approximate='tanh')   # GPT-2's gelu ("gelu_new"); nanoGPT's exact erf GELU differs
        return self.dropout(self.c_proj(x))


class Block(nn.Module):

    def __init__(self, config, layer_idx):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)
        self.branch_mult = 1 / config.depth_mult   # CompleteP: each residual branch times m_L^-alpha, alpha = 1

    def forward(self, x, rope=None, kv_cache=None, pos=None):
        x = x + times(self.attn(self.ln_1(x), rope, kv_cache, pos), self.branch_mult)
        x = x + times(self.mlp(self.ln_2(x)), self.branch_mult)
        return x


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        modules = dict(wte=nn.Embedding(config.padded_vocab_size, config.n_embd))
        if config.pos_emb == 'learned':
            modules['wpe'] = nn.Embedding(config.block_size, config.n_embd)
        modules['drop'] = nn.Dropout(config.dropout)
        modules['h'] = nn.ModuleList([Block(config, i) for i in range(config.n_layer)])
        modules['ln_f'] = make_norm(config)
        self.transformer = nn.ModuleDict(modules)
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        # activation checkpointing (Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost"): a training
        # forward keeps only each block's input and the backward recomputes the block, ~1/3 more compute for n_layer
        # blocks' activations less. A run setting (train.py), not in the config: the function is the same.
        self.activation_checkpointing = False
        if config.tie_weights:   # https://paperswithcode.com/method/weight-tying
            self.transformer.wte.weight = self.lm_head.weight
        if config.pos_emb == 'rope':   # not persistent: recomputed from the config, kept out of checkpoints
            cos, sin = rope_tables(config.head_dim, config.block_size, config.rope_theta)
            self.register_buffer('rope_cos', cos, persistent=False)
            self.register_buffer('rope_sin', sin, persistent=False)
        # GPT-2 init: N(0, 0.02) for weights and embeddings, zero biases, and the projections that write into
        # the residual stream scaled by 1/sqrt(2*n_layer) (two per block; GPT-2 paper sec. 2.3).
        # zero_init_proj (modded-nanogpt, nanochat): those start at zero, so every block starts as the identity;
        # their gradients are not zero (the weights before them are not), so they learn from the first step.
        # Only these residual projections: nanochat also zeroes its (untied) lm_head, impossible when it is tied.
        # muP and CompleteP (references 11-12): the hidden matrices' init variance / m_N; CompleteP keeps each block's
        # init at the base depth's (its branch multiplier scales with depth instead), so 2*n_layer / m_L.
        if self.lm_head.weight.is_meta:   # shapes only (pretrain/accounting.py): no values, and meta normal_ is slow
            return
        self.apply(self._init_weights)
        for pn, p in self.named_parameters():
            if pn.endswith('c_proj.weight'):
                if config.zero_init_proj:
                    torch.nn.init.zeros_(p)
                else:
                    torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer / config.depth_mult))
            if is_hidden(pn, p) and config.width_mult != 1:
                with torch.no_grad():
                    p.mul_(config.width_mult ** -0.5)   # the same draws as 'sp', scaled: std 0.02 / sqrt(m_N)

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            torch.nn.init.zeros_(module.bias)

    def features(self, idx, kv_cache=None, pos=None):
        """Final hidden states (B, T, n_embd) after ln_f (times muP's output multiplier): the lm_head's input. With a
        kv_cache, idx holds the tokens at positions kv_cache.pos .. kv_cache.pos+T-1 and the cache is extended by
        them. With pos too, a (1,) long tensor, idx (B, 1) is at position pos, written into the cache's fixed-shape
        buffers, cache.pos left to the caller (generate.decode_step: one graph for every position)."""
        B, T = idx.size()
        at = pos   # else a slice: the RoPE tables stay views of the buffers, not copies kept for backward
        if pos is None:
            pos0 = 0 if kv_cache is None else kv_cache.pos
            if pos0 + T > self.config.block_size:
                raise ModelError(f"cannot forward {pos0 + T} positions, block_size is {self.config.block_size}")
            at = slice(pos0, pos0 + T)
        x = self.run_blocks(self.embed(idx, at), self.transformer.h, at, kv_cache)
        if kv_cache is not None and pos is None:
            kv_cache.pos += T
        return self.head_input(x)

    def head_input(self, x):
        """The residual stream's end -> the lm_head's input: ln_f, times muP's output multiplier 1/m_N. A pipeline's
        last stage ends here (parallel.py)."""
        return times(self.transformer.ln_f(x), 1 / self.config.width_mult)

    def embed(self, idx, at):
        """The residual stream's start: token (and learned position) embeddings of idx (B, T) at positions `at` (a
        slice, or decode_step's (1,) tensor), after dropout. A pipeline's first stage starts here (parallel.py)."""
        x = self.transformer.wte(idx)
        if self.config.pos_emb == 'learned':
            x = x + self.transformer.wpe(torch.arange(at.start, at.stop, device=idx.device) if isinstance(at, slice)
                                         else at)
        return self.transformer.drop(x)

    def run_blocks(self, x, blocks, at, kv_cache=None):
        """x through `blocks`, all of transformer.h or a pipeline stage's part of it, at positions `at` (as embed's)."""
        rope = (self.rope_cos[at], self.rope_sin[at]) if self.config.pos_emb == 'rope' else None
        pos = None if isinstance(at, slice) else at   # decode_step's position: the cache's fixed-shape write
        for block in blocks:
            if self.activation_checkpointing and self.training and torch.is_grad_enabled() and kv_cache is None:
                x = torch.utils.checkpoint.checkpoint(block, x, rope, use_reentrant=False)
            else:
                x = block(x, rope, kv_cache, pos)
        return x

    def forward(self, idx, targets=None, kv_cache=None, return_logits=True):
        """idx (B, T) token ids -> (logits (B, T, padded_vocab_size), loss or None). The loss is the float32
        cross-entropy over the real vocabulary (columns >= vocab_size are padding; targets -1 ignored).
        return_logits=False (training, evaluation) gives None for the logits, and past lm_loss.CE_PLAIN_MAX_BYTES of
        float32 logits the loss comes from lm_loss.linear_cross_entropy, which never holds them."""
        h = self.features(idx, kv_cache)
        if targets is None:
            return self.lm_logits(h), None
        V, Vp = self.config.vocab_size, self.config.padded_vocab_size
        if not return_logits and h.numel() // h.size(-1) * Vp * 4 > lm_loss.CE_PLAIN_MAX_BYTES:
            return None, lm_loss.linear_cross_entropy(h.reshape(-1, h.size(-1)), self.lm_head.weight,
                                                      targets.reshape(-1), V, self.config.logit_softcap)
        logits = self.lm_logits(h)
        loss = lm_loss.cross_entropy(logits, targets, V)
        return (logits if return_logits else None), loss

    def lm_logits(self, h):
        """lm_head, then with logit_softcap: cap * tanh(logits / cap) (Gemma 2, sec. 2), in float32 so that
        |logits| <= cap holds exactly and the loss sees the capped values. It bounds the logits smoothly
        (their growth is a late-training instability); it never changes the argmax."""
        logits = self.lm_head(h)
        cap = self.config.logit_softcap
        if cap is not None:
            logits = cap * torch.tanh(logits.to(torch.promote_types(logits.dtype, torch.float32)) / cap)
        return logits

    @classmethod
    def from_pretrained(cls, name_or_path, **overrides):
        """OpenAI's GPT-2 weights (gpt2_weights.py): a local Hugging Face directory (config.json with model.safetensors
        or pytorch_model.bin, or their sharded *.index.json), or a name ('gpt2', 'gpt2-medium', 'gpt2-large',
        'gpt2-xl') downloaded into ~/.cache/gpt-scaling/<name>. overrides: dropout and/or pad_vocab_multiple."""
        from pretrain.gpt2_weights import WeightsError, load_gpt2   # it does not import this module: no cycle
        bad = set(overrides) - {'dropout', 'pad_vocab_multiple'}
        if bad:
            raise ModelError(f"from_pretrained can only override dropout and pad_vocab_multiple, not {sorted(bad)}")
        try:
            return load_gpt2(name_or_path, lambda fields: cls(GPTConfig(**fields, **overrides)))
        except WeightsError as e:
            raise ModelError(str(e)) from None

