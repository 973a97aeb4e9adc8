"""
The budget planner behind `scaling.py budget`: from compute (or GPUs x hours x MFU), a parameter count or a token
count, to a compute-optimal model, its tokens, batch, learning rate, memory per GPU, wall time and cost, and a
train.py config; and afterwards, a finished run's log checked against the plan. C = 6ND is the law's budget, with N
counted as the law counts it: all parameters for Chinchilla-style laws (Hoffmann et al. 2022, appendix F, count
embeddings), non-embedding parameters for Kaplan et al. 2020. Time runs on the FLOPs train.py and bench.py count
for MFU: accounting.flops_per_token(config, 'palm') per token (6N + 12*L*H*Q*T, PaLM appendix B), so an MFU
measured by bench.py predicts tokens/s directly, and GPU-hours buy D = gpus * peak * mfu * seconds / flops_per_token.
"""
import json
import math
import os

import numpy as np
import torch

from pretrain import configurator
from pretrain.accounting import count_params, flops_per_token, train_memory
from pretrain.checkpoint import MODEL_FIELDS, model_config_from
from model import ModelError
from pretrain.data import read_meta, DataError
from pretrain.scaling.runlog import ScalingError, log_path, read_json, records
from pretrain.hardware import gpu_peak_tflops
from pretrain.parallel import check_shape
from pretrain.scaling import bcrit, hparams, laws
from pretrain.scaling.sweep import TRAIN_PY, shape_for

PF_DAY = 1e15 * 86400  # Kaplan et al. 2020 count compute in PF-days

# -----------------------------------------------------------------------------
# published laws

# Hoffmann et al. 2022, Table 3: approach 1's compute-optimal (parameters, FLOPs, tokens) for nine model sizes.
CHINCHILLA_TABLE3 = [(400e6, 1.92e19, 8.0e9), (1e9, 1.21e20, 20.2e9), (10e9, 1.23e22, 205.1e9),
                     (67e9, 5.76e23, 1.5e12), (175e9, 3.85e24, 3.7e12), (280e9, 9.90e24, 5.9e12),
                     (520e9, 3.43e25, 11.0e12), (1e12, 1.27e26, 21.2e12), (10e12, 1.30e28, 216.2e12)]
# Hoffmann et al. 2022, Table A3 (appendix D.3): the same projections by approach 2.
CHINCHILLA_TABLE_A3 = [(400e6, 1.84e19, 7.7e9), (1e9, 1.20e20, 20.0e9), (10e9, 1.32e22, 219.5e9),
                       (67e9, 6.88e23, 1.7e12), (175e9, 4.54e24, 4.3e12), (280e9, 1.18e25, 7.1e12),
                       (520e9, 4.19e25, 13.4e12), (1e12, 1.59e26, 26.5e12), (10e12, 1.75e28, 292.0e12)]
# The 67B rows are left out of the fits: in Table 3 that row's own FLOPs give C/(6N) = 1.43T tokens, not the 1.5T
# printed, and both tables' 67B rows sit 3-7% off the power law every other row follows to within 0.35%.
GOPHER_ROW = 3


def table_law(rows):
    """N_opt = G C^a by least squares in log-log through a published table's rows (the papers give only a):
    -> (G, a). Table 3 gives a = 0.498 (published: 0.50), Table A3 a = 0.490 (published: 0.49)."""
    N, C = (np.array([r[i] for j, r in enumerate(rows) if j != GOPHER_ROW]) for i in (0, 1))
    a, G = laws.fit_power(C, N)
    return G, a


# Besiroglu et al. 2024 ("Chinchilla Scaling: A replication attempt", arXiv 2404.10102), Table 1: approach 3 refitted
# to the 240 points they extracted from Hoffmann et al.'s Figure 4 (the 5 highest losses left out).
BESIROGLU = dict(E=1.8172, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658)
# Their standard errors are per parameter only (A 124.58, B 1293.23, E 0.03, alpha 0.02, beta 0.02), but log A moves
# with alpha and log B with beta (correlation 0.999): independent draws would give far too wide intervals. Below, the
# covariance of (log A, log B, log E, alpha, beta) over 1,000 bootstrap refits of their released data (github.com/
# Besiroglu/data, svg_extracted_data.csv) by laws.fit_approach3 (points resampled, Huber delta 1e-3 summed; recipe:
# docs/budget.md); its 95% intervals (A 286-714, B 992-5468, E 1.767-1.868, alpha 0.317-0.371, beta 0.329-0.412)
# match their notebook's 4,000 refits (A 285-744, B 1042-5810, E 1.769-1.871, alpha 0.317-0.373, beta 0.331-0.415).
BESIROGLU_COV = [[6.23566e-02, -2.43980e-02, 2.01506e-03, 3.71461e-03, -1.22748e-03],
                 [-2.43980e-02, 1.69247e-01, 3.65275e-03, -1.51697e-03, 8.28942e-03],
                 [2.01506e-03, 3.65275e-03, 1.97215e-04, 1.18867e-04, 1.78291e-04],
                 [3.71461e-03, -1.51697e-03, 1.18867e-04, 2.21574e-04, -7.63620e-05],
                 [-1.22748e-03, 8.28942e-03, 1.78291e-04, -7.63620e-05, 4.06268e-04]]

# Kaplan et al. 2020, Table 6: N_opt = 1.3e9 C^0.73 non-embedding parameters (C in PF-days); Table 5: the loss on
# the compute-efficient frontier L(C) = (3.1e8 PF-days / C)^0.050 (nats per token of their BPE on WebText2).
KAPLAN = dict(N_e=1.3e9, p_N=0.73, C_c=3.1e8, alpha_C=0.050)

LAWS = {
    'besiroglu': dict(kind='parametric', n='total', params=BESIROGLU, cov=BESIROGLU_COV,
                      cite="Besiroglu et al. 2024, Chinchilla approach 3 refit, Table 1 (intervals: the joint "
                           "bootstrap of their data)"),
    'chinchilla3': dict(kind='parametric', n='total', params=dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28),
                        cite="Hoffmann et al. 2022, approach 3, eq. 10 (published without parameter intervals)"),
    'chinchilla1': dict(kind='power', n='total', law=table_law(CHINCHILLA_TABLE3),
                        cite="Hoffmann et al. 2022, approach 1: N_opt = G C^a through Table 3 (a = 0.50 published)"),
    'chinchilla2': dict(kind='power', n='total', law=table_law(CHINCHILLA_TABLE_A3),
                        cite="Hoffmann et al. 2022, approach 2: N_opt = G C^a through Table A3 (a = 0.49 published)"),
    'kaplan': dict(kind='kaplan', n='nonembed', law=KAPLAN,
                   cite="Kaplan et al. 2020, Table 6: N_opt = 1.3e9 (C/PF-day)^0.73 non-embedding; Table 5: "
                        "L = (3.1e8 PF-day/C)^0.050"),
}
DEFAULT_LAW = 'besiroglu'


def _theta(p):  # laws.fit_approach3's parameters (log A, log B, log E, alpha, beta), BESIROGLU_COV's order
    return [math.log(p['A']), math.log(p['B']), math.log(p['E']), p['alpha'], p['beta']]


def read_law(spec, fit_method=None):
    """--law: a published law's name or a `scaling.py fit --json` file -> law dict (kind, n, cite, ...)."""
    if spec in LAWS:
        law = dict(LAWS[spec], name=spec)
        if law['kind'] == 'parametric':
            law['params'] = laws.chinchilla_params(_theta(law['params']))  # G, a, b of their eq. 4 added
        return law
    if not os.path.isfile(spec):
        raise ScalingError(f"--law {spec!r}: neither a published law ({', '.join(LAWS)}) nor a file")
    doc = read_json(spec)
    results = doc.get('results')
    if not (isinstance(results, list) and results and all(isinstance(r, dict) and 'method' in r and
                                                         isinstance(r.get('params'), dict) for r in results)):
        raise ScalingError(f"{spec}: not a `scaling.py fit --json` file (no results list of fitted methods)")
    by_method = {r['method']: r for r in results}
    order = [fit_method] if fit_method else ['approach3', 'approach1', 'approach2', 'kaplan']
    res = next((by_method[m] for m in order if m in by_method), None)
    if res is None:
        raise ScalingError(f"{spec}: no {' or '.join(order)} fit in it (it has {', '.join(by_method)})")
    need = ('G', 'a', 'b', 'E', 'A', 'B', 'alpha', 'beta') if res['method'] == 'approach3' else \
        ('N_coef', 'a', 'D_coef', 'b')
    if not all(isinstance(res['params'].get(k), (int, float)) for k in need):
        raise ScalingError(f"{spec}: the {res['method']} fit lacks {', '.join(need)}")
    n = (doc.get('options') or {}).get('n', 'total')
    return dict(kind='fit', n=n, name=f"{spec}:{res['method']}", res=res,
                cite=f"this repo's fit ({res['method']}, N {n}) from {spec}")


def optimum(law, C):
    """Compute-optimal (N, D, loss or None) at law budget C = 6ND (N in the law's convention)."""
    k = law['kind']
    if k in ('parametric', 'fit'):
        res = law['res'] if k == 'fit' else dict(method='approach3', params=law['params'])
        N, D, L = (float(v) for v in laws.optimal(res, C))
        return N, D, (L if res['method'] == 'approach3' or 'C_c' in res['params'] else None)
    if k == 'power':
        G, a = law['law']
        N = G * C ** a
        return N, C / (6 * N), None
    p = law['law']
    N = p['N_e'] * (C / PF_DAY) ** p['p_N']
    return N, C / (6 * N), (p['C_c'] / (C / PF_DAY)) ** p['alpha_C']


def loss_at(law, N, D):
    """The law's loss for a model of N parameters trained on D tokens (None when the law has no loss)."""
    p = law['params'] if law['kind'] == 'parametric' else law['res']['params'] if law['kind'] == 'fit' else None
    if p is not None and 'E' in p and 'A' in p:
        return p['E'] + p['A'] / N ** p['alpha'] + p['B'] / D ** p['beta']
    return optimum(law, 6 * N * D)[2]


def invert(law, target, which):
    """The budget C at which the law's N_opt (which=0) or D_opt (which=1) equals target: bisection in log C (both
    grow monotonically with C for every law here)."""
    lo, hi = math.log(1e3), math.log(1e40)
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if optimum(law, math.exp(mid))[which] < target else (lo, mid)
    return math.exp((lo + hi) / 2)


def intervals(law, C, N, D, ci=0.95, draws=4000, seed=0):
    """Intervals of N_opt(C), D_opt(C) and of the loss of the planned (N, D), where the law carries them:
    -> ({'params': [lo, hi], 'tokens': ..., 'loss': ...}, note)."""
    q = [50 * (1 - ci), 50 * (1 + ci)]
    if law.get('cov'):
        sims = []
        for t in np.random.default_rng(seed).multivariate_normal(_theta(law['params']), law['cov'], size=draws):
            s = laws.chinchilla_params(t)
            if not (s['alpha'] > 0 and s['beta'] > 0):
                continue  # a draw without a finite optimum
            n_opt, d_opt, _ = laws.optimal(dict(method='approach3'), C, s)
            sims.append((n_opt, d_opt, s['E'] + s['A'] / N ** s['alpha'] + s['B'] / D ** s['beta']))
        lo, hi = np.percentile(np.array(sims, float), q, axis=0)
        return dict(params=[lo[0], hi[0]], tokens=[lo[1], hi[1]], loss=[lo[2], hi[2]]), \
            f"{ci:.0%} intervals from {len(sims)} draws of the fit's bootstrap covariance"
    if law['kind'] != 'fit':
        return {}, "the law carries no intervals"
    table = [r for r in law['res'].get('table', []) if 'N_opt_ci' in r]
    if not table:
        return {}, "the fit file has no bootstrap intervals (scaling.py fit --bootstrap 100)"
    Cs = np.log([r['C'] for r in table])
    if not Cs.min() - 1e-9 <= math.log(C) <= Cs.max() + 1e-9:
        return {}, (f"no interval: C = {C:.3g} lies outside the fit's table ({math.exp(Cs.min()):.3g}.."
                    f"{math.exp(Cs.max()):.3g}); rerun `scaling.py fit ... --bootstrap 100 --budgets {C:.3g}`")
    order = np.argsort(Cs)
    out = {}
    for key, col in (('params', 'N_opt_ci'), ('tokens', 'D_opt_ci'), ('loss', 'loss_ci')):
        ends = np.array([table[i][col] for i in order], float)  # (rows, 2)
        out[key] = [float(math.exp(np.interp(math.log(C), Cs[order], np.log(ends[:, j])))) for j in (0, 1)]
    return out, (f"{law['res'].get('ci_level', ci):.0%} bootstrap intervals of the fit's table at C (log-linear "
                 f"between its budgets); loss: at the optimum")


# -----------------------------------------------------------------------------
# hardware

# GPU memory in GiB for the per-GPU fit (datasheets; the larger variant where two exist: A100 80GB, not 40GB)
GPU_MEMORY_GIB = [('GB200', 186), ('B200', 180), ('H200 NVL', 141), ('H200', 141), ('H100 NVL', 94), ('H100', 80),
                  ('H800', 80), ('A100', 80), ('A800', 80), ('L40S', 48), ('A40', 48), ('RTX A6000', 48),
                  ('A30', 24), ('A10', 24), ('L4', 24), ('RTX 4090', 24), ('RTX 3090', 24)]
MEMORY_HEADROOM = 0.9  # train_memory leaves out the CUDA context, allocator caching and communication buffers


def wall_hours(tokens, gpus, peak_flops, mfu, flops_per_tok):
    return tokens * flops_per_tok / (gpus * peak_flops * mfu) / 3600


def read_bench(path):
    """A bench.py record (--json=FILE, or the last line of a JSON-lines file of --json=- >> FILE) -> (MFU by the
    PaLM count, peak FLOP/s, name)."""
    try:
        with open(path) as f:
            lines = [ln for ln in f.read().splitlines() if ln.strip()]
        try:
            rec = json.loads('\n'.join(lines))   # one record, as --json=FILE writes it
        except ValueError:
            rec = json.loads(lines[-1])      # several: the last line's
    except (ValueError, IndexError) as e:
        raise ScalingError(f"{path}: not a bench.py --json record ({e})")
    if not isinstance(rec, dict) or rec.get('bench') != 'train':
        raise ScalingError(f"{path}: not a bench.py --json training record")
    m = (rec.get('mfu') or {}).get('palm')
    if not isinstance(m, (int, float)):
        raise ScalingError(f"{path}: the record has no MFU (bench.py knew no peak for {rec.get('device_name')!r}; "
                           f"rerun it with --peak_tflops)")
    return float(m), (rec.get('peak_tflops_per_device') or 0) * 1e12 or None, rec.get('device_name') or '?'


def model_knobs(base_config, data_dir, vocab_size):
    """train.py's knobs as a run of the written config sees them (its defaults, then --base), and the vocabulary:
    --vocab_size, else data_dir's meta.json, else GPT-2's 50257 (with a note)."""
    knobs = configurator.script_defaults(TRAIN_PY)
    base = configurator.read_config_file(base_config) if base_config else {}
    for k, v in base.items():
        knobs[k] = configurator.check_type(k, v, knobs, base_config)
    note = None
    if vocab_size is None and os.path.isfile(os.path.join(data_dir, 'meta.json')):
        try:
            vocab_size = read_meta(data_dir)['vocab_size']
        except DataError as e:
            raise ScalingError(str(e))
    if vocab_size is None:
        vocab_size, note = 50257, f"vocab_size 50257 (GPT-2 BPE) assumed: no {data_dir}/meta.json (--vocab_size)"
    return knobs, base, vocab_size, note


def transfer(parametrization, tuned=None, base_lr=None, base_n_embd=None, base_n_layer=None):
    """A muP / CompleteP plan's base (docs/parametrization.md), instead of a fitted eta_opt(C): a tuned run's shape and
    peak LR (a run that had a base keeps it: its LR refers to it), or --base_lr at --base_n_embd (and --base_n_layer)
    -> (GPTConfig fields, the base LR, where from)."""
    if bool(tuned) == bool(base_lr and base_n_embd):
        raise ScalingError(f"--parametrization {parametrization} needs the base it transfers from, one of: --tuned "
                           f"RUN_DIR (a run tuned at a small shape), or --base_lr with --base_n_embd")
    base = dict(n_embd=base_n_embd, n_layer=base_n_layer, head_dim=None)
    if tuned:
        runs = records(log_path(tuned))[0] if os.path.isfile(log_path(tuned)) else []
        if not runs:
            raise ScalingError(f"--tuned {tuned}: no run log ({log_path(tuned)}) to take the base shape and LR from")
        m, base_lr = runs[-1]['model'], runs[-1]['config']['learning_rate']
        own = dict(n_embd=m['n_embd'], n_layer=m['n_layer'], head_dim=m['n_embd'] // m['n_head'])
        had_base = m.get('parametrization', 'sp') != 'sp'
        base = {k: (m.get(f'base_{k}') if had_base else None) or v for k, v in own.items()}
    fields = dict(parametrization=parametrization, base_n_embd=base['n_embd'], base_head_dim=base['head_dim'],
                  base_n_layer=base['n_layer'] if parametrization == 'completep' else None)
    return fields, base_lr, (f"{parametrization}: the LR {'of ' + tuned if tuned else '--base_lr'}, tuned at n_embd "
                             f"{base['n_embd']} (the hidden matrices' LR is it x base_n_embd / n_embd)")


def plan(compute=None, gpu=None, peak_tflops=None, gpus=1, hours=None, mfu=None, bench=None, params=None,
         tokens=None, price=None, law='besiroglu', fit_method=None, hparams_file=None, bcrit_file=None,
         block_size=1024, aspect=64.0, head_dim=64, data_dir='data/fineweb10B', vocab_size=None, base_config=None,
         max_micro_batch=64, warmup_frac=0.02, gpu_memory=None, ci=0.95, gpus_per_node=8, parametrization=None,
         tuned=None, base_lr=None, base_n_embd=None, base_n_layer=None):
    """Everything `scaling.py budget` prints and writes, as one dict (see docs/budget.md)."""
    notes = []
    for name, v in dict(compute=compute, peak_tflops=peak_tflops, hours=hours, params=params, tokens=tokens,
                        price=price, gpu_memory=gpu_memory, base_lr=base_lr).items():
        if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ScalingError(f"--{name} must be a positive number, got {v!r}")
    if not (isinstance(gpus, int) and gpus >= 1):
        raise ScalingError(f"--gpus must be an int >= 1, got {gpus!r}")
    if mfu is not None and not 0 < mfu <= 1:
        raise ScalingError(f"--mfu must be in (0, 1] (a fraction of the peak, e.g. 0.4), got {mfu:g}")
    if mfu is not None and bench:
        raise ScalingError("--mfu and --bench both give the MFU: pass one")
    if not parametrization and (tuned or base_lr or base_n_embd or base_n_layer):
        raise ScalingError("--tuned, --base_lr, --base_n_embd and --base_n_layer are for --parametrization mup or "
                           "completep")
    if not 0 <= warmup_frac < 1 or block_size < 1 or head_dim < 1 or not aspect > 0:
        raise ScalingError("need 0 <= --warmup_frac < 1, --block_size >= 1, --head_dim >= 1 and --aspect > 0")

    # hardware: the peak per GPU and the MFU
    peak, gpu_name = None, gpu
    if bench:
        mfu, bench_peak, bench_name = read_bench(bench)
        notes.append(f"MFU {mfu:.3f} measured by bench.py on {bench_name} (holds for that model and batch shape)")
        if gpu is None and peak_tflops is None:
            peak, gpu_name = bench_peak, bench_name
    if peak_tflops is not None:
        peak = peak_tflops * 1e12
    elif gpu is not None:
        t = gpu_peak_tflops(gpu, torch.bfloat16)
        if t is None:
            raise ScalingError(f"unknown GPU {gpu!r}: not in runtime.py's peak table (give --peak_tflops, the dense "
                               f"bf16 TFLOP/s of one GPU)")
        peak = t * 1e12
    if peak is not None and mfu is None:
        mfu = 0.4
        notes.append("MFU 0.40 assumed (measure yours: python bench.py <config> --json=bench.json; --bench)")
    hw = peak is not None

    law = read_law(law, fit_method)
    key = 'n_params' if law['n'] == 'total' else 'n_params_nonembed'
    knobs, base, vocab, note = model_knobs(base_config, data_dir, vocab_size)
    notes += [note] if note else []
    knobs = dict(knobs, block_size=block_size)
    if parametrization:   # muP / CompleteP: the model knobs get the base; the LR is the base's, not eta_opt(C)
        fields, mup_lr, mup_source = transfer(parametrization, tuned, base_lr, base_n_embd, base_n_layer)
        knobs.update(fields)

    def config_of(shape):
        try:
            return model_config_from({**knobs, **shape}, vocab)
        except (TypeError, ValueError, ModelError) as e:
            raise ScalingError(f"the planned model: {e}")

    def choose(n_target):   # with GQA, heads in groups of the key/value heads (each group shares one)
        shape = shape_for(n_target, aspect, head_dim, lambda L, k, d: count_params(
            config_of(dict(n_layer=L, n_head=k, n_embd=d)))[key], knobs.get('n_kv_head') or 1)
        conf = config_of(shape)
        return shape, conf, count_params(conf), flops_per_token(conf, 'palm')

    # the budget: C (the law's 6ND) and the tokens, from whichever inputs determine them
    if params and tokens:
        C, source = 6.0 * params * tokens, 'params x tokens'
    elif compute:
        C, source = compute, 'compute'
    elif params:
        C, source = invert(law, params, 0), 'params (compute-optimal)'
    elif tokens:
        C, source = invert(law, tokens, 1), 'tokens (compute-optimal)'
    elif hw and hours:
        C, source = None, 'GPUs x hours x MFU'
    else:
        raise ScalingError("not enough to plan: give --compute, --params and/or --tokens, or --gpu (or "
                           "--peak_tflops) with --gpus, --hours and --mfu")
    if compute and (params and tokens) and abs(C / compute - 1) > 0.01:
        raise ScalingError(f"over-specified: --params x --tokens give C = 6ND = {C:.4g}, --compute says "
                           f"{compute:.4g}")
    if C is not None:
        n_opt, d_opt, _ = optimum(law, C)
        shape, conf, counts, fpt = choose(params or (compute / (6 * tokens) if compute and tokens else n_opt))
        N = counts[key]
        D = tokens or C / (6 * N)
    else:  # GPUs x hours: the tokens depend on the shape's FLOPs per token, the shape on C: iterate to a fixed point
        hw_flops = gpus * peak * mfu * hours * 3600
        C, seen = hw_flops, set()
        for _ in range(20):
            n_opt, d_opt, _ = optimum(law, C)
            shape, conf, counts, fpt = choose(n_opt)
            N, D = counts[key], hw_flops / fpt
            C = 6.0 * N * D
            if (shape['n_layer'], shape['n_embd']) in seen:
                break
            seen.add((shape['n_layer'], shape['n_embd']))
        n_opt, d_opt, _ = optimum(law, C)

    # batch and learning rate: fitted laws when given, else DeepSeek LLM 2024's (hparams.KNOBS, in FLOPs)
    loss = loss_at(law, N, D)
    lr_k, lr_s = hparams.read_lr_law(hparams_file) if hparams_file else hparams.KNOBS['lr'][2]
    lr_source = f"eta_opt = {lr_k:.4g} C^{lr_s:.4g} ({hparams_file if hparams_file else 'DeepSeek LLM 2024, sec. 3.1'})"
    (b_k, b_s), b_source = hparams.KNOBS['batch'][2], 'DeepSeek LLM 2024, sec. 3.1'
    if hparams_file:
        fitted = ((read_json(hparams_file).get('results') or {}).get('batch') or {})
        if isinstance(fitted.get('k'), (int, float)) and isinstance(fitted.get('s'), (int, float)):
            b_k, b_s, b_source = fitted['k'], fitted['s'], hparams_file
    batch_target = b_k * C ** b_s
    if bcrit_file:
        p = (read_json(bcrit_file).get('results') or {}).get('params')
        if not (isinstance(p, dict) and isinstance(p.get('B_star'), (int, float)) and
                isinstance(p.get('inv_alpha_B'), (int, float))):
            raise ScalingError(f"{bcrit_file}: not a `scaling.py bcrit --json` file (results.params.B_star)")
        if loss is None:
            raise ScalingError(f"--bcrit needs a predicted loss, and the law {law['name']} has none")
        batch_target, b_source = float(bcrit.law(p, loss)), f"B_crit(L = {loss:.3f}) from {bcrit_file}"
    batch_source = f"B_opt = {b_k:.4g} C^{b_s:.4g} ({b_source})" if not bcrit_file else b_source
    learning_rate = float(f"{lr_k * C ** lr_s:.3g}")
    if parametrization:
        learning_rate, lr_source = mup_lr, mup_source

    # how to spread the model (parallel.py): the first of these that holds micro-batch 1, cheapest first. Data
    # parallel alone; then tensor parallel within a node (2, 4, 8 GPUs: two all-reduces of activations per block,
    # over NVLink); then pipeline stages across nodes (2, 4, ...: point-to-point sends, and a bubble). In each, DDP;
    # DDP recomputing each block in the backward (activation checkpointing: about a third more compute); FSDP
    # (ZeRO-3: 1.5x DDP's communication, ZeRO paper sec. 7.2.2); FSDP with checkpointing. A layout holds micro-batch
    # m when it fits in memory (train_memory, MEMORY_HEADROOM) and the batch gives each data-parallel rank m
    # sequences (a pipeline: one per stage at least, 1F1B's need). Then, in that layout, the largest power-of-two
    # micro-batch up to max_micro_batch and the batch's share per rank that holds.
    mem_gib = gpu_memory or next((gib for key, gib in GPU_MEMORY_GIB if gpu_name and key.lower() in gpu_name.lower()),
                                 None)
    def splits_model(tp, pp):   # train.py's rule (parallel.check_shape): whole heads, a block per stage at least
        try:
            check_shape(conf.n_head, conf.kv_heads, conf.n_layer, tp, pp, block_size)
            return True
        except configurator.ConfigError:
            return False
    tps = [t for t in (1, 2, 4, 8) if t <= gpus_per_node and gpus % t == 0 and splits_model(t, 1)]
    splits = [(t, 1) for t in tps] + [(tps[-1], 2 ** i) for i in range(1, 11)
                                      if gpus % (tps[-1] * 2 ** i) == 0 and splits_model(tps[-1], 2 ** i)]

    def micro_batches(m, tp, pp):   # a step's micro-batches of m sequences per data-parallel rank, to the nearest
        return round(batch_target / (block_size * m * (gpus // (tp * pp))))

    def holds(m, tp, pp, mode, ckpt):
        n = micro_batches(m, tp, pp)
        return ((n >= pp or gpus == 1) and
                (not mem_gib or train_memory(conf, m, gpus, mode, ckpt, tp=tp, pp=pp, micro_batches=max(1, n))
                 ['total'] <= MEMORY_HEADROOM * mem_gib * 2 ** 30))
    modes = [('ddp', False), ('ddp', True), ('fsdp', False), ('fsdp', True)]
    layouts = [(tp, pp, mode, ckpt) for tp, pp in splits for mode, ckpt in modes]
    tp, pp, parallel, checkpointing = next((lay for lay in layouts if holds(1, *lay)), (*splits[-1], 'none', True))
    mode = 'fsdp' if parallel == 'none' else parallel
    micro = 1
    for m in (2 ** i for i in range(int(math.log2(max_micro_batch)) + 1)):
        if m > max(1, micro_batches(1, tp, pp)) or not holds(m, tp, pp, mode, checkpointing):
            break
        micro = m
    dp = gpus // (tp * pp)
    accum = max(1, micro_batches(micro, tp, pp))
    mem = train_memory(conf, micro, gpus, mode, checkpointing, tp=tp, pp=pp, micro_batches=accum)
    if (tp, pp, parallel, checkpointing) != (1, 1, 'ddp', False):
        need = train_memory(conf, 1, gpus)['total'] / 2 ** 30
        how = {'none': "nothing here fits across these GPUs: use more or larger",
               'ddp': "DDP", 'fsdp': "FSDP"}[parallel]
        if parallel != 'none':
            how += (f" over {dp} data-parallel ranks" + (f" of tensor parallel {tp}" if tp > 1 else "") +
                    (f" x {pp} pipeline stages (1F1B over {accum} micro-batches: bubble {(pp - 1) / accum:.0%})"
                     if pp > 1 else "") + (" with activation checkpointing (about 1/3 more compute: expect a lower "
                                           "MFU)" if checkpointing else ""))
        notes.append(f"DDP alone does not hold it ({need:.1f} GiB at micro-batch 1"
                     + (f" in {mem_gib} GiB" if mem_gib else "") + f"; a batch of {batch_target:,.0f} tokens gives "
                     f"{batch_target / (block_size * gpus):.2g} sequence(s) per GPU): {how}")
    batch_tokens = block_size * dp * micro * accum
    steps = max(1, round(D / batch_tokens))
    D_run = steps * batch_tokens
    warmup = min(steps, max(1, round(warmup_frac * steps))) if warmup_frac else 0

    out = dict(law=law['name'], law_source=law['cite'], n_convention=law['n'], budget_from=source,
               compute=6.0 * N * D_run, params=N, tokens=D_run, tokens_per_param=D_run / N,
               params_opt=n_opt, tokens_opt=d_opt, loss=loss,
               n_params=counts['n_params'], n_params_nonembed=counts['n_params_nonembed'],
               n_layer=shape['n_layer'], n_embd=shape['n_embd'], n_head=shape['n_head'], block_size=block_size,
               vocab_size=vocab, shape_rule=f"n_layer from N ~ 12 L d^2 at d/L = {aspect:g}, head_dim {head_dim}",
               flops_per_token=fpt, batch_tokens=batch_tokens, batch_target=batch_target, batch_source=batch_source,
               micro_batch=micro, grad_accum=accum, steps=steps, learning_rate=learning_rate,
               min_lr=float(f"{learning_rate / 10:.3g}"), lr_source=lr_source, warmup_iters=warmup,
               memory={k: int(v) for k, v in mem.items()}, gpu_memory_gib=mem_gib,
               parallel=parallel if mem_gib else None, activation_checkpointing=checkpointing, gpu=gpu_name,
               tensor_parallel=tp, pipeline_parallel=pp, data_parallel=dp, gpus_per_node=gpus_per_node,
               gpus=gpus, peak_tflops=peak / 1e12 if peak else None, mfu=mfu if hw else None, price=price,
               data_dir=data_dir, base_config=base_config, base=base, notes=notes,
               model_knobs={k: knobs[k] for k in MODEL_FIELDS if k in knobs and k not in shape and k != 'block_size'})
    ivals, out['interval_note'] = intervals(law, C, N, D_run, ci)
    out.update({f"{k}_interval": v for k, v in ivals.items()})
    if hw:
        tok_s, h = gpus * peak * mfu / fpt, wall_hours(D_run, gpus, peak, mfu, fpt)
        out.update(tokens_per_s=tok_s, tokens_per_s_per_gpu=tok_s / gpus, hours=h, gpu_hours=h * gpus,
                   cost=h * gpus * price if price else None)
        if hours and abs(out['hours'] / hours - 1) > 0.02 and source != 'GPUs x hours x MFU':
            raise ScalingError(f"over-specified: the {source} budget takes {out['hours']:.3g} h on {gpus} GPUs at "
                               f"MFU {mfu:.2f}, --hours says {hours:g}; drop one of them")
    else:
        out.update(tokens_per_s=None, tokens_per_s_per_gpu=None, hours=None, gpu_hours=None, cost=None)
    return out


def _n(x):
    """1.34B, 31.5B, 2.81M: three significant digits with the unit of the rounded value."""
    for unit, scale in (('T', 1e12), ('B', 1e9), ('M', 1e6), ('k', 1e3)):
        if float(f"{x:.3g}") >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def report(p):
    iv = lambda k: (f"  [{_n(p[k + '_interval'][0])}, {_n(p[k + '_interval'][1])}]" if k + '_interval' in p else "")
    lines = [f"law         {p['law']}: {p['law_source']}",
             f"budget      C = 6ND = {p['compute']:.3g} FLOPs (from {p['budget_from']}; N {p['n_convention']})",
             f"optimum     N_opt {_n(p['params_opt'])}{iv('params')}, D_opt {_n(p['tokens_opt'])}{iv('tokens')}, "
             f"{p['tokens_opt'] / p['params_opt']:.1f} tokens/param",
             f"model       n_layer {p['n_layer']}, n_embd {p['n_embd']}, n_head {p['n_head']}, block_size "
             f"{p['block_size']}, vocab {p['vocab_size']} ({p['shape_rule']})",
             f"            {p['n_params']:,} parameters ({p['n_params_nonembed']:,} non-embedding), "
             f"{p['flops_per_token'] / 1e9:.4g} GFLOPs/token (PaLM count)",
             f"tokens      {_n(p['tokens'])} = {p['steps']:,} steps x {p['batch_tokens']:,} tokens "
             f"({p['tokens_per_param']:.1f} tokens/param)"]
    if p['loss'] is not None:
        lo = (f"  [{p['loss_interval'][0]:.3f}, {p['loss_interval'][1]:.3f}]" if 'loss_interval' in p else "")
        lines.append(f"loss        {p['loss']:.3f}{lo} (the law's data and tokenizer: comparable only to a law "
                     f"fitted on yours)")
    lines += [f"            {p['interval_note']}",
              f"batch       {p['batch_tokens']:,} tokens/step = {p['data_parallel']} data-parallel rank(s) x "
              f"micro-batch {p['micro_batch']} "
              f"x {p['grad_accum']} accumulation x {p['block_size']} (target {p['batch_target']:,.0f}: "
              f"{p['batch_source']})",
              f"lr          {p['learning_rate']:g} peak, cosine to {p['min_lr']:g}, warm-up {p['warmup_iters']} "
              f"steps ({p['lr_source']})"]
    m = p['memory']
    fit = {'ddp': 'fits with DDP', 'fsdp': 'needs sharding (FSDP)', 'none': 'does not fit',
           None: 'GPU memory unknown (--gpu_memory)'}[p['parallel']]
    if p['activation_checkpointing'] and p['parallel'] in ('ddp', 'fsdp'):
        fit += ' and activation checkpointing'
    tp, pp = p.get('tensor_parallel', 1), p.get('pipeline_parallel', 1)   # plans saved before these: 1
    if p['parallel'] in ('ddp', 'fsdp') and tp * pp > 1:
        fit += f", tensor parallel {tp} x {pp} pipeline stage(s) x {p['data_parallel']} data-parallel"
    lines.append(f"memory/GPU  {m['total'] / 2 ** 30:.2f} GiB (weights {m['weights'] / 2 ** 30:.2f}, grads "
                 f"{m['grads'] / 2 ** 30:.2f}, optimizer {m['optimizer'] / 2 ** 30:.2f}, activations "
                 f"{m['activations'] / 2 ** 30:.2f}) at micro-batch {p['micro_batch']}: {fit}"
                 + (f" in {p['gpu_memory_gib']} GiB" if p['gpu_memory_gib'] else ""))
    if p['hours'] is not None:
        lines.append(f"time        {p['gpus']} x {p['gpu']} at {p['peak_tflops']:g} TFLOP/s, MFU {p['mfu']:.2f}: "
                     f"{p['tokens_per_s']:,.0f} tokens/s ({p['tokens_per_s_per_gpu']:,.0f}/GPU), {p['hours']:.2f} h, "
                     f"{p['gpu_hours']:,.1f} GPU-hours" + (f", cost {p['cost']:,.2f}" if p['cost'] is not None else ""))
    lines += [f"note        {n}" for n in p['notes']]
    return "\n".join(lines)


def config_text(p, out_dir):
    vals = dict(out_dir=out_dir, data_dir=p['data_dir'], n_layer=p['n_layer'], n_head=p['n_head'],
                n_embd=p['n_embd'], block_size=p['block_size'], batch_size=p['micro_batch'],
                total_batch_size=p['batch_tokens'], max_iters=p['steps'], learning_rate=p['learning_rate'],
                min_lr=p['min_lr'], warmup_iters=p['warmup_iters'], lr_decay_iters=p['steps'], schedule='cosine',
                eval_interval=max(1, min(250, p['steps'] // 10)))
    if p['parallel'] is not None:   # the layout the memory plan chose ('none': the largest, which does not fit)
        vals.update(parallel='fsdp' if p['parallel'] == 'none' else p['parallel'],
                    activation_checkpointing=p['activation_checkpointing'], tensor_parallel=p['tensor_parallel'],
                    pipeline_parallel=p['pipeline_parallel'])
    defaults = configurator.script_defaults(TRAIN_PY)
    unknown = [k for k in list(vals) + list(p['base']) + list(p['model_knobs']) if k not in defaults]
    if unknown:
        raise ScalingError(f"train.py has no knob {', '.join(unknown)}")
    per_node = p.get('gpus_per_node', 8)
    nodes = f" --nnodes={-(-p['gpus'] // per_node)} --node_rank=<node>" if p['gpus'] > per_node else ""
    head = [f"# written by `scaling.py budget`: {p['law']} law, C = {p['compute']:.3g} FLOPs, "
            f"{p['n_params']:,} parameters, {p['tokens']:,} tokens",
            f"# run: torchrun{nodes} --nproc_per_node={min(p['gpus'], per_node)} train.py <this file>   (batch_size is "
            f"per data-parallel rank; total_batch_size = {p['data_parallel']} data-parallel ranks x {p['micro_batch']} "
            f"x {p['grad_accum']} accumulation x {p['block_size']})"]
    if p['hours'] is not None:
        head.append(f"# predicted: {p['tokens_per_s']:,.0f} tokens/s at MFU {p['mfu']:.2f}, {p['hours']:.2f} h")
    # the model knobs the count assumed, written out so that a change of train.py's defaults cannot change the model
    model = ["# model knobs the parameter count assumed"] + [f"{k} = {v!r}" for k, v in p['model_knobs'].items()]
    rest = [f"# the rest of {p['base_config']}"] + [f"{k} = {v!r}" for k, v in p['base'].items()
                                                    if k not in vals and k not in p['model_knobs']]
    return "\n".join(head + (rest if len(rest) > 1 else []) + model + ["# the plan"] +
                     [f"{k} = {v!r}" for k, v in vals.items()]) + "\n"


def check(p, run_dir, rtol=0.1):
    """A finished run against its plan -> (rows, text): final val loss vs the law's interval, median tokens/s and MFU
    over the second half of the train records vs the plan's figures within rtol."""
    path = log_path(run_dir)
    if not os.path.isfile(path):
        raise ScalingError(f"{path}: no run log (train.py writes <out_dir>/log.jsonl)")
    runs, by_step = records(path)
    if not runs:
        raise ScalingError(f"{path}: no 'run' record (not a train.py log?)")
    run = runs[-1]
    evals = sorted((s, r) for (t, s), (_, r) in by_step.items() if t == 'eval' and
                   isinstance(r.get('val_loss'), (int, float)))
    trains = [r for (t, s), (_, r) in sorted(by_step.items(), key=lambda kv: kv[0][1]) if t == 'train']
    max_iters = (run.get('config') or {}).get('max_iters')
    rows = []
    if evals:
        step, last = evals[-1]
        rows.append(dict(what='val loss', measured=last['val_loss'], predicted=p.get('loss'),
                         interval=p.get('loss_interval'), note='' if step == max_iters else
                         f'unfinished: last eval at step {step} of {max_iters}'))
    half = trains[len(trains) // 2:]
    for what, fld, pred in (('tokens/s', 'tok_per_s', p.get('tokens_per_s')), ('MFU', 'mfu', p.get('mfu'))):
        vals = [r[fld] for r in half if isinstance(r.get(fld), (int, float))]
        meas = float(np.median(vals)) if vals else None
        rows.append(dict(what=what, measured=meas, predicted=pred,
                         interval=[pred * (1 - rtol), pred * (1 + rtol)] if pred else None, note=''))
    rows.append(dict(what='parameters', measured=run.get('n_params'), predicted=p['n_params'],
                     interval=[p['n_params'], p['n_params']], note=''))
    lines = [f"{path} against the plan ({p['law']}):"]
    for r in rows:
        if r['measured'] is None:
            r['inside'], verdict = None, 'not measured'
        elif not r['interval']:
            r['inside'], verdict = None, 'no interval in the plan'
        else:
            r['inside'] = bool(r['interval'][0] <= r['measured'] <= r['interval'][1])
            verdict = 'inside' if r['inside'] else 'OUTSIDE'
        fmt = (lambda v: f"{v:,.0f}") if r['what'] in ('tokens/s', 'parameters') else (lambda v: f"{v:.4g}")
        ival = f" [{fmt(r['interval'][0])}, {fmt(r['interval'][1])}]" if r['interval'] else ""
        lines.append(f"  {r['what']:<10} measured {fmt(r['measured']) if r['measured'] is not None else '-':>12}  "
                     f"predicted {fmt(r['predicted']) if r['predicted'] is not None else '-':>12}{ival}: {verdict}"
                     + (f" ({r['note']})" if r['note'] else ""))
    return rows, "\n".join(lines)
