"""
Scaling laws from this repo's own runs: read train.py's log.jsonl files (or a CSV of N,D,loss[,C]), fit Kaplan et al.
2020 and Chinchilla (Hoffmann et al. 2022) approaches 1-3 with bootstrap intervals, print compute-optimal tables, draw
figures, plan (and run) IsoFLOP sweeps, plain or branched from WSD stable runs, fit the critical batch size to the
gradient noise scale, and fit laws for the best learning rate and batch size.

    python scaling.py plan --budgets 1e13,3e13,1e14 --sizes 5 --branch --run --jobs 2
    python scaling.py fit out-sweep --method all --bootstrap 100 --json fit.json --plots figs/
    python scaling.py bcrit out-sweep --min_step 100 --json bcrit.json --plots figs/
    python scaling.py hparams out-lr-sweep --bootstrap 200 --json lr_law.json
    python scaling.py budget --gpu H100 --gpus 8 --hours 24 --mfu 0.4 --price 2.5 --out config/budget.py
More, and what each prints: docs/scaling.md, docs/budget.md.

Conventions. N counts all parameters by default (Chinchilla does; Pearce & Song 2024 show that dropping embeddings
biases small-scale exponents), --n nonembed Kaplan's non-embedding N. C = 6*N*D by default (the budget the plan
uses), --compute logged takes train.py's logged FLOPs; IsoFLOP groups always follow the planned budget (6 * total
N * D, within --rtol). Losses are val losses. A run is finished when its log holds an eval at step == max_iters
(train.py always evaluates at its last step); unfinished runs, and the stable runs of branched sweeps (their
branches are the points), are left out with a note. Every nonlinear fit minimises the summed Huber loss (delta
1e-3) of log-loss residuals (Chinchilla's appendix D.2) by a batched float64 L-BFGS from a grid of starts. --json
FILE writes a subcommand's results (--json -: on stdout, the report then on stderr). Library: pretrain/scaling/.
"""
from pretrain.cli import cli, run_script  # first: Ctrl-C from here on, the import of torch included, is one line and exit 130
import argparse
import inspect
import math
import os
import sys

import numpy as np

from pretrain import configurator
from pretrain.data import json_output, write_json, write_text
from pretrain.scaling import bcrit, budget, hparams, laws, plots, sweep
from pretrain.scaling.runlog import ScalingError, load, read_json


def _floats(text):
    try:
        vals = [float(v) for v in text.split(',') if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")
    if not vals or not all(v > 0 and math.isfinite(v) for v in vals):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return vals


def _lr_points(text):
    try:
        return [tuple(float(x) for x in pair.split(':')) for pair in text.split(',')]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N:lr,N:lr (e.g. 16.5e3:0.012,948e3:0.006), got {text!r}")


def parse_args(argv):
    ap = argparse.ArgumentParser(prog='scaling.py', description=__doc__.split('\n\n')[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest='cmd', required=True)
    f = sub.add_parser('fit', help='fit scaling laws to run logs or CSV points')
    f.add_argument('inputs', nargs='+', help='run dirs, log.jsonl files, sweep dirs, or CSV files (N,D,loss[,C][,run])')
    f.add_argument('--method', default='all', choices=['all', 'kaplan', 'approach1', 'approach2', 'approach3'])
    f.add_argument('--n', default='total', choices=['total', 'nonembed'], help='parameter count (default total)')
    f.add_argument('--compute', default='6nd', choices=['6nd', 'logged'], help="C = 6ND or train.py's logged FLOPs")
    f.add_argument('--loss', default='val', choices=['val', 'train'])
    f.add_argument('--points', default='final', choices=['final', 'all'],
                   help="points for approach 3 and Kaplan's L(N) and eq. 1.5: final losses, or every eval")
    f.add_argument('--minimum', default='parabola', choices=['parabola', 'spline'], help='approach 2 minimum')
    f.add_argument('--irreducible', action='store_true', help="Kaplan L(N), L(D), L(C) with a constant E")
    f.add_argument('--bootstrap', type=int, default=0, help='bootstrap refits (e.g. 100)')
    f.add_argument('--boot_starts', type=int, default=64, help='approach 3: best grid starts reused per refit')
    f.add_argument('--budgets', type=_floats, help='FLOP budgets of the compute-optimal table')
    f.add_argument('--delta', type=float, default=1e-3, help='Huber delta')
    f.add_argument('--rtol', type=float, default=0.1, help='relative spread of C within one IsoFLOP budget')
    f.add_argument('--plots', help='write PNG figures to this directory (needs matplotlib)')
    f.add_argument('--skip_bad', action='store_true', help='leave out unreadable or diverged runs with a warning')
    f.add_argument('--include_unfinished', action='store_true')
    f.add_argument('--include_stable', action='store_true', help="keep branched sweeps' stable runs (left out)")
    p = sub.add_parser('plan', help='plan (and --run) an IsoFLOP sweep')
    p.add_argument('--budgets', type=_floats, required=True, help='FLOP budgets, C = 6ND, e.g. 1e13,3e13,1e14')
    p.add_argument('--sizes', type=int, default=5, help='model sizes per budget')
    p.add_argument('--span', type=float, default=10.0, help='largest / smallest N of a budget')
    p.add_argument('--tokens_per_param', type=float, default=20.0, help='prior optimum D/N the sizes centre on')
    p.add_argument('--aspect', type=float, default=32.0, help='n_embd / n_layer of the shape rule')
    p.add_argument('--head_dim', type=int, default=16)
    p.add_argument('--data_dir', default='data/shakespeare_bytes')
    p.add_argument('--vocab_size', type=int, help="default: from the data_dir's meta.json")
    p.add_argument('--out_root', default='out-sweep')
    for k, v in dict(block_size=256, batch_size=16, total_batch_size=8192, learning_rate=1e-3, min_lr_ratio=0.1,
                     warmup_frac=0.05, evals=10, eval_iters=20, checkpoints=4, seed=1337, min_steps=20).items():
        p.add_argument(f'--{k}', type=type(v), default=v)
    p.add_argument('--schedule', default='cosine', choices=['cosine', 'wsd'])
    lr = p.add_mutually_exclusive_group()
    lr.add_argument('--lr_points', type=_lr_points, help='measured best learning rates N:lr,N:lr; each run gets the '
                    'power law in N through them (instead of --learning_rate)')
    lr.add_argument('--lr_law', help="a `scaling.py hparams --json` file: each run's learning rate is its eta_opt(C) "
                    "at the run's budget (instead of --learning_rate)")
    p.add_argument('--branch', action='store_true', help='per model size one WSD stable run and a cooldown branch '
                   'per budget from its checkpoints (Hägele et al. 2024), instead of separate runs (the schedule is '
                   'then WSD whatever --schedule says)')
    p.add_argument('--cooldown_frac', type=float, default=0.2, help='with --branch: cooldown steps / run steps')
    p.add_argument('--branch_snap', type=float, default=0.02, help='with --branch: how far (relative) a branch '
                   'point may move to share a checkpoint grid with the size\'s other branch points')
    p.add_argument('--train_config', help='a train.py config file to put first on every command line')
    p.add_argument('--train_args', default='', help='more --key=value for train.py, e.g. "--dtype=\'bfloat16\'"')
    p.add_argument('--run', action='store_true', help='run the sweep now; finished runs are skipped')
    p.add_argument('--keep_going', action='store_true', help='with --run: go on after a failed run')
    p.add_argument('--jobs', type=int, default=1, help='with --run: runs at once, each with cores/jobs threads')
    p.add_argument('--train_script', help=argparse.SUPPRESS)
    b = sub.add_parser('bcrit', help="fit Kaplan's B_crit(L) = B_star / L^(1/alpha_B) to the gradient noise scale")
    b.add_argument('inputs', nargs='+', help='run dirs, log.jsonl files or sweep dirs with noise records '
                   '(train.py --noise_scale=True)')
    b.add_argument('--bootstrap', type=int, default=200, help='block-bootstrap refits (0: none)')
    b.add_argument('--block', type=int, default=0, help='records per bootstrap block (0: each run in 10 blocks; '
                   '1: single points, which ignores their autocorrelation)')
    b.add_argument('--min_step', type=int, default=0, help='leave out noise records before this step')
    b.add_argument('--losses', type=_floats, help='losses of the B_crit table (default: 5 across the data)')
    b.add_argument('--plots', help='write bcrit.png to this directory (needs matplotlib)')
    h = sub.add_parser('hparams', help='fit the best learning rate (and batch size) as power laws in compute')
    h.add_argument('inputs', nargs='+', help='run dirs, log.jsonl files or sweep dirs of an LR / batch-size sweep')
    h.add_argument('--bootstrap', type=int, default=200, help='bootstrap refits (runs resampled within budgets)')
    h.add_argument('--compute', default='6nd', choices=['6nd', 'logged'], help="C = 6ND or train.py's logged FLOPs")
    h.add_argument('--rtol', type=float, default=0.1, help='relative spread of C within one budget')
    h.add_argument('--skip_bad', action='store_true', help='leave out unreadable or diverged runs with a warning')
    g = sub.add_parser('budget', help='from compute or GPUs x hours to a model, tokens, batch, lr, time, cost and a '
                       'train.py config (docs/budget.md)')
    g.add_argument('--compute', type=float, help="the law's budget C = 6ND, FLOPs")
    g.add_argument('--gpu', help="a GPU name from runtime.py's peak table (A100, H100, ...)")
    g.add_argument('--peak_tflops', type=float, help='dense bf16 TFLOP/s of one GPU (instead of --gpu)')
    g.add_argument('--gpus', type=int, default=1, help='GPUs (processes)')
    g.add_argument('--gpus_per_node', type=int, default=8, help='GPUs a node joins by NVLink: tensor parallelism '
                   'stays within them')
    g.add_argument('--hours', type=float, help='wall-clock hours')
    g.add_argument('--mfu', type=float, help='model FLOPs utilization, PaLM count as train.py and bench.py (0.4 if '
                   'neither this nor --bench)')
    g.add_argument('--bench', help='a bench.py --json record: its MFU (and peak, without --gpu)')
    g.add_argument('--params', type=float, help="target parameter count N (the law's convention)")
    g.add_argument('--tokens', type=float, help='target training tokens D')
    g.add_argument('--price', type=float, help='price per GPU-hour')
    g.add_argument('--law', default=budget.DEFAULT_LAW, help=f"a published law ({', '.join(budget.LAWS)}) or a "
                   "`scaling.py fit --json` file")
    g.add_argument('--fit_method', choices=['approach3', 'approach1', 'approach2', 'kaplan'],
                   help='with a fit file: its method (default: the first of these it has)')
    g.add_argument('--hparams', help='a `scaling.py hparams --json` file: its lr (and batch) laws')
    g.add_argument('--bcrit', help='a `scaling.py bcrit --json` file: batch = B_crit at the predicted loss')
    g.add_argument('--parametrization', choices=['mup', 'completep'], help="write a muP (or CompleteP) config whose "
                   "LR is a small tuned model's, instead of eta_opt(C) (docs/parametrization.md)")
    g.add_argument('--tuned', metavar='RUN_DIR', help='with --parametrization: the tuned run (its shape and LR)')
    g.add_argument('--base_lr', type=float, help='with --parametrization, instead of --tuned: the tuned peak LR')
    g.add_argument('--base_n_embd', type=int, help='... and the width it was tuned at')
    g.add_argument('--base_n_layer', type=int, help='... and the depth (completep)')
    g.add_argument('--block_size', type=int, default=1024, help='context length, tokens')
    g.add_argument('--aspect', type=float, default=64.0, help='n_embd / n_layer of the shape rule')
    g.add_argument('--head_dim', type=int, default=64)
    g.add_argument('--data_dir', default='data/fineweb10B', help='its meta.json gives the vocabulary')
    g.add_argument('--vocab_size', type=int, help='instead of data_dir/meta.json')
    g.add_argument('--base', help='a train.py config whose model and system knobs the plan keeps (e.g. '
                   'config/gpt2.py); default: train.py\'s defaults')
    g.add_argument('--max_micro_batch', type=int, default=64, help='largest micro-batch per GPU tried')
    g.add_argument('--gpu_memory', type=float, help='GiB per GPU (default: from --gpu)')
    g.add_argument('--warmup_frac', type=float, default=0.02, help='warm-up steps / steps')
    g.add_argument('--out', help='write a train.py config here, and the plan next to it (.plan.json)')
    g.add_argument('--out_dir', help="the config's out_dir (default: out-<config name>)")
    g.add_argument('--check', metavar='RUN_DIR', help="compare a finished run's log.jsonl with the plan")
    g.add_argument('--plan', help='with --check: a saved plan (.plan.json) instead of planning again from the options')
    g.add_argument('--rtol', type=float, default=0.1, help='with --check: tolerance of tokens/s and MFU')
    for s in (f, b, h):
        s.add_argument('--seed', type=int, default=0)
    for s in (f, b, h, g):
        s.add_argument('--ci', type=float, default=0.95)
    for s in (f, p, b, h, g):
        s.add_argument('--json', metavar='FILE', help="write the results as JSON here (plan, budget: the plan); '-': "
                       "on stdout, the report then on stderr")
    return ap.parse_args(argv)


def with_options(fn, a, **kw):
    """fn called with the options named as its parameters, kw added."""
    return fn(**{**{k: v for k, v in vars(a).items() if k in inspect.signature(fn).parameters}, **kw})


def results_doc(a, summary):
    """The --json document of fit, bcrit and hparams: the inputs, every other option, the results."""
    return dict(inputs=a.inputs, options={k: v for k, v in vars(a).items() if k != 'inputs'}, results=summary)


def cmd_fit(a, emit):
    if not 0 < a.ci < 1 or a.bootstrap < 0 or a.boot_starts < 1 or not a.delta > 0:
        raise ScalingError("need 0 < --ci < 1, --bootstrap >= 0, --boot_starts >= 1 and --delta > 0")
    runs = load(a.inputs, a.n, a.compute, a.loss, a.skip_bad, a.include_unfinished, a.include_stable)
    results = laws.fit(runs, a.method, a.points, a.minimum, a.irreducible, a.bootstrap, a.boot_starts, a.delta,
                       a.seed, a.rtol)
    budgets = np.array(a.budgets) if a.budgets else laws.default_budgets(runs)
    summary, text = laws.summarize(results, budgets, a.ci)
    print(f"{len(runs)} runs: N {min(r.N for r in runs):.3g}..{max(r.N for r in runs):.3g}, "
          f"C {min(r.C[-1] for r in runs):.3g}..{max(r.C[-1] for r in runs):.3g} (N {a.n}, C {a.compute})")
    print(text)
    emit(results_doc(a, summary))
    for path in plots.plots(results, runs, a.plots, budgets, a.ci) if a.plots else []:
        print(f"wrote {path}")


def cmd_plan(a, emit):
    rows = with_options(sweep.plan, a, lr_law=hparams.read_lr_law(a.lr_law) if a.lr_law else None)
    if a.branch:
        spent, separate = sweep.plan_compute(rows)
        stable = [r for r in rows if r['kind'] == 'stable']
        trunk = sum(r['C'] for r in stable)
        print(f"# branched IsoFLOP sweep (WSD, cooldown {a.cooldown_frac:g} of each run; Hägele et al. 2024): "
              f"{len(stable)} stable runs + {len(rows) - len(stable)} branches, {spent:.3g} FLOPs in all (C = 6ND: "
              f"stable runs {trunk:.3g} + cooldowns {spent - trunk:.3g}); the same grid as separate runs: "
              f"{separate:.3g} FLOPs ({1 - spent / separate:.0%} saved)")
    else:
        print(f"# IsoFLOP sweep: {len(rows)} runs, {sum(r['C'] for r in rows):.3g} FLOPs in all (C = 6ND)")
    w = 26 if a.branch else 20  # with --branch: where each run starts (its branch point) and its cooldown steps
    print(f"# {'name':<{w}} {'N':>9} {'L':>3} {'d':>5} {'steps':>7} "
          + (f"{'from':>7} {'cool':>6} " if a.branch else "") + f"{'D':>9} {'D/N':>6} {'epochs':>6}")
    for r in rows:
        c, ep = r['config'], f"{r['epochs']:.2f}" if r['epochs'] else '?'
        start = f"{r.get('branch_step', '-'):>7} {c['cooldown_iters']:>6} " if a.branch else ""
        print(f"# {r['name']:<{w}} {r['N']:>9.3g} {c['n_layer']:>3} {c['n_embd']:>5} {c['max_iters']:>7} {start}"
              f"{r['D']:>9.3g} {r['tokens_per_param']:>6.1f} {ep:>6}")
    for r in rows:
        if r.get('kind') == 'stable':
            c = r['config']
            n = c['max_iters'] // c['checkpoint_interval']
            print(f"# {r['name']} keeps {n} checkpoint{'s' * (n > 1)} (every {c['checkpoint_interval']} steps); its "
                  f"branches start at step{'s' * (len(r['checkpoint_steps']) > 1)} "
                  f"{', '.join(map(str, r['checkpoint_steps']))}")
    print("\n".join(r['cmd'] for r in rows))
    emit(dict(options=vars(a), runs=rows))
    if a.run:
        sys.stdout.flush()  # the plan before the runs' own output
        sweep.run_plan(rows, a.train_script, a.keep_going, a.jobs)


def cmd_bcrit(a, emit):
    if not 0 < a.ci < 1 or a.bootstrap < 0 or a.block < 0 or a.min_step < 0:
        raise ScalingError("need 0 < --ci < 1 and --bootstrap, --block, --min_step >= 0")
    series, dropped = bcrit.load_noise(a.inputs, a.min_step)
    res = bcrit.fit(series, a.bootstrap, a.block, a.seed)
    summary, text = bcrit.summarize(res, a.losses, a.ci)
    print(text)
    if dropped:
        print(f"   note: {dropped} record(s) without a positive B_simple left out (|G|^2 estimate not yet > 0)")
    emit(results_doc(a, summary))
    for path in plots.plot_bcrit(res, series, a.plots, a.ci) if a.plots else []:
        print(f"wrote {path}")


def cmd_hparams(a, emit):
    if not 0 < a.ci < 1 or a.bootstrap < 0:
        raise ScalingError("need 0 < --ci < 1 and --bootstrap >= 0")
    runs = load(a.inputs, 'total', a.compute, 'val', a.skip_bad)
    summary, text = hparams.summarize(hparams.fit(runs, a.rtol, a.bootstrap, a.seed), a.ci)
    print(f"{len(runs)} runs, C {min(r.C[-1] for r in runs):.3g}..{max(r.C[-1] for r in runs):.3g} (C {a.compute})")
    print(text)
    emit(results_doc(a, summary))


def cmd_budget(a, emit):
    if not 0 < a.ci < 1 or not a.rtol > 0 or a.max_micro_batch < 1:
        raise ScalingError("need 0 < --ci < 1, --rtol > 0 and --max_micro_batch >= 1")
    if a.plan:
        if not a.check:
            raise ScalingError("--plan is for --check: the saved plan a run is compared with")
        p = read_json(a.plan)
        if 'n_params' not in p or 'tokens_per_s' not in p:
            raise ScalingError(f"{a.plan}: not a plan written by scaling.py budget")
    else:
        p = with_options(budget.plan, a, hparams_file=a.hparams, bcrit_file=a.bcrit, base_config=a.base)
    if a.check:
        rows, text = budget.check(p, a.check, a.rtol)
        print(text)
        return emit(dict(plan=p, check=rows))
    print(budget.report(p))
    if a.out:
        name = os.path.splitext(os.path.basename(a.out))[0]
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        write_text(a.out, budget.config_text(p, a.out_dir or f"out-{name}"))
        plan_path = os.path.splitext(a.out)[0] + '.plan.json'
        write_json(plan_path, p)
        print(f"wrote {a.out} and {plan_path}")
    emit(p)


def main(argv=None):
    a = parse_args(sys.argv[1:] if argv is None else argv)
    cmd = dict(fit=cmd_fit, plan=cmd_plan, bcrit=cmd_bcrit, hparams=cmd_hparams, budget=cmd_budget)[a.cmd]

    def run():   # --json FILE, or - for stdout (data.json_output)
        with json_output(a.json) as emit:
            cmd(a, emit)
    cli(run, (ScalingError, configurator.ConfigError),
        interrupted="interrupted: rerun the same command to continue (finished runs are skipped)")


if __name__ == '__main__':
    run_script(main, sys.argv[1:])
