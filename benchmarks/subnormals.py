"""
Float32 subnormals on CPU: the quick-start model trained with AdamW twice, interleaved step by step on the same
real batches from the same initialisation, once flushing subnormals to zero (what runtime.setup_runtime does on
CPU) and once computing with them. Prints the step time (median per window of steps) and the train losses.

    OMP_NUM_THREADS=1 python -m benchmarks.subnormals [--steps 300] [--optimizer adamw|muon] [--peak_lr_from_start]
"""
import argparse
import contextlib
import os
import statistics
import time
from types import SimpleNamespace

import torch

from pretrain.configurator import script_defaults
from pretrain.data import TokenLoader
from model import GPT, GPTConfig
from pretrain.training import configure_optimizer, lr_multiplier, peak_lr, train_step

ap = argparse.ArgumentParser()
ap.add_argument('--steps', type=int, default=300)
ap.add_argument('--window', type=int, default=50)
ap.add_argument('--optimizer', default='adamw', choices=['adamw', 'muon'])
ap.add_argument('--data_dir', default='data/shakespeare_bytes')
ap.add_argument('--peak_lr_from_start', action='store_true', help='no warm-up or decay: the peak LR at every step')
args = ap.parse_args()
torch.set_num_threads(1)
knobs = script_defaults(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'train.py'))
knobs.update(optimizer=args.optimizer, muon_lr=0.01 if args.optimizer == 'muon' else None, max_iters=1000)
knobs = SimpleNamespace(**knobs)
rt = SimpleNamespace(ddp=False, device=torch.device('cpu'), autocast=contextlib.nullcontext(), world=1, rank=0,
                    mesh=None, dp_rank=0, dp_world=1)
cfg = GPTConfig(block_size=512, vocab_size=257, n_layer=4, n_head=8, n_embd=128, pos_emb='rope')
runs = {}
for flush in (True, False):
    torch.manual_seed(0)
    model = GPT(cfg)
    runs[flush] = (model, configure_optimizer(model, knobs, rt.device))
scaler = torch.amp.GradScaler('cpu', enabled=False)
loader = TokenLoader(args.data_dir, 'train', cfg.block_size, seed=0)
times, losses = {k: [] for k in runs}, {k: [] for k in runs}
for step in range(args.steps):
    batch = loader.batch(4 * step, 4, rt.device)     # the quick start's 2048 tokens a step
    for flush in ((True, False) if step % 2 else (False, True)):
        model, opt = runs[flush]
        torch.set_flush_denormal(flush)
        for g in opt.param_groups:
            g['lr'] = peak_lr(g, knobs) * (1.0 if args.peak_lr_from_start else lr_multiplier(step, knobs))
        t0 = time.perf_counter()
        loss = train_step(model, opt, scaler, [batch], rt, knobs.grad_clip)
        times[flush].append(time.perf_counter() - t0)
        losses[flush].append(loss.item())
torch.set_flush_denormal(False)
lr_note = ', peak LR from step 0' if args.peak_lr_from_start else ''
print(f"quick-start model, {args.optimizer}{lr_note}, 4 x 512 real tokens a step, 1 thread; median step time (ms) "
      f"per window")
print(f"{'steps':>11} {'flush':>8} {'keep':>8} {'keep / flush':>13} {'loss flush':>11} {'loss keep':>10}")
for lo in range(0, args.steps, args.window):
    hi = min(args.steps, lo + args.window)
    f, k = (1e3 * statistics.median(times[x][lo:hi]) for x in (True, False))
    print(f"{lo:>5}-{hi - 1:<5} {f:>8.1f} {k:>8.1f} {k / f:>13.2f} {losses[True][hi - 1]:>11.4f} "
          f"{losses[False][hi - 1]:>10.4f}")
