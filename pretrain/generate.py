"""
Text from a GPT (model.py): the KV cache its forward reads and extends, the sampling filters, nanoGPT's sliding
window, and a fixed-shape one-token step that torch.compile turns into one graph (one CUDA graph) for every position.

References:
1) gpt-fast (PyTorch team 2023; blog "Accelerating Generative AI with PyTorch II: GPT, Fast"): static KV
   cache + torch.compile(mode='reduce-overhead') decoding, and memory-bandwidth utilisation (MBU).
2) Holtzman et al. 2019, "The Curious Case of Neural Text Degeneration" (nucleus sampling).
"""
import torch
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

# Attention kernels for eager generation, where each step gives attention a new key length. cuDNN attention, torch
# 2.11's first choice on Hopper, builds a plan per new shape (tens of ms: eager batch-1 decoding ran ~10x slower);
# these take any length without one. Training, evaluation and the compiled decode_step keep torch's own choice.
GENERATE_SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


class KVCache:
    """Keys and values of every layer for the positions seen so far, preallocated to block_size; keys after RoPE
    (rotated at their absolute position). update() returns the filled prefix, a new shape at every step; write()
    (decode_step) the whole buffers, the same shapes at every step."""

    def __init__(self, config, batch_size):
        self.shape = (batch_size, config.kv_heads, config.block_size, config.head_dim)
        self.k, self.v = [None] * config.n_layer, [None] * config.n_layer
        self.pos = 0   # positions filled; GPT.features advances it after all layers

    def update(self, layer, k, v):
        buf = self.k[layer]
        # allocate lazily: dtype follows autocast (again if a kept cache meets another dtype or device)
        if buf is None or buf.dtype != k.dtype or buf.device != k.device:
            self.k[layer] = torch.zeros(self.shape, dtype=k.dtype, device=k.device)
            self.v[layer] = torch.zeros(self.shape, dtype=v.dtype, device=v.device)
        p, T = self.pos, k.size(2)
        self.k[layer][:, :, p:p + T] = k
        self.v[layer][:, :, p:p + T] = v
        return self.k[layer][:, :, :p + T], self.v[layer][:, :, :p + T]

    def write(self, layer, k, v, pos):
        """One position, given as a (1,) tensor pos: fixed shapes, one graph for every step (gpt-fast)."""
        self.k[layer].index_copy_(2, pos, k)
        self.v[layer].index_copy_(2, pos, v)
        return self.k[layer], self.v[layer]


def sample_next(logits, vocab_size, temperature=1.0, top_k=None, top_p=None, generator=None):
    """One token per row from logits (B, V_padded) -> (B, 1), never a padded column (>= vocab_size). temperature 0:
    argmax; else, in Hugging Face's order, temperature, top_k (keep the k largest), top_p (nucleus, Holtzman et al.
    2019: keep the smallest set of most probable tokens whose probability reaches top_p)."""
    logits = logits[:, :vocab_size].float()
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k:   # None or 0: off
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float('-inf'))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = F.softmax(sorted_logits, dim=-1)
        drop = probs.cumsum(dim=-1) - probs >= top_p   # the tokens before this one already reach top_p
        drop[:, 0] = False                             # always keep the most probable token
        logits = logits.scatter(1, order, sorted_logits.masked_fill(drop, float('-inf')))
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


def decode_step(model, idx, cache, pos):
    """The one-token step with fixed shapes (gpt-fast): idx (B, 1) at pos, a (1,) long tensor on idx's device (an
    int would make a graph per position), into a cache holding positions 0 .. pos-1 -> logits (B, padded_vocab_size).
    Attention reads all block_size positions, those after pos masked out: one compiled (CUDA) graph for every step."""
    return model.lm_logits(model.features(idx, cache, pos)[:, -1, :])


def _last_logits(model, idx, cache=None):
    """An eager generation step: the logits (B, padded_vocab_size) of the last position only, with attention
    restricted to GENERATE_SDPA_BACKENDS (no per-shape plans)."""
    with sdpa_kernel(GENERATE_SDPA_BACKENDS):
        return model.lm_logits(model.features(idx, cache)[:, -1, :])


def _compiled_decode(model, idx):
    """(step, cache): decode_step compiled and its KVCache, kept on the model (model._decode, not in its state_dict):
    compiling at every call would cost tens of seconds, and new cache buffers would be new graph inputs. Made again
    for another device type (the step) or batch size (the cache); one compile_decode generation at a time."""
    dev, B = idx.device.type, idx.size(0)
    kept = getattr(model, '_decode', None)
    if kept is None or kept['device'] != dev:
        mode = dict(mode='reduce-overhead') if dev == 'cuda' else {}
        model._decode = kept = dict(device=dev, cache=None, step=torch.compile(decode_step, fullgraph=True, **mode))
    if kept['cache'] is None or kept['cache'].shape[0] != B:
        kept['cache'] = KVCache(model.config, B)
    kept['cache'].pos = 0   # empty: the first step fills it
    return kept['step'], kept['cache']


@torch.no_grad()
def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None, kv_cache=True,
             compile_decode=False):
    """Continue the prompts idx (B, T) by max_new_tokens tokens -> (B, T + max_new_tokens), each drawn given the last
    block_size tokens (nanoGPT's sliding window). temperature=0 is greedy; top_k / top_p filter as in sample_next;
    generator: a torch.Generator for reproducible draws. Runs in eval mode (dropout off) and restores the mode."""
    was_training = model.training
    model.eval()
    try:
        new = list(generate_stream(model, idx, max_new_tokens, temperature, top_k, top_p, generator, kv_cache,
                                   compile_decode))
    finally:
        model.train(was_training)
    return torch.cat([idx] + new, dim=1)


def generate_stream(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None,
                    kv_cache=True, compile_decode=False):
    """generate() one step at a time: yields the next token of every row, (B, 1), so text can be shown as it comes
    (sample.py). Call it in eval mode under torch.no_grad(): a generator cannot hold those for its caller.
    kv_cache=True keeps earlier positions' keys/values and feeds one token a step. When the window slides every kept
    token changes position (and from layer 2 on every key and value), so the cache is rebuilt from the last
    block_size tokens (rolling it would be wrong with learned positions, approximate with RoPE): past block_size
    each step is a full forward, as without the cache, and both give the same tokens (tests check).
    compile_decode=True (with kv_cache) runs the one-token steps through decode_step compiled once per model (on
    CUDA with mode='reduce-overhead': CUDA graphs, one launch per step, as gpt-fast); the prompt and each rebuild
    run eagerly. The first call compiles (tens of seconds); the tokens are the same up to floating-point rounding."""
    bs = model.config.block_size
    step = idx_next = None
    if kv_cache:
        step, cache = _compiled_decode(model, idx) if compile_decode else (None, KVCache(model.config, idx.size(0)))
    for _ in range(max_new_tokens):
        if not kv_cache:
            logits = _last_logits(model, idx[:, -bs:])
        elif cache.pos in (0, bs):   # first step, or the window slid: (re)build
            cache.pos = 0            # reuse the buffers, overwrite from position 0
            logits = _last_logits(model, idx[:, -bs:], cache)
            if step is not None:
                pos = torch.tensor([cache.pos], device=idx.device)   # kept on the device, += 1 at each step
                if idx.is_cuda:   # the buffers never move: CUDA graphs read and write them in place
                    for t in cache.k + cache.v:
                        torch._dynamo.mark_static_address(t)
        elif step is None:
            logits = _last_logits(model, idx[:, -1:], cache)
        else:
            if idx.is_cuda:
                torch.compiler.cudagraph_mark_step_begin()   # the last step's graph outputs are consumed
            logits = step(model, idx_next, cache, pos)   # the token just drawn: (B, 1), the same strides every step
            pos += 1
            cache.pos += 1
        idx_next = sample_next(logits, model.config.vocab_size, temperature, top_k, top_p, generator)
        idx = torch.cat((idx, idx_next), dim=1)
        yield idx_next
