"""
The Muon and block-option ablation on the CPU quick start (train.py's defaults: 0.83M-parameter byte-level GPT,
Shakespeare, 1000 steps x 2048 tokens). One command runs or continues everything, then writes the report:

    python -m experiments.muon-ablation.ablation run [--jobs 2]     # finished runs are skipped: rerun to continue
    python -m experiments.muon-ablation.ablation report             # results.md, results.json, curves.png

Protocol (issue 16): AdamW at the quick start's tuned LR (6e-3) vs Muon with its LR from a short sweep (one seed
per LR, the optimum bracketed by worse LRs on both sides), 3 seeds each; then each block option alone on top of the
better optimizer, 3 seeds each. Every run evaluates every 50 steps on the same 20 x 4 x 512 val tokens. The
headline: the tokens Muon needs to reach AdamW's final val loss (mean over AdamW's seeds), per Muon seed.
Everything runs train.py as a subprocess through sweep.run_plan (scripts never import each other) and reads
the runs' log.jsonl.
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
from pretrain.configurator import parse_value, script_defaults  # library modules, not scripts
from pretrain.data import write_json
from pretrain.scaling.plots import pyplot
from pretrain.scaling.runlog import LOG_NAME, records
from pretrain.scaling.sweep import run_plan
TRAIN = script_defaults(os.path.join(ROOT, 'train.py'))
RUNS = os.path.join(HERE, 'runs')
SEEDS = (1337, 1338, 1339)
COMMON = ['--eval_interval=50', '--eval_iters=20', '--log_interval=50', '--checkpoint_interval=250', '--device=cpu',
          '--dtype=float32', '--batch_size=4']   # the runs' micro-batch (train.py's default then; the same 80 val seqs)
ADAMW = ['--optimizer=adamw']                       # learning_rate 6e-3: train.py's default, tuned for this model
MUON_LRS = (0.005, 0.01, 0.02, 0.04)               # the sweep (Muon's matrices; AdamW keeps 6e-3 for the rest)
OPTIONS = {'qk_norm': ['--qk_norm=True'], 'relu2': ['--mlp=relu2'], 'zero_init': ['--zero_init_proj=True'],
           'softcap': ['--logit_softcap=15.0']}


def evals(name):
    """[(tokens, val_loss)] of a run (runlog.records: the last record per step), and whether it finished."""
    path = os.path.join(RUNS, name, LOG_NAME)
    if not os.path.exists(path):
        return [], False
    runs, by_step = records(path)
    ev = {step: r for (kind, step), (_, r) in by_step.items() if kind == 'eval'}
    return [(r['tokens'], r['val_loss']) for _, r in sorted(ev.items())], runs[-1]['config']['max_iters'] in ev


def launch(jobs, runs):
    """Run [(name, args)] through scaling.py's sweep runner (sweep.run_plan): `jobs` at once, one thread each
    (small models use one core better than two), finished runs skipped, interrupted ones resumed."""
    rows = []
    for name, args in runs:
        cmd = [f'--out_dir={os.path.join(RUNS, name)}', *COMMON, *args, '--init_from=auto']
        cfg = {**TRAIN, **{k: parse_value(v) for k, _, v in (a[2:].partition('=') for a in cmd)}}
        rows.append(dict(name=name, args=cmd, config=cfg, C=1.0, N=1.0))
    run_plan(rows, jobs=jobs)


def final(name):
    pts, done = evals(name)
    return pts[-1][1] if done else None


def best_muon_lr():
    losses = {lr: final(f'muon_lr{lr:g}_s{SEEDS[0]}') for lr in MUON_LRS}
    return min(losses, key=lambda lr: losses[lr] if losses[lr] is not None else float('inf')), losses


def muon_args(lr, ns_dtype='float32'):
    # the sweep, the seeds and the options ran with float32 Newton-Schulz, the CPU default then; train.py's
    # 'auto' now picks bf16 on CPUs with bf16 matmul instructions, which the bf16 arm below measures
    return ['--optimizer=muon', f'--muon_lr={lr}', f'--muon_ns_dtype={ns_dtype}']


def run(jobs):
    os.makedirs(RUNS, exist_ok=True)
    sweep = [(f'muon_lr{lr:g}_s{SEEDS[0]}', muon_args(lr) + [f'--seed={SEEDS[0]}']) for lr in MUON_LRS]
    adamw = [(f'adamw_s{s}', ADAMW + [f'--seed={s}']) for s in SEEDS]
    launch(jobs, sweep + adamw)
    lr, _ = best_muon_lr()
    launch(jobs, [(f'muon_lr{lr:g}_s{s}', muon_args(lr) + [f'--seed={s}']) for s in SEEDS[1:]])
    launch(jobs, [(f'muon_lr{lr:g}_bf16ns_s{s}', muon_args(lr, 'bfloat16') + [f'--seed={s}']) for s in SEEDS])
    base_name, base_args = better_optimizer()
    from model import GPTConfig   # a library module: the options must exist, or train.py would ignore them
    missing = {'qk_norm', 'zero_init_proj', 'logit_softcap'} - set(GPTConfig.__dataclass_fields__)
    if missing:
        sys.exit(f"error: model.py lacks {sorted(missing)}: the block options cannot run yet")
    launch(jobs, [(f'{base_name}+{opt}_s{s}', base_args + extra + [f'--seed={s}'])
                  for s in SEEDS for opt, extra in OPTIONS.items()])   # seed by seed: every option gets seed 1 first


def better_optimizer():
    lr, _ = best_muon_lr()
    muon = [final(f'muon_lr{lr:g}_s{s}') for s in SEEDS]
    adamw = [final(f'adamw_s{s}') for s in SEEDS]
    if None in muon or None in adamw:
        sys.exit("error: the optimizer runs are not finished; run `ablation.py run` first")
    if sum(muon) < sum(adamw):
        return f'muon_lr{lr:g}', muon_args(lr)
    return 'adamw', ADAMW


def tokens_to_reach(pts, target):
    """First token count where the val curve reaches target, linearly interpolated between evaluations."""
    for (t0, l0), (t1, l1) in zip(pts, pts[1:]):
        if l1 <= target:
            return t0 + (t1 - t0) * (l0 - target) / (l0 - l1) if l0 > target else t0
    return None


def stats(xs):
    m = sum(xs) / len(xs)
    sd = (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5 if len(xs) > 1 else 0.0
    return m, sd, min(xs), max(xs)


def report():
    lr, sweep = best_muon_lr()
    adamw = {s: evals(f'adamw_s{s}')[0] for s in SEEDS}
    muon = {s: evals(f'muon_lr{lr:g}_s{s}')[0] for s in SEEDS}
    target = stats([pts[-1][1] for pts in adamw.values()])[0]
    total = adamw[SEEDS[0]][-1][0]
    reach = [tokens_to_reach(muon[s], target) for s in SEEDS]
    bf16 = {s: evals(f'muon_lr{lr:g}_bf16ns_s{s}')[0] for s in SEEDS}
    bf16 = {s: pts for s, pts in bf16.items() if pts}
    out = {'muon_lr_sweep': {f'{k:g}': v for k, v in sweep.items()}, 'muon_lr': lr,
           'adamw_final': {s: adamw[s][-1][1] for s in SEEDS}, 'muon_final': {s: muon[s][-1][1] for s in SEEDS},
           'target': target, 'tokens_per_run': total, 'muon_tokens_to_target': dict(zip(SEEDS, reach))}
    lines = ['# Results', '', f'Muon LR sweep (seed {SEEDS[0]}, final val loss): ' +
             ', '.join(f'{k:g}: {v:.4f}' if v else f'{k:g}: -' for k, v in sweep.items()) + f'; chosen {lr:g}.', '',
             '| run | seeds | final val loss (mean +- sd, min..max) |', '|---|---|---|']
    arms = [('AdamW lr 6e-3', adamw), (f'Muon lr {lr:g} (float32 Newton-Schulz)', muon)]
    arms += [(f'Muon lr {lr:g} (bf16 Newton-Schulz)', bf16)] if bf16 else []
    for label, runs in arms:
        m, sd, lo, hi = stats([pts[-1][1] for pts in runs.values()])
        lines.append(f'| {label} | {len(runs)} | {m:.4f} +- {sd:.4f} ({lo:.4f}..{hi:.4f}) |')
    for label, runs in arms[1:]:
        reached = [tokens_to_reach(pts, target) for pts in runs.values()]
        ok = [r for r in reached if r is not None]
        if ok:
            m, sd, lo, hi = stats([r / total for r in ok])
            lines += ['', f'**Tokens {label} needs to reach AdamW\'s final val loss {target:.4f}: {m:.3f}x '
                      f'AdamW\'s (sd {sd:.3f}, seeds {lo:.3f}..{hi:.3f}; {len(ok)} of {len(reach)} seeds reached '
                      f'it).**']
    if bf16:
        out['muon_bf16ns_final'] = {s: pts[-1][1] for s, pts in bf16.items()}
        out['muon_bf16ns_tokens_to_target'] = {s: tokens_to_reach(pts, target) for s, pts in bf16.items()}
    base_name, _ = better_optimizer()
    base = {s: final(f'{base_name}_s{s}') for s in SEEDS}
    lines += ['', f'Block options, one at a time on top of {base_name} (seeds as listed; delta: the option minus '
              f'{base_name} on the same seeds, mean +- sd over seeds):', '',
              '| option | seeds | final val loss (mean +- sd) | delta vs the same seeds without it |',
              '|---|---|---|---|']
    out['options'] = {}
    for opt in OPTIONS:
        finals = {s: final(f'{base_name}+{opt}_s{s}') for s in SEEDS}
        done = [s for s in SEEDS if finals[s] is not None]
        if not done:
            lines.append(f'| {opt} | 0 | (not run) | |')
            continue
        m, sd, _, _ = stats([finals[s] for s in done])
        dm, dsd, _, _ = stats([finals[s] - base[s] for s in done])
        out['options'][opt] = {s: finals[s] for s in done}
        lines.append(f'| {opt} | {len(done)} | {m:.4f} +- {sd:.4f} | {dm:+.4f} +- {dsd:.4f} |')
    open(os.path.join(HERE, 'results.md'), 'w').write('\n'.join(lines) + '\n')
    write_json(os.path.join(HERE, 'results.json'), out)   # data.py's atomic writer
    print('\n'.join(lines))
    plt = pyplot()        # plots.py: matplotlib with the Agg backend, or None (with a warning) without it
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, runs, color in (('AdamW', adamw, 'C0'), (f'Muon {lr:g}', muon, 'C1'),
                               (f'Muon {lr:g}, bf16 Newton-Schulz', bf16, 'C2')):
        for i, pts in enumerate(runs.values()):
            ax.plot([t for t, _ in pts], [v for _, v in pts], color=color, alpha=0.7, label=label if i == 0 else None)
    ax.axhline(target, color='gray', ls=':', label="AdamW's final (mean)")
    ax.set_ylim(target - 0.15, target + 0.8)
    ax.set_xlabel('tokens')
    ax.set_ylabel('val loss (nats/byte)')
    ax.legend()
    ax.set_title('quick start: AdamW vs Muon, 3 seeds each')
    fig.tight_layout()
    fig.savefig(os.path.join(HERE, 'curves.png'), dpi=120)


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('cmd', choices=['run', 'report'])
    ap.add_argument('--jobs', type=int, default=2)
    a = ap.parse_args()
    run(a.jobs) if a.cmd == 'run' else report()
