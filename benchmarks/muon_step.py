"""
Wall time per optimizer step (forward, backward, optimizer: training.train_step) of AdamW and Muon on the quick-start
model, interleaved in one run, one thread: what "time per token" means for issue 16's goal.

    OMP_NUM_THREADS=1 python benchmarks/muon_step.py [--steps 30]
"""
import argparse
import contextlib
import os
import statistics
import sys
import time
from types import SimpleNamespace

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configurator import script_defaults  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402
from training import configure_optimizer, train_step  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument('--steps', type=int, default=30)
args = ap.parse_args()
torch.set_num_threads(1)
knobs = script_defaults(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'train.py'))
rt = SimpleNamespace(ddp=False, device=torch.device('cpu'), autocast=contextlib.nullcontext(), world=1, rank=0)
cfg = GPTConfig(block_size=512, vocab_size=257, n_layer=4, n_head=8, n_embd=128, pos_emb='rope')
runs = {}
for name, over in (('adamw', {}), ('muon', dict(optimizer='muon', muon_lr=0.01))):
    torch.manual_seed(0)
    model = GPT(cfg)
    runs[name] = (model, configure_optimizer(model, {**knobs, **over}, rt.device))
scaler = torch.amp.GradScaler('cpu', enabled=False)
g = torch.Generator().manual_seed(0)
buf = torch.randint(0, 257, (4, 513), generator=g)
times = {k: [] for k in runs}
for i in range(args.steps + 3):
    for name, (model, opt) in runs.items():
        t0 = time.perf_counter()
        train_step(model, opt, scaler, 1, rt, 1.0, lambda micro: (buf[:, :-1], buf[:, 1:]))
        if i >= 3:
            times[name].append(time.perf_counter() - t0)
a, m = (statistics.median(times[k]) for k in ('adamw', 'muon'))
print(f"quick-start step, 4 x 512 tokens, 1 thread: AdamW {1e3 * a:.1f} ms, Muon {1e3 * m:.1f} ms: "
      f"Muon/AdamW = {m / a:.3f} (medians of {args.steps} interleaved steps)")
