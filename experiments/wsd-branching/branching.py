"""
Hägele et al. 2024's claim, checked on this CPU: one constant-LR (warm-up-stable) run plus short cooldowns branched
from its checkpoints match separate cosine runs of the same lengths, at a fraction of the compute.

    python -m experiments.wsd-branching.branching run [--jobs 2]    # finished runs are skipped: rerun to continue
    python -m experiments.wsd-branching.branching report            # results.md, results.json, branches.png

One model size from the IsoFLOP study (experiments/isoflop-shakespeare: C*_N98k, 2 layers, d=56, 7 heads, 128-byte
context, 16 x 128 = 2048 tokens per step, its LR 8.841e-3, learned positions and bf16 autocast as the study ran),
four lengths S = 500, 1000, 2000, 4000 steps (1M..8.2M tokens). Cosine: warm-up 25 steps, cosine to lr/10 at S.
Branched: one stable run (warm-up 25, then constant) to 3200 steps with a checkpoint every 400; each branch starts
from step 0.8 S and decays to lr/10 over the last 20% (1-sqrt shape, Hägele's best) to end at S.
Compute: cosine 7,500 steps in all; branched 3,200 + 1,500 = 4,700 steps (63%).
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
from pretrain.configurator import parse_value, script_defaults  # library modules, not scripts
from pretrain.data import write_json
from pretrain.scaling.plots import pyplot
from pretrain.checkpoint import CKPT_NAME
from pretrain.scaling.runlog import LOG_NAME, records
from pretrain.scaling.sweep import run_plan
TRAIN = script_defaults(os.path.join(ROOT, 'train.py'))
RUNS = os.path.join(HERE, 'runs')
LENGTHS = (500, 1000, 2000, 4000)
COOLDOWN = 0.2
LR = 8.841e-3
MODEL = ['--n_layer=2', '--n_embd=56', '--n_head=7', '--block_size=128', '--batch_size=16', '--total_batch_size=2048',
         '--pos_emb=learned', '--dtype=bfloat16', '--device=cpu', f'--learning_rate={LR}', f'--min_lr={LR / 10:.6g}',
         '--warmup_iters=25', '--eval_iters=50', '--log_interval=50', '--data_dir=data/shakespeare_bytes']
STABLE_STEPS = int((1 - COOLDOWN) * max(LENGTHS))


def finished(name):
    """A run's final eval record (runlog.records: the last record per step), or None while it is unfinished."""
    path = os.path.join(RUNS, name, LOG_NAME)
    if not os.path.exists(path):
        return None
    runs, by_step = records(path)
    return by_step.get(('eval', runs[-1]['config']['max_iters']), (None, None))[1]


def launch(jobs, runs):
    """Run [(name, args)] through scaling.py's sweep runner (sweep.run_plan): `jobs` at once, one thread each,
    finished runs skipped, interrupted ones resumed."""
    rows = []
    for name, args in runs:
        cmd = [f'--out_dir={os.path.join(RUNS, name)}', *MODEL, *args]
        cfg = {**TRAIN, **{k: parse_value(v) for k, _, v in (a[2:].partition('=') for a in cmd)}}
        rows.append(dict(name=name, args=cmd, config=cfg, C=cfg['max_iters'], N=1.0))
    run_plan(rows, jobs=jobs)


def branch_args(S):
    c = round(COOLDOWN * S)
    parent = os.path.join(RUNS, 'stable', f'ckpt_{S - c:06d}.pt')
    own = os.path.exists(os.path.join(RUNS, f'branch_{S}', CKPT_NAME))
    return ['--schedule=wsd', f'--max_iters={S}', f'--cooldown_iters={c}', '--init_from=resume',
            f'--eval_interval={max(50, S // 10)}'] + ([] if own else [f'--branch_from={parent}'])


def run(jobs):
    os.makedirs(RUNS, exist_ok=True)
    stable = ('stable', ['--schedule=wsd', '--cooldown_iters=0', f'--max_iters={STABLE_STEPS}',
                         '--checkpoint_interval=400', '--keep_checkpoints=0', '--eval_interval=400'])
    cosine = [(f'cosine_{S}', ['--schedule=cosine', f'--max_iters={S}', f'--eval_interval={max(50, S // 10)}'])
              for S in LENGTHS]
    launch(jobs, [stable] + cosine[::-1])   # longest first: the pool ends together
    launch(jobs, [(f'branch_{S}', branch_args(S)) for S in LENGTHS])


def report():
    rows, out = [], {'lengths': LENGTHS, 'cooldown_fraction': COOLDOWN}
    for S in LENGTHS:
        b, c = finished(f'branch_{S}'), finished(f'cosine_{S}')
        if not (b and c):
            sys.exit(f"error: runs for S={S} not finished")
        rows.append((S, b['tokens'], c['val_loss'], b['val_loss']))
    stable_steps = STABLE_STEPS
    branched = stable_steps + sum(round(COOLDOWN * S) for S in LENGTHS)
    separate = sum(LENGTHS)
    lines = ['# Results', '', '| steps | tokens | cosine val loss | branch val loss | branch - cosine |',
             '|---|---|---|---|---|']
    for S, tok, lc, lb in rows:
        lines.append(f'| {S} | {tok / 1e6:.2f}M | {lc:.4f} | {lb:.4f} | {lb - lc:+.4f} |')
    lines += ['', f'Compute: separate cosine runs {separate} steps; stable run + branches {branched} steps '
              f'({100 * branched / separate:.0f}%). Each run is a point; the branched protocol gives all four '
              f'from one run per size.']
    out.update(rows=[dict(steps=S, tokens=t, cosine=lc, branch=lb) for S, t, lc, lb in rows],
               steps_separate=separate, steps_branched=branched)
    open(os.path.join(HERE, 'results.md'), 'w').write('\n'.join(lines) + '\n')
    write_json(os.path.join(HERE, 'results.json'), out)   # data.py's atomic writer
    print('\n'.join(lines))
    plt = pyplot()        # plots.py: matplotlib with the Agg backend, or None (with a warning) without it
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, color in [('stable', 'k')] + [(f'cosine_{S}', 'C0') for S in LENGTHS] + \
            [(f'branch_{S}', 'C1') for S in LENGTHS]:
        _, by_step = records(os.path.join(RUNS, name, LOG_NAME))
        pts = {step: (r['tokens'], r['val_loss']) for (kind, step), (_, r) in by_step.items()
               if kind == 'eval' and r['tokens'] > 0}   # a log axis: step 0 has no place on it
        xs, ys = zip(*sorted(pts.values()))
        ax.plot(xs, ys, color=color, lw=1, marker='.' if name.startswith('branch') else None,
                label=name.split('_')[0] if name.endswith(('stable', '_500')) else None)
    ax.set_xscale('log')
    ax.set_ylim(1.6, 2.8)
    ax.set_xlabel('tokens')
    ax.set_ylabel('val loss (nats/byte)')
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(HERE, 'branches.png'), dpi=120)


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('cmd', choices=['run', 'report'])
    ap.add_argument('--jobs', type=int, default=2)
    a = ap.parse_args()
    run(a.jobs) if a.cmd == 'run' else report()
