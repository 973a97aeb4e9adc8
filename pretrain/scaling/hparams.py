"""
The best peak learning rate and batch size as power laws in compute. DeepSeek LLM (DeepSeek-AI 2024, sec. 3.1)
swept both at several compute budgets and fitted
    B_opt = 0.292 C^0.3271 (tokens),   eta_opt = 0.3118 C^-0.125   (their data, model, AdamW; C in FLOPs);
Porian et al. 2024 ("Resolving Discrepancies in Compute-Optimal Scaling of Language Models") show that tuning both
per scale is part of what reconciles Kaplan's and Chinchilla's exponents. fit() does that on sweep logs: per budget
(grouped as approach 2 groups them) the laws.vertex of the final loss in log lr, and in log batch size where it
varies (when both vary, along the one-knob slice through the best run); then k C^s by least squares in log-log
through the optima, with runs resampled within each budget for the bootstrap.
"""
import math

import numpy as np

from pretrain.scaling.laws import bootstrap, fit_power, group_budgets, vertex
from pretrain.scaling.runlog import ScalingError, read_json

KNOBS = {  # name -> (what it is, unit, DeepSeek LLM's law (k, s) for reference)
    'lr': ('learning rate', '', (0.3118, -0.125)),
    'batch': ('batch size', ' (tokens)', (0.292, 0.3271)),
}


def points(runs):
    """-> arrays (compute C, planned budget, final loss, peak lr, batch tokens) from train.py logs."""
    rows = []
    for r in runs:
        cfg = r.record.get('config') or {}
        b = r.record.get('tokens_per_step') or cfg.get('total_batch_size')
        if not isinstance(cfg.get('learning_rate'), (int, float)) or not isinstance(b, (int, float)):
            raise ScalingError(f"{r.name}: hparams needs train.py logs whose 'run' record has config.learning_rate "
                               f"and tokens_per_step (a CSV point has neither)")
        rows.append((r.C[-1], r.budget or r.C[-1], r.L[-1], cfg['learning_rate'], b))
    return tuple(np.array(v, float) for v in zip(*rows))


def fit_knob(groups, C, L, x, other, knob):
    """opt = k C^s through the vertices of L over log x of the budgets where x varies -> dict(k, s, optima, notes);
    ScalingError if fewer than 2 budgets have one."""
    what = KNOBS[knob][0]
    found, notes = [], []
    for g in map(np.asarray, groups):
        if len(set(x[g])) < 2:
            continue  # this knob was not swept at this budget
        sel = g[other[g] == other[g[np.argmin(L[g])]]]  # the slice through the best run when the other knob varies
        Cg = float(np.exp(np.log(C[g]).mean()))
        m = vertex(x[sel], L[sel], what)
        if isinstance(m, str):
            notes.append(f"budget C={Cg:.3g} ({len(sel)} runs) refused: {m}")
        else:
            found.append(dict(C=Cg, opt=m[0], L=m[1], runs=len(sel)))
    if len(found) < 2:
        raise ScalingError(f"the {what} law needs 2+ budgets with an interior optimum, got {len(found)}"
                           + (f" ({'; '.join(notes)})" if notes else ""))
    s, k = fit_power([f['C'] for f in found], [f['opt'] for f in found])
    return dict(k=k, s=s, optima=found, notes=notes)


def fit(runs, rtol=0.1, boot=0, seed=0):
    """The lr law and, where the batch varies within budgets, the batch law -> {'lr': result or None, 'batch': ...};
    a swept law that cannot be fitted raises, unless the other one could be (then its reason is its 'error')."""
    C, budget, L, lr, B = points(runs)
    groups = group_budgets(budget, rtol)
    rng = np.random.default_rng(seed)
    out, errors = {}, []
    for knob, x, other in (('lr', lr, B), ('batch', B, lr)):
        if not any(len(set(x[g])) > 1 for g in groups):
            out[knob] = None  # not swept within any budget
            continue
        try:
            res = fit_knob(groups, C, L, x, other, knob)
        except ScalingError as e:
            out[knob] = dict(error=str(e))
            errors.append(str(e))
            continue
        if boot:
            res['boot'] = bootstrap(lambda: fit_knob([list(rng.choice(g, len(g))) for g in groups],
                                                     C, L, x, other, knob), boot, f"{knob} law")
        res['n_boot'] = boot
        out[knob] = res
    if not any(v and 'k' in v for v in out.values()):
        raise ScalingError("; ".join(errors) if errors else
                           "neither the learning rate nor the batch size varies within any budget: nothing to fit")
    return out


def summarize(results, ci=0.95):
    """JSON-ready summary (bootstrap refits reduced to intervals) and the text report."""
    q = [50 * (1 - ci), 50 * (1 + ci)]
    out, lines = {}, []
    for knob, res in results.items():
        what, unit, (dk, ds) = KNOBS[knob]
        if res is None or 'k' not in res:
            out[knob] = res
            lines += ["", f"== {what}: " + ("not swept within any budget, no law" if res is None else
                                            f"no law: {res['error']}")]
            continue
        boot = res.get('boot') or []
        cis = {p: np.percentile([b[p] for b in boot], q).tolist() for p in ('k', 's')} if boot else {}
        out[knob] = dict({k: v for k, v in res.items() if k != 'boot'}, ci=cis, ci_level=ci, n_boot_ok=len(boot))
        sym = 'eta_opt' if knob == 'lr' else 'B_opt'
        lines += ["", f"== {what}: {sym}(C) = k C^s through each budget's optimum (DeepSeek LLM 2024 sec. 3.1: "
                      f"{dk} C^{ds} in their setting)"]
        if boot:
            lines.append(f"   {len(boot)}/{res['n_boot']} bootstrap fits (runs resampled within budgets), "
                         f"{ci:.0%} percentile intervals")
        lines.append(f"   optimum per budget: the vertex of a parabola in log {what} of the final loss")
        lines.append(f"   {'C (FLOPs)':>10} {'runs':>5} {sym + unit:>16} {'loss there':>10}")
        for f in res['optima']:
            lines.append(f"   {f['C']:>10.3g} {f['runs']:>5} {f['opt']:>16.4g} {f['L']:>10.4g}")
        lines += [f"   note: {n}" for n in res['notes']]
        for p in ('k', 's'):
            lines.append(f"   {p:<3} {res[p]:>12.4g}" + (f"   [{cis[p][0]:.4g}, {cis[p][1]:.4g}]" if cis else ""))
    return out, "\n".join(lines).lstrip('\n')


def read_lr_law(path):
    """(k, s) of eta_opt = k C^s from `scaling.py hparams --json` output, for `plan --lr_law`."""
    doc = read_json(path)
    get = lambda d, k: d.get(k) if isinstance(d, dict) else None
    law, compute = get(get(doc, 'results'), 'lr') or {}, get(get(doc, 'options'), 'compute') or '6nd'
    if not all(isinstance(get(law, p), (int, float)) and math.isfinite(law[p]) for p in ('k', 's')):
        raise ScalingError(f"{path}: no learning-rate law in it (results.lr.k and .s, as `scaling.py hparams ... "
                           f"--json` writes them)")
    if compute != '6nd':
        raise ScalingError(f"{path}: the law was fitted with --compute {compute}; plan's budgets are C = 6ND")
    return float(law['k']), float(law['s'])
