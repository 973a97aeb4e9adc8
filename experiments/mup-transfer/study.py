"""
Does the best learning rate transfer? LR sweeps of 'sp' and 'mup' across width, of 'sp' and 'completep' across depth,
then one wide model at the LR each would carry over from the small ones. One command runs or continues everything
(finished runs are skipped), the other writes the report:

    python -m experiments.mup-transfer.study run [--jobs 2]     # runs/<name>/log.jsonl; rerun to continue
    python -m experiments.mup-transfer.study report             # results.md, results.json, lr_sweeps.png

Protocol (issue 33): byte-level Shakespeare (the quick start's data), head size 16 (heads added with width), RoPE,
LayerNorm, GELU, tied embeddings, 200 AdamW steps of 8 x 64 tokens (0.1M tokens), 20 warm-up steps then cosine to
lr/10, weight decay 0.1, clipping 1.0, float32, one thread per run; the final val loss on the same 32 x 8 x 64 val
tokens. The LR grid is 2^-k; each sweep starts at k = 6..12 and is extended by one grid step past either end while
its best LR (the mean over seeds) sits on the end. Seeds 1 and 2 (init and data order).
  - width: n_layer 2, n_embd 64, 128, 256, 512; 'mup' with base_n_embd 64 (so 'mup' at 64 is 'sp', bit for bit).
  - depth: n_embd 64, n_layer 2, 4, 8; 'completep' with base_n_embd 64, base_n_layer 2 against 'sp' (at the
    base width, 'mup' is 'sp').
  - wide: n_embd 1024, n_layer 2, seeds 1 and 2: 'mup' at the best LR of its base width 64 (tune small, train big)
    against 'sp' at its best guess from the small widths (the power law of its best LR over widths 64..512,
    extrapolated to 1024), and against 'sp' at the same LR as 'mup' (the base's best, without muP).
Everything runs train.py as a subprocess through sweep.run_plan (scripts never import each other).
"""
import argparse
import math
import os

import numpy as np

from pretrain.configurator import parse_value, script_defaults  # library modules, not scripts
from pretrain.data import write_json
from pretrain.scaling.plots import pyplot
from pretrain.scaling.runlog import LOG_NAME, records
from pretrain.scaling.sweep import run_plan

HERE = os.path.dirname(os.path.abspath(__file__))
TRAIN = script_defaults(os.path.join(os.path.dirname(os.path.dirname(HERE)), 'train.py'))
RUNS = os.path.join(HERE, 'runs')
SEEDS = (1, 2)
STEPS, HEAD, BASE_WIDTH, BASE_DEPTH = 200, 16, 64, 2
K0 = range(6, 13)   # the starting grid, lr = 2^-k
WIDTHS, DEPTHS, WIDE = (64, 128, 256, 512), (2, 4, 8), 1024
COMMON = ['--block_size=64', '--batch_size=8', '--total_batch_size=512', f'--max_iters={STEPS}',
          '--warmup_iters=20', f'--eval_interval={STEPS}', '--eval_iters=32', '--log_interval=20',
          '--checkpoint_interval=0', '--spike_factor=0', '--device=cpu', '--dtype=float32']
# the sweeps: name -> (parametrization, n_embd, n_layer); each over the LR grid and the seeds
SWEEPS = {**{f'{p}_w{w}': (p, w, 2) for p in ('sp', 'mup') for w in WIDTHS},
          **{f'{p}_L{d}': (p, BASE_WIDTH, d) for p in ('sp', 'completep') for d in DEPTHS}}


def run_name(p, width, depth, lr, seed):
    return f'{p}_w{width}_L{depth}_lr{lr:.4g}_s{seed}'


def args_of(p, width, depth, lr, seed):
    base = [f'--base_n_embd={BASE_WIDTH}'] * (p != 'sp') + [f'--base_n_layer={BASE_DEPTH}'] * (p == 'completep')
    return [f'--parametrization={p}', f'--n_embd={width}', f'--n_head={width // HEAD}', f'--n_layer={depth}',
            f'--learning_rate={lr}', f'--min_lr={lr / 10}', f'--seed={seed}', *base]


def final(name):
    """The run's final val loss; inf if it diverged (train.py stopped it on a NaN loss: its console says so), None
    while it is unfinished."""
    path, console = (os.path.join(RUNS, name, f) for f in (LOG_NAME, 'console.log'))
    if os.path.exists(console) and 'became NaN or infinite' in open(console).read():
        return math.inf
    if not os.path.exists(path):
        return None
    _, by_step = records(path)
    rec = by_step.get(('eval', STEPS))
    return rec[1]['val_loss'] if rec else None


def launch(jobs, runs):
    """[(p, width, depth, lr, seed)] through scaling.py's sweep runner: `jobs` at once, one thread each, the costliest
    first, finished runs skipped."""
    rows = []
    for p, w, d, lr, s in runs:
        name = run_name(p, w, d, lr, s)
        if final(name) == math.inf:
            continue   # diverged: not again
        cmd = [f'--out_dir={os.path.join(RUNS, name)}', *COMMON, *args_of(p, w, d, lr, s), '--init_from=auto']
        cfg = {**TRAIN, **{k: parse_value(v) for k, _, v in (a[2:].partition('=') for a in cmd)}}
        rows.append(dict(name=name, args=cmd, config=cfg, C=d * (w * w + 64 * w), N=1.0))   # C: the cost, roughly
    run_plan(rows, jobs=jobs, keep_going=True)   # a diverged run is a result (final: inf)


def sweep(key):
    """{k: [final val loss per seed]} of a sweep's finished grid points (every seed finished)."""
    p, w, d = SWEEPS[key]
    out = {}
    for k in range(0, 20):
        losses = [final(run_name(p, w, d, 2.0 ** -k, s)) for s in SEEDS]
        if None not in losses:
            out[k] = losses
    return out


def best(key):
    """(best k by the mean over seeds, {seed: its best k}), or None before any point finished."""
    pts = sweep(key)
    if not pts:
        return None
    mean = {k: float(np.mean(v)) for k, v in pts.items()}
    return min(mean, key=mean.get), {s: min(pts, key=lambda k: pts[k][i]) for i, s in enumerate(SEEDS)}


def wide_arms():
    """-> ([(label, parametrization, lr)] of the wide runs, SP's width exponent). muP at the best LR of its base
    width; SP at its best guess, log2(best lr) linear in log2(width) over the swept widths, extrapolated; and SP at
    muP's LR (what tuning the base without muP would hand over: at the base the two are the same run)."""
    ks = [best(f'sp_w{w}')[0] for w in WIDTHS]
    a, b = np.polyfit(np.log2(WIDTHS), -np.array(ks, float), 1)
    lr_mup = 2.0 ** -best(f'mup_w{BASE_WIDTH}')[0]
    lr_sp = 2.0 ** (a * math.log2(WIDE) + b)
    return [(f'mup, the best LR at width {BASE_WIDTH}', 'mup', lr_mup),
            (f'sp, its best LR extrapolated from widths {WIDTHS[0]}..{WIDTHS[-1]}', 'sp', lr_sp),
            (f'sp at the same LR as mup (its best at width {BASE_WIDTH})', 'sp', lr_mup)], a


def run(jobs):
    os.makedirs(RUNS, exist_ok=True)
    grid = lambda key, ks: [(*SWEEPS[key], 2.0 ** -k, s) for s in SEEDS for k in ks]
    launch(jobs, [r for key in SWEEPS if key.startswith(('sp_w', 'mup_w')) for r in grid(key, K0)])
    launch(jobs, [r for key in SWEEPS if '_L' in key for r in grid(key, K0)])
    for _ in range(3):   # extend every sweep whose best LR is at an end of its grid
        more = []
        for key in SWEEPS:
            pts, b = sweep(key), best(key)
            if b:
                more += grid(key, [b[0] - 1] if b[0] == min(pts) > 1 else [b[0] + 1] if b[0] == max(pts) else [])
        if not more:
            break
        launch(jobs, more)
    launch(jobs, [(p, WIDE, 2, lr, s) for s in SEEDS for _, p, lr in wide_arms()[0]])


def stats(xs):
    m = float(np.mean(xs))
    return m, float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0


def report():
    out, lines = {'sweeps': {}}, ['# Results', '']
    for title, keys, what in (('Width', [k for k in SWEEPS if '_w' in k], 'n_embd'),
                              ('Depth', [k for k in SWEEPS if '_L' in k], 'n_layer')):
        lines += [f'## {title} (final val loss, nats/byte, mean over seeds {", ".join(map(str, SEEDS))}; '
                  f'best LR in bold)', '']
        ks = sorted({k for key in keys for k in sweep(key)})
        lines += ['| parametrization | ' + what + ' | ' + ' | '.join(f'2^-{k}' for k in ks) +
                  ' | best LR (mean) | best LR per seed |', '|---' * (len(ks) + 4) + '|']
        for key in keys:
            p, w, d = SWEEPS[key]
            pts, b = sweep(key), best(key)
            if b is None:
                continue
            cells = [('**%.4f**' if k == b[0] else '%.4f') % np.mean(pts[k]) if k in pts else '' for k in ks]
            cells = [c.replace('inf', 'diverged') for c in cells]
            lines.append(f'| {p} | {w if what == "n_embd" else d} | ' + ' | '.join(cells) +
                         f' | 2^-{b[0]} = {2.0 ** -b[0]:.3g} | ' + ', '.join(f'2^-{k}' for k in b[1].values()) + ' |')
            out['sweeps'][key] = dict(parametrization=p, n_embd=w, n_layer=d, best_k=b[0], best_k_per_seed=b[1],
                                      final={k: v for k, v in pts.items()})
        lines.append('')
        for p in sorted({SWEEPS[k][0] for k in keys}):
            bk = [out['sweeps'][k]['best_k'] for k in keys if SWEEPS[k][0] == p and k in out['sweeps']]
            if bk:
                lines.append(f'- {p}: best LR from 2^-{min(bk)} to 2^-{max(bk)} over the {what} swept: a spread of '
                             f'{max(bk) - min(bk)} grid step(s) (a factor of {2 ** (max(bk) - min(bk))})')
        lines.append('')
    arms, slope = wide_arms()
    wide = [(label, lr, [final(run_name(p, WIDE, 2, lr, s)) for s in SEEDS]) for label, p, lr in arms]
    lines += [f'## Wide: n_embd {WIDE}, n_layer 2', '',
              f'SP\'s best LR over widths {WIDTHS[0]}..{WIDTHS[-1]} goes as width^{slope:.2f}.', '',
              '| run | LR | final val loss per seed | mean +- sd | minus mup, seed by seed (mean +- sd) |',
              '|---|---|---|---|---|']
    for label, lr, finals in wide:
        if None in finals:
            continue
        d = [a - b for a, b in zip(finals, wide[0][2])] if None not in wide[0][2] else None
        lines.append(f'| {label} | {lr:.3g} | ' + ', '.join(f'{v:.4f}' for v in finals) + ' | %.4f +- %.4f | '
                     % stats(finals) + (', '.join(f'{x:+.4f}' for x in d) + ' (%+.4f +- %.4f)' % stats(d)
                                        if d and label != wide[0][0] else '') + ' |')
    out['wide'] = dict(n_embd=WIDE, sp_width_exponent=slope, seeds=SEEDS,
                       arms=[dict(label=label, lr=lr, final=finals) for label, lr, finals in wide])
    open(os.path.join(HERE, 'results.md'), 'w').write('\n'.join(lines) + '\n')
    write_json(os.path.join(HERE, 'results.json'), out)
    print('\n'.join(lines))
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    for ax, (p, arm) in zip(axes, (('sp', '_w'), ('mup', '_w'), ('sp', '_L'), ('completep', '_L'))):
        keys = [k for k in SWEEPS if SWEEPS[k][0] == p and arm in k]
        for i, key in enumerate(keys):
            pts = sweep(key)
            ks = sorted(pts)
            ax.plot([2.0 ** -k for k in ks], [np.mean(pts[k]) for k in ks], marker='o', ms=3,
                    color=plt.cm.viridis(i / max(1, len(keys) - 1)), label=key.split('_')[1])
        ax.set_xscale('log', base=2)
        ax.set_xlabel('learning rate')
        ax.set_title(f"{p}, {'width' if arm == '_w' else 'depth'}")
        low = min((np.mean(v) for key in SWEEPS if arm in key for v in sweep(key).values()), default=2.0)
        ax.set_ylim(low - 0.05, low + 0.6)
        ax.legend(fontsize=7)
    axes[0].set_ylabel('final val loss (nats/byte)')
    fig.tight_layout()
    fig.savefig(os.path.join(HERE, 'lr_sweeps.png'), dpi=110)


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('cmd', choices=['run', 'report'], help='run (or continue) every sweep; or write the report')
    ap.add_argument('--jobs', type=int, default=2, help='runs at once, one thread each')
    a = ap.parse_args()
    if a.cmd == 'run':
        run(a.jobs)
    else:
        report()
