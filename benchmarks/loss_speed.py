"""
The training loss paths side by side, interleaved in one run: plain cross-entropy of the padded logits (the default
of model(x, y, return_logits=False)), eager and under torch.compile, against the chunked linear_cross_entropy (the
path taken when the float32 logits would exceed lm_loss.CE_PLAIN_MAX_BYTES; forced here by a budget of 0). For each:
forward + backward (a training micro-step) and the evaluation forward under no_grad, median milliseconds and the
ratio to plain eager. Models: the quick start's (byte vocabulary 257) and a GPT-2-vocabulary one (50,257 padded to
50,304), both small enough for a CPU.

    OMP_NUM_THREADS=1 python -m benchmarks.loss_speed [--rounds 10]
"""
import argparse
import os
import statistics
import time

import torch

import pretrain.lm_loss as L
from model import GPT, GPTConfig

ap = argparse.ArgumentParser()
ap.add_argument('--rounds', type=int, default=10)
args = ap.parse_args()
torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', 1)))
print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU capability "
      f"{torch.backends.cpu.get_cpu_capability()}; median of {args.rounds - 2} rounds after 2 warm-up rounds")
QUICK_START = GPTConfig(block_size=512, vocab_size=257, n_layer=4, n_head=8, n_embd=128, pos_emb='rope')
GPT2_VOCAB = GPTConfig(block_size=256, vocab_size=50257, n_layer=2, n_head=4, n_embd=128, pad_vocab_multiple=64)
for cfg, B in ((QUICK_START, 4), (GPT2_VOCAB, 4)):
    torch.manual_seed(0)
    model = GPT(cfg)
    compiled = torch.compile(model)
    x, y = (torch.randint(0, cfg.vocab_size, (B, cfg.block_size)) for _ in range(2))
    paths = {'plain eager': (model, False), 'plain compiled': (compiled, False), 'chunked': (model, True)}
    times = {(p, k): [] for p in paths for k in ('train', 'eval')}
    t0 = time.perf_counter()
    compiled(x, y, return_logits=False)[1].backward()   # compile outside the timing
    with torch.no_grad():
        compiled(x, y, return_logits=False)
    model.zero_grad()
    compile_s = time.perf_counter() - t0
    budget = L.CE_PLAIN_MAX_BYTES
    for _ in range(args.rounds):
        for name, (net, chunked) in paths.items():
            L.CE_PLAIN_MAX_BYTES = 0 if chunked else budget
            t0 = time.perf_counter()
            net(x, y, return_logits=False)[1].backward()
            times[name, 'train'].append(time.perf_counter() - t0)
            model.zero_grad()
            with torch.no_grad():
                t0 = time.perf_counter()
                net(x, y, return_logits=False)
                times[name, 'eval'].append(time.perf_counter() - t0)
    L.CE_PLAIN_MAX_BYTES = budget
    med = {k: 1e3 * statistics.median(v[2:]) for k, v in times.items()}
    print(f"\nvocab {cfg.vocab_size} (padded {cfg.padded_vocab_size}), {B} x {cfg.block_size} tokens, "
          f"{cfg.n_layer} layers x {cfg.n_embd}; first compile {compile_s:.1f} s")
    print(f"{'path':<16} {'fwd+bwd ms':>11} {'ratio':>6} {'eval fwd ms':>12} {'ratio':>6}")
    for name in paths:
        tr, ev = med[name, 'train'], med[name, 'eval']
        print(f"{name:<16} {tr:>11.1f} {tr / med['plain eager', 'train']:>6.2f} {ev:>12.1f} "
              f"{ev / med['plain eager', 'eval']:>6.2f}")
