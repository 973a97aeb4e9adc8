"""Tests for scaling.py bcrit and bcrit.py: Kaplan et al. 2020's B_crit(L) = B_star / L^(1/alpha_B) fitted to
synthetic 'noise' records planted from a known law (the estimator formulas themselves are tested with train.py)."""
import json
import math
import os

import numpy as np
import pytest

from pretrain.scaling import bcrit
from conftest import run_scaling_cli as run_cli

B_STAR, ALPHA_B = 2e8, 0.21  # Kaplan et al. 2020, eq. 5.3


def write_noise_log(out_dir, losses, B_simple, log_interval=10, extra=()):
    """A log.jsonl with a run record, train records and noise records as train.py --noise_scale=True writes them."""
    os.makedirs(out_dir, exist_ok=True)
    recs = [dict(type='run', n_params=1e6, n_params_nonembed=8e5, tokens_per_step=8192, config=dict(max_iters=0))]
    for i, (L, B) in enumerate(zip(losses, B_simple)):
        step = (i + 1) * log_interval
        recs.append(dict(type='train', step=step, tokens=step * 8192, flops=1.0, lr=1e-3, loss=L, dt=0.1,
                         tok_per_s=1e4, mfu=None))
        G2 = 1.0
        recs.append(dict(type='noise', step=step, tokens=step * 8192, loss=L, b_small=2048, b_big=8192,
                         g2_small=1.0, g2_big=0.5, G2=G2 if B is not None else -0.1,
                         S=B * G2 if B is not None else 1.0, B_simple=B))
    recs += list(extra)
    with open(os.path.join(out_dir, 'log.jsonl'), 'w') as f:
        f.write("".join(json.dumps(r) + "\n" for r in recs))


def planted_runs(root, seed=0, n=150, rho=0.6, sigma=0.25):
    """3 runs whose losses fall from ~4.5 to ~2.3, B_simple = the planted law times log-normal noise that is
    autocorrelated along each run (AR(1), correlation rho between neighbouring records: moving averages)."""
    rng = np.random.default_rng(seed)
    for r in range(3):
        L = np.geomspace(4.5 - 0.3 * r, 2.2 + 0.1 * r, n)
        e = np.zeros(n)
        for i in range(n):
            e[i] = (rho * e[i - 1] if i else 0) + rng.normal(0, sigma * math.sqrt(1 - rho ** 2))
        B = B_STAR / L ** (1 / ALPHA_B) * np.exp(e)
        write_noise_log(os.path.join(root, f"run{r}"), L, B)




def test_planted_law_recovered_within_its_block_bootstrap_interval(tmp_path, capsys):
    planted_runs(tmp_path)
    code, out, err = run_cli(['bcrit', str(tmp_path), '--bootstrap', '300', '--json', str(tmp_path / 'b.json')],
                             capsys)
    assert code == 0, err
    res = json.load(open(tmp_path / 'b.json'))['results']
    p, ci = res['params'], res['ci']
    assert res['n_points'] == 450 and res['n_runs'] == 3 and res['n_boot_ok'] == 300
    assert ci['B_star'][0] < B_STAR < ci['B_star'][1] and ci['alpha_B'][0] < ALPHA_B < ci['alpha_B'][1]
    assert p['alpha_B'] == pytest.approx(ALPHA_B, abs=0.01) and p['B_star'] == pytest.approx(B_STAR, rel=0.3)
    assert res['block_sizes'] == [15, 15, 15]  # default: each run in 10 contiguous blocks
    for row in res['table']:  # B_crit at a few losses across the data, each inside its interval
        assert row['B_crit_ci'][0] < row['B_crit'] < row['B_crit_ci'][1]
        assert row['B_crit'] == pytest.approx(B_STAR / row['loss'] ** (1 / ALPHA_B), rel=0.1)
    assert 'B_star' in out and 'alpha_B' in out and 'block bootstrap' in out and 'Kaplan' in out


def test_block_intervals_are_wider_than_point_intervals_on_autocorrelated_records(tmp_path):
    planted_runs(tmp_path, rho=0.9, seed=4)
    series, _ = bcrit.load_noise([str(tmp_path)])
    width = {}
    for block in (0, 1):
        s = bcrit.summarize(bcrit.fit(series, boot=300, block=block, seed=0))[0]
        width[block] = s['ci']['alpha_B'][1] - s['ci']['alpha_B'][0]
    assert width[0] > 1.5 * width[1]  # single points treat near-copies as independent evidence


def test_min_step_unusable_records_and_unknown_types(tmp_path, capsys):
    L = np.geomspace(4.0, 2.5, 40)
    B = [None if i < 3 else B_STAR / l ** (1 / ALPHA_B) for i, l in enumerate(L)]  # no estimate yet early on
    B[3] = -5.0  # S / G2 with a negative S: no estimate either
    write_noise_log(tmp_path / 'a', L, B, extra=[dict(type='hellaswag', step=400, tokens=1, flops=1, acc=0.3,
                                                      acc_norm=0.3, n=10), dict(type='something_new')])
    series, dropped = bcrit.load_noise([str(tmp_path / 'a')])
    assert dropped == 4 and len(series[0][1]) == 36
    series, dropped = bcrit.load_noise([str(tmp_path / 'a')], min_step=200)  # records at steps 10, 20, ..., 400
    assert dropped == 0 and len(series[0][1]) == 21
    p = bcrit.fit(series)['params']  # noise-free: exact
    assert p['B_star'] == pytest.approx(B_STAR, rel=1e-9) and p['alpha_B'] == pytest.approx(ALPHA_B, rel=1e-9)
    code, out, err = run_cli(['bcrit', str(tmp_path / 'a'), '--bootstrap', '0', '--losses', '3,2', '--json',
                              str(tmp_path / 'b.json')], capsys)
    assert code == 0 and '4 record(s) without a positive B_simple' in out
    table = json.load(open(tmp_path / 'b.json'))['results']['table']
    assert [row['loss'] for row in table] == [3, 2] and 'B_crit_ci' not in table[0]


def test_no_noise_records_gives_one_line(tmp_path, capsys):
    (tmp_path / 'r').mkdir()
    (tmp_path / 'r' / 'log.jsonl').write_text(json.dumps(dict(type='run', n_params=5)) + '\n')
    code, out, err = run_cli(['bcrit', str(tmp_path / 'r')], capsys)
    assert code == 1 and err.strip().split('\n')[-1].startswith('error: no noise records')
    assert 'noise_scale=True' in err and 'Traceback' not in err


def test_bcrit_plot(tmp_path, capsys):
    pytest.importorskip('matplotlib')
    planted_runs(tmp_path / 'runs', n=30)
    code, out, err = run_cli(['bcrit', str(tmp_path / 'runs'), '--bootstrap', '20', '--plots', str(tmp_path / 'f')],
                             capsys)
    assert code == 0, err
    assert open(tmp_path / 'f' / 'bcrit.png', 'rb').read(8) == b'\x89PNG\r\n\x1a\n'


def test_alpha_has_no_interval_when_the_slope_interval_contains_zero():
    """1/alpha_B is the fitted slope; when its interval straddles 0, {1/m} is two rays, not an interval: the report
    must say so instead of printing [1/m_hi, inf], an 'interval' that excludes its own point estimate."""
    boot = [dict(B_star=100.0, inv_alpha_B=m, alpha_B=1 / m) for m in np.linspace(-2, 1, 41)]
    res = dict(params=dict(B_star=100.0, inv_alpha_B=-0.5, alpha_B=-2.0), boot=boot, loss_range=[2.0, 3.0],
               n_points=40, n_runs=1, n_boot=41, block=0, block_sizes=[4])
    s, text = bcrit.summarize(res)
    assert s['ci']['alpha_B'] is None and 'no interval' in text
    boot = [dict(B_star=100.0, inv_alpha_B=m, alpha_B=1 / m) for m in np.linspace(2, 8, 41)]
    s, _ = bcrit.summarize({**res, 'boot': boot, 'params': dict(B_star=100.0, inv_alpha_B=4.0, alpha_B=0.25)})
    lo, hi = s['ci']['alpha_B']
    assert 1 / 8 < lo < 0.25 < hi < 1 / 2
