"""
What the vocabulary does to the quick start: bytes, BPE 1k, 4k, 16k (trained by prepare.py on Shakespeare's train
documents) and GPT-2's 50k, at the quick start's compute, 2 seeds each (3 for BPE 1k and 4k, whose first two seeds
disagreed), in bits per byte of the same val text.

    nohup python -m experiments.tokenizer-vocab.study run > experiments/tokenizer-vocab/run.log 2>&1 &
    python -m experiments.tokenizer-vocab.study report        # results.md, results.json, bpb.png

`run` continues where it stopped (finished runs, evaluations and timings are skipped): prepare.py's datasets, the
training runs (two at a time, one thread each: sweep.run_plan), eval.py's bits per byte of each final checkpoint on
the whole val split, then bench.py's training throughput of each model, interleaved round by round.

Same compute means the same training FLOPs, not the same tokens: a vocabulary of V ids adds 6 V d FLOPs per token
(the tied lm_head's product; accounting.flops_per_token counts it), 6.2x the quick start's per-token FLOPs at GPT-2's
50,257. Each run gets round(1000 x FLOPs/token of bytes / FLOPs/token of its own) steps of 2048 tokens, so every
run costs the quick start's 1.66e13 FLOPs, and about its time on a matmul-bound CPU; warm-up stays 5% of the run.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
from pretrain.accounting import flops_per_token  # library modules, not scripts
from pretrain.checkpoint import model_config_from
from pretrain.configurator import parse_value, script_defaults
from pretrain.data import get_tokenizer, read_meta, read_shard, shard_paths, write_json
from pretrain.scaling.plots import pyplot
from pretrain.scaling.runlog import LOG_NAME, records
from pretrain.scaling.sweep import run_plan

TRAIN = script_defaults(os.path.join(ROOT, 'train.py'))
RUNS = os.path.relpath(os.path.join(HERE, 'runs'), ROOT)   # paths relative to the root, where this runs
SEEDS = (1337, 1338)
# name -> prepare.py's arguments and the directory they write
TOKENIZERS = {'bytes': (['--tokenizer=bytes'], 'data/shakespeare_bytes'),
              'bpe1k': (['--tokenizer=bpe', '--vocab_size=1024'], 'data/shakespeare_bpe1024'),
              'bpe4k': (['--tokenizer=bpe', '--vocab_size=4096'], 'data/shakespeare_bpe4096'),
              'bpe16k': (['--tokenizer=bpe', '--vocab_size=16384'], 'data/shakespeare_bpe16384'),
              'gpt2': (['--tokenizer=gpt2'], 'data/shakespeare')}
COMMON = ['--device=cpu', '--dtype=float32', '--eval_iters=40', '--log_interval=10', '--checkpoint_interval=250']
BENCH = ['--device=cpu', '--dtype=float32', '--warmup_steps=3', '--timed_steps=8', '--repeats=1', '--phases=False',
         '--sample_tokens=0', '--grad_accum=None', '--json']
ROUNDS = 5
THIRD = ('bpe1k', 'bpe4k')   # a third seed, run last: their first two seeds were 0.2 bits/byte apart (README)


def seeds(tok):
    return SEEDS + (1339,) if tok in THIRD else SEEDS


def data_dir(tok):
    return TOKENIZERS[tok][1]


def steps_for(tok):
    """Optimizer steps at the quick start's FLOPs: 1000 steps of bytes, fewer as the vocabulary grows."""
    fpt = {t: flops_per_token(model_config_from(TRAIN, read_meta(data_dir(t))['vocab_size']), 'palm', seq_len=512)
           for t in ('bytes', tok)}
    return round(TRAIN['max_iters'] * fpt['bytes'] / fpt[tok]), fpt[tok]


def prepare_all():
    for tok, (args, out) in TOKENIZERS.items():
        subprocess.run([sys.executable, 'prepare.py', 'shakespeare', *args, f'--out={out}'], check=True)


def train_all(jobs):
    rows = []
    order = [(s, t) for s in SEEDS for t in TOKENIZERS] + [(1339, t) for t in THIRD]
    for seed, tok in order:   # seed by seed: every tokenizer has its first seed before any has its second
        steps, _ = steps_for(tok)
        cmd = [f'--out_dir={os.path.join(RUNS, f"{tok}_s{seed}")}', f'--data_dir={data_dir(tok)}', *COMMON,
               f'--max_iters={steps}', f'--warmup_iters={round(0.05 * steps)}',
               f'--eval_interval={max(1, steps // 10)}', f'--seed={seed}', '--init_from=auto']
        cfg = {**TRAIN, **{k: parse_value(v) for k, _, v in (a[2:].partition('=') for a in cmd)}}
        rows.append(dict(name=f'{tok}_s{seed}', args=cmd, config=cfg, C=1.0, N=1.0))
    run_plan(rows, jobs=jobs)


def eval_all():
    """eval.py's bits per byte of every final checkpoint over the whole val split: the same 4 works for every
    tokenizer (prepare.py picks val documents by --seed alone)."""
    for tok in TOKENIZERS:
        for seed in seeds(tok):
            out = os.path.join(RUNS, f'{tok}_s{seed}')
            path = os.path.join(out, 'eval.json')
            if os.path.exists(path):
                continue
            r = subprocess.run([sys.executable, 'eval.py', f'--out_dir={out}', '--tasks=bpb', '--json',
                                '--progress=False', '--device=cpu', '--dtype=float32', '--batch_size=8'],
                               check=True, capture_output=True, text=True)
            write_json(path, json.loads(r.stdout.strip().splitlines()[-1]))
            print(f"{tok}_s{seed}: {open(path).read().strip()}", flush=True)


def bench_all():
    """Training tokens/s of each model, one bench.py process at a time, tokenizers interleaved round by round: a
    shared machine's load hits them alike, so the ratios to bytes in a round are what to compare."""
    path = os.path.join(HERE, 'throughput.json')
    rounds = [r for r in json.load(open(path)) if set(r) == set(TOKENIZERS)] if os.path.exists(path) else []
    while len(rounds) < ROUNDS:
        row = {}
        for tok in TOKENIZERS:
            r = subprocess.run([sys.executable, 'bench.py', f'--data_dir={data_dir(tok)}', *BENCH], check=True,
                               capture_output=True, text=True, env={**os.environ, 'OMP_NUM_THREADS': '1'})
            row[tok] = json.loads(r.stdout.strip().splitlines()[-1])['tokens_per_s']
        rounds.append(row)
        write_json(path, rounds)
        print(f"throughput round {len(rounds)}: " + ', '.join(f'{t} {v:.0f} tok/s' for t, v in row.items()), flush=True)


def compression(tok):
    """UTF-8 bytes per token of each split, end-of-text tokens not counted."""
    tokenizer = get_tokenizer(read_meta(data_dir(tok))['tokenizer'], source=data_dir(tok))
    out = {}
    for split in ('train', 'val'):
        ids = [read_shard(p) for p in shard_paths(data_dir(tok), split)]
        n_bytes = sum(tokenizer.count_bytes(a) for a in ids)
        out[split] = n_bytes / sum(int((a != tokenizer.eot).sum()) for a in ids)
    return out


def stats(xs):
    return statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def report():
    bench = json.load(open(os.path.join(HERE, 'throughput.json')))
    rows, out = [], {}
    for tok in TOKENIZERS:
        meta = read_meta(data_dir(tok))
        steps, fpt = steps_for(tok)
        evals = {s: json.load(open(os.path.join(RUNS, f'{tok}_s{s}', 'eval.json')))['bpb'] for s in seeds(tok)}
        comp = compression(tok)
        speed = [r[tok] / r['bytes'] for r in bench]   # tokens/s relative to bytes, per round
        runs, _ = records(os.path.join(RUNS, f'{tok}_s{SEEDS[0]}', LOG_NAME))
        out[tok] = dict(vocab_size=meta['vocab_size'], n_params=runs[-1]['n_params'],
                        n_params_nonembed=runs[-1]['n_params_nonembed'], flops_per_token=fpt, steps=steps,
                        tokens=steps * TRAIN['total_batch_size'],
                        train_bytes_seen=steps * TRAIN['total_batch_size'] * comp['train'],
                        bytes_per_token=comp, bpb={s: e['bpb'] for s, e in evals.items()},
                        val_bytes={s: e['bytes'] for s, e in evals.items()},
                        tokens_per_s=[r[tok] for r in bench], tokens_per_s_vs_bytes=speed)
        rows.append(tok)
    base_bpt = out['bytes']['bytes_per_token']['train']
    for tok in rows:
        out[tok]['bytes_per_s_vs_bytes'] = [x * out[tok]['bytes_per_token']['train'] / base_bpt
                                            for x in out[tok]['tokens_per_s_vs_bytes']]
    lines = ['| tokenizer | vocab | params (non-emb.) | steps x 2048 tokens | train text seen | val bytes/token | '
             'val bits/byte, mean +- sd (seeds) | tokens/s vs bytes | bytes/s vs bytes |',
             '|---|---|---|---|---|---|---|---|---|']
    for tok in rows:
        o = out[tok]
        m, sd = stats(list(o['bpb'].values()))
        ts, bs = statistics.median(o['tokens_per_s_vs_bytes']), statistics.median(o['bytes_per_s_vs_bytes'])
        bpb = f"**{m:.4f}** +- {sd:.4f} ({', '.join(f'{v:.4f}' for v in o['bpb'].values())})"
        lines.append(f"| {tok} | {o['vocab_size']:,} | {o['n_params'] / 1e6:.2f}M ({o['n_params_nonembed'] / 1e6:.2f}M)"
                     f" | {o['steps']} | {o['train_bytes_seen'] / 1e6:.2f} MB | {o['bytes_per_token']['val']:.2f} | "
                     f"{bpb} | {ts:.2f}x | {bs:.2f}x |")
    text = '\n'.join(lines)
    open(os.path.join(HERE, 'results.md'), 'w').write(text + '\n')
    write_json(os.path.join(HERE, 'results.json'), out)
    print(text)
    plt = pyplot()        # plots.py: matplotlib with the Agg backend, or None (with a warning) without it
    if plt is None:
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, tok in enumerate(rows):
        o = out[tok]
        a.scatter([o['vocab_size']] * len(o['bpb']), list(o['bpb'].values()), color=f'C{i}', label=tok)
        for s in seeds(tok):
            _, by_step = records(os.path.join(RUNS, f'{tok}_s{s}', LOG_NAME))
            ev = sorted((step, r) for (kind, step), (_, r) in by_step.items() if kind == 'eval' and step > 0)
            b.plot([r['flops'] for _, r in ev], [r['val_bpb'] for _, r in ev], color=f'C{i}', alpha=0.8,
                   label=tok if s == SEEDS[0] else None)
    a.set_xscale('log')
    a.set_xlabel('vocabulary (ids)')
    a.set_ylabel('val bits per byte (whole val split)')
    a.set_title('final checkpoints, each seed a dot')
    b.set_xlabel('training FLOPs')
    b.set_ylabel("val bits per byte (the run log's 80 val sequences)")
    b.set_ylim(None, 4.0)
    b.set_title('during training, at equal FLOPs')
    b.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(HERE, 'bpb.png'), dpi=120)


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('cmd', choices=['run', 'report'])
    ap.add_argument('--jobs', type=int, default=2)
    a = ap.parse_args()
    os.chdir(ROOT)
    if a.cmd == 'run':
        prepare_all()
        train_all(a.jobs)
        eval_all()
        bench_all()
    else:
        report()
