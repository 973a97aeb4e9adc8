"""
Planning IsoFLOP sweeps and running them: which models, how many steps, every train.py command line, and a
resumable runner. Plain layout (Chinchilla's IsoFLOP profiles, Hoffmann et al. 2022 sec. 3.2): per budget C, a few
model sizes around the prior optimum, each trained once with a cosine schedule ending at its own last step.
Branched (--branch; Hägele et al. 2024, "Scaling Laws and Compute-Optimal Training Beyond Fixed Training
Durations"): under a warm-up-stable-decay (WSD) schedule the runs of one size share everything before their
cooldowns, so per size ONE stable run keeps a checkpoint at every branch point and each (N, D) point is a cooldown
branch from it, matching a cosine run of the same length at a fraction of the compute. A branch with a checkpoint
in its own out_dir resumes from that (train.py prefers it to --branch_from).
"""
import math
import os
import re
import shlex
import subprocess
import sys
import time

import numpy as np

from model import ModelError
from pretrain import configurator
from pretrain.accounting import count_params
from pretrain.checkpoint import CKPT_NAME, model_config_from
from pretrain.data import ROOT
from pretrain.scaling.runlog import LOG_NAME, ScalingError, read_json, records, warn
from pretrain.training import micro_steps

TRAIN_PY = os.path.join(ROOT, 'train.py')


def _shell(arg):
    """--key='value' stays as it is (the shell drops the quotes, train.py reads bare words as strings);
    anything else a shell would split or expand is quoted."""
    return arg if re.fullmatch(r"[\w@%+=:,./'-]+", arg) else shlex.quote(arg)


def shape_for(target, aspect, head_dim, count, group=1):
    """n_layer = round((target / (12 aspect^2))^(1/3)) from N ~ 12 L d^2 with d = aspect * L; n_embd = the multiple
    of head_dim (at most 4096 groups of heads) whose count(L, heads, n_embd) is closest to target in log: the fewest
    heads whose count exceeds target, or one group fewer (a few counts: doubling steps from the guess, then
    bisection). group: the heads come in groups of that many (grouped-query attention: a multiple of n_kv_head)."""
    L = max(1, round((target / (12 * aspect ** 2)) ** (1 / 3)))
    n = lambda k: count(L, k * group, k * group * head_dim)
    lo, hi, step = 1, 4096, 1   # the fewest groups whose count exceeds target (4096 if none) is in [lo, hi]
    k = min(hi - 1, max(lo, round((target / (12 * L)) ** 0.5 / (head_dim * group))))
    while lo < hi:
        lo, hi, k = (lo, k, k - step) if n(k) > target else (k + 1, hi, k + step)
        step *= 2
        k = k if lo <= k < hi else (lo + hi) // 2   # bracketed: bisection
    k = min((max(1, lo - 1), lo), key=lambda k: abs(math.log(n(k) / target)))   # the fewer heads on a tie
    return dict(n_layer=L, n_head=k * group, n_embd=k * group * head_dim)


def model_counter(data_dir, vocab_size, block_size, train_config, train_args):
    """-> (count(n_layer, n_head, n_embd, full=False), vocab_size, train tokens or None, extra train.py args, the
    key/value heads or None); count counts the model train.py builds, with its precedence: defaults, --train_config,
    the plan's knobs, --train_args."""
    meta_path = os.path.join(data_dir, 'meta.json')
    meta = read_json(meta_path, '; run prepare.py again or pass --vocab_size') if os.path.exists(meta_path) else {}
    vocab_size = vocab_size or meta.get('vocab_size')
    if not vocab_size:
        raise ScalingError(f"no {meta_path} to read vocab_size from: run prepare.py first or pass --vocab_size")
    knobs = configurator.script_defaults(TRAIN_PY)
    if train_config:
        knobs.update(configurator.read_config_file(train_config))
    try:
        extra = shlex.split(train_args)
    except ValueError as e:  # an unclosed quote
        raise ScalingError(f"--train_args: {e}: {train_args!r}")
    last = {}
    for tok in extra:
        k, eq, v = tok[2:].partition('=')
        if not tok.startswith('--') or not eq:
            raise ScalingError(f"--train_args takes --key=value items, got {tok!r}")
        last[k] = configurator.parse_value(v)

    def count(L, H, d, full=False):
        cfg = {**knobs, 'block_size': block_size, 'n_layer': L, 'n_head': H, 'n_embd': d, **last}
        try:
            c = count_params(model_config_from(cfg, vocab_size))
        except (ModelError, TypeError) as e:  # a bad model knob in --train_config or --train_args
            raise ScalingError(f"the planned model: {e}")
        return c if full else c['n_params']
    return count, vocab_size, (meta.get('train') or {}).get('tokens'), extra, {**knobs, **last}.get('n_kv_head')


def _nname(N, C=None):
    """N17k, N1.5M; with a budget: C1e13_N17k."""
    name = f"N{N / 1e3:.0f}k" if N < 1e6 else f"N{N / 1e6:.3g}M"
    return name if C is None else f"C{C:g}_{name}".replace('e+', 'e')


def plan(budgets, sizes=5, span=10.0, tokens_per_param=20.0, aspect=32.0, head_dim=16, block_size=256,
         batch_size=16, total_batch_size=8192, learning_rate=1e-3, min_lr_ratio=0.1, warmup_frac=0.05, evals=10,
         eval_iters=20, checkpoints=4, data_dir='data/shakespeare_bytes', vocab_size=None, out_root='out-sweep',
         seed=1337, schedule='cosine', train_config=None, train_args='', min_steps=20, lr_points=None,
         lr_law=None, branch=False, cooldown_frac=0.2, branch_snap=0.02):
    """An IsoFLOP sweep -> one dict per run with its train.py command line: per budget C, `sizes` models log-spaced
    over a factor `span` around the prior optimum N = sqrt(C / (6 tokens_per_param)) (Chinchilla's ~20 tokens per
    parameter), each trained on D = C / (6N) tokens. Peak learning rate: learning_rate, or lr_for's power law in N
    (Kaplan et al. 2020 eq. D.1), or lr_law's eta_opt = k C^s at the run's budget (DeepSeek LLM 2024 sec. 3.1)."""
    if sizes < 1 or (sizes > 1 and not span > 1) or not tokens_per_param > 0 or not 0 <= warmup_frac < 1:
        raise ScalingError("need --sizes >= 1, --span > 1, --tokens_per_param > 0 and 0 <= --warmup_frac < 1")
    if lr_points and lr_law:
        raise ScalingError("--lr_points and --lr_law both set the learning rate: pass one")
    micro_steps(total_batch_size, batch_size, block_size)   # train.py's batch rule, before any run is planned
    count, vocab_size, train_tokens, extra, kv_heads = model_counter(data_dir, vocab_size, block_size, train_config,
                                                                     train_args)
    base = lambda shape: dict(data_dir=data_dir, **shape, block_size=block_size, batch_size=batch_size,
                              total_batch_size=total_batch_size)  # the model and data knobs of every command
    ladder = span ** (1 / (sizes - 1)) if sizes > 1 else None
    n_ref = math.sqrt(min(budgets) / (6 * tokens_per_param))
    cells = []  # the grid: (budget, shape, counts, steps)
    for C in budgets:
        n_star = math.sqrt(C / (6 * tokens_per_param))
        if branch and ladder:  # one geometric ladder of sizes for every budget, so budgets share sizes (and stable
            # runs): the `sizes` rungs nearest the budget's prior optimum, log-spaced by span^(1/(sizes-1)) as before
            j0 = round(math.log(n_star / n_ref) / math.log(ladder) - (sizes - 1) / 2)
            targets = n_ref * ladder ** (j0 + np.arange(sizes))
        else:
            targets = n_star * span ** np.linspace(-0.5, 0.5, sizes) if sizes > 1 else np.array([n_star])
        seen = set()
        for t in sorted(targets, key=lambda t: abs(math.log(t / n_star))):  # centre first: collisions go outward
            s = shape_for(t, aspect, head_dim, count, kv_heads or 1)
            if (s['n_layer'], s['n_embd']) in seen:
                warn(f"budget {C:g}: N={t:.3g} gets the same shape as a size nearer the optimum; dropped "
                     f"(shapes are coarse at this size: a wider --span or a smaller --head_dim helps)")
                continue
            seen.add((s['n_layer'], s['n_embd']))
            counts = count(s['n_layer'], s['n_head'], s['n_embd'], True)
            N = counts['n_params']
            steps = round(C / (6 * N) / total_batch_size)
            if steps < min_steps:
                raise ScalingError(f"budget {C:g} with N={N:.3g} gives {steps} steps of {total_batch_size} tokens "
                                   f"(fewer than {min_steps}): lower --total_batch_size or raise the budget")
            cells.append((float(C), s, counts, steps))

    lr_at = lambda N, C: float(f'{lr_law[0] * C ** lr_law[1]:.4g}') if lr_law else lr_for(N, learning_rate, lr_points)

    def row(name, budget, counts, steps, cfg):
        cfg = dict(out_dir=os.path.join(out_root, name), **cfg, seed=seed)
        args = ([train_config] if train_config else []) + [f"--{k}={v!r}" for k, v in cfg.items()] + extra
        N, D = counts['n_params'], steps * total_batch_size
        return dict(name=name, budget=budget, N=N, N_nonembed=counts['n_params_nonembed'], D=D, C=6.0 * N * D,
                    tokens_per_param=D / N, config=cfg, args=args, epochs=D / train_tokens if train_tokens else None,
                    cmd=" ".join(["python", "train.py"] + [_shell(a) for a in args]))

    if branch:
        rows = branched(cells, row, lr_at, base, cooldown_frac, branch_snap, warmup_frac, min_lr_ratio, evals,
                        eval_iters, checkpoints)
    else:
        rows = []
        for C, s, counts, steps in cells:
            name = _nname(counts['n_params'], C)
            if any(r['name'] == name for r in rows):
                name += f"_L{s['n_layer']}d{s['n_embd']}"
            lr = lr_at(counts['n_params'], C)
            rows.append(row(name, C, counts, steps, dict(
                **base(s), max_iters=steps, warmup_iters=max(1, round(warmup_frac * steps)),
                lr_decay_iters=steps, learning_rate=lr, min_lr=float(f'{lr * min_lr_ratio:.6g}'), schedule=schedule,
                eval_interval=max(1, steps // evals), eval_iters=eval_iters,
                checkpoint_interval=max(1, math.ceil(steps / checkpoints)))))
        rows.sort(key=lambda r: (r['budget'], r['N']))
    over = [r['name'] for r in rows if (r['epochs'] or 0) > 4]
    if over:  # Muennighoff et al. 2023: up to ~4 epochs of repeated data cost little, beyond that it adds less
        warn(f"{len(over)} run(s) repeat the train split more than 4 times ({', '.join(over[:3])}"
             f"{', ...' if len(over) > 3 else ''}): more data or smaller budgets keep them within ~4 epochs")
    return rows


def branch_points(steps, cooldown_frac=0.2, snap=0.02):
    """One model size's runs of `steps` steps -> (grid g, [(S, k, c)]): run S cools down for c = round(cooldown_frac
    * S) steps from the stable run's step k = S - c, every k a multiple of g (the stable run checkpoints every g
    steps). Planned steps rarely share a useful divisor (often gcd 1), so each k is rounded to the largest g that
    moves none by more than `snap` of itself; S follows from k (the nearest to the planned S), as do its tokens."""
    ks = [S - round(cooldown_frac * S) for S in steps]
    if min(ks) < 1 or min(S - k for S, k in zip(steps, ks)) < 1:
        raise ScalingError(f"--cooldown_frac {cooldown_frac} leaves no stable or no cooldown steps in a run of "
                           f"{min(steps)} steps")
    g = next(g for g in range(min(ks), 0, -1)
             if all(abs(round(k / g) * g - k) <= snap * k for k in ks))  # g = 1 always qualifies
    out = []
    for S0, k0 in zip(steps, ks):
        k = round(k0 / g) * g
        # S - round(f S) grows by 0 or 1 per step of S (f < 1), so some S near k / (1 - f) gives exactly k
        cands = [S for S in range(k, 2 * round(k / (1 - cooldown_frac)) + 3) if S - round(cooldown_frac * S) == k]
        S = min(cands, key=lambda S: abs(S - S0))
        out.append((S, k, S - k))
    return g, out


def branched(cells, row, lr_at, base, cooldown_frac, snap, warmup_frac, min_lr_ratio, evals, eval_iters,
             checkpoints):
    """The grid's cells (budget, shape, counts, steps) grouped by shape -> stable rows, then branch rows, each made
    by row(name, budget, counts, steps, knobs) and tagged: 'kind' ('stable'/'branch'), 'flops_run' (the FLOPs it
    spends itself: a branch its cooldown), a branch's 'parent' and 'branch_step', a stable run's 'checkpoint_steps'."""
    if not 0 < cooldown_frac < 1:
        raise ScalingError(f"need 0 < --cooldown_frac < 1, got {cooldown_frac}")
    by_shape = {}
    for C, s, counts, steps in cells:
        by_shape.setdefault((s['n_layer'], s['n_head'], s['n_embd']), []).append((C, s, counts, steps))
    stables, branches = [], []
    for group in sorted(by_shape.values(), key=lambda g: g[0][2]['n_params']):
        s, counts = group[0][1], group[0][2]
        N = counts['n_params']
        g, pts = branch_points([c[3] for c in group], cooldown_frac, snap)
        k_max = max(k for _, k, _ in pts)
        name = f"{_nname(N)}_stable"
        if any(r['name'] == name for r in stables):
            name = f"{_nname(N)}_L{s['n_layer']}d{s['n_embd']}_stable"
        # one learning rate per stable run (its branches continue it): with lr_law, eta_opt at the geometric mean
        # of the size's budgets (DeepSeek's exponent -0.125 moves it 1.33x over 10x of compute)
        lr = lr_at(N, math.exp(np.mean([math.log(c[0]) for c in group])))
        # the warm-up of the shortest branch (warmup_frac of its steps), shared by all: it lies in the stable part
        knobs = dict(**base(s), schedule='wsd', learning_rate=lr, min_lr=float(f'{lr * min_lr_ratio:.6g}'),
                     warmup_iters=max(1, round(warmup_frac * min(S for S, _, _ in pts))), eval_iters=eval_iters)
        stable = row(name, None, counts, k_max, dict(**knobs, max_iters=k_max, cooldown_iters=0,
                                                     eval_interval=max(1, k_max // evals),
                                                     checkpoint_interval=g, keep_checkpoints=0))
        stable.update(kind='stable', flops_run=stable['C'], checkpoint_steps=sorted({k for _, k, _ in pts}))
        stables.append(stable)
        for (C, _, _, _), (S, k, c) in zip(group, pts):
            b = row(_nname(N, C) + name[len(_nname(N)):-len('_stable')], C, counts, S, dict(
                init_from='resume', branch_from=os.path.join(stable['config']['out_dir'], f"ckpt_{k:06d}.pt"),
                **knobs, max_iters=S, cooldown_iters=c, eval_interval=max(1, S // evals),
                checkpoint_interval=max(1, math.ceil(c / checkpoints))))
            b.update(kind='branch', parent=name, branch_step=k, flops_run=6.0 * N * c * knobs['total_batch_size'])
            branches.append(b)
    return stables + sorted(branches, key=lambda r: (r['budget'], r['N']))


def lr_for(N, learning_rate, lr_points=None):
    """Peak lr for N parameters: k N^s through the measured optima lr_points (log-log fit), else learning_rate."""
    if not lr_points:
        return learning_rate
    if len(lr_points) < 2:
        raise ScalingError("--lr_points needs at least two N:lr pairs")
    slope, intercept = np.polyfit(np.log([n for n, _ in lr_points]), np.log([lr for _, lr in lr_points]), 1)
    return float(f'{math.exp(intercept + slope * math.log(N)):.4g}')


def run_status(row):
    """'done' (eval record at step == max_iters: for a stable run, its last branch point), 'resume' (a checkpoint
    to continue from) or 'new'. A directory holding another shape or length of run is an error, never reused."""
    out = row['config']['out_dir']
    log = os.path.join(out, LOG_NAME)
    if os.path.exists(log):
        runs, by_step = records(log)
        if runs:
            have = {**(runs[-1].get('model') or {}), 'max_iters': (runs[-1].get('config') or {}).get('max_iters')}
            diff = [k for k in ('n_layer', 'n_head', 'n_embd', 'max_iters') if have.get(k) != row['config'][k]]
            if diff:
                what = ', '.join(f"{k} {have.get(k)} there, {row['config'][k]} planned" for k in diff)
                raise ScalingError(f"{out} holds a different run ({what}); move it away or change --out_root")
        if ('eval', row['config']['max_iters']) in by_step:
            return 'done'
    return 'resume' if os.path.exists(os.path.join(out, CKPT_NAME)) else 'new'


def run_plan(rows, train_script=None, keep_going=False, jobs=1):
    """Run the sweep, resumably (finished runs skipped, interrupted ones resumed), branches after their stable run.
    jobs > 1 runs that many at once, longest first, each with cores/jobs threads (on a CPU two threads per process
    stall whenever anything else runs: experiments/isoflop-shakespeare/README.md), console in <out_dir>/console.log."""
    train_script = train_script or TRAIN_PY
    done, todo = set(), []
    for i, row in enumerate(rows):
        status = run_status(row)
        if status == 'done':
            print(f"[{i + 1}/{len(rows)}] {row['name']}: finished, skipped", flush=True)
            done.add(row['name'])
        else:
            todo.append((i, row, status))
    if jobs > 1:  # parents first, then by rough cost: FLOPs, and small models run slower
        todo.sort(key=lambda t: ('parent' in t[1], -t[1].get('flops_run', t[1]['C']) / t[1]['N'] ** 0.5))
    env = {**os.environ, 'OMP_NUM_THREADS': str(max(1, (os.cpu_count() or 1) // jobs))} if jobs > 1 else None
    running, failed = {}, []

    def fail(row, why):
        if not keep_going:
            for other in running:
                other.terminate()
            raise ScalingError(f"{row['name']}: {why}; fix it and rerun to continue")
        failed.append(row['name'])
        warn(f"{row['name']}: {why}; going on")

    def finish(proc):
        i, row = running.pop(proc)
        if proc.returncode != 0:
            return fail(row, f"train.py exited with status {proc.returncode}")
        done.add(row['name'])
        if jobs > 1:
            print(f"[{i + 1}/{len(rows)}] {row['name']}: finished", flush=True)

    def start(i, row, status):
        args = row['args']
        if status == 'resume' and "--init_from='resume'" not in args:
            args = args + ["--init_from='resume'"]
        what = 'resuming' if status == 'resume' else 'starting'
        if status == 'new' and row.get('parent'):
            src = row['config']['branch_from']
            if not os.path.exists(src):
                return fail(row, f"{src} is missing (its stable run {row['parent']} keeps one checkpoint per "
                                 f"branch point: was it run with another plan?)")
            what = f"branching from {row['parent']} at step {row['branch_step']}"
        print(f"[{i + 1}/{len(rows)}] {row['name']}: {what}", flush=True)
        out = None
        if jobs > 1:
            os.makedirs(row['config']['out_dir'], exist_ok=True)
            out = open(os.path.join(row['config']['out_dir'], 'console.log'), 'a')
        running[subprocess.Popen([sys.executable, train_script] + args, env=env, stdout=out,
                                 stderr=subprocess.STDOUT if out else None)] = (i, row)

    try:
        while todo or running:
            for t in list(todo):  # start what may start, in order
                if len(running) >= jobs:
                    break
                parent = t[1].get('parent')
                if parent in failed:
                    todo.remove(t)
                    fail(t[1], f"not run: its stable run {parent} failed")
                elif parent is None or parent in done:
                    todo.remove(t)
                    start(*t)
            if not running:
                if todo:  # nothing runs and nothing may start: a parent that is not in the plan
                    raise ScalingError(f"{todo[0][1]['name']}: its stable run {todo[0][1]['parent']} is not in "
                                       f"the plan")
                break
            finished = [p for p in running if p.poll() is not None]
            for p in finished:
                finish(p)
            if not finished:
                time.sleep(0.2)
    except KeyboardInterrupt:  # the children got the same SIGINT: let them stop cleanly, then stop the sweep
        for proc in running:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        raise
    if failed:
        raise ScalingError(f"{len(failed)} run(s) failed: {', '.join(failed)}")


def plan_compute(rows):
    """(FLOPs the plan spends: stable runs and cooldowns, FLOPs of the same grid as separate runs), C = 6ND."""
    return sum(r.get('flops_run', r['C']) for r in rows), sum(r['C'] for r in rows if r.get('kind') != 'stable')
