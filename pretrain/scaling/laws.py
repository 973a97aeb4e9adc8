"""
Scaling laws of the loss: Kaplan et al. 2020 and Chinchilla (Hoffmann et al. 2022) approaches 1-3 with bootstrap
intervals, compute-optimal tables and the text report. Conventions: scaling.py's docstring.
"""
import itertools
import math

import numpy as np

from pretrain.scaling.runlog import Run, ScalingError, all_points, final_points, warn

# -----------------------------------------------------------------------------
# a batched L-BFGS: thousands of independent starts advance together, each with its own history and line search

def lbfgs(fun, x0, m=10, max_iter=1000, gtol=1e-5, ftol=1e7 * np.finfo(np.float64).eps, max_ls=30):
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


def chinchilla_grid():
    """Hoffmann et al. 2022, appendix D.2: alpha, beta in {0, .5, .., 2}, e in {-1, -.5, .., 1}, a, b in {0, 5, .., 25}:
    4,500 starts, as rows (a, b, e, alpha, beta)."""
    h, e, ab = np.arange(0, 2.01, 0.5), np.arange(-1, 1.01, 0.5), np.arange(0, 26, 5.0)
    return np.array([(a, b, e_, al, be) for al, be, e_, a, b in itertools.product(h, h, e, ab, ab)])


def chinchilla_params(th):
    """(a, b, e, alpha, beta) -> E, A, B, alpha, beta and the compute-optimal allocation
    N_opt(C) = G (C/6)^a, D_opt(C) = (C/6)^b / G with G = (alpha A / (beta B))^(1/(alpha+beta)) (their eq. 4)."""
    a_, b_, e_, al, be = (float(v) for v in th)
    A, B, E = _exp(a_), _exp(b_), _exp(e_)
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

def _exp(v):
    """exp that gives inf instead of OverflowError: a bootstrap refit with a slope near 0 puts a law's scale
    constant (x_c = exp(c / alpha)) past float range, which its interval should show, not crash on."""
    return math.exp(v) if v < 709.0 else float('inf')


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
    out = dict(alpha=float(th[-1]), x_c=_exp(th[0] / th[-1]) if th[-1] != 0 else float('nan'))
    if irreducible:
        out['E'] = _exp(th[1])
    return out, warm


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
    (a, kN), (b, kD), (g, kL) = (fit_power(C, v) for v in (Nopt, Dopt, Lopt))  # L_opt(C) = (C_c/C)^alpha_C
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


def vertex(x, L, what, how='parabola'):
    """The loss minimum of one budget's runs over log x -> (x*, L*), or a str saying why it is refused (e.g. lowest
    loss at the edge of the sweep: the optimum may lie outside it). parabola: the paper's quadratic in log x (biased
    when points sit off-centre); spline: a natural cubic spline through the x-averaged points, minimised between
    the lowest point's neighbours (follows the data, noise included)."""
    lx = np.log(x)
    xs, inv = np.unique(lx, return_inverse=True)
    if len(xs) < 3:
        return f"only {len(xs)} distinct {what}s (3+ needed)"
    ys = np.bincount(inv, L) / np.bincount(inv)
    i = int(np.argmin(ys))
    if i in (0, len(xs) - 1):
        side, more = ('smallest', 'smaller') if i == 0 else ('largest', 'larger')
        return f"lowest loss at the {side} swept {what} {math.exp(xs[i]):.3g}: the optimum may lie outside the " \
               f"sweep, add {more} {what}s"
    if how == 'spline':
        grid = np.linspace(xs[i - 1], xs[i + 1], 2001)
        vals = _spline(xs, ys, grid)
        return math.exp(grid[np.argmin(vals)]), float(vals.min())
    c2, c1, c0 = np.polyfit(lx, L, 2)
    if c2 <= 0:
        return f"the parabola in log {what} opens downward (no minimum)"
    x0 = -c1 / (2 * c2)
    if not xs[0] < x0 < xs[-1]:
        return f"the parabola's vertex ({what} {math.exp(x0):.3g}) lies outside the swept range " \
               f"{math.exp(xs[0]):.3g}..{math.exp(xs[-1]):.3g}"
    return math.exp(x0), float(c0 - c1 * c1 / (4 * c2))


def isoflop_minimum(N, D, L, how='parabola', C=None):
    """vertex() over log N of one IsoFLOP group -> (N*, D*, L*, C*) or the str refusing it; D* and C* from log-linear
    fits along the group (exact for C = 6ND; C varies a little along it with --compute logged or --n nonembed)."""
    m = vertex(N, L, 'model size', how)
    if isinstance(m, str):
        return m
    at = lambda v: math.exp(np.polyval(np.polyfit(np.log(N), np.log(v), 1), math.log(m[0])))
    return m[0], at(D), m[1], at(6 * N * D if C is None else C)


def fit_approach2(N, D, C, L, how='parabola', rtol=0.1, rng=None, boot=0, budget=None):
    """N_opt ~ C^a, D_opt ~ C^b through the isoflop_minimum of each IsoFLOP group (runs whose planned budget,
    default C, agrees within rtol)."""
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
        return _opt_power(*map(np.array, zip(*minima))), minima, refused  # minima: (C, N, D, L) each
    params, minima, refused = once(groups)
    res = dict(method='approach2', minimum=how, params=params, n_points=len(L), notes=refused,
               minima=[dict(C=c, N=n_, D=d, L=l) for c, n_, d, l in minima])
    if boot:  # resample runs within each budget, so every budget keeps its number of runs
        rng = rng or np.random.default_rng(0)
        res['boot'] = bootstrap(lambda: once([list(rng.choice(g, len(g))) for g in groups])[0], boot, 'approach2')
    return res


def fit_kaplan(runs, irreducible=False, points='final', delta=1e-3, warm=None):
    """Kaplan et al. 2020: L(N) from each size's best final loss, L(D) and L(C) from the envelopes of all curves
    (L(C)'s is their compute-efficient frontier), their eq. 1.5 L(N, D), and N_opt ~ C^a from all the frontier's
    winners (Kaplan's Fig. 14). warm: an earlier result's 'warm', to start a bootstrap refit from its optima."""
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
    p.update(alpha_N_eq15=th[2] * th[3], alpha_D_eq15=th[3], N_c_eq15=_exp(th[0] / th[2]), D_c_eq15=_exp(th[1]))
    Nopt, Dopt = _winners(curves, Cg, win)
    (a, kN), (b, kD) = fit_power(Cg, Nopt), fit_power(Cg, Dopt)
    p.update(a=a, N_coef=kN, b=b, D_coef=kD)
    return dict(method='kaplan', params=p, n_points=len(L), irreducible=irreducible, warm=new_warm,
                frontier=dict(C=Cg.tolist(), L=LCg.tolist()))


BOOT_MIN_OK = 0.8   # below this fraction of fitted resamples the intervals are reported with a warning


def bootstrap(fn, n, label='fit'):
    """fn() n times (each call draws its own resample) -> the results of the calls that could be fitted. The
    intervals come from those alone; the reports say how many (k/n), and a warning names the fit when fewer than
    BOOT_MIN_OK of them converged: the resamples that fail are the unusual ones, so the intervals are too narrow."""
    out = []
    for _ in range(n):
        try:
            out.append(fn())
        except (ScalingError, np.linalg.LinAlgError, FloatingPointError, ValueError):
            pass  # a resample that cannot be fitted (e.g. every budget refused) is counted as failed
    if n and len(out) < BOOT_MIN_OK * n:
        warn(f"{label}: only {len(out)} of {n} bootstrap resamples could be fitted; its intervals come from those "
             f"alone and are likely too narrow")
    return out


def optimal(res, C, p=None):
    """Compute-optimal N, D and predicted loss at budgets C from a fit's parameters."""
    p, C = p or res['params'], np.asarray(C, float)
    if res['method'] == 'approach3':
        Nopt, Dopt = p['G'] * (C / 6) ** p['a'], (C / 6) ** p['b'] / p['G']
        return Nopt, Dopt, p['E'] + p['A'] / Nopt ** p['alpha'] + p['B'] / Dopt ** p['beta']
    Nopt, Dopt = p['N_coef'] * C ** p['a'], p['D_coef'] * C ** p['b']
    return Nopt, Dopt, p.get('E_C', 0.0) + (p['C_c'] / C) ** p['alpha_C']


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
            res['boot'] = bootstrap(resample[name], boot, name)
        res['n_boot'] = boot
        results.append(res)
    if not results:
        raise ScalingError("no method could be fitted: " + "; ".join(failed))
    for f_ in failed:
        warn(f"skipped {f_}")
    return results


# -----------------------------------------------------------------------------
# output: the text report and its JSON-ready summary (figures: plots.py)

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
        boot, q = res.get('boot') or [], [50 * (1 - ci), 50 * (1 + ci)]  # percentile intervals over the refits
        pint = {k: np.nanpercentile([b[k] for b in boot], q).tolist() for k in res['params']} if boot else {}
        tint = np.nanpercentile([optimal(res, budgets, b) for b in boot], q, axis=0) if boot else None  # (2, N/D/L, C)
        Nopt, Dopt, Lopt = optimal(res, budgets)
        table = []
        for j, c in enumerate(budgets):
            row = dict(C=float(c), N_opt=float(Nopt[j]), D_opt=float(Dopt[j]),
                       tokens_per_param=float(Dopt[j] / Nopt[j]), loss=float(Lopt[j]))
            if tint is not None:
                row.update({f"{k}_ci": tint[:, i, j].tolist() for i, k in enumerate(('N_opt', 'D_opt', 'loss'))})
            table.append(row)
        s = {k: v for k, v in res.items() if k not in ('boot', 'theta', 'warm')}
        s.update(ci=pint, ci_level=ci, n_boot_ok=len(boot), table=table)
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

