"""
Wall time per training step of AdamW and Muon on the quick-start model, interleaved in one run (the order rotated
every step), one thread: what "time per token" means for issue 16's goal. Each model trains as the quick start does
(real Shakespeare batches of 4 x 512 tokens, train.py's knobs and LR schedule, subnormals flushed as
runtime.setup_runtime does on CPU); medians over the steps after 3 warm-up steps, in ms:
  step:                      training.train_step, whole
  forward/backward/optimizer: its phases (optimizer includes gradient clipping)
  opt alone:                 optimizer.step() on fixed gradients
Muon runs twice: Newton-Schulz in its default dtype (bf16 on a CPU with AVX-512-BF16 or AMX, float32 elsewhere:
muon.default_ns_dtype) and in float32.

    OMP_NUM_THREADS=1 python -m benchmarks.muon_step [--steps 30] [--threads 1]
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
from pretrain.muon import default_ns_dtype
from pretrain.training import configure_optimizer, lr_multiplier, peak_lr, train_step

ap = argparse.ArgumentParser()
ap.add_argument('--steps', type=int, default=30)
ap.add_argument('--threads', type=int, default=1, help='intra-op threads (the quick start uses every core)')
ap.add_argument('--data_dir', default='data/shakespeare_bytes', help="the quick start's data (prepare.py shakespeare "
                "--tokenizer bytes)")
ap.add_argument('--keep_subnormals', action='store_true', help="compute with float32 subnormals instead of flushing "
                "them to zero as train.py does on CPU (runtime.setup_runtime)")
args = ap.parse_args()
torch.set_num_threads(args.threads)
torch.set_flush_denormal(not args.keep_subnormals)
knobs = script_defaults(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'train.py'))
rt = SimpleNamespace(ddp=False, device=torch.device('cpu'), autocast=contextlib.nullcontext(), world=1, rank=0,
                    mesh=None, dp_rank=0, dp_world=1)
cfg = GPTConfig(block_size=512, vocab_size=257, n_layer=4, n_head=8, n_embd=128, pos_emb='rope')
default = str(default_ns_dtype(rt.device)).replace('torch.', '')
runs, runs_knobs = {}, {}
for name, over, ns_dtype in (('adamw', {}, None), (f'muon ({default} NS)', dict(optimizer='muon', muon_lr=0.01), None),
                             ('muon (float32 NS)', dict(optimizer='muon', muon_lr=0.01), 'float32')):
    if name in runs:
        continue
    torch.manual_seed(0)
    model = GPT(cfg)
    runs_knobs[name] = SimpleNamespace(**{**knobs, **over})
    opt = configure_optimizer(model, runs_knobs[name], rt.device)
    for g in opt.param_groups:
        if g.get('use_muon'):
            g['ns_dtype'] = ns_dtype
    runs[name] = (model, opt)
scaler = torch.amp.GradScaler('cpu', enabled=False)
loader = TokenLoader(args.data_dir, 'train', cfg.block_size, seed=0)
batches = [loader.batch(4 * i, 4, rt.device) for i in range(args.steps + 3)]   # real text, a new batch each step
phases = ('forward', 'backward', 'optimizer')
times = {k: {ph: [] for ph in ('step', 'opt_fixed') + phases} for k in runs}
names = list(runs)
for i in range(args.steps + 3):
    for name in names[i % len(names):] + names[:i % len(names)]:     # rotated: no optimizer always goes first
        model, opt = runs[name]
        for g in opt.param_groups:   # the quick start's schedule, warm-up first
            g['lr'] = peak_lr(g, runs_knobs[name]) * lr_multiplier(i, runs_knobs[name])
        stamps = []
        t0 = time.perf_counter()
        train_step(model, opt, scaler, [batches[i]], rt, 1.0,
                   mark=lambda phase: stamps.append((phase, time.perf_counter())))
        t1 = time.perf_counter()
        for p in model.parameters():            # train_step left grads at None: give the optimizer fixed ones
            p.grad = torch.full_like(p, 1e-3)
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        if i >= 3:
            t = times[name]
            t['step'].append(t1 - t0)
            t['opt_fixed'].append(t3 - t2)
            prev = dict(stamps)['data']
            for phase, stamp in stamps:
                if phase in phases:
                    t[phase].append(stamp - prev)
                prev = stamp
med = {k: {ph: 1e3 * statistics.median(v) for ph, v in t.items()} for k, t in times.items()}
base = med['adamw']['step']
print(f"quick-start model, 4 x 512 tokens a step, {args.threads} thread(s), medians of {args.steps} interleaved steps (ms); "
      f"'optimizer' includes clipping, 'opt alone' is optimizer.step() on fixed gradients")
print(f"{'optimizer':<20} {'step':>7} {'forward':>8} {'backward':>9} {'optimizer':>10} {'opt alone':>10} "
      f"{'step / AdamW step':>18}")
for k, m in med.items():
    print(f"{k:<20} {m['step']:>7.1f} {m['forward']:>8.1f} {m['backward']:>9.1f} {m['optimizer']:>10.1f} "
          f"{m['opt_fixed']:>10.1f} {m['step'] / base:>18.3f}")
