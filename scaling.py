"""
Scaling laws from this repo's own runs: read train.py's log.jsonl files (or a CSV of N,D,loss[,C]), fit Kaplan et al.
2020 and Chinchilla (Hoffmann et al. 2022) approaches 1-3 with bootstrap intervals, print compute-optimal tables, draw
figures, and plan (and run) IsoFLOP sweeps.

    python scaling.py plan --budgets 1e13,3e13,1e14,3e14 --sizes 5 --data_dir data/shakespeare_bytes > plan.sh
    python scaling.py plan --budgets 1e13,3e13,1e14,3e14 --sizes 5 --data_dir data/shakespeare_bytes --run
    python scaling.py fit out-sweep --method all --bootstrap 100 --json fit.json --plots figs/
    python scaling.py fit points.csv --method approach3

Conventions. N counts all parameters by default (Chinchilla does; Pearce & Song 2024 show that dropping embeddings
biases small-scale exponents), --n nonembed counts Kaplan's non-embedding N. C = 6*N*D by default (the budget the
plan uses), --compute logged takes train.py's logged FLOPs instead; IsoFLOP groups always follow the planned budget
(6 * total N * D, within --rtol). Losses are val losses. A run is finished when its
log holds an eval record at step == max_iters (train.py always evaluates at its last step); unfinished runs are left
out with a warning. Every nonlinear fit minimises the summed Huber loss (delta 1e-3) of log-loss residuals, as in
Chinchilla's appendix D.2, with a batched float64 L-BFGS from a grid of starts.
"""
import argparse
import csv
import itertools
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np

from prepare import write_json


class ScalingError(Exception):
    """Bad input or an impossible fit: one line for the user, no traceback."""


def warn(msg):
    print(f"warning: {msg}", file=sys.stderr)


# -----------------------------------------------------------------------------
# inputs: train.py run logs (Contract 3 of DESIGN.md) and CSV points

@dataclass
class Run:
    name: str
    N: float            # parameters (total, or non-embedding with --n nonembed)
    D: np.ndarray       # tokens seen at each point of the curve, ascending, > 0
    C: np.ndarray       # compute at each point
    L: np.ndarray       # loss at each point; the last point is the run's final loss
    budget: float = 0.0  # the FLOP budget it was planned for: 6 * total N * final D (or a CSV's C column)


def _records(path):
    """The log's records, keeping the LAST record per (type, step): steps replayed after a resume overwrite."""
    with open(path) as f:
        lines = f.read().split('\n')
    runs, by_step = [], {}
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # no newline after it: cut short by a crash mid-write, the run is unfinished
                warn(f"{path}:{i + 1}: incomplete last line ignored")
                continue
            raise ScalingError(f"{path}:{i + 1}: not a JSON object")
        if not isinstance(rec, dict) or 'type' not in rec:
            raise ScalingError(f"{path}:{i + 1}: record without a 'type'")
        if rec['type'] == 'run':
            runs.append(rec)
        elif rec['type'] in ('eval', 'train'):
            if 'step' not in rec:
                raise ScalingError(f"{path}:{i + 1}: {rec['type']} record without 'step'")
            by_step[(rec['type'], rec['step'])] = (i + 1, rec)
    return runs, by_step


def load_log(path, n='total', compute='6nd', loss='val'):
    """One run from <dir>/log.jsonl -> (Run, finished). ScalingError names the file and line of any bad field."""
    path = os.path.join(path, 'log.jsonl') if os.path.isdir(path) else path
    runs, by_step = _records(path)
    if not runs:
        raise ScalingError(f"{path}: no 'run' record (not a train.py log?)")
    key = {'total': 'n_params', 'nonembed': 'n_params_nonembed'}[n]
    N = runs[-1].get(key)
    if not isinstance(N, (int, float)) or not N > 0:
        raise ScalingError(f"{path}: the 'run' record lacks a positive '{key}'")
    kind, field = ('eval', 'val_loss') if loss == 'val' else ('train', 'loss')
    pts = sorted((step, ln, r) for (t, step), (ln, r) in by_step.items() if t == kind)
    D, C, L = [], [], []
    for step, ln, r in pts:
        for k in ('tokens', field) + (('flops',) if compute == 'logged' else ()):
            if not isinstance(r.get(k), (int, float)):
                raise ScalingError(f"{path}:{ln}: {kind} record at step {step} lacks a number '{k}'")
        if not (math.isfinite(r[field]) and r[field] > 0):
            raise ScalingError(f"{path}:{ln}: {field} is {r[field]} at step {step} (a diverged run? leave it out "
                               f"or pass --skip_bad)")
        if r['tokens'] > 0:
            D.append(r['tokens'])
            C.append(r['flops'] if compute == 'logged' else 6.0 * N * r['tokens'])
            L.append(r[field])
    if not D:
        raise ScalingError(f"{path}: no {kind} records after step 0")
    max_iters = (runs[-1].get('config') or {}).get('max_iters')
    finished = max_iters is None or ('eval', max_iters) in by_step
    name = os.path.basename(os.path.dirname(os.path.abspath(path)))
    budget = 6.0 * runs[-1]['n_params'] * D[-1] if isinstance(runs[-1].get('n_params'), (int, float)) else C[-1]
    return Run(name, float(N), np.array(D, float), np.array(C, float), np.array(L, float), budget), finished


def load_csv(path):
    """Rows N,D,loss[,C][,run]. With a 'run' column, rows of one run form its curve (its last row is final);
    without, every row is the final point of its own run."""
    with open(path, newline='') as f:
        rows = list(csv.reader(f))
    if not rows:
        raise ScalingError(f"{path}: empty CSV")
    head = [h.strip().lower() for h in rows[0]]
    missing = [c for c in ('n', 'd', 'loss') if c not in head]
    if missing:
        raise ScalingError(f"{path}: CSV needs columns N,D,loss (and optionally C, run); missing {','.join(missing)}")
    col = {h: i for i, h in enumerate(head)}
    curves = {}
    for ln, row in enumerate(rows[1:], start=2):
        if not any(x.strip() for x in row):
            continue
        try:
            v = {k: float(row[col[k]]) for k in ('n', 'd', 'loss', 'c') if k in col}
        except (ValueError, IndexError):
            raise ScalingError(f"{path}:{ln}: N, D, loss (and C) must be numbers, got {row}")
        if not all(math.isfinite(x) and x > 0 for x in v.values()):
            raise ScalingError(f"{path}:{ln}: N, D, loss and C must be finite and positive, got {row}")
        key = row[col['run']].strip() if 'run' in col else f"row{ln}"
        curves.setdefault(key, []).append((v['d'], v.get('c', 6 * v['n'] * v['d']), v['loss'], v['n']))
    runs = []
    for key, pts in curves.items():
        pts.sort()
        if len({p[3] for p in pts}) > 1:
            raise ScalingError(f"{path}: run '{key}' has rows with different N")
        D, C, L, Ns = map(np.array, zip(*pts))
        runs.append(Run(key, float(Ns[0]), D, C, L, float(C[-1])))
    return runs


def load(inputs, n='total', compute='6nd', loss='val', skip_bad=False, include_unfinished=False):
    """Run dirs, log.jsonl files, sweep dirs (subdirs holding log.jsonl) and CSV files -> list of Run."""
    runs = []
    for p in inputs:
        if p.endswith('.csv'):
            runs += load_csv(p)
            continue
        if os.path.isdir(p) and not os.path.exists(os.path.join(p, 'log.jsonl')):
            subs = sorted(os.path.join(p, d) for d in os.listdir(p) if os.path.isfile(os.path.join(p, d, 'log.jsonl')))
            if not subs:
                raise ScalingError(f"{p}: no log.jsonl in it or in its subdirectories")
        elif os.path.exists(p):
            subs = [p]
        else:
            raise ScalingError(f"{p}: no such file or directory")
        for s in subs:
            try:
                run, finished = load_log(s, n, compute, loss)
            except ScalingError as e:
                if not skip_bad:
                    raise
                warn(f"skipped: {e}")
                continue
            if not finished and not include_unfinished:
                warn(f"{s}: unfinished (no eval at max_iters), left out")
                continue
            runs.append(run)
    if len(runs) < 2:
        raise ScalingError(f"a scaling law needs at least 2 finished runs, got {len(runs)}")
    return runs


def final_points(runs):
    return tuple(np.array([getattr(r, k)[-1] for r in runs]) for k in 'DCL') + (np.array([r.N for r in runs]),)


def all_points(runs):
    D, C, L = (np.concatenate([getattr(r, k) for r in runs]) for k in 'DCL')
    return D, C, L, np.concatenate([np.full(len(r.D), r.N) for r in runs])


# -----------------------------------------------------------------------------
# a batched L-BFGS: thousands of independent starts advance together, each with its own history and line search

EPS = np.finfo(np.float64).eps


def lbfgs(fun, x0, m=10, max_iter=1000, gtol=1e-5, ftol=1e7 * EPS, max_ls=30):
    """Minimise fun independently from every row of x0. fun(x, idx) -> (f (S,), grad (S, P)) for rows idx.
    Two-loop recursion (Nocedal & Wright alg. 7.4), Armijo backtracking plus step doubling while the curvature
    condition fails. Stops per row with scipy L-BFGS-B's defaults, the optimizer Chinchilla's fit is believed to have
    used: max|g| <= gtol = 1e-5, or relative decrease (f_k - f_k+1) / max(|f_k|, |f_k+1|, 1) <= ftol = 1e7 * eps.
    Those absolute tolerances are why an averaged (tiny) Huber objective stops early (Besiroglu et al. 2024)."""
    x = np.array(x0, dtype=np.float64)
    S, P = x.shape
    f, g = fun(x, np.arange(S))
    Sh, Yh, rho = np.zeros((m, S, P)), np.zeros((m, S, P)), np.zeros((m, S))
    done = ~np.isfinite(f) | (np.abs(g).max(1) <= gtol)
    dot = lambda a, b: np.einsum('sp,sp->s', a, b)
    for _ in range(max_iter):
        act = np.flatnonzero(~done)
        if act.size == 0:
            break
        ga, q, al = g[act], g[act].copy(), np.zeros((m, act.size))
        for j in range(m):  # history index 0 is the newest pair; rho == 0 marks an empty slot
            al[j] = rho[j, act] * dot(Sh[j, act], q)
            q -= al[j, :, None] * Yh[j, act]
        den = rho[0, act] * dot(Yh[0, act], Yh[0, act])  # initial Hessian scale s'y / y'y from the newest pair
        gamma = np.where(den > 0, 1 / np.where(den > 0, den, 1), 1 / np.maximum(1, np.linalg.norm(ga, axis=1)))
        r = gamma[:, None] * q
        for j in reversed(range(m)):
            r += Sh[j, act] * (al[j] - rho[j, act] * dot(Yh[j, act], r))[:, None]
        d = -r
        gd = dot(ga, d)
        bad = ~(gd < 0)  # not a descent direction: restart from steepest descent
        if bad.any():
            d[bad] = -ga[bad] / np.maximum(1, np.linalg.norm(ga[bad], axis=1))[:, None]
            gd[bad], rho[:, act[bad]] = dot(ga[bad], d[bad]), 0
        t, ok, pend = np.ones(act.size), np.zeros(act.size, bool), np.arange(act.size)
        xn, fn, gn = x[act].copy(), f[act].copy(), ga.copy()
        for _ in range(max_ls):
            xt = x[act[pend]] + t[pend, None] * d[pend]
            ft, gt = fun(xt, act[pend])
            acc = np.isfinite(ft) & (ft <= f[act[pend]] + 1e-4 * t[pend] * gd[pend])
            a = pend[acc]
            xn[a], fn[a], gn[a], ok[a] = xt[acc], ft[acc], gt[acc], True
            pend = pend[~acc]
            if pend.size == 0:
                break
            t[pend] *= 0.5
        grow = np.flatnonzero(ok & (t == 1) & (dot(gn, d) < 0.9 * gd))
        tg = np.ones(grow.size)
        for _ in range(10):  # a unit step still descending steeply: double it while f keeps falling
            if grow.size == 0:
                break
            tg *= 2
            xt = x[act[grow]] + tg[:, None] * d[grow]
            ft, gt = fun(xt, act[grow])
            acc = np.isfinite(ft) & (ft < fn[grow]) & (ft <= f[act[grow]] + 1e-4 * tg * gd[grow])
            xn[grow[acc]], fn[grow[acc]], gn[grow[acc]] = xt[acc], ft[acc], gt[acc]
            keep = acc & (dot(gt, d[grow]) < 0.9 * gd[grow])
            grow, tg = grow[keep], tg[keep]
        s, y = xn - x[act], gn - ga
        sy = dot(s, y)
        upd = ok & (sy > 1e-10 * dot(y, y))
        u = act[upd]
        Sh[1:, u], Yh[1:, u], rho[1:, u] = Sh[:-1, u], Yh[:-1, u], rho[:-1, u]
        Sh[0, u], Yh[0, u], rho[0, u] = s[upd], y[upd], 1 / sy[upd]
        f_old = f[act]
        x[act], f[act], g[act] = xn, fn, gn
        rel = (f_old - fn) / np.maximum(np.maximum(np.abs(f_old), np.abs(fn)), 1.0)
        done[act] = ~ok | (rel <= ftol) | (np.abs(gn).max(1) <= gtol)
    return x, f


def huber(r, delta):
    """0.5 r^2 for |r| <= delta, else delta (|r| - delta/2); written so that huge residuals cannot overflow."""
    a = np.abs(r)
    m = np.minimum(a, delta)
    return 0.5 * m * m + delta * (a - m)


def lse_objective(X, y, slopes, scaled=False, delta=1e-3, reduce='sum', weights=None, owner=None):
    """Objective and gradient for log L_i ~ s * logsumexp_k(c_k - m_k X_ki), summed (or averaged) Huber loss.
    X (K, P) features per term; slopes (K,): a number fixes m_k, NaN makes it a parameter. Parameters per start:
    c_1..c_K, the free m_k in order, then s if scaled. weights (B, P) with owner (S,) -> bootstrap row per start."""
    X, y = np.asarray(X, float), np.asarray(y, float)
    K, P = X.shape
    free = np.flatnonzero(np.isnan(slopes))
    fixed = np.nan_to_num(np.asarray(slopes, float))

    @np.errstate(all='ignore')  # starts that wander off give inf/nan: the line search rejects them
    def fun(th, idx):
        m = np.broadcast_to(fixed, (len(th), K)).copy()
        m[:, free] = th[:, K:K + len(free)]
        s = th[:, -1:] if scaled else np.ones((len(th), 1))
        z = th[:, :K, None] - m[:, :, None] * X[None]
        mx = z.max(1)
        ez = np.exp(z - mx[:, None])
        se = ez.sum(1)
        lse = mx + np.log(se)
        r = s * lse - y
        w = 1.0 if weights is None else weights[owner[idx]]
        f = (huber(r, delta) * w).sum(1)
        h = np.clip(r, -delta, delta) * w * s / se  # d f / d lse, divided by the softmax denominator
        hw = h[:, None] * ez
        grads = [hw.sum(2), -(hw * X[None]).sum(2)[:, free]]
        if scaled:
            grads.append(((np.clip(r, -delta, delta) * w) * lse).sum(1, keepdims=True))
        g = np.concatenate(grads, 1)
        if reduce == 'mean':
            f, g = f / P, g / P
        return f, g
    return fun


def best_fit(X, y, slopes, starts, scaled=False, delta=1e-3, reduce='sum', weights=None, n_owner=None, keep=8):
    """Run every start -> (best theta, best f, warm): warm = the optimum and the keep-1 starts that ended best,
    the starts a bootstrap refit begins from. With weights (n_owner, P), one best theta and f per owner."""
    starts = np.asarray(starts, float)
    if weights is None:
        x, f = lbfgs(lse_objective(X, y, slopes, scaled, delta, reduce), starts)
        f = np.where(np.isfinite(f), f, np.inf)
        best = np.argmin(f)
        return x[best], f[best], np.vstack([x[best], starts[np.argsort(f)[:keep - 1]]])
    ths, fs = [], []
    chunk = max(1, int(4e6 // (len(starts) * X.size)))  # owners per batch: bounds memory to a few hundred MB
    for lo in range(0, n_owner, chunk):
        W = weights[lo:lo + chunk]
        owner = np.repeat(np.arange(len(W)), len(starts))
        x, f = lbfgs(lse_objective(X, y, slopes, scaled, delta, reduce, W, owner), np.tile(starts, (len(W), 1)))
        f = np.where(np.isfinite(f), f, np.inf).reshape(len(W), len(starts))
        ths.append(x.reshape(len(W), len(starts), -1)[np.arange(len(W)), f.argmin(1)])
        fs.append(f.min(1))
    return np.concatenate(ths), np.concatenate(fs), None


# -----------------------------------------------------------------------------
# Chinchilla approach 3: L(N, D) = E + A / N^alpha + B / D^beta

def chinchilla_grid():
    """Hoffmann et al. 2022, appendix D.2: alpha, beta in {0, .5, .., 2}, e in {-1, -.5, .., 1}, a, b in {0, 5, .., 25}:
    4,500 starts, as rows (a, b, e, alpha, beta)."""
    h, e, ab = np.arange(0, 2.01, 0.5), np.arange(-1, 1.01, 0.5), np.arange(0, 26, 5.0)
    return np.array([(a, b, e_, al, be) for al, be, e_, a, b in itertools.product(h, h, e, ab, ab)])


def chinchilla_params(th):
    """(a, b, e, alpha, beta) -> E, A, B, alpha, beta and the compute-optimal allocation
    N_opt(C) = G (C/6)^a, D_opt(C) = (C/6)^b / G with G = (alpha A / (beta B))^(1/(alpha+beta)) (their eq. 4)."""
    a_, b_, e_, al, be = (float(v) for v in th)
    A, B, E = math.exp(a_), math.exp(b_), math.exp(e_)
    G = math.exp((math.log(al * A) - math.log(be * B)) / (al + be)) if al > 0 and be > 0 else float('nan')
    return dict(E=E, A=A, B=B, alpha=al, beta=be, G=G, a=be / (al + be), b=al / (al + be))


def fit_approach3(N, D, L, delta=1e-3, reduce='sum', starts=None, boot=0, boot_starts=64, rng=None):
    N, D, L = (np.asarray(v, float) for v in (N, D, L))
    if len(L) < 6 or len(set(N)) < 2 or len(set(D)) < 2:
        raise ScalingError(f"approach 3 fits 5 parameters: it needs at least 6 points with 2+ distinct N and D "
                           f"(got {len(L)})")
    X = np.stack([np.log(N), np.log(D), np.zeros(len(N))])
    slopes = np.array([np.nan, np.nan, 0.0])
    starts = chinchilla_grid() if starts is None else np.asarray(starts, float)
    # the parameter order of the grid is (a, b, e, alpha, beta): c_1 = a, c_2 = b, c_3 = e, then the free slopes
    th, f, warm = best_fit(X, np.log(L), slopes, starts, delta=delta, reduce=reduce, keep=boot_starts)
    res = dict(method='approach3', params=chinchilla_params(th), objective=float(f), n_points=len(L),
               n_starts=len(starts), delta=delta, reduce=reduce, theta=th.tolist())
    if boot:
        rng = rng or np.random.default_rng(0)
        # all refits in one batch: resampling = multinomial weights on the points; each refit starts from the
        # full-data optimum and the boot_starts-1 grid starts that ended best on all the data
        W = rng.multinomial(len(L), np.full(len(L), 1 / len(L)), size=boot).astype(float)
        ths, _, _ = best_fit(X, np.log(L), slopes, warm, delta=delta, reduce=reduce, weights=W, n_owner=boot)
        res['boot'] = [chinchilla_params(t) for t in ths]
    return res


# -----------------------------------------------------------------------------
# power laws, envelopes and IsoFLOP minima (Chinchilla approaches 1 and 2, Kaplan's frontier)

def fit_power(x, y):
    """y = k x^p by least squares on logs -> (p, k)."""
    p, lnk = np.polyfit(np.log(x), np.log(y), 1)
    return float(p), float(math.exp(lnk))


def fit_law(x, L, irreducible=False, delta=1e-3, warm=None):
    """Kaplan's L(x) = (x_c / x)^alpha [+ E], Huber on log L -> (dict(alpha, x_c[, E]), warm starts)."""
    x, L = np.asarray(x, float), np.asarray(L, float)
    if len(x) < (4 if irreducible else 3):
        raise ScalingError(f"a power law{' with E' if irreducible else ''} needs {4 if irreducible else 3}+ points")
    if irreducible:  # terms (c - alpha log x) and (e): log L = logsumexp -> L = exp(c)/x^alpha + exp(e)
        X, slopes = np.stack([np.log(x), np.zeros(len(x))]), np.array([np.nan, 0.0])
        starts = list(itertools.product((0, 2.5, 5, 10, 20), (-1, -.5, 0, .5, 1), (.02, .05, .1, .2, .5, 1, 2)))
    else:
        X, slopes = np.log(x)[None], np.array([np.nan])
        starts = list(itertools.product((0, 2.5, 5, 10, 20), (.02, .05, .1, .2, .5, 1, 2)))
    th, _, warm = best_fit(X, np.log(L), slopes, starts if warm is None else warm, delta=delta)
    out = dict(alpha=float(th[-1]), x_c=math.exp(th[0] / th[-1]) if th[-1] != 0 else float('nan'))
    if irreducible:
        out['E'] = math.exp(th[1])
    return out, warm


def law(p, x):
    return p.get('E', 0.0) + (p['x_c'] / np.asarray(x, float)) ** p['alpha']


def envelope(runs, x='C', n_grid=200):
    """Interpolate every curve linearly in log x, take the minimum loss over runs at log-spaced grid points.
    -> (grid, loss, winner run index, interior): interior is False where the winner is the smallest or largest
    run covering that point, so the optimum may lie outside the sizes sampled there."""
    curves = [(np.log(getattr(r, x)), r.L, r.N) for r in runs if len(r.L) >= 2]
    if len(curves) < 2:
        raise ScalingError("an envelope needs training curves (2+ points) from at least 2 runs")
    lo, hi = min(c[0][0] for c in curves), max(c[0][-1] for c in curves)
    grid = np.linspace(lo, hi, n_grid)
    loss = np.full((len(curves), n_grid), np.inf)
    for i, (lx, L, _) in enumerate(curves):
        cover = (grid >= lx[0]) & (grid <= lx[-1])
        loss[i, cover] = np.interp(grid[cover], lx, L)
    keep = np.isfinite(loss).sum(0) >= 1
    grid, loss = grid[keep], loss[:, keep]
    win = loss.argmin(0)
    Ns = np.array([c[2] for c in curves])
    covN = np.where(np.isfinite(loss), Ns[:, None], np.nan)
    interior = (Ns[win] > np.nanmin(covN, 0)) & (Ns[win] < np.nanmax(covN, 0))
    idx = [i for i, r in enumerate(runs) if len(r.L) >= 2]
    return np.exp(grid), loss[win, np.arange(len(win))], np.array(idx)[win], interior


def _opt_power(C, Nopt, Dopt, Lopt):
    a, kN = fit_power(C, Nopt)
    b, kD = fit_power(C, Dopt)
    g, kL = fit_power(C, Lopt)  # L_opt(C) = (C_c/C)^alpha_C, for the table's predicted loss
    return dict(a=a, b=b, N_coef=kN, D_coef=kD, alpha_C=-g, C_c=kL ** (1 / -g) if g else float('nan'))


def _curves(runs):
    """Approach 1 wants curves: single-point runs (CSV rows) are grouped by N into one curve each."""
    if any(len(r.L) > 1 for r in runs):
        return runs
    out = []
    for n_ in sorted({r.N for r in runs}):
        pts = sorted((r.D[0], r.C[0], r.L[0]) for r in runs if r.N == n_)
        D, C, L = map(np.array, zip(*pts))
        out.append(Run(f"N={n_:.3g}", n_, D, C, L))
    return out


def _winners(runs, C, win):
    """N and D of the envelope's winning runs at compute C (D read off the winner's own curve)."""
    return (np.array([runs[w].N for w in win]),
            np.array([math.exp(np.interp(math.log(c), np.log(runs[w].C), np.log(runs[w].D))) for c, w in zip(C, win)]))


def fit_approach1(runs, n_grid=200):
    runs = _curves(runs)
    C, L, win, interior = envelope(runs, 'C', n_grid)
    if interior.sum() < 2 or len({runs[w].N for w in win[interior]}) < 2:
        raise ScalingError("approach 1: fewer than 2 model sizes win the loss envelope away from the sampled edges; "
                           "add smaller and larger models")
    C, L, win = C[interior], L[interior], win[interior]
    Nopt, Dopt = _winners(runs, C, win)
    return dict(method='approach1', params=_opt_power(C, Nopt, Dopt, L), n_points=len(C), n_runs=len(runs),
                envelope=dict(C=C.tolist(), N=Nopt.tolist(), D=Dopt.tolist(), L=L.tolist()))


def group_budgets(C, rtol=0.1):
    """Indices of points grouped into FLOP budgets: sorted by C, a point within rtol of its group's first joins it."""
    groups = []
    for i in np.argsort(C):
        if groups and C[i] <= C[groups[-1][0]] * (1 + rtol):
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _spline(x, y, xs):
    """Natural cubic spline through (x, y), x increasing, evaluated at xs."""
    n, h = len(x), np.diff(x)
    A, rhs = np.zeros((n, n)), np.zeros(n)
    A[0, 0] = A[-1, -1] = 1
    for i in range(1, n - 1):
        A[i, i - 1:i + 2] = h[i - 1], 2 * (h[i - 1] + h[i]), h[i]
        rhs[i] = 6 * ((y[i + 1] - y[i]) / h[i] - (y[i] - y[i - 1]) / h[i - 1])
    M = np.linalg.solve(A, rhs)
    i = np.clip(np.searchsorted(x, xs) - 1, 0, n - 2)
    t0, t1, hi = xs - x[i], x[i + 1] - xs, h[i]
    return (M[i] * t1 ** 3 + M[i + 1] * t0 ** 3) / (6 * hi) + (y[i] / hi - M[i] * hi / 6) * t1 \
        + (y[i + 1] / hi - M[i + 1] * hi / 6) * t0


def isoflop_minimum(N, D, L, how='parabola', C=None):
    """Loss minimum of one IsoFLOP group over log N -> (N*, D*, L*, C*), or a str saying why it is refused.
    parabola: the paper's quadratic in log N over all sizes (biased when samples sit off-centre);
    spline: a natural cubic spline through the (size-averaged) points, minimised between the lowest point's
    neighbours (follows the data, noise included)."""
    xs, inv = np.unique(np.log(N), return_inverse=True)
    if len(xs) < 3:
        return f"only {len(xs)} distinct sizes (3+ needed)"
    ys = np.bincount(inv, L) / np.bincount(inv)
    i = int(np.argmin(ys))
    if i in (0, len(xs) - 1):
        side = 'smallest' if i == 0 else 'largest'
        return f"lowest loss at the {side} sampled size N={math.exp(xs[i]):.3g}: the minimum may lie outside " \
               f"the sampled sizes, add {'smaller' if i == 0 else 'larger'} models"
    if how == 'parabola':
        c2, c1, c0 = np.polyfit(np.log(N), L, 2)
        if c2 <= 0:
            return "the parabola opens downward (no minimum)"
        x0 = -c1 / (2 * c2)
        if not xs[0] < x0 < xs[-1]:
            return f"the parabola's minimum N={math.exp(x0):.3g} lies outside the sampled sizes"
        l0 = c0 - c1 * c1 / (4 * c2)
    else:
        grid = np.linspace(xs[i - 1], xs[i + 1], 2001)
        vals = _spline(xs, ys, grid)
        x0, l0 = grid[np.argmin(vals)], vals.min()
    # D and C at the minimum, read off log-linear fits along the group: with C = 6ND exactly D = C / (6 N*) and C*
    # the budget; in other conventions (--compute logged, --n nonembed) C varies a little along the group
    at = lambda v: math.exp(np.polyval(np.polyfit(np.log(N), np.log(v), 1), x0))
    return math.exp(x0), at(D), float(l0), at(6 * N * D if C is None else C)


def fit_approach2(N, D, C, L, how='parabola', rtol=0.1, rng=None, boot=0, budget=None):
    """IsoFLOP groups: runs whose planned budget (default: C) agrees within rtol. Each group's minimum over log N
    (refused on the edge of the sampled sizes), then N_opt ~ C^a, D_opt ~ C^b through the minima."""
    N, D, C, L = (np.asarray(v, float) for v in (N, D, C, L))
    groups = group_budgets(C if budget is None else np.asarray(budget, float), rtol)

    def once(groups):
        minima, refused = [], []
        for g in groups:
            m = isoflop_minimum(N[g], D[g], L[g], how, C[g])
            if isinstance(m, str):
                refused.append(f"budget C={np.exp(np.log(C[g]).mean()):.3g} ({len(g)} runs) refused: {m}")
            else:
                minima.append((m[3],) + m[:3])
        if len(minima) < 2:
            raise ScalingError(f"approach 2 needs 2+ budgets with an interior minimum, got {len(minima)}"
                               + (f" ({'; '.join(refused)})" if refused else ""))
        Cm, Nm, Dm, Lm = map(np.array, zip(*minima))
        return _opt_power(Cm, Nm, Dm, Lm), minima, refused
    params, minima, refused = once(groups)
    res = dict(method='approach2', minimum=how, params=params, n_points=len(L), notes=refused,
               minima=[dict(C=c, N=n_, D=d, L=l) for c, n_, d, l in minima])
    if boot:  # resample runs within each budget, so every budget keeps its number of runs
        rng = rng or np.random.default_rng(0)
        res['boot'] = _bootstrap(lambda: once([list(rng.choice(g, len(g))) for g in groups])[0], boot)
    return res


def fit_kaplan(runs, irreducible=False, points='final', delta=1e-3, warm=None):
    """Kaplan et al. 2020: L(N) from each size's best final loss, L(D) and L(C) from the envelopes of all curves
    over tokens and compute (their compute-efficient frontier), L(N, D) of their eq. 1.5 on the points, and
    N_opt ~ C^a from the frontier's winners (all of them, as Kaplan's Fig. 14; approach 1 keeps interior ones).
    warm: the 'warm' of an earlier result, to start a bootstrap refit from its optima."""
    D, C, L, N = final_points(runs) if points == 'final' else all_points(runs)
    Ns = np.array(sorted(set(N)))
    if len(Ns) < 3:
        raise ScalingError(f"Kaplan fits need 3+ model sizes, got {len(Ns)}")
    warm, new_warm, p = warm or {}, {}, {}
    curves = _curves(runs)
    Dg, LDg, _, _ = envelope(curves, 'D')
    Cg, LCg, win, _ = envelope(curves, 'C')
    for v, x, y in (('N', Ns, [L[N == n_].min() for n_ in Ns]), ('D', Dg, LDg), ('C', Cg, LCg)):
        law_p, new_warm[v] = fit_law(x, y, irreducible, delta, warm.get(v))
        p.update({f"{k}_{v}": val for k, val in law_p.items()})
    p['C_c'] = p.pop('x_c_C')
    # eq. 1.5: L = [(N_c/N)^(aN/aD) + D_c/D]^aD  <=>  log L = aD * logsumexp(p*ln N_c - p ln N, ln D_c - ln D)
    X, slopes = np.stack([np.log(N), np.log(D)]), np.array([np.nan, 1.0])
    starts = list(itertools.product((0, 10, 20, 30, 40), (0, 10, 20, 30, 40), (.5, 1, 2), (.05, .1, .3)))
    th, _, new_warm['eq15'] = best_fit(X, np.log(L), slopes, warm.get('eq15', starts), scaled=True, delta=delta)
    p.update(alpha_N_eq15=th[2] * th[3], alpha_D_eq15=th[3], N_c_eq15=math.exp(th[0] / th[2]),
             D_c_eq15=math.exp(th[1]))
    Nopt, Dopt = _winners(curves, Cg, win)
    (a, kN), (b, kD) = fit_power(Cg, Nopt), fit_power(Cg, Dopt)
    p.update(a=a, N_coef=kN, b=b, D_coef=kD)
    return dict(method='kaplan', params=p, n_points=len(L), irreducible=irreducible, warm=new_warm,
                frontier=dict(C=Cg.tolist(), L=LCg.tolist()))


def _bootstrap(fn, n):
    out = []
    for _ in range(n):
        try:
            out.append(fn())
        except (ScalingError, np.linalg.LinAlgError, FloatingPointError, ValueError):
            pass  # a resample that cannot be fitted (e.g. every budget refused) is counted as failed
    return out


def optimal(res, C, p=None):
    """Compute-optimal N, D and predicted loss at budgets C from a fit's parameters."""
    p, C = p or res['params'], np.asarray(C, float)
    if res['method'] == 'approach3':
        Nopt, Dopt = p['G'] * (C / 6) ** p['a'], (C / 6) ** p['b'] / p['G']
        return Nopt, Dopt, p['E'] + p['A'] / Nopt ** p['alpha'] + p['B'] / Dopt ** p['beta']
    Nopt, Dopt = p['N_coef'] * C ** p['a'], p['D_coef'] * C ** p['b']
    return Nopt, Dopt, p.get('E_C', 0.0) + (p['C_c'] / C) ** p['alpha_C']


def intervals(res, ci=0.95, budgets=()):
    """Percentile intervals over the bootstrap fits for every parameter and for the table at the budgets."""
    boot = res.get('boot') or []
    if not boot:
        return {}, None
    q = [50 * (1 - ci), 50 * (1 + ci)]
    pint = {k: np.nanpercentile([b[k] for b in boot], q).tolist() for k in res['params']}
    tint = None
    if len(budgets):
        sims = np.array([optimal(res, budgets, b) for b in boot])  # (B, 3, n_budgets)
        tint = np.nanpercentile(sims, q, axis=0)  # (2, 3, n_budgets)
    return pint, tint


def fit(runs, method='all', points='final', how='parabola', irreducible=False, boot=0, boot_starts=64,
        delta=1e-3, seed=0, rtol=0.1):
    """Fit the requested methods -> list of result dicts. With method='all' a method that cannot be fitted is
    reported in a note instead of stopping the others."""
    rng = np.random.default_rng(seed)
    D, C, L, N = final_points(runs) if points == 'final' else all_points(runs)
    fD, fC, fL, fN = final_points(runs)
    pick = lambda: [runs[i] for i in rng.integers(0, len(runs), len(runs))]
    jobs = {
        'kaplan': lambda: fit_kaplan(runs, irreducible, points, delta),
        'approach1': lambda: fit_approach1(runs),
        'approach2': lambda: fit_approach2(fN, fD, fC, fL, how, rtol, rng, boot, [r.budget or r.C[-1] for r in runs]),
        'approach3': lambda: fit_approach3(N, D, L, delta, boot=boot, boot_starts=boot_starts, rng=rng),
    }
    resample = {  # bootstraps by resampling runs, for the methods that use whole curves
        'kaplan': lambda: fit_kaplan(pick(), irreducible, points, delta, warm=res['warm'])['params'],
        'approach1': lambda: fit_approach1(pick())['params'],
    }
    names = list(jobs) if method == 'all' else [method]
    results, failed = [], []
    for name in names:
        try:
            res = jobs[name]()
        except ScalingError as e:
            if method != 'all':
                raise
            failed.append(f"{name}: {e}")
            continue
        if boot and name in resample:
            res['boot'] = _bootstrap(resample[name], boot)
        res['n_boot'] = boot
        results.append(res)
    if not results:
        raise ScalingError("no method could be fitted: " + "; ".join(failed))
    for f_ in failed:
        warn(f"skipped {f_}")
    return results


# -----------------------------------------------------------------------------
# output: text tables, JSON, figures

TITLES = {
    'kaplan': "Kaplan et al. 2020: L(x) = (x_c/x)^alpha for x = N, D, C; eq. 1.5 L(N,D); N_opt ~ C^a on the frontier",
    'approach1': "Chinchilla approach 1: minimum-loss envelope over log C; N_opt = N_coef C^a, D_opt = D_coef C^b",
    'approach2': "Chinchilla approach 2: IsoFLOP minima over log N; N_opt = N_coef C^a, D_opt = D_coef C^b",
    'approach3': "Chinchilla approach 3: L(N,D) = E + A/N^alpha + B/D^beta; N_opt = G (C/6)^a, D_opt = (C/6)^b / G",
}


def default_budgets(runs):
    """The sweep's budgets (IsoFLOP groups of the final points), then 10x and 100x the largest."""
    C = final_points(runs)[1]
    groups = group_budgets(np.array([r.budget or r.C[-1] for r in runs]))
    base = [float(np.exp(np.log(C[g]).mean())) for g in groups]
    if len(base) > 8:
        base = list(np.logspace(np.log10(C.min()), np.log10(C.max()), 5))
    return np.array(base + [10 * max(base), 100 * max(base)])


def summarize(results, budgets, ci=0.95):
    """JSON-ready summaries (bootstrap samples reduced to intervals) and the text report."""
    out, lines = [], []
    for res in results:
        pint, tint = intervals(res, ci, budgets)
        Nopt, Dopt, Lopt = optimal(res, budgets)
        table = []
        for j, c in enumerate(budgets):
            row = dict(C=float(c), N_opt=float(Nopt[j]), D_opt=float(Dopt[j]),
                       tokens_per_param=float(Dopt[j] / Nopt[j]), loss=float(Lopt[j]))
            if tint is not None:
                row.update({f"{k}_ci": tint[:, i, j].tolist() for i, k in enumerate(('N_opt', 'D_opt', 'loss'))})
            table.append(row)
        s = {k: v for k, v in res.items() if k not in ('boot', 'theta', 'warm')}
        s.update(ci=pint, ci_level=ci, n_boot_ok=len(res.get('boot') or []), table=table)
        out.append(s)
        nb = (f", {s['n_boot_ok']}/{res['n_boot']} bootstrap fits, {ci:.0%} percentile intervals"
              if res['n_boot'] else "")
        lines += ["", f"== {TITLES[res['method']]}", f"   {res['n_points']} points{nb}"]
        if res['method'] == 'approach3':
            how = dict(sum='summed', mean='averaged')[res['reduce']]
            lines.append(f"   Huber (delta {res['delta']:g}, {how} over points) of log-loss residuals, "
                         f"L-BFGS from {res['n_starts']} starts, best objective {res['objective']:.6g}")
        if res['method'] == 'approach2':
            lines.append(f"   minimum per budget: {res['minimum']}; budgets used: " +
                         ", ".join(f"{m['C']:.3g}" for m in res['minima']))
        lines += [f"   note: {n}" for n in res.get('notes', [])]
        for k, v in res['params'].items():
            lines.append(f"   {k:<14} {v:>12.4g}" + (f"   [{pint[k][0]:.4g}, {pint[k][1]:.4g}]" if k in pint else ""))
        lines.append(f"   compute-optimal ({res['method']}):")
        w = 30 if tint is not None else 10
        lines.append(f"   {'C (FLOPs)':>10} {'N_opt':>{w}} {'D_opt':>{w}} {'D/N':>7} {'loss':>{w - 6}}")
        cell = lambda r, k, fmt: f"{r[k]:{fmt}}" + (f" [{r[k + '_ci'][0]:.3g}, {r[k + '_ci'][1]:.3g}]"
                                                     if k + '_ci' in r else "")
        for r in table:
            lines.append(f"   {r['C']:>10.3g} {cell(r, 'N_opt', '.3g'):>{w}} {cell(r, 'D_opt', '.3g'):>{w}} "
                         f"{r['tokens_per_param']:>7.1f} {cell(r, 'loss', '.4g'):>{w - 6}}")
    return out, "\n".join(lines)


def plots(results, runs, outdir, budgets, ci=0.95):
    """PNG figures; returns the paths written ([] without matplotlib, which is optional)."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        warn("plots need matplotlib: pip install matplotlib (or pip install -r requirements-dev.txt); "
             "no figures written")
        return []
    os.makedirs(outdir, exist_ok=True)
    by, written = {r['method']: r for r in results}, []
    D, C, L, N = final_points(runs)
    cmap = plt.get_cmap('viridis')

    def save(fig, ax, name, xl, yl, title):
        ax.set(xscale='log', xlabel=xl, ylabel=yl, title=title)
        ax.grid(alpha=.3, which='both')
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        path = os.path.join(outdir, name)
        fig.savefig(path, dpi=120, bbox_inches='tight')
        plt.close(fig)
        written.append(path)

    if 'approach2' in by:  # IsoFLOP curves with their minima
        fig, ax = plt.subplots(figsize=(6, 4))
        groups = group_budgets(np.array([r.budget or r.C[-1] for r in runs]))
        for k, g in enumerate(groups):
            col = cmap(k / max(1, len(groups) - 1))
            ax.scatter(N[g], L[g], color=col, s=14, label=f"C={np.exp(np.log(C[g]).mean()):.2g}")
            if len(set(N[g])) >= 3 and by['approach2']['minimum'] == 'parabola':
                xs = np.linspace(np.log(N[g]).min(), np.log(N[g]).max(), 100)
                ax.plot(np.exp(xs), np.polyval(np.polyfit(np.log(N[g]), L[g], 2), xs), color=col, lw=1)
        for m in by['approach2']['minima']:
            ax.plot(m['N'], m['L'], 'k*', ms=9)
        save(fig, ax, 'isoflop.png', 'parameters N', 'final loss', 'IsoFLOP curves and their minima (approach 2)')
    fig, ax = plt.subplots(figsize=(6, 4))  # every curve against compute, with the frontier
    lnN = np.log([r.N for r in runs])
    for r in runs:
        ax.plot(r.C, r.L, color=cmap((np.log(r.N) - lnN.min()) / max(1e-9, np.ptp(lnN))), lw=.8, alpha=.7)
    if 'kaplan' in by:
        fr = by['kaplan']['frontier']
        ax.plot(fr['C'], fr['L'], 'k--', lw=1, label='frontier (minimum over runs)')
        p = by['kaplan']['params']
        ax.plot(fr['C'], optimal(by['kaplan'], fr['C'])[2], 'r-', lw=1, label=f"L(C) fit, alpha_C={p['alpha_C']:.3g}")
    if 'approach1' in by:
        env = by['approach1']['envelope']
        ax.plot(env['C'], env['L'], 'm.', ms=3, label='approach 1 envelope (interior)')
    save(fig, ax, 'frontier.png', 'compute C (FLOPs)', 'loss', 'loss vs compute (colour: model size)')
    Cg = np.logspace(np.log10(C.min() / 2), np.log10(max(C.max(), max(budgets))), 60)
    for col, key, name in ((0, 'N', 'N_opt'), (1, 'D', 'D_opt')):  # the allocation, with bootstrap bands
        fig, ax = plt.subplots(figsize=(6, 4))
        for k, res in enumerate(results):
            line = ax.plot(Cg, optimal(res, Cg)[col], lw=1.2, label=f"{res['method']} ({'ab'[col]}="
                           f"{res['params']['ab'[col]]:.3f})")[0]
            if res.get('boot'):
                sims = np.array([optimal(res, Cg, b)[col] for b in res['boot']])
                lo, hi = np.nanpercentile(sims, [50 * (1 - ci), 50 * (1 + ci)], axis=0)
                ax.fill_between(Cg, lo, hi, color=line.get_color(), alpha=.2)
        if 'approach2' in by:
            ax.plot([m['C'] for m in by['approach2']['minima']], [m[key] for m in by['approach2']['minima']],
                    'k*', label='IsoFLOP minima')
        ax.set_yscale('log')
        save(fig, ax, f"{name.lower()}.png", 'compute C (FLOPs)', name, f"compute-optimal {name} ({ci:.0%} bands)")
    if 'approach3' in by:  # contours of the fitted L(N, D = C / 6N)
        p = by['approach3']['params']
        cc, nn = np.meshgrid(Cg, np.logspace(np.log10(N.min() / 3), np.log10(N.max() * 3), 80))
        fig, ax = plt.subplots(figsize=(6, 4))
        Lg = p['E'] + p['A'] / nn ** p['alpha'] + p['B'] / (cc / (6 * nn)) ** p['beta']
        levels = np.linspace(np.nanmin(Lg), np.nanpercentile(Lg, 75), 20)  # the far corners would swamp the scale
        cs = ax.contourf(cc, nn, Lg, levels, cmap='viridis_r', extend='max')
        fig.colorbar(cs, ax=ax, label='predicted loss')
        ax.plot(Cg, optimal(by['approach3'], Cg)[0], 'r-', label='N_opt(C)')
        ax.scatter(C, N, c='w', s=8, edgecolors='k', linewidths=.5, label='runs')
        ax.set_yscale('log')
        save(fig, ax, 'contours.png', 'compute C (FLOPs)', 'parameters N', 'approach 3: L(N, C/6N)')
    return written


# -----------------------------------------------------------------------------
# planning an IsoFLOP sweep, and running it

def _model_api():
    try:
        from model import GPTConfig, count_params
        from train import DEFAULTS
    except ImportError as e:
        raise ScalingError(f"plan counts parameters with model.py's GPTConfig and count_params: {e}")
    return GPTConfig, count_params, DEFAULTS


def _parse_value(text):
    try:
        import ast
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # bare words stay strings, as in train.py


def _shell(arg):
    """--key='value' stays as it is (the shell drops the quotes, train.py reads bare words as strings);
    anything else a shell would split or expand is quoted."""
    return arg if re.fullmatch(r"[\w@%+=:,./'-]+", arg) else shlex.quote(arg)


def shape_for(target, aspect, head_dim, count):
    """The stated rule: n_layer = round((target / (12 aspect^2))^(1/3)) from N ~ 12 L d^2 with d = aspect * L;
    then n_embd = the multiple of head_dim (one head per head_dim) whose total parameter count is closest to
    target on a log scale."""
    L = max(1, round((target / (12 * aspect ** 2)) ** (1 / 3)))
    best = None
    for k in range(1, 4097):
        n = count(L, k, k * head_dim)
        if best is None or abs(math.log(n / target)) < best[0]:
            best = (abs(math.log(n / target)), k)
        if n > target:
            break
    return dict(n_layer=L, n_head=best[1], n_embd=best[1] * head_dim)


def plan(budgets, sizes=5, span=10.0, tokens_per_param=20.0, aspect=32.0, head_dim=16, block_size=256,
         batch_size=16, total_batch_size=8192, learning_rate=1e-3, min_lr_ratio=0.1, warmup_frac=0.05, evals=10,
         eval_iters=20, checkpoints=4, data_dir='data/shakespeare_bytes', vocab_size=None, out_root='out-sweep',
         seed=1337, schedule='cosine', train_config=None, train_args='', min_steps=20, lr_points=None):
    """An IsoFLOP sweep: per budget C, `sizes` models log-spaced over a factor `span` around the prior optimum
    N = sqrt(C / (6 tokens_per_param)) (Chinchilla's ~20 tokens per parameter), D = C / (6N) tokens, steps =
    round(D / total_batch_size), warm-up warmup_frac of the steps, cosine to min_lr at the last step, `evals`
    evaluations per run. lr_points [(N, lr), ...], measured optima, set each run's peak learning rate by a power law
    in N fitted through them (Kaplan et al. 2020 eq. D.1: the best learning rate falls with model size); without
    them every run gets learning_rate. Returns one dict per run with its train.py command line."""
    GPTConfig, count_params, train_defaults = _model_api()
    if sizes < 1 or (sizes > 1 and not span > 1) or not tokens_per_param > 0 or not 0 <= warmup_frac < 1:
        raise ScalingError("need --sizes >= 1, --span > 1, --tokens_per_param > 0 and 0 <= --warmup_frac < 1")
    if total_batch_size % (batch_size * block_size):
        raise ScalingError(f"total_batch_size {total_batch_size} is not a multiple of batch_size*block_size = "
                           f"{batch_size * block_size}")
    meta_path = os.path.join(data_dir, 'meta.json')
    meta = json.load(open(meta_path)) if os.path.exists(meta_path) else {}
    vocab_size = vocab_size or meta.get('vocab_size')
    if not vocab_size:
        raise ScalingError(f"no {meta_path} to read vocab_size from: run prepare.py first or pass --vocab_size")
    fields = {f for f in GPTConfig.__dataclass_fields__}
    model_kw = {k: v for k, v in train_defaults.items() if k in fields}  # the model train.py builds unless told
    if train_config:  # model fields a config file sets change the count too (plain assignments, as train.py reads it)
        ns = {}
        exec(compile(open(train_config).read(), train_config, 'exec'), {}, ns)
        model_kw.update({k: v for k, v in ns.items() if k in fields})
    extra = shlex.split(train_args)
    for tok in extra:
        k, eq, v = tok[2:].partition('=')
        if not tok.startswith('--') or not eq:
            raise ScalingError(f"--train_args takes --key=value items, got {tok!r}")
        if k in fields:
            model_kw[k] = _parse_value(v)
    model_kw.update(vocab_size=vocab_size, block_size=block_size)
    count = lambda L, H, d, full=False: (lambda c: c if full else c['n_params'])(
        count_params(GPTConfig(**{**model_kw, 'n_layer': L, 'n_head': H, 'n_embd': d})))
    train_tokens = (meta.get('train') or {}).get('tokens')
    rows = []
    for C in budgets:
        n_star = math.sqrt(C / (6 * tokens_per_param))
        seen, budget_rows = set(), []
        targets = n_star * span ** np.linspace(-0.5, 0.5, sizes) if sizes > 1 else np.array([n_star])
        for t in sorted(targets, key=lambda t: abs(math.log(t / n_star))):  # centre first: collisions go outward
            s = shape_for(t, aspect, head_dim, count)
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
            name = (f"C{C:g}_N{N / 1e3:.0f}k" if N < 1e6 else f"C{C:g}_N{N / 1e6:.3g}M").replace('e+', 'e')
            if any(r['name'] == name for r in budget_rows):
                name += f"_L{s['n_layer']}d{s['n_embd']}"
            lr = lr_for(N, learning_rate, lr_points)
            cfg = dict(out_dir=os.path.join(out_root, name), data_dir=data_dir, **s, block_size=block_size,
                       batch_size=batch_size, total_batch_size=total_batch_size, max_iters=steps,
                       warmup_iters=max(1, round(warmup_frac * steps)), lr_decay_iters=steps,
                       learning_rate=lr, min_lr=float(f'{lr * min_lr_ratio:.6g}'),
                       schedule=schedule,
                       eval_interval=max(1, steps // evals), eval_iters=eval_iters,
                       checkpoint_interval=max(1, math.ceil(steps / checkpoints)), seed=seed)
            args = ([train_config] if train_config else []) + [f"--{k}={v!r}" for k, v in cfg.items()] + extra
            D = steps * total_batch_size
            budget_rows.append(dict(name=name, budget=float(C), N=N, N_nonembed=counts['n_params_nonembed'], D=D,
                                    C=6.0 * N * D, tokens_per_param=D / N, config=cfg, args=args,
                                    epochs=D / train_tokens if train_tokens else None,
                                    cmd=" ".join(["python", "train.py"] + [_shell(a) for a in args])))
        rows += sorted(budget_rows, key=lambda r: r['N'])
    over = [r['name'] for r in rows if (r['epochs'] or 0) > 4]
    if over:  # Muennighoff et al. 2023: up to ~4 epochs of repeated data cost little, beyond that it adds less
        warn(f"{len(over)} run(s) repeat the train split more than 4 times ({', '.join(over[:3])}"
             f"{', ...' if len(over) > 3 else ''}): more data or smaller budgets keep them within ~4 epochs")
    return rows


def lr_for(N, learning_rate, lr_points=None):
    """Peak learning rate for N parameters: a power law lr = k * N^s through the measured optima lr_points (least
    squares in log-log; exact for two points), or learning_rate when none are given."""
    if not lr_points:
        return learning_rate
    if len(lr_points) < 2:
        raise ScalingError("--lr_points needs at least two N:lr pairs")
    slope, intercept = np.polyfit(np.log([n for n, _ in lr_points]), np.log([lr for _, lr in lr_points]), 1)
    return float(f'{math.exp(intercept + slope * math.log(N)):.4g}')


def run_status(row):
    """'done' (eval record at step == max_iters), 'resume' (a checkpoint to continue from) or 'new'.
    A directory holding another shape or length of run is an error, never silently reused."""
    out = row['config']['out_dir']
    log = os.path.join(out, 'log.jsonl')
    if os.path.exists(log):
        runs, by_step = _records(log)
        if runs:
            have = {**(runs[-1].get('model') or {}), 'max_iters': (runs[-1].get('config') or {}).get('max_iters')}
            diff = [k for k in ('n_layer', 'n_head', 'n_embd', 'max_iters') if have.get(k) != row['config'][k]]
            if diff:
                what = ', '.join(f"{k} {have.get(k)} there, {row['config'][k]} planned" for k in diff)
                raise ScalingError(f"{out} holds a different run ({what}); move it away or change --out_root")
        if ('eval', row['config']['max_iters']) in by_step:
            return 'done'
    return 'resume' if os.path.exists(os.path.join(out, 'ckpt.pt')) else 'new'


def run_plan(rows, train_script=None, keep_going=False, jobs=1):
    """Run the sweep; finished runs are skipped and interrupted ones resumed from their checkpoint, so the same
    command continues a sweep after any interruption. jobs > 1 runs that many at once, longest first, each with
    cores/jobs threads and its console in <out_dir>/console.log: on a CPU, small models use one core far better
    than two, and two threads per process stall whenever anything else runs (measured: README of experiments/)."""
    train_script = train_script or os.path.join(os.path.dirname(os.path.abspath(__file__)), 'train.py')
    todo = []
    for i, row in enumerate(rows):
        status = run_status(row)
        if status == 'done':
            print(f"[{i + 1}/{len(rows)}] {row['name']}: finished, skipped", flush=True)
        else:
            todo.append((i, row, status))
    if jobs > 1:
        todo.sort(key=lambda t: -t[1]['C'] / t[1]['N'] ** 0.5)  # rough cost: FLOPs, and small models run slower
    env = {**os.environ, 'OMP_NUM_THREADS': str(max(1, (os.cpu_count() or 1) // jobs))} if jobs > 1 else None
    running, failed = {}, []

    def finish(proc):
        i, row = running.pop(proc)
        if proc.returncode != 0:
            if not keep_going:
                for other in running:
                    other.terminate()
                raise ScalingError(f"{row['name']}: train.py exited with status {proc.returncode}; fix it and "
                                   f"rerun to continue")
            failed.append(row['name'])
            warn(f"{row['name']}: train.py exited with status {proc.returncode}; going on")
        elif jobs > 1:
            print(f"[{i + 1}/{len(rows)}] {row['name']}: finished", flush=True)

    try:
        for i, row, status in todo:
            while len(running) >= jobs:
                done = [p for p in running if p.poll() is not None]
                for p in done:
                    finish(p)
                if not done:
                    time.sleep(0.2)
            args = row['args'] + (["--init_from='resume'"] if status == 'resume' else [])
            print(f"[{i + 1}/{len(rows)}] {row['name']}: {'resuming' if status == 'resume' else 'starting'}",
                  flush=True)
            out = None
            if jobs > 1:
                os.makedirs(row['config']['out_dir'], exist_ok=True)
                out = open(os.path.join(row['config']['out_dir'], 'console.log'), 'a')
            running[subprocess.Popen([sys.executable, train_script] + args, env=env, stdout=out,
                                     stderr=subprocess.STDOUT if out else None)] = (i, row)
        while running:
            proc = next(iter(running))
            proc.wait()
            finish(proc)
    except KeyboardInterrupt:  # the children got the same SIGINT: let them stop cleanly, then stop the sweep
        for proc in running:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        raise
    if failed:
        raise ScalingError(f"{len(failed)} run(s) failed: {', '.join(failed)}")


# -----------------------------------------------------------------------------
# command line

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
    f.add_argument('--ci', type=float, default=0.95)
    f.add_argument('--budgets', type=_floats, help='FLOP budgets of the compute-optimal table')
    f.add_argument('--delta', type=float, default=1e-3, help='Huber delta')
    f.add_argument('--rtol', type=float, default=0.1, help='relative spread of C within one IsoFLOP budget')
    f.add_argument('--seed', type=int, default=0)
    f.add_argument('--json', help='write results here')
    f.add_argument('--plots', help='write PNG figures to this directory (needs matplotlib)')
    f.add_argument('--skip_bad', action='store_true', help='leave out unreadable or diverged runs with a warning')
    f.add_argument('--include_unfinished', action='store_true')
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
    p.add_argument('--lr_points', type=_lr_points, help='measured best learning rates N:lr,N:lr; each run gets the '
                   'power law in N through them (instead of --learning_rate)')
    p.add_argument('--train_config', help='a train.py config file to put first on every command line')
    p.add_argument('--train_args', default='', help='more --key=value for train.py, e.g. "--dtype=\'bfloat16\'"')
    p.add_argument('--json', help='write the plan here')
    p.add_argument('--run', action='store_true', help='run the sweep now; finished runs are skipped')
    p.add_argument('--keep_going', action='store_true', help='with --run: go on after a failed run')
    p.add_argument('--jobs', type=int, default=1, help='with --run: runs at once, each with cores/jobs threads')
    p.add_argument('--train_script', help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv=None):
    a = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if a.cmd == 'fit':
            if not 0 < a.ci < 1 or a.bootstrap < 0 or a.boot_starts < 1 or not a.delta > 0:
                raise ScalingError("need 0 < --ci < 1, --bootstrap >= 0, --boot_starts >= 1 and --delta > 0")
            runs = load(a.inputs, a.n, a.compute, a.loss, a.skip_bad, a.include_unfinished)
            results = fit(runs, a.method, a.points, a.minimum, a.irreducible, a.bootstrap, a.boot_starts, a.delta,
                          a.seed, a.rtol)
            budgets = np.array(a.budgets) if a.budgets else default_budgets(runs)
            summary, text = summarize(results, budgets, a.ci)
            print(f"{len(runs)} runs: N {min(r.N for r in runs):.3g}..{max(r.N for r in runs):.3g}, "
                  f"C {min(r.C[-1] for r in runs):.3g}..{max(r.C[-1] for r in runs):.3g} (N {a.n}, C {a.compute})")
            print(text)
            if a.json:
                write_json(a.json, dict(inputs=a.inputs, options={k: v for k, v in vars(a).items() if k != 'inputs'},
                                        results=summary))
            if a.plots:
                for path in plots(results, runs, a.plots, budgets, a.ci):
                    print(f"wrote {path}")
        else:
            keys = ('budgets sizes span tokens_per_param aspect head_dim block_size batch_size total_batch_size '
                    'learning_rate min_lr_ratio warmup_frac evals eval_iters checkpoints data_dir vocab_size '
                    'out_root seed schedule train_config train_args min_steps lr_points').split()
            rows = plan(**{k: getattr(a, k) for k in keys})
            print(f"# IsoFLOP sweep: {len(rows)} runs, {sum(r['C'] for r in rows):.3g} FLOPs in all (C = 6ND)")
            print(f"# {'name':<20} {'N':>9} {'L':>3} {'d':>5} {'steps':>7} {'D':>9} {'D/N':>6} {'epochs':>6}")
            for r in rows:
                c, ep = r['config'], f"{r['epochs']:.2f}" if r['epochs'] else '?'
                print(f"# {r['name']:<20} {r['N']:>9.3g} {c['n_layer']:>3} {c['n_embd']:>5} {c['max_iters']:>7} "
                      f"{r['D']:>9.3g} {r['tokens_per_param']:>6.1f} {ep:>6}")
            for r in rows:
                print(r['cmd'])
            if a.json:
                write_json(a.json, dict(options=vars(a), runs=rows))
            if a.run:
                sys.stdout.flush()  # the plan before the runs' own output
                run_plan(rows, a.train_script, a.keep_going, a.jobs)
    except ScalingError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except OSError as e:
        print(f"error: {e.filename}: {e.strerror}" if e.filename else f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to continue (finished runs are skipped)", file=sys.stderr)
        sys.exit(130)


if __name__ == '__main__':
    main()
