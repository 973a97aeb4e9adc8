"""
What the checkpoint checksums cost (pretrain/checkpoint.py: a CRC-32 per tensor of a single-file checkpoint, per file
of a sharded one): the hashes' speed on this CPU, GPT-2 124M's model-only checkpoint (~500 MB) saved and loaded
with and without them, best of --repeats, to a directory on --dir's disk (the page cache holds the file on reads),
and a whole file's CRC-32 read back as a sharded save does for each rank's file.

    python -m benchmarks.checksums [--dir /tmp] [--repeats 3]
"""
import argparse
import hashlib
import os
import tempfile
import time
import zlib

import torch

from model import GPT, PRESETS, GPTConfig
from pretrain import checkpoint

ap = argparse.ArgumentParser()
ap.add_argument('--dir', default=tempfile.gettempdir())
ap.add_argument('--repeats', type=int, default=3)
args = ap.parse_args()


def best(fn):
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


buf = torch.randn(2 ** 28 // 4).numpy()   # 256 MiB
print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores")
for name, fn in (('zlib.crc32', zlib.crc32), ('hashlib.sha256', lambda b: hashlib.sha256(b).digest()),
                 ('hashlib.blake2b', lambda b: hashlib.blake2b(b).digest())):
    print(f"{name:16s} {buf.nbytes / best(lambda: fn(buf)) / 1e9:.2f} GB/s, one thread")

model = GPT(GPTConfig(**PRESETS['gpt2']))
state = {'model': model.state_dict()}
n_bytes = sum(t.numel() * t.element_size() for k, t in state['model'].items() if k != 'lm_head.weight')
print(f"GPT-2 124M state_dict: {len(state['model'])} tensors, {n_bytes / 1e6:.0f} MB (the tied lm_head.weight once)")
t_sums = best(lambda: checkpoint.tensor_checksums(state))
print(f"tensor_checksums: {t_sums:.2f} s ({n_bytes / t_sums / 1e9:.2f} GB/s over {min(8, os.cpu_count())} threads)")
path = os.path.join(args.dir, 'bench_checksums.pt')
real = checkpoint.tensor_checksums
try:
    for label, sums in (('without', lambda s: {}), ('with', real)):
        checkpoint.tensor_checksums = sums
        t_save = best(lambda: checkpoint._write_atomic(state, path))
        ckpt = {'model': state['model'], 'model_config': {}, 'step': 0, 'tokenizer': 'gpt2', 'config': {}}
        checkpoint._write_atomic(ckpt, path)
        t_load = best(lambda: checkpoint.load_checkpoint(path))
        print(f"{label:8s} checksums: save {t_save:.2f} s, load {t_load:.2f} s ({os.path.getsize(path) / 1e6:.0f} MB)")
    t_file = best(lambda: checkpoint._file_crc(path))   # what a sharded save and load do per rank file
    print(f"_file_crc of that file (page cache): {t_file:.2f} s, {os.path.getsize(path) / t_file / 1e9:.2f} GB/s")
finally:
    checkpoint.tensor_checksums = real
    os.remove(path)
