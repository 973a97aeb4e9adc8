"""
The critical batch size from the gradient noise scale. McCandlish et al. 2018 ("An Empirical Model of Large-Batch
Training"): beyond about the noise scale tr(Sigma) / |G|^2 (per-example gradient covariance Sigma, true gradient G)
a larger batch stops buying proportionally fewer steps. Their "simple" estimate (appendix A.1) from gradient norms
at two batch sizes: train.py --noise_scale=True logs |g|^2 of a step's micro-batches (B_small tokens each) and of
the whole step (B_big tokens), the unbiased estimators
    |G|^2     = (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
    tr(Sigma) = (|G_small|^2 - |G_big|^2) / (1/B_small - 1/B_big),
their exponential moving averages G2 and S (one step's estimates are far too noisy), and B_simple = S / G2, tokens.

Kaplan et al. 2020 (sec. 5.1, eq. 5.3): the critical batch depends on the loss alone, whatever the model size,
    B_crit(L) = B_star / L^(1/alpha_B),  B_star ~ 2e8 tokens, alpha_B ~ 0.21 (nats per BPE token).
fit() regresses log B on log L (closed form; B_simple, a ratio of noisy estimates, has multiplicative errors,
which log space weighs evenly, and is far noisier than the loss).

Intervals: neighbouring records share most of their moving averages, so a point bootstrap counts near-copies as
independent. The default is a block bootstrap (Künsch 1989, non-overlapping blocks): each run cut into contiguous
blocks (10 per run, or --block records each), each resample drawing per run as many blocks with replacement. It is
still too narrow when the correlation spans much of a block: on synthetic runs (3 runs of 120 records, AR(1)
log-noise of 25%) the default 95% intervals covered the planted alpha_B 86% of the time at a correlation of 0.5
between neighbouring records and 75% at 0.9; the point bootstrap (--block 1) 40% at 0.9.
"""
import math

import numpy as np

from pretrain.scaling.laws import bootstrap
from pretrain.scaling.runlog import ScalingError, log_files, noise_records, warn

KAPLAN = dict(B_star=2e8, alpha_B=0.21)  # Kaplan et al. 2020, eq. 5.3 (BPE tokens, loss in nats)


def load_noise(inputs, min_step=0):
    """Run dirs, log.jsonl files or sweep dirs -> [(run name, loss array, B_simple array)], records with step >=
    min_step and a positive B_simple (the moving average of |G|^2 can be <= 0 early on: no estimate yet)."""
    series, dropped = [], 0
    for p in inputs:
        for s in log_files(p):
            name, recs = noise_records(s, min_step)
            if not recs:
                warn(f"{s}: no 'noise' records{f' at step >= {min_step}' if min_step else ''} "
                     f"(train.py --noise_scale=True writes them), left out")
                continue
            ok = [r for r in recs if isinstance(r['B_simple'], (int, float)) and math.isfinite(r['B_simple'])
                  and r['B_simple'] > 0 and math.isfinite(r['loss']) and r['loss'] > 0]
            dropped += len(recs) - len(ok)
            if ok:
                series.append((name, np.array([r['loss'] for r in ok]), np.array([r['B_simple'] for r in ok])))
    if not series:
        raise ScalingError("no noise records with a positive B_simple in the inputs")
    return series, dropped


def fit_law(L, B):
    """log B = c - m log L by least squares -> dict(B_star = e^c, alpha_B = 1/m, inv_alpha_B = m)."""
    L, B = np.asarray(L, float), np.asarray(B, float)
    if len(L) < 3 or np.ptp(np.log(L)) == 0:
        raise ScalingError(f"the B_crit law needs 3+ points at 2+ different losses (got {len(L)})")
    slope, c = np.polyfit(np.log(L), np.log(B), 1)
    m = -float(slope)
    return dict(B_star=math.exp(c), alpha_B=1 / m if m else float('inf'), inv_alpha_B=m)


def law(p, L):
    return p['B_star'] / np.asarray(L, float) ** p['inv_alpha_B']


def blocks(n, block=0):
    """Index blocks of one run: contiguous, `block` records each (0: the run in 10 blocks, or fewer if shorter)."""
    size = block if block > 0 else max(1, math.ceil(n / 10))
    return [np.arange(i, min(n, i + size)) for i in range(0, n, size)]


def fit(series, boot=0, block=0, seed=0):
    """The law on every run's pairs pooled -> result dict; boot > 0 adds 'boot', the block-bootstrap refits."""
    L, B = (np.concatenate([s[k] for s in series]) for k in (1, 2))
    res = dict(method='bcrit', params=fit_law(L, B), n_points=len(L), n_runs=len(series),
               runs=[s[0] for s in series], loss_range=[float(L.min()), float(L.max())], n_boot=boot,
               block=block, block_sizes=[len(blocks(len(s[1]), block)[0]) for s in series])
    if boot:  # a resample with a single loss value cannot be fitted: counted as failed
        rng = np.random.default_rng(seed)
        per_run = [blocks(len(s[1]), block) for s in series]

        def refit():
            idx = [np.concatenate([bl[j] for j in rng.integers(0, len(bl), len(bl))]) for bl in per_run]
            return fit_law(*(np.concatenate([s[k][i] for s, i in zip(series, idx)]) for k in (1, 2)))
        res['boot'] = bootstrap(refit, boot, 'B_crit law')
    return res


def summarize(res, losses=None, ci=0.95):
    """JSON-ready summary and the text report: B_star and alpha_B with intervals, B_crit at a few losses."""
    p, boot = res['params'], res.get('boot') or []
    lo_L, hi_L = res['loss_range']
    losses = np.array(losses if losses is not None else np.linspace(hi_L, lo_L, 5))
    q = [50 * (1 - ci), 50 * (1 + ci)]
    cis = {}
    if boot:
        # intervals of log B_star and 1/alpha_B (the fitted line's intercept and slope); alpha_B's by inversion, which
        # maps [m_lo, m_hi] onto an interval only when it excludes 0 (B_simple clearly falling with the loss): across
        # 0 the set of alpha_B is two rays, (-inf, 1/m_lo] and [1/m_hi, inf), and the slope's interval says more
        m_lo, m_hi = np.percentile([b['inv_alpha_B'] for b in boot], q)
        cis = dict(B_star=np.percentile([b['B_star'] for b in boot], q).tolist(), inv_alpha_B=[m_lo, m_hi],
                   alpha_B=sorted([1 / m_lo, 1 / m_hi]) if m_lo > 0 or m_hi < 0 else None)
    table = [dict(loss=float(l), B_crit=float(law(p, l))) for l in losses]
    for row, ends in zip(table, np.percentile([law(b, losses) for b in boot], q, axis=0).T if boot else []):
        row['B_crit_ci'] = ends.tolist()
    s = {k: v for k, v in res.items() if k != 'boot'}
    s.update(ci=cis, ci_level=ci, n_boot_ok=len(boot), table=table, kaplan=KAPLAN)
    how = ("points resampled one by one (ignores their autocorrelation: too narrow)" if res['block'] == 1 else
           f"contiguous blocks of {min(res['block_sizes'])}-{max(res['block_sizes'])} records resampled within "
           f"each run")
    lines = ["== critical batch size, Kaplan et al. 2020 eq. 5.3: B_crit(L) = B_star / L^(1/alpha_B), fitted to "
             "B_simple = tr(Sigma)/|G|^2 (McCandlish et al. 2018)",
             f"   {res['n_points']} noise records from {res['n_runs']} run(s), loss {lo_L:.4g}..{hi_L:.4g}; "
             f"least squares in log-log"]
    if boot:
        lines.append(f"   block bootstrap: {len(boot)}/{res['n_boot']} refits, {how}, {ci:.0%} percentile intervals")
    for k, unit in (('B_star', ' tokens'), ('inv_alpha_B', ' (the slope: -d log B / d log L)'), ('alpha_B', '')):
        iv = f"   [{cis[k][0]:.4g}, {cis[k][1]:.4g}]" if cis.get(k) else ""
        if k == 'alpha_B' and boot and not cis.get(k):
            iv = "   no interval: the slope's interval contains 0 (B_simple does not move clearly with the loss)"
        lines.append(f"   {k:<8} {p[k]:>12.4g}{unit}{iv}")
    lines.append(f"   (Kaplan et al. 2020, BPE tokens: B_star ~ {KAPLAN['B_star']:.0e} tokens, alpha_B ~ "
                 f"{KAPLAN['alpha_B']}; B_star is the value at loss 1, an extrapolation when the losses are above it)")
    lines.append(f"   {'loss':>8} {'B_crit (tokens)':>16}" + (f" {f'[{ci:.0%}]':>24}" if boot else ""))
    for row in table:
        iv = f" [{row['B_crit_ci'][0]:.3g}, {row['B_crit_ci'][1]:.3g}]" if boot else ""
        lines.append(f"   {row['loss']:>8.4g} {row['B_crit']:>16.3g}{iv:>25}")
    return s, "\n".join(lines)

