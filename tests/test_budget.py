"""Tests for the budget planner (pretrain/scaling/budget.py, `scaling.py budget`): the lectures' worked example,
Chinchilla's published tables, the Besiroglu et al. refit and its intervals against independent recomputations, a
fit file's intervals, a tiny CPU plan that train.py runs, --check, and bad input as one `error:` line."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import run_scaling_cli, word_corpus
from pretrain import configurator, hardware
from pretrain.checkpoint import model_config_from
from pretrain.data import write_json
from pretrain.scaling import budget, laws
from pretrain.scaling.sweep import TRAIN_PY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -----------------------------------------------------------------------------
# the arithmetic of compute and hardware

def test_lectures_worked_example():
    """256 A100s (312 TFLOP/s), a 7B model, 2048 x 4096-token batches at 12.7 s/step: 0.66M tokens/s, ~2,580 per
    GPU, MFU ~35% by 6N, 150B tokens in ~63 hours."""
    tokens_per_s = 2048 * 4096 / 12.7
    assert round(tokens_per_s / 1e6, 2) == 0.66 and abs(tokens_per_s / 256 - 2580) < 0.005 * 2580
    mfu = hardware.mfu(6 * 7e9, tokens_per_s, 312e12, 256)
    assert round(mfu, 2) == 0.35
    hours = budget.wall_hours(150e9, 256, 312e12, mfu, 6 * 7e9)
    assert abs(hours - 63) < 0.5
    # the same hours straight from the throughput: 150e9 tokens / (0.66M tokens/s)
    assert math.isclose(hours, 150e9 / tokens_per_s / 3600, rel_tol=1e-12)


# Hoffmann et al. 2022, Table 3 (approach 1) and Table A3 (approach 2): (N, FLOPs, tokens), as printed
@pytest.mark.parametrize('name,rows,a_published', [('chinchilla1', budget.CHINCHILLA_TABLE3, 0.50),
                                                   ('chinchilla2', budget.CHINCHILLA_TABLE_A3, 0.49)])
def test_chinchilla_tables_within_rounding(name, rows, a_published):
    law = budget.read_law(name)
    assert abs(law['law'][1] - a_published) < 0.005   # the exponent the paper prints (Table 2), to its 2 digits
    for i, (N, flops, tokens) in enumerate(rows):
        C = budget.invert(law, N, 0)                   # the compute at which N is optimal
        n_opt, d_opt, _ = budget.optimum(law, C)
        assert math.isclose(n_opt, N, rel_tol=1e-9)
        if i == budget.GOPHER_ROW:  # the table's 67B row is off its own power law (see budget.py): N_opt at its C
            assert abs(budget.optimum(law, flops)[0] / N - 1) < 0.04
            continue
        unit = 10 ** (math.floor(math.log10(flops)) - 2)   # FLOPs printed to 3 digits: 1.21e+20
        assert abs(C - flops) <= unit, (N, C, flops)
        unit = 0.1 * 10 ** (math.floor(math.log10(tokens)) // 3 * 3)  # 20.2 Billion, 1.5 Trillion: one decimal
        if name == 'chinchilla1':  # Table 3, the check: tokens within one printed unit too
            assert abs(d_opt - tokens) <= unit, (N, d_opt, tokens)
        else:  # Table A3's 292.0 Trillion has a 4th digit its 3-digit FLOPs (1.75e+28 / 6N = 291.7T) cannot pin down
            assert abs(d_opt - tokens) <= max(unit, 0.005 * tokens), (N, d_opt, tokens)


def test_besiroglu_closed_form_against_a_numerical_minimum():
    """N_opt from eq. 4 (laws.chinchilla_params) against a float64 golden-section minimum of L(N, C/6N) over log N,
    and the published exponent a = beta/(alpha+beta) = 0.5126 (Besiroglu et al. 2024)."""
    law = budget.read_law('besiroglu')
    p = budget.BESIROGLU
    assert abs(law['params']['a'] - 0.3658 / (0.3478 + 0.3658)) < 1e-12
    assert round(law['params']['a'], 4) == 0.5126
    for C in (1e18, 2.5e20, 1e24):
        L = lambda x: p['E'] + p['A'] / math.exp(x) ** p['alpha'] + p['B'] / (C / (6 * math.exp(x))) ** p['beta']
        lo, hi, g = math.log(1e3), math.log(1e15), (math.sqrt(5) - 1) / 2
        for _ in range(200):
            m1, m2 = hi - g * (hi - lo), lo + g * (hi - lo)
            lo, hi = (lo, m2) if L(m1) < L(m2) else (m1, hi)
        n_opt, d_opt, loss = budget.optimum(law, C)
        assert math.isclose(n_opt, math.exp(lo), rel_tol=1e-6)
        assert math.isclose(n_opt * d_opt * 6, C, rel_tol=1e-12)
        assert math.isclose(loss, L(lo), rel_tol=1e-9)


def test_besiroglu_covariance_reproduces_their_bootstrap():
    """The shipped covariance is positive definite and its draws give the standard errors of Besiroglu et al.'s
    released notebook (4,000 refits: A 124.52, E 0.02566, alpha 0.01540, beta 0.02060) within 10%; B is left out:
    its bootstrap distribution is heavier-tailed than a log-normal."""
    cov = np.array(budget.BESIROGLU_COV)
    np.linalg.cholesky(cov)
    p = budget.BESIROGLU
    th = np.random.default_rng(1).multivariate_normal(
        [math.log(p['A']), math.log(p['B']), math.log(p['E']), p['alpha'], p['beta']], cov, size=20000)
    se = dict(A=np.exp(th[:, 0]).std(), E=np.exp(th[:, 2]).std(), alpha=th[:, 3].std(), beta=th[:, 4].std())
    for k, published in dict(A=124.52, E=0.02566, alpha=0.01540, beta=0.02060).items():
        assert abs(se[k] / published - 1) < 0.10, (k, se[k], published)


def test_besiroglu_intervals_contain_the_point_and_are_narrow_where_the_data_are():
    law = budget.read_law('besiroglu')
    C = 1e21   # inside the range of Hoffmann et al.'s runs (up to ~1e22)
    n_opt, d_opt, _ = budget.optimum(law, C)
    N, D = n_opt, d_opt
    iv, note = budget.intervals(law, C, N, D)
    assert iv['params'][0] < n_opt < iv['params'][1] and iv['tokens'][0] < d_opt < iv['tokens'][1]
    loss = budget.loss_at(law, N, D)
    assert iv['loss'][0] < loss < iv['loss'][1]
    # independent draws would have made these intervals a factor of ~100 wide; the joint ones are within ~2x
    assert iv['params'][1] / iv['params'][0] < 2 and iv['tokens'][1] / iv['tokens'][0] < 2
    assert '4000 draws' in note


def test_fit_file_law_and_its_intervals(tmp_path):
    """A `scaling.py fit --json` file (made here by laws.summarize from a known approach-3 law and bootstrap
    refits): its optimum is laws.optimal's, and at a table budget the interval is the table's percentiles."""
    truth = laws.chinchilla_params([math.log(400.0), math.log(400.0), math.log(1.7), 0.34, 0.30])
    rng = np.random.default_rng(0)
    boot = [laws.chinchilla_params([math.log(400.0) + e, math.log(400.0), math.log(1.7), 0.34 + e / 20, 0.30])
            for e in rng.normal(0, 0.05, 50)]
    res = dict(method='approach3', params=truth, objective=0.0, n_points=30, n_starts=1, delta=1e-3,
               reduce='sum', n_boot=50, boot=boot)
    budgets = np.array([1e16, 1e17, 1e18])
    summary, _ = laws.summarize([res], budgets)
    path = tmp_path / 'fit.json'
    path.write_text(json.dumps(dict(options=dict(n='total'), results=summary)))
    law = budget.read_law(str(path))
    assert law['n'] == 'total' and law['name'].endswith(':approach3')
    n_opt, d_opt, loss = budget.optimum(law, 1e17)
    ref = laws.optimal(res, np.array([1e17]))
    assert math.isclose(n_opt, ref[0][0]) and math.isclose(d_opt, ref[1][0]) and math.isclose(loss, ref[2][0])
    iv, _ = budget.intervals(law, 1e17, n_opt, d_opt)
    sims = np.array([[float(v[0]) for v in laws.optimal(res, np.array([1e17]), b)] for b in boot])
    lo, hi = np.percentile(sims, [2.5, 97.5], axis=0)
    assert np.allclose(iv['params'], [lo[0], hi[0]]) and np.allclose(iv['tokens'], [lo[1], hi[1]])
    iv_mid, _ = budget.intervals(law, 3e17, n_opt, d_opt)   # between budgets: log-linear in between
    assert iv['params'][0] < iv_mid['params'][0] < summary[0]['table'][2]['N_opt_ci'][0]
    iv_out, note = budget.intervals(law, 1e20, n_opt, d_opt)  # outside the table: none, and the note says how
    assert iv_out == {} and '--budgets' in note


# -----------------------------------------------------------------------------
# plans

def test_gpu_hours_plan_spends_the_hours_and_is_compute_optimal():
    """8 H100s for 24 h at MFU 0.4: the plan's tokens fill the hours at the model's PaLM FLOPs per token, and its
    model is the shape nearest N_opt of the budget it spends."""
    p = budget.plan(gpu='H100', gpus=8, hours=24, mfu=0.4, vocab_size=50257)
    assert abs(p['hours'] / 24 - 1) < 0.01
    assert math.isclose(p['tokens_per_s'], 8 * 989.4e12 * 0.4 / p['flops_per_token'])
    assert math.isclose(p['compute'], 6 * p['params'] * p['tokens'])
    assert abs(math.log(p['params'] / p['params_opt'])) < 0.1
    assert p['batch_tokens'] == p['block_size'] * 8 * p['micro_batch'] * p['grad_accum']
    assert p['parallel'] == 'ddp' and p['memory']['total'] < 0.9 * 80 * 2 ** 30
    assert p['params_interval'][0] < p['params_opt'] < p['params_interval'][1]


def test_bench_record_gives_mfu_and_peak(tmp_path):
    """--bench: the record's PaLM-count MFU and its peak and GPU (whose name also gives the memory); the last line
    of a JSON-lines file."""
    rec = dict(bench='train', device_name='NVIDIA H100 80GB HBM3', peak_tflops_per_device=989.4,
               mfu=dict(palm=0.5, kaplan=0.45))
    path = tmp_path / 'bench.jsonl'
    path.write_text(json.dumps(dict(rec, mfu=dict(palm=0.1))) + '\n' + json.dumps(rec) + '\n')
    p = budget.plan(bench=str(path), gpus=8, hours=2, vocab_size=50257)
    assert p['mfu'] == 0.5 and p['peak_tflops'] == 989.4 and p['gpu_memory_gib'] == 80
    assert math.isclose(p['tokens_per_s'], 8 * 989.4e12 * 0.5 / p['flops_per_token'])
    write_json(str(path), dict(rec, mfu=dict(palm=0.25)))   # one record as bench.py --json=FILE writes it
    assert budget.plan(bench=str(path), gpus=8, hours=2, vocab_size=50257)['mfu'] == 0.25
    path.write_text(json.dumps(dict(rec, mfu=None)))
    with pytest.raises(budget.ScalingError, match='no MFU'):
        budget.plan(bench=str(path), gpus=8, hours=2, vocab_size=50257)


def test_kaplan_counts_non_embedding_parameters():
    p = budget.plan(compute=1e21, law='kaplan', vocab_size=50257)
    assert p['n_convention'] == 'nonembed' and p['params'] == p['n_params_nonembed'] < p['n_params']
    assert math.isclose(p['params_opt'], 1.3e9 * (1e21 / 8.64e19) ** 0.73)


def test_hparams_and_bcrit_files_set_batch_and_lr(tmp_path):
    hp = tmp_path / 'hp.json'
    hp.write_text(json.dumps(dict(options=dict(compute='6nd'), results=dict(lr=dict(k=2.0, s=-0.1),
                                                                              batch=dict(k=0.5, s=0.3)))))
    p = budget.plan(compute=1e19, hparams_file=str(hp), vocab_size=50257)
    assert p['learning_rate'] == float(f"{2.0 * 1e19 ** -0.1:.3g}")
    assert math.isclose(p['batch_target'], 0.5 * 1e19 ** 0.3)
    bc = tmp_path / 'bcrit.json'
    bc.write_text(json.dumps(dict(results=dict(params=dict(B_star=2e8, inv_alpha_B=1 / 0.21)))))
    p = budget.plan(compute=1e19, bcrit_file=str(bc), vocab_size=50257)
    assert math.isclose(p['batch_target'], 2e8 / p['loss'] ** (1 / 0.21))


@pytest.mark.parametrize('tuned_as', ['sp', 'mup'])
def test_a_mup_plan_takes_its_base_and_lr_from_a_tuned_run(tmp_path, tuned_as):
    """--parametrization with --tuned: the run's shape is the base (or, for a run that had a base, its base, to which
    its LR refers) and its peak LR is the plan's, not eta_opt(C); the config carries the fields and runs as muP."""
    model = dict(n_embd=128, n_layer=4, n_head=8, parametrization=tuned_as, base_n_layer=None, base_head_dim=None,
                 base_n_embd=64 if tuned_as == 'mup' else None)
    (tmp_path / 'run').mkdir()
    (tmp_path / 'run' / 'log.jsonl').write_text(json.dumps(dict(type='run', model=model,
                                                                config=dict(learning_rate=3e-3))) + '\n')
    p = budget.plan(compute=1e19, vocab_size=50257, parametrization='completep', tuned=str(tmp_path / 'run'))
    assert p['learning_rate'] == 3e-3 and 'tuned at n_embd' in p['lr_source']
    base = 64 if tuned_as == 'mup' else 128
    assert {k: p['model_knobs'][k] for k in ('parametrization', 'base_n_embd', 'base_n_layer', 'base_head_dim')} == \
        dict(parametrization='completep', base_n_embd=base, base_n_layer=4, base_head_dim=16)
    (tmp_path / 'c.py').write_text(budget.config_text(p, 'out-x'))
    c = model_config_from(configurator.read_config_file(str(tmp_path / 'c.py')), 50257)
    assert c.width_mult == p['n_embd'] / base and c.depth_mult == p['n_layer'] / 4
    q = budget.plan(compute=1e19, vocab_size=50257, parametrization='mup', base_lr=0.01, base_n_embd=256)
    assert q['learning_rate'] == 0.01 and q['model_knobs']['base_n_embd'] == 256
    assert q['model_knobs']['base_n_layer'] is None   # depth is CompleteP's


def test_written_config_uses_only_train_py_knobs(tmp_path):
    p = budget.plan(compute=1e19, base_config=os.path.join(ROOT, 'config', 'gpt2.py'), vocab_size=50257)
    text = budget.config_text(p, 'out-x')
    path = tmp_path / 'c.py'
    path.write_text(text)
    cfg = configurator.read_config_file(str(path))
    defaults = configurator.script_defaults(TRAIN_PY)
    assert set(cfg) <= set(defaults)
    assert cfg['pos_emb'] == 'learned' and cfg['pad_vocab_multiple'] == 64   # the base's model knobs, counted
    assert (cfg['n_layer'], cfg['n_embd'], cfg['max_iters']) == (p['n_layer'], p['n_embd'], p['steps'])


def test_memory_picks_the_cheapest_mode_that_fits_and_the_config_carries_it(tmp_path):
    """A 7B on 8 x 80 GiB: DDP's 16 bytes per parameter (104 GiB) fit at no micro-batch, with or without
    activation checkpointing; FSDP does, and the written config runs it. A model DDP holds stays on DDP."""
    from pretrain.accounting import train_memory
    p = budget.plan(params=7e9, tokens=140e9, gpu='H100', gpus=8, mfu=0.4, vocab_size=50257, block_size=4096,
                    aspect=128)
    assert p['parallel'] == 'fsdp' and p['memory']['total'] <= 0.9 * 80 * 2 ** 30
    conf = model_config_from({**p['model_knobs'], **{k: p[k] for k in ('n_layer', 'n_head', 'n_embd')},
                                     'block_size': 4096}, 50257)
    for ckpt in (False, True):
        assert train_memory(conf, 1, 8, 'ddp', ckpt)['total'] > 0.9 * 80 * 2 ** 30
    ckpt = p['activation_checkpointing']
    assert train_memory(conf, p['micro_batch'], 8, 'fsdp', ckpt) == p['memory']
    if p['micro_batch'] < 64:   # the largest micro-batch that fits: twice as many would not
        assert train_memory(conf, 2 * p['micro_batch'], 8, 'fsdp', ckpt)['total'] > 0.9 * 80 * 2 ** 30 \
            or 2 * p['micro_batch'] * 4096 * 8 > p['batch_target'] * 1.5
    text = budget.config_text(p, 'out-7b')
    (tmp_path / 'c.py').write_text(text)
    cfg = configurator.read_config_file(str(tmp_path / 'c.py'))
    assert (cfg['parallel'], cfg['activation_checkpointing']) == ('fsdp', ckpt)
    assert any("FSDP over 8 data-parallel ranks" in n for n in p["notes"]) and "needs sharding (FSDP)" in \
        budget.report(p)
    small = budget.plan(params=124e6, tokens=2.5e9, gpu='H100', gpus=8, mfu=0.4, vocab_size=50257)
    assert (small['parallel'], small['activation_checkpointing']) == ('ddp', False)


def test_a_layout_the_planner_writes_is_one_train_py_accepts():
    """Tensor parallelism splits the sequence too (sequence parallelism): at a block_size no degree divides, the
    planner splits the model into pipeline stages only, as train.py's check_layout would refuse anything else."""
    from types import SimpleNamespace
    from pretrain.parallel import check_layout
    for block_size in (1024, 1001):
        p = budget.plan(compute=2e23, gpu='H100', gpus=8, block_size=block_size)
        knobs = {**configurator.script_defaults(TRAIN_PY), **p['model_knobs'], 'block_size': block_size,
                 **{k: p[k] for k in ('n_layer', 'n_head', 'n_embd', 'tensor_parallel', 'pipeline_parallel')}}
        check_layout(SimpleNamespace(**{**knobs, 'parallel': 'fsdp', 'dtype': 'bfloat16'}), 8)
        assert (p['tensor_parallel'] > 1) == (block_size == 1024)


@pytest.fixture(scope='module')
def tiny_data(tmp_path_factory):
    return word_corpus(tmp_path_factory, 20, 40)


@pytest.mark.slow
def test_tiny_cpu_plan_trains_and_checks(tiny_data, tmp_path, capsys):
    """A plan for a tiny budget writes a config train.py runs unchanged; train.py's parameter count is the plan's;
    --check reads the run back against the saved plan."""
    cfg = tmp_path / 'tiny.py'
    code, out, err = run_scaling_cli(
        ['budget', '--params', '2e4', '--tokens', '2e4', '--block_size', '32', '--head_dim', '16', '--aspect', '16',
         '--max_micro_batch', '4', '--data_dir', tiny_data, '--out', str(cfg), '--out_dir',
         str(tmp_path / 'run')], capsys)
    assert code == 0, err
    plan = json.loads((tmp_path / 'tiny.plan.json').read_text())
    assert plan['vocab_size'] == 257 and 3 <= plan['steps'] <= 100
    r = subprocess.run([sys.executable, 'train.py', str(cfg), '--device=cpu', '--dtype=float32', '--eval_iters=2'],
                       cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"{plan['n_params'] / 1e6:.2f}M parameters ({plan['n_params_nonembed'] / 1e6:.2f}M non-embedding)" \
        in r.stdout
    run = json.loads(open(tmp_path / 'run' / 'log.jsonl').readline())
    assert run['n_params'] == plan['n_params'] and run['config']['max_iters'] == plan['steps']
    code, out, err = run_scaling_cli(['budget', '--check', str(tmp_path / 'run'), '--plan',
                                      str(tmp_path / 'tiny.plan.json')], capsys)
    assert code == 0, err
    assert 'parameters' in out and 'inside' in out and 'val loss' in out


def write_log(run_dir, n_params, val_loss, tok_s, mfu, max_iters=10):
    os.makedirs(run_dir, exist_ok=True)
    recs = [dict(type='run', n_params=n_params, config=dict(max_iters=max_iters))]
    recs += [dict(type='train', step=s, tok_per_s=tok_s, mfu=mfu, loss=3.0) for s in range(1, max_iters + 1)]
    recs += [dict(type='eval', step=max_iters, val_loss=val_loss, tokens=1000)]
    with open(os.path.join(run_dir, 'log.jsonl'), 'w') as f:
        f.write('\n'.join(json.dumps(r) for r in recs) + '\n')


def test_check_says_inside_or_outside(tmp_path):
    p = dict(law='x', loss=2.5, loss_interval=[2.4, 2.6], tokens_per_s=1000.0, mfu=0.4, n_params=123)
    write_log(tmp_path / 'a', 123, 2.55, 1050.0, 0.41)
    rows, text = budget.check(p, str(tmp_path / 'a'))
    assert [r['inside'] for r in rows] == [True, True, True, True]
    write_log(tmp_path / 'b', 124, 2.7, 800.0, 0.2, max_iters=10)
    rows, text = budget.check(p, str(tmp_path / 'b'))
    assert [r['inside'] for r in rows] == [False, False, False, False] and text.count('OUTSIDE') == 4


def test_check_without_a_saved_plan_plans_again(tmp_path, capsys):
    p = budget.plan(compute=1e19, vocab_size=50257)
    write_log(tmp_path / 'run', p['n_params'], 3.0, 1000.0, None)
    code, out, err = run_scaling_cli(['budget', '--check', str(tmp_path / 'run'), '--compute', '1e19',
                                      '--vocab_size', '50257', '--json', str(tmp_path / 'check.json')], capsys)
    assert code == 0, err
    rows = json.loads((tmp_path / 'check.json').read_text())['check']
    assert [(r['what'], r['inside']) for r in rows] == [('val loss', False), ('tokens/s', None), ('MFU', None),
                                                         ('parameters', True)]
    assert 'no interval in the plan' in out and 'not measured' in out


# -----------------------------------------------------------------------------
# bad input: one line, exit 1

@pytest.mark.parametrize('argv,words', [
    (['--gpu', 'Z9000', '--gpus', '8', '--hours', '24'], ['unknown GPU', '--peak_tflops']),
    (['--gpu', 'H100', '--gpus', '8', '--hours', '24', '--mfu', '1.5'], ['--mfu', '(0, 1]']),
    (['--gpu', 'H100', '--gpus', '8', '--hours', '24', '--mfu', '0'], ['--mfu', '(0, 1]']),
    (['--params', '1e9', '--tokens', '2e10', '--compute', '1e22'], ['over-specified']),
    (['--compute', '1e22', '--gpu', 'H100', '--gpus', '8', '--hours', '24', '--mfu', '0.4'], ['over-specified']),
    (['--compute', '1e20', '--law', 'HPARAMS'], ['not a `scaling.py fit --json` file']),
    (['--compute', '1e20', '--law', 'nonesuch'], ['neither a published law']),
    (['--gpus', '8'], ['not enough to plan']),
    (['--compute', '1e20', '--bcrit', 'BROKEN'], ['not valid JSON']),
    (['--compute', '1e20', '--law', 'BROKEN'], ['not valid JSON']),
    (['--compute', '1e20', '--parametrization', 'mup'], ['needs the base', '--tuned', '--base_lr']),
    (['--compute', '1e20', '--base_lr', '0.01'], ['are for --parametrization']),
    (['--compute', '1e20', '--parametrization', 'mup', '--tuned', 'NOWHERE'], ['no run log']),
    (['--compute', '1e20', '--parametrization', 'mup', '--base_lr', '-1', '--base_n_embd', '64'], ['--base_lr must']),
])
def test_bad_input_one_line(tmp_path, capsys, argv, words):
    hp = tmp_path / 'hp.json'
    hp.write_text(json.dumps(dict(options=dict(compute='6nd'), results=dict(lr=dict(k=2.0, s=-0.1)))))
    broken = tmp_path / 'broken.json'
    broken.write_text('{"results": [')   # cut short
    argv = [str(hp) if a == 'HPARAMS' else str(broken) if a == 'BROKEN' else a for a in argv]
    code, out, err = run_scaling_cli(['budget', '--vocab_size', '50257', *argv], capsys)
    assert code == 1 and err.count('\n') == 1 and err.startswith('error: '), err
    assert all(w in err for w in words), err
    assert 'Traceback' not in err
