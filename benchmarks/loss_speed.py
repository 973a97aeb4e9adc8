"""
Forward + backward time of the two loss paths side by side, interleaved in one run: the (B, T, vocab) logits and
F.cross_entropy (model(x, y)) against model.linear_cross_entropy (model(x, y, return_logits=False), what
train_step uses), for the quick-start model (vocab 257) and a GPT-2-vocabulary model (50,257, padded to 50,304).

    OMP_NUM_THREADS=1 python -m benchmarks.loss_speed [--rounds 12]
"""
import argparse
import os
import statistics
import time

import torch

from model import GPT, GPTConfig

ap = argparse.ArgumentParser()
ap.add_argument('--rounds', type=int, default=12)
args = ap.parse_args()
torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', 1)))
for cfg in (GPTConfig(block_size=512, vocab_size=257, n_layer=4, n_head=8, n_embd=128, pos_emb='rope'),
            GPTConfig(block_size=256, vocab_size=50257, n_layer=2, n_head=4, n_embd=128, pad_vocab_multiple=64)):
    torch.manual_seed(0)
    model = GPT(cfg)
    x, y = (torch.randint(0, cfg.vocab_size, (4, cfg.block_size)) for _ in range(2))
    times = {True: [], False: []}
    for _ in range(args.rounds):
        for return_logits in (True, False):
            t0 = time.perf_counter()
            _, loss = model(x, y, return_logits=return_logits)
            loss.backward()
            model.zero_grad()
            times[return_logits].append(time.perf_counter() - t0)
    logits, fused = (statistics.median(times[k][2:]) for k in (True, False))
    print(f"vocab {cfg.vocab_size}: logits path {1e3 * logits:.1f} ms, linear_cross_entropy {1e3 * fused:.1f} ms "
          f"per 4 x {cfg.block_size} fwd+bwd: ratio {fused / logits:.3f}")
