"""
Speed of model.py on this machine, side by side in one run (a benchmark, not a test):
  1) forward+backward tokens/s of GPT-2 124M at batch 1 x 1024, float32 vs bf16 autocast, interleaved;
  2) generation of 256 new tokens with the KV cache vs re-running the full context every step.
Wall time and process CPU time are both printed: on a shared machine the CPU-time ratios are the fairer ones.

    python -m benchmarks.model_speed                   # both parts (a few minutes on 2 CPU cores)
    python -m benchmarks.model_speed --part train --iters 5
    python -m benchmarks.model_speed --threads 1       # one thread: CPU time is a steadier measure on a busy machine
"""
import argparse
import contextlib
import os
import statistics
import time

import torch

from pretrain.accounting import flops_per_token
from model import GPT, GPTConfig, PRESETS
from pretrain.generate import generate


def train_speed(model, args):
    T = 1024
    x = torch.randint(0, 50257, (args.batch, T))
    y = torch.randint(0, 50257, (args.batch, T))
    modes = {'float32': contextlib.nullcontext,
             'bf16-autocast': lambda: torch.autocast('cpu', dtype=torch.bfloat16)}

    def step(ctx):
        t0, c0 = time.perf_counter(), time.process_time()
        with ctx():
            _, loss = model(x, y)
        loss.backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - t0, time.process_time() - c0

    for ctx in modes.values():   # warm-up: allocator, oneDNN kernel selection
        step(ctx)
    times = {m: [] for m in modes}
    for _ in range(args.iters):   # interleaved, so a load change on a shared machine hits both alike
        for m, ctx in modes.items():
            times[m].append(step(ctx))
    fpt = flops_per_token(model.config, 'palm')
    res = {}
    for m, ts in times.items():
        wall, cpu = statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts)
        tok_s = args.batch * T / wall
        res[m] = (wall, cpu)
        print(f"fwd+bwd {m:14s} median {wall:6.2f} s/iter wall ({', '.join(f'{t[0]:.2f}' for t in ts)}), "
              f"{cpu:6.2f} CPU-s/iter  {tok_s:7.1f} tok/s  {tok_s * fpt / 1e9:6.1f} GFLOP/s (PaLM count)")
    f, b = res['float32'], res['bf16-autocast']
    print(f"bf16 autocast / float32 speed-up: {f[0] / b[0]:.2f}x wall, {f[1] / b[1]:.2f}x CPU time")


def gen_speed(model, args):
    prompt = torch.randint(0, 50257, (1, args.prompt_len), generator=torch.Generator().manual_seed(0))
    out, dt, cpu = {}, {}, {}
    for name, kv in (('kv-cache', True), ('full context', False)):
        t0, c0 = time.perf_counter(), time.process_time()
        out[name] = generate(model, prompt, args.new_tokens, temperature=0, kv_cache=kv)
        dt[name], cpu[name] = time.perf_counter() - t0, time.process_time() - c0
        print(f"generate {args.new_tokens} tokens ({name:12s}) {dt[name]:7.2f} s wall, {cpu[name]:7.2f} CPU-s  "
              f"{args.new_tokens / dt[name]:7.1f} tok/s")
    print(f"KV-cache speed-up: {dt['full context'] / dt['kv-cache']:.1f}x wall, "
          f"{cpu['full context'] / cpu['kv-cache']:.1f}x CPU time; "
          f"same tokens: {torch.equal(out['kv-cache'], out['full context'])}")


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--part', choices=['all', 'train', 'generate'], default='all')
    p.add_argument('--preset', default='gpt2')
    p.add_argument('--batch', type=int, default=1)
    p.add_argument('--iters', type=int, default=3)
    p.add_argument('--prompt_len', type=int, default=32)
    p.add_argument('--new_tokens', type=int, default=256)
    p.add_argument('--threads', type=int, default=0, help='torch threads (0: torch default, one per core)')
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = GPT(GPTConfig(**PRESETS[args.preset]))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average before: {os.getloadavg()[0]:.2f}; model {args.preset}")
    if args.part in ('all', 'train'):
        train_speed(model.train(), args)
    if args.part in ('all', 'generate'):
        gen_speed(model.eval(), args)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
