"""
Figures of the fits (PNG, matplotlib optional): IsoFLOP curves, the loss-compute frontier, the compute-optimal
allocation with bootstrap bands, approach 3's loss contours (laws.py), and the critical batch size (bcrit.py).
"""
import os

import numpy as np

from pretrain.scaling.bcrit import law as bcrit_law
from pretrain.scaling.laws import group_budgets, optimal
from pretrain.scaling.runlog import final_points, warn


def pyplot():
    """matplotlib.pyplot, or None (with a warning saying how to get it): plots are optional."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        warn("plots need matplotlib: pip install matplotlib (or pip install -r requirements-dev.txt); "
             "no figures written")
        return None
    return plt


def _save(plt, fig, ax, path, xl, yl, title):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ax.set(xscale='log', xlabel=xl, ylabel=yl, title=title)
    ax.grid(alpha=.3, which='both')
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=120, bbox_inches='tight')
    plt.close(fig)
    return path


def plots(results, runs, outdir, budgets, ci=0.95):
    """The loss-law figures; returns the paths written ([] without matplotlib)."""
    plt = pyplot()
    if plt is None:
        return []
    by, written = {r['method']: r for r in results}, []
    D, C, L, N = final_points(runs)
    cmap = plt.get_cmap('viridis')

    def save(fig, ax, name, xl, yl, title):
        written.append(_save(plt, fig, ax, os.path.join(outdir, name), xl, yl, title))

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
        for res in results:
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


def plot_bcrit(res, series, outdir, ci=0.95):
    """bcrit.png: every run's (loss, B_simple) and the fitted law with its bootstrap band -> [path] ([] without
    matplotlib)."""
    plt = pyplot()
    if plt is None:
        return []
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, L, B in series:
        ax.plot(L, B, '.', ms=3, alpha=.6, label=name if len(series) <= 8 else None)
    Lg = np.geomspace(*res['loss_range'], 60)
    p = res['params']
    ax.plot(Lg, bcrit_law(p, Lg), 'k-', lw=1.2, label=f"B_star={p['B_star']:.3g}, alpha_B={p['alpha_B']:.3g}")
    if res.get('boot'):
        lo, hi = np.percentile([bcrit_law(b, Lg) for b in res['boot']], [50 * (1 - ci), 50 * (1 + ci)], axis=0)
        ax.fill_between(Lg, lo, hi, color='k', alpha=.15)
    ax.set_yscale('log')
    return [_save(plt, fig, ax, os.path.join(outdir, 'bcrit.png'), 'loss', 'B_simple (tokens)',
                  f"critical batch size vs loss ({ci:.0%} band)")]
