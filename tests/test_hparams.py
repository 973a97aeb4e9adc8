"""Tests for scaling.py hparams and hparams.py: laws for the best learning rate and batch size, recovered from
synthetic sweep logs planted with known laws (DeepSeek LLM 2024's, sec. 3.1), and edge optima refused."""
import json
import math
import os

import numpy as np
import pytest

from pretrain.scaling import hparams
from pretrain.scaling import runlog
from conftest import run_scaling_cli as run_cli

ETA = (0.3118, -0.125)   # DeepSeek LLM: eta_opt = 0.3118 C^-0.125
BOPT = (0.292, 0.3271)   # DeepSeek LLM: B_opt = 0.292 C^0.3271 (tokens)
BUDGETS = (1e15, 1e16, 1e17, 1e18)


def write_run(out_dir, N, lr, B, steps, loss):
    """A finished train.py log.jsonl with the fields hparams reads: the run record's n_params, tokens_per_step,
    config.learning_rate and config.total_batch_size, and the final eval."""
    os.makedirs(out_dir, exist_ok=True)
    recs = [dict(type='run', n_params=N, n_params_nonembed=int(0.8 * N), flops_per_token=6 * N, tokens_per_step=B,
                 config=dict(learning_rate=lr, total_batch_size=B, max_iters=steps), model={}),
            dict(type='eval', step=steps // 2, tokens=steps // 2 * B, flops=1.0, val_loss=loss + 0.3),
            dict(type='eval', step=steps, tokens=steps * B, flops=6.0 * N * steps * B, val_loss=loss)]
    with open(os.path.join(out_dir, 'log.jsonl'), 'w') as f:
        f.write("".join(json.dumps(r) + "\n" for r in recs))


def write_sweep(root, lrs=7, batches=1, noise=0.002, seed=0, edge_budget=None):
    """Per budget a model of N = sqrt(C/120) (D = 20N) trained at `lrs` learning rates a factor 2 apart and `batches`
    batch sizes a factor 2 apart, each grid offset at random from the planted optima; final loss = L0(C) +
    0.02 ln(lr/eta_opt)^2 + 0.01 ln(B/B_opt)^2 + noise. edge_budget: that budget's lrs all lie below its optimum."""
    rng = np.random.default_rng(seed)
    for C in BUDGETS:
        N = math.sqrt(C / 120)
        eta, bopt = ETA[0] * C ** ETA[1], BOPT[0] * C ** BOPT[1]
        lr_grid = eta * 2.0 ** (np.arange(lrs) - (lrs - 1) / 2 + rng.uniform(-0.5, 0.5))
        if C == edge_budget:
            lr_grid = eta * 2.0 ** (np.arange(lrs) - lrs - 0.5)
        b_grid = bopt * 2.0 ** (np.arange(batches) - (batches - 1) / 2 + rng.uniform(-0.5, 0.5))
        if batches == 1:
            b_grid = np.array([2.0 ** round(math.log2(bopt))])
        for lr in lr_grid:
            for B in b_grid:
                B = int(round(B))
                steps = max(1, round(C / (6 * N * B)))
                loss = 10 * C ** -0.05 + 0.02 * math.log(lr / eta) ** 2 + 0.01 * math.log(B / bopt) ** 2
                write_run(os.path.join(root, f"C{C:g}_lr{lr:.4g}_B{B}"), N, float(f'{lr:.6g}'), B, steps,
                          loss + rng.normal(0, noise))




def test_learning_rate_law_recovered_within_its_interval(tmp_path):
    write_sweep(tmp_path)
    res = hparams.fit(runlog.load([str(tmp_path)]), boot=200, seed=1)
    assert res['batch'] is None  # one batch size per budget: no batch law
    summary, text = hparams.summarize(res)
    lr = summary['lr']
    assert len(lr['optima']) == 4 and not lr['notes']
    for f in lr['optima']:  # each budget's vertex near the planted optimum
        assert f['opt'] == pytest.approx(ETA[0] * f['C'] ** ETA[1], rel=0.1)
    (k_lo, k_hi), (s_lo, s_hi) = lr['ci']['k'], lr['ci']['s']
    assert k_lo < ETA[0] < k_hi and s_lo < ETA[1] < s_hi  # the truth inside the 95% bootstrap intervals
    assert lr['s'] == pytest.approx(ETA[1], abs=0.02) and s_hi - s_lo < 0.05
    assert 'eta_opt(C) = k C^s' in text and 'DeepSeek' in text


def test_batch_size_law_recovered_within_its_interval(tmp_path):
    write_sweep(tmp_path, lrs=1, batches=7, seed=3)
    res = hparams.fit(runlog.load([str(tmp_path)]), boot=200, seed=1)
    assert res['lr'] is None
    b = hparams.summarize(res)[0]['batch']
    assert len(b['optima']) == 4
    (k_lo, k_hi), (s_lo, s_hi) = b['ci']['k'], b['ci']['s']
    assert k_lo < BOPT[0] < k_hi and s_lo < BOPT[1] < s_hi
    assert b['s'] == pytest.approx(BOPT[1], abs=0.03)


def test_both_knobs_on_a_grid(tmp_path):
    # lr x batch grid per budget: each parabola runs through the slice of the grid at the best run's other knob
    write_sweep(tmp_path, lrs=5, batches=5, noise=0.001, seed=5)
    res = hparams.fit(runlog.load([str(tmp_path)]))
    assert len(res['lr']['optima']) == len(res['batch']['optima']) == 4
    assert all(f['runs'] == 5 for f in res['lr']['optima'] + res['batch']['optima'])  # one slice of the 5 x 5
    assert res['lr']['s'] == pytest.approx(ETA[1], abs=0.03) and res['batch']['s'] == pytest.approx(BOPT[1], abs=0.03)


def test_edge_optimum_is_refused_with_a_message(tmp_path, capsys):
    write_sweep(tmp_path, edge_budget=1e17)  # at 1e17 every swept lr is below the optimum: the best is the largest
    code, out, err = run_cli(['hparams', str(tmp_path), '--bootstrap', '20', '--json', str(tmp_path / 'law.json')],
                             capsys)
    assert code == 0, err
    assert 'budget C=1e+17 (7 runs) refused: lowest loss at the largest swept learning rate' in out
    assert 'add larger learning rates' in out
    law = json.load(open(tmp_path / 'law.json'))['results']['lr']
    assert [round(math.log10(f['C'])) for f in law['optima']] == [15, 16, 18]
    k, s = hparams.read_lr_law(str(tmp_path / 'law.json'))  # what plan --lr_law reads
    assert (k, s) == (law['k'], law['s']) and s == pytest.approx(ETA[1], abs=0.03)


def test_vertex_refusals():
    x = np.array([1e-3, 2e-3, 4e-3, 8e-3])
    assert 'smallest' in hparams.vertex(x, np.array([1.0, 1.1, 1.2, 1.3]), 'learning rate')
    assert 'only 2 distinct' in hparams.vertex(x[:2], np.array([1.0, 1.1]), 'learning rate')
    wide = np.exp(np.arange(6.0))  # lowest loss inside, but the losses bend down: no minimum to trust
    assert 'opens downward' in hparams.vertex(wide, np.array([1.0, 1.0, 0.99, 1.0, 0.9, 0.91]), 'learning rate')
    assert 'lies outside the swept range' in hparams.vertex(wide, np.array([1.0, 0.95, 1.5, 2.0, 2.6, 3.3]),
                                                            'learning rate')  # lowest inside, vertex below
    opt, L = hparams.vertex(x, 1 + 0.02 * np.log(x / 3e-3) ** 2, 'learning rate')
    assert opt == pytest.approx(3e-3, rel=1e-6) and L == pytest.approx(1.0)


def test_too_few_budgets_and_csv_points_give_one_line(tmp_path, capsys):
    write_sweep(tmp_path / 'one')  # then only one budget left
    for C in (1e15, 1e16, 1e17):
        for d in (tmp_path / 'one').glob(f"C{C:g}_*"):
            (d / 'log.jsonl').unlink()
            d.rmdir()
    code, out, err = run_cli(['hparams', str(tmp_path / 'one'), '--bootstrap', '0'], capsys)
    assert code == 1 and 'needs 2+ budgets with an interior optimum, got 1' in err and err.count('\n') == 1
    (tmp_path / 'p.csv').write_text("N,D,loss\n1e6,1e9,3.0\n2e6,1e9,2.9\n")
    code, out, err = run_cli(['hparams', str(tmp_path / 'p.csv')], capsys)
    assert code == 1 and 'config.learning_rate' in err and err.count('\n') == 1
