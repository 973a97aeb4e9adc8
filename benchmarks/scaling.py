"""
Strong and weak scaling over process counts: bench.py under torchrun at each count, DDP and FSDP side by side (DDP
alone when the knobs rule FSDP out: parallel.check_split), one table or one JSON object. Data parallelism only.

    python -m benchmarks.scaling                                 # the quick start at 1 and 2 processes (gloo on CPU)
    python -m benchmarks.scaling config/gpt2.py --nprocs=1,2,4,8 --json=-

Every other argument is bench.py's (a config file, train.py's and bench.py's knobs). Strong scaling keeps the global
batch: speed-up = t_1 / t_N, efficiency = speed-up / N. Weak scaling keeps each process's batch: efficiency = t_1 /
t_N (ideal: constant step time), scaled speed-up = N * t_1 / t_N (the throughput ratio). With a smallest count n0 >
1, N is read as N / n0; each mode against its own base. One torchrun launch per count and mode times both (back to
back, so background load hits them alike: bench.py's scaling_totals).
"""
import json
import math
import os
import subprocess
import sys
import time
from types import SimpleNamespace

from pretrain.cli import cli
from pretrain.configurator import ConfigError, parse_config, script_defaults
from pretrain.data import json_output
from pretrain.parallel import check_split

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_PY = os.path.join(ROOT, 'bench.py')


def parse_nprocs(value):
    """1 | (1, 2) | '1,2' -> sorted list of distinct process counts."""
    items = value.split(',') if isinstance(value, str) else value if isinstance(value, (tuple, list)) else [value]
    try:
        counts = sorted({int(x) for x in items if str(x).strip()})
    except (TypeError, ValueError):
        counts = []
    if not counts or counts[0] < 1 or any(isinstance(x, (bool, float)) for x in items):
        raise ConfigError(f"nprocs must be process counts like 1,2 or 1,2,4,8; got {value!r}")
    return counts


def run_worker(n, argv, totals):
    """Time each tokens/step value in `totals` with n processes under torchrun -> rank 0's JSON record."""
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={n}', BENCH_PY, *argv,
           '--json=-', '--phases=False', '--sample_tokens=0', '--grad_accum=None',
           f'--scaling_totals={tuple(totals)!r}']
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    records = [line for line in proc.stdout.splitlines() if line.startswith('{')]
    if proc.returncode or not records:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        why = next((ln for ln in reversed(lines) if ln.startswith('error:')), lines[-1] if lines else 'no output')
        raise ConfigError(f"the run with {n} process(es) failed (exit {proc.returncode}): {why}")
    return json.loads(records[-1])


def scaling(cfg, argv, counts):
    if cfg['tensor_parallel'] * cfg['pipeline_parallel'] > 1:
        raise ConfigError("the sweep times data parallelism (DDP, FSDP): leave tensor_parallel and pipeline_parallel at 1")
    modes, fsdp_skipped = ['ddp', 'fsdp'], None
    try:
        check_split(SimpleNamespace(**cfg), "parallel='fsdp'")
    except ConfigError as e:
        modes, fsdp_skipped = ['ddp'], str(e)
    B, T, ga = cfg['batch_size'], cfg['block_size'], cfg['grad_accum']
    per_proc = B * T * ga if ga is not None else cfg['total_batch_size']
    # strong: the largest count takes as many micro-steps per process as every count does in the weak runs
    strong_total = per_proc * math.lcm(*counts) if ga is not None else cfg['total_batch_size']
    out = {'strong': [], 'weak': []}
    for parallel in modes:
        for n in counts:
            totals = {'strong': strong_total, 'weak': per_proc * n}
            for kind, total in totals.items():
                if total % (B * T * n):
                    raise ConfigError(f"{kind} scaling: {total} tokens/step do not split over {n} processes of "
                                      f"{B}x{T}; use grad_accum or a total_batch_size divisible by it")
            r = run_worker(n, [*argv, f'--parallel={parallel}'], list(totals.values()))
            for kind, run in zip(totals, r.pop('scaling_runs')):
                out[kind].append({'parallel': parallel, 'nprocs': n, 'threads_per_proc': r['threads'],
                                  'world_size': r['world_size'], 'tokens_per_step': run['tokens_per_step'],
                                  'grad_accum': run['grad_accum'], 'step_time_s': run['step_time_s']['median'],
                                  'spread': run['step_time_s']['spread'], 'tokens_per_s': run['tokens_per_s'],
                                  'mfu': run['mfu']})
    for kind, rows in out.items():
        for parallel in modes:
            mine = [row for row in rows if row['parallel'] == parallel]
            n0, t0 = mine[0]['nprocs'], mine[0]['step_time_s']
            for row in mine:
                k = row['nprocs'] / n0
                if kind == 'strong':
                    row['speedup'] = t0 / row['step_time_s']
                    row['efficiency'] = row['speedup'] / k
                else:
                    row['efficiency'] = t0 / row['step_time_s']
                    row['speedup'] = k * row['efficiency']
    return {'bench': 'scaling', 'time': time.time(), 'torch': r['torch'], 'device': r['device'],
            'device_name': r['device_name'], 'dtype': r['dtype'], 'model': r['model'], 'data': r['data'],
            'batch_size': B, 'block_size': T, 'nprocs': counts, 'base_nprocs': counts[0], 'parallel': modes,
            'fsdp_skipped': fsdp_skipped, 'warmup_steps': r['warmup_steps'], 'timed_steps': r['timed_steps'],
            'repeats': r['repeats'], 'peak_source': r['peak_source'],
            'definitions': {'strong': 'global batch fixed; speedup = t1/tN, efficiency = speedup/N',
                            'weak': 'per-process batch fixed; efficiency = t1/tN, speedup = N*t1/tN'},
            **out}


def format_scaling(r):
    m = r['model']
    lines = [f"scaling    {m['n_params'] / 1e6:.2f}M-parameter model, {r['batch_size']} x {r['block_size']} per "
             f"micro-step, on {r['device_name']} ({r['dtype']}), processes {','.join(map(str, r['nprocs']))} "
             f"under torchrun; base N={r['base_nprocs']}"]
    for mode, title, sp, ef in (('strong', 'strong scaling: global batch fixed', 'speed-up t1/tN', 'efficiency'),
                                ('weak', 'weak scaling: per-process batch fixed', 'speed-up N*t1/tN',
                                 'efficiency t1/tN')):
        lines += ["", title,
                  f"  {'mode':<5} {'procs':>5} {'threads':>7} {'tokens/step':>11} {'accum':>5} {'step time':>12} "
                  f"{'spread':>6} {'tokens/s':>10} {sp:>16} {ef:>16}"]
        for row in r[mode]:
            lines.append(f"  {row['parallel']:<5} {row['nprocs']:>5} {row['threads_per_proc']:>7} "
                         f"{row['tokens_per_step']:>11,} {row['grad_accum']:>5} {1e3 * row['step_time_s']:>9.1f} ms "
                         f"{100 * row['spread']:>5.1f}% {row['tokens_per_s']:>10,.0f} {row['speedup']:>16.2f} "
                         f"{100 * row['efficiency']:>15.0f}%")
    if r['fsdp_skipped']:
        lines += ["", f"fsdp not timed: {r['fsdp_skipped']}"]
    return "\n".join(lines)


def main(argv):
    def run():
        defaults = {**script_defaults(os.path.join(ROOT, 'train.py')), **script_defaults(BENCH_PY), 'nprocs': None}
        cfg = parse_config(argv, defaults, __doc__, nullable=('grad_accum',))
        counts = parse_nprocs(cfg['nprocs'] or '1,2')
        rest = [a for a in argv if not a.startswith(('--nprocs=', '--json'))]   # the workers' own knobs
        with json_output(cfg['json']) as emit:   # --json=FILE, or - for stdout (the table then goes to stderr)
            record = scaling(cfg, rest, counts)
            print(format_scaling(record))
            emit(record)
        return record
    return cli(run, ConfigError)


if __name__ == '__main__':
    main(sys.argv[1:])
