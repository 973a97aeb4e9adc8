"""
The language-model loss: cross-entropy of the next token over the real (unpadded) vocabulary, in float32, by
one of two paths that model.GPT.forward picks from the size of the logits (docs/training_loss.md):
- plain: logits, then cross_entropy (torch.compile fuses the float32 cast, log-softmax and gather, as in nanoGPT);
- chunked: linear_cross_entropy, which never holds the (tokens, vocabulary) float32 logits, for when they would
  not fit in memory.
Both give the same loss and gradients (tests/test_loss_path.py: eager and compiled, float32, bf16 and fp16).
"""
import math

import torch
from torch.nn import functional as F

# The plain path unless the float32 logits of one forward would exceed this many bytes. GPT-2 (padded vocabulary
# 50,304) at 64 x 1024 tokens: 13.2 GB, plain (it fits an 80 GB card, and an unchunked compiled cross-entropy beat 8
# and 64 chunks at this vocabulary, PyTorch issue 124480); at 128 x 1024: 26.4 GB, chunked (as many matmuls, eager).
CE_PLAIN_MAX_BYTES = 16 * 2**30
CE_CHUNK_ELEMENTS = 1 << 28   # chunked path: logits computed at once, 2^28 float32 = 1 GiB (5,336 rows of 50,304)


def cross_entropy(logits, targets, vocab_size):
    """Mean cross-entropy over the first vocab_size columns of logits (..., V_padded) in float32 (float64 for a
    float64 model), targets -1 ignored: padded columns are sliced off, so they never enter the softmax."""
    real = logits if logits.size(-1) == vocab_size else logits[..., :vocab_size]
    real = real.to(torch.promote_types(real.dtype, torch.float32))
    return F.cross_entropy(real.reshape(-1, vocab_size), targets.reshape(-1), ignore_index=-1)


def _chunked_cross_entropy(h, weight, targets, vocab_size, softcap, need_grad):
    """-> (mean loss, dL/dh, dL/dweight) of cross-entropy of the soft-capped h @ weight^T over its first vocab_size
    columns, a chunk of rows at a time; without need_grad the gradients are None (one matmul a chunk, not three).
    The matmuls use the whole padded weight (aligned shapes); padded columns get logit -inf, so zero probability and
    gradient. The logits matmul runs in autocast's dtype, softmax, loss and the division by the token count in
    float32. dL/dz = softmax - onehot lies in [-1, 1]: exact enough in bf16 for the two gradient matmuls; in float16
    they run in float32 (1/n_tokens or sums over thousands of rows leave fp16's range). With a soft cap c the loss
    sees c*tanh(z/c), and dL/dz picks up the factor 1 - tanh^2."""
    dev = h.device.type
    dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else h.dtype
    acc = torch.promote_types(dtype, torch.float32)   # float32, or float64 for a float64 model
    grad_dtype = acc if dtype == torch.float16 else dtype
    with torch.autocast(dev, enabled=False):
        hc_all, w = h.to(dtype), weight.to(dtype)
        wg, hg_all = (w, hc_all) if grad_dtype == dtype else (weight.to(grad_dtype), h.to(grad_dtype))
        valid = targets != -1
        n_valid = valid.sum()
        loss = torch.zeros((), dtype=acc, device=h.device)
        grad_h = torch.empty(h.shape, dtype=acc, device=h.device) if need_grad else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=h.device) if need_grad else None
        rows = max(1, CE_CHUNK_ELEMENTS // weight.size(0))
        for s in range(0, h.size(0), rows):
            hc, t, ok = hc_all[s:s + rows], targets[s:s + rows], valid[s:s + rows]
            z = (hc @ w.t()).to(acc)
            if softcap is not None:
                th = torch.tanh(z / softcap)
                z = softcap * th
            z[:, vocab_size:] = -math.inf
            lse = torch.logsumexp(z, dim=-1)
            tc = t.clamp(min=0)
            loss += ((lse - z.gather(1, tc[:, None])[:, 0]) * ok).sum()
            if not need_grad:
                continue
            g = torch.exp(z - lse[:, None])   # softmax; 0 in the padded columns
            g[torch.arange(len(tc), device=h.device), tc] -= 1.0
            g *= ok.to(acc)[:, None]
            if softcap is not None:
                g *= 1 - th * th
            g = g.to(grad_dtype)
            grad_h[s:s + rows] = g @ wg
            grad_w += g.t() @ hg_all[s:s + rows]
    if need_grad:
        grad_h, grad_w = grad_h / n_valid, grad_w / n_valid
    return loss / n_valid, grad_h, grad_w


class _LinearCrossEntropy(torch.autograd.Function):
    """The chunked loss with its gradients computed in the forward pass, so the (N, V) float32 logits and their
    gradient never exist at once (Liger Kernel's fused linear cross-entropy, Hsu et al. 2024, does this in Triton).
    The backward only scales the saved gradients by the incoming one (a GradScaler's scale, 1/grad_accum) in
    float32, so nothing is scaled in a low-precision dtype."""

    @staticmethod
    def forward(ctx, h, weight, targets, vocab_size, softcap):
        loss, grad_h, grad_w = _chunked_cross_entropy(h, weight, targets, vocab_size, softcap, need_grad=True)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.dtypes = h.dtype, weight.dtype
        return loss   # float32 (float64 for a float64 model), whatever autocast's dtype

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.saved_tensors
        grad_loss = grad_loss.to(grad_h.dtype)
        return (grad_h * grad_loss).to(ctx.dtypes[0]), (grad_w * grad_loss).to(ctx.dtypes[1]), None, None, None


# Not compiled: torch.compile would unroll the chunk loop (graph and compile time grow with the batch), and before
# torch 2.12 gave zero gradients through a custom autograd.Function (PyTorch issue 180642); its matmuls are large.
@torch.compiler.disable
def linear_cross_entropy(h, weight, targets, vocab_size, softcap=None):
    """cross_entropy(softcap(h @ weight.T), targets, vocab_size) without materialising the logits; h (N, C), weight
    (V_padded, C), targets (N,). Without autograd (no_grad, or nothing requires a gradient) only the loss."""
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(h, weight, targets, vocab_size, softcap)
    return _chunked_cross_entropy(h, weight, targets, vocab_size, softcap, need_grad=False)[0]
