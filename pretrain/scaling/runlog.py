"""
Reading what the scaling-law fits take as input: train.py's run logs (<out_dir>/log.jsonl, one JSON record per line,
fields in DESIGN.md) and CSV points. Readers ignore record types they do not use, so new types never break them;
steps replayed after a resume appear twice, and the LAST record per (type, step) wins. Bad input is a ScalingError
naming the file (and line).
"""
import csv
import json
import math
import os
import sys
from dataclasses import dataclass, field

import numpy as np


LOG_NAME = 'log.jsonl'   # a run's log in its out_dir: train.py writes it, every reader finds it by this name


class ScalingError(Exception):
    """Bad input or an impossible fit: one line for the user, no traceback."""


def warn(msg):
    print(f"warning: {msg}", file=sys.stderr)


def read_json(path, hint=''):
    """A JSON object from a file (a fit, a plan, meta.json); anything else is one ScalingError line, + hint."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except ValueError as e:
        raise ScalingError(f"{path}: not valid JSON ({e}){hint}") from None
    if not isinstance(doc, dict):
        raise ScalingError(f"{path}: not a JSON object{hint}")
    return doc


@dataclass
class Run:
    name: str
    N: float            # parameters (total, or non-embedding with --n nonembed)
    D: np.ndarray       # tokens seen at each point of the curve, ascending, > 0
    C: np.ndarray       # compute at each point
    L: np.ndarray       # loss at each point; the last point is the run's final loss
    budget: float = 0.0  # the FLOP budget it was planned for: 6 * total N * final D (or a CSV's C column)
    record: dict = field(default_factory=dict)  # the log's 'run' record (config, tokens_per_step, ...); {} for CSV


STEP_TYPES = ('train', 'eval', 'noise')   # keyed by step; every other type but 'run' is ignored


def records(path):
    """The log's 'run' records and {(type, step): (line number, record)} for STEP_TYPES."""
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
        elif rec['type'] in STEP_TYPES:
            if 'step' not in rec:
                raise ScalingError(f"{path}:{i + 1}: {rec['type']} record without 'step'")
            by_step[(rec['type'], rec['step'])] = (i + 1, rec)
    return runs, by_step


def log_path(path):
    return os.path.join(path, LOG_NAME) if os.path.isdir(path) else path


def is_stable_run(record):
    """A WSD run without a cooldown: the stable trunk of a branched sweep (sweep.py), whose loss is not a finished
    run's; the fits leave it out, the cooldown branches from its checkpoints are the points."""
    cfg = record.get('config') or {}
    return cfg.get('schedule') == 'wsd' and cfg.get('cooldown_iters') == 0


def load_log(path, n='total', compute='6nd', loss='val'):
    """One run from <dir>/log.jsonl -> (Run, finished). ScalingError names the file and line of any bad field."""
    path = log_path(path)
    runs, by_step = records(path)
    if not runs:
        raise ScalingError(f"{path}: no 'run' record (not a train.py log?)")
    key = {'total': 'n_params', 'nonembed': 'n_params_nonembed'}[n]
    N = runs[-1].get(key)
    if not isinstance(N, (int, float)) or not N > 0:
        raise ScalingError(f"{path}: the 'run' record lacks a positive '{key}'")
    kind, fld = ('eval', 'val_loss') if loss == 'val' else ('train', 'loss')
    pts = sorted((step, ln, r) for (t, step), (ln, r) in by_step.items() if t == kind)
    D, C, L = [], [], []
    for step, ln, r in pts:
        for k in ('tokens', fld) + (('flops',) if compute == 'logged' else ()):
            if not isinstance(r.get(k), (int, float)):
                raise ScalingError(f"{path}:{ln}: {kind} record at step {step} lacks a number '{k}'")
        if not (math.isfinite(r[fld]) and r[fld] > 0):
            raise ScalingError(f"{path}:{ln}: {fld} is {r[fld]} at step {step} (a diverged run? leave it out "
                               f"or pass --skip_bad)")
        if r['tokens'] > 0:
            D.append(r['tokens'])
            C.append(r['flops'] if compute == 'logged' else 6.0 * N * r['tokens'])
            L.append(r[fld])
    if not D:
        raise ScalingError(f"{path}: no {kind} records after step 0")
    max_iters = (runs[-1].get('config') or {}).get('max_iters')
    finished = max_iters is None or ('eval', max_iters) in by_step
    name = os.path.basename(os.path.dirname(os.path.abspath(path)))
    budget = 6.0 * runs[-1]['n_params'] * D[-1] if isinstance(runs[-1].get('n_params'), (int, float)) else C[-1]
    return Run(name, float(N), *(np.array(v, float) for v in (D, C, L)), budget, runs[-1]), finished


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


def log_files(p):
    """A run dir, a log.jsonl, or a sweep dir (its subdirectories holding log.jsonl) -> the run paths in it."""
    if os.path.isdir(p) and not os.path.exists(os.path.join(p, LOG_NAME)):
        subs = sorted(os.path.join(p, d) for d in os.listdir(p) if os.path.isfile(os.path.join(p, d, LOG_NAME)))
        if not subs:
            raise ScalingError(f"{p}: no {LOG_NAME} in it or in its subdirectories")
        return subs
    if os.path.exists(p):
        return [p]
    raise ScalingError(f"{p}: no such file or directory")


def load(inputs, n='total', compute='6nd', loss='val', skip_bad=False, include_unfinished=False,
         include_stable=False):
    """Run dirs, log.jsonl files, sweep dirs (subdirs holding log.jsonl) and CSV files -> list of Run.
    Unfinished runs and the stable trunks of branched sweeps (is_stable_run) are left out with a one-line note."""
    runs = []
    for p in inputs:
        if p.endswith('.csv'):
            runs += load_csv(p)
            continue
        for s in log_files(p):
            try:
                run, finished = load_log(s, n, compute, loss)
            except ScalingError as e:
                if not skip_bad:
                    raise
                warn(f"skipped: {e}")
                continue
            if is_stable_run(run.record) and not include_stable:
                print(f"note: {s}: a WSD stable run (cooldown_iters=0) left out; its cooldown branches are the "
                      f"points (--include_stable keeps it)", file=sys.stderr)
                continue
            if not finished and not include_unfinished:
                warn(f"{s}: unfinished (no eval at max_iters), left out")
                continue
            runs.append(run)
    if len(runs) < 2:
        raise ScalingError(f"a scaling law needs at least 2 finished runs, got {len(runs)}")
    return runs


def final_points(runs):   # -> arrays D, C, L, N
    return tuple(np.array([getattr(r, k)[-1] for r in runs]) for k in 'DCL') + (np.array([r.N for r in runs]),)


def all_points(runs):
    D, C, L = (np.concatenate([getattr(r, k) for r in runs]) for k in 'DCL')
    return D, C, L, np.concatenate([np.full(len(r.D), r.N) for r in runs])


def noise_records(path, min_step=0):
    """A log's 'noise' records (train.py --noise_scale=True), step >= min_step, in step order -> (run name, list
    of records). Each has step, tokens, loss, b_small, b_big, g2_small, g2_big, G2, S and B_simple = S / G2."""
    path = log_path(path)
    _, by_step = records(path)
    out = []
    for (t, step), (ln, r) in sorted(by_step.items(), key=lambda kv: kv[0][1]):
        if t != 'noise' or step < min_step:
            continue
        # B_simple may be null (or negative) while the G2 estimate is not yet positive: bcrit.py drops those
        if not isinstance(r.get('loss'), (int, float)) or 'B_simple' not in r \
                or not isinstance(r['B_simple'], (int, float, type(None))):
            raise ScalingError(f"{path}:{ln}: noise record at step {step} needs a number 'loss' and 'B_simple'")
        out.append(r)
    return os.path.basename(os.path.dirname(os.path.abspath(path))), out
