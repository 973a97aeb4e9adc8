"""Tests for scaling.py plan and its library sweep.py: plain and branched (WSD cooldown) IsoFLOP plans, their
train.py command lines, bad input, and running a plan (resumable, in parallel, branches after their stable run)
with a fake train.py."""
import json
import math
import os
import shlex

import pytest

from pretrain import accounting
from pretrain import configurator
from pretrain.scaling import runlog
import scaling
from pretrain.scaling import sweep
from conftest import run_scaling_cli as run_cli

TRAIN_PY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'train.py')


def parse_train_args(args):
    """A planned command line as train.py reads it: its knobs (read from train.py, not imported), then the args."""
    return configurator.parse_config(args, configurator.script_defaults(TRAIN_PY))


def built_model(args, vocab_size=257):
    """The GPTConfig train.py builds from a planned command line."""
    from pretrain.checkpoint import model_config_from
    return model_config_from(parse_train_args(args), vocab_size)




# -----------------------------------------------------------------------------
# plain IsoFLOP plans

def test_plan_spans_the_optimum_and_its_commands_parse_in_train_py(tmp_path):
    pytest.importorskip('model')
    (tmp_path / 'meta.json').write_text(json.dumps(dict(vocab_size=257, train=dict(tokens=5_000_000))))
    rows = sweep.plan([1e13, 1e14], sizes=5, span=10, data_dir=str(tmp_path), out_root=str(tmp_path / 'sweep'))
    assert len(rows) == 10
    for C in (1e13, 1e14):
        mine = [r for r in rows if r['budget'] == C]
        Ns = [r['N'] for r in mine]
        assert Ns == sorted(Ns) and len(set(Ns)) == 5
        assert min(Ns) < math.sqrt(C / 120) < max(Ns) and max(Ns) / min(Ns) > 5  # around D = 20 N
        for r in mine:
            c = r['config']  # N is the count of the model train.py builds from the run's command line
            built = built_model(r['args'])
            assert r['N'] == accounting.count_params(built)['n_params'] and c['n_embd'] == 16 * c['n_head']
            assert r['D'] == c['max_iters'] * 8192 and r['C'] == pytest.approx(C, rel=0.5 / c['max_iters'] + 1e-9)
            assert c['warmup_iters'] == max(1, round(0.05 * c['max_iters'])) and c['lr_decay_iters'] == c['max_iters']
            assert r['epochs'] == pytest.approx(r['D'] / 5e6)
    cfg = parse_train_args(rows[0]['args'])  # every knob exists and every value parses
    assert {k: cfg[k] for k in rows[0]['config']} == rows[0]['config']
    # model fields in --train_args change the count (train.py's default is RoPE: no position embeddings)
    for r in sweep.plan([1e13], sizes=5, span=10, data_dir=str(tmp_path), out_root=str(tmp_path / 'sweep'),
                    train_args="--pos_emb=learned"):
        built = built_model(r['args'])
        assert built.pos_emb == 'learned' and r['N'] == accounting.count_params(built)['n_params']
    # grouped-query attention: heads come in multiples of the key/value heads, so train.py builds every model
    for r in sweep.plan([1e13], sizes=5, span=10, data_dir=str(tmp_path), out_root=str(tmp_path / 'sweep'),
                        train_args="--n_kv_head=4"):
        built = built_model(r['args'])
        assert built.n_kv_head == 4 and built.n_head % 4 == 0 and built.n_embd == 16 * built.n_head
        assert r['N'] == accounting.count_params(built)['n_params']


FAKE_TRAIN = r'''
import json, os, sys, time
cfg = dict(a[2:].split('=', 1) for a in sys.argv[1:])
cfg = {k: eval(v) if v[:1] in "'0123456789" or v in ('None', 'True', 'False') else v for k, v in cfg.items()}
out = cfg['out_dir']
root = os.path.dirname(out)
os.makedirs(out, exist_ok=True)
own = os.path.exists(os.path.join(out, 'ckpt.pt'))
with open(os.path.join(root, 'calls.txt'), 'a') as f:
    f.write(os.path.basename(out) + ' ' + cfg.get('init_from', 'scratch') + '\n')
with open(os.path.join(root, 'threads.txt'), 'a') as f:
    f.write(os.environ.get('OMP_NUM_THREADS', '-') + '\n')
print('training', out)
if os.path.exists(os.path.join(root, 'FAIL')):
    sys.exit(3)
source = 'own' if own or not cfg.get('branch_from') else cfg['branch_from']
if source != 'own' and not os.path.exists(source):  # as train.py: a branch needs its parent's checkpoint
    sys.exit(4)
with open(os.path.join(root, 'order.txt'), 'a') as f:
    f.write(f"start {os.path.basename(out)} {time.time()!r} {os.path.basename(source)}\n")
time.sleep(float(os.environ.get('FAKE_SLEEP', '0')) if out.endswith('_stable') else 0)
if cfg.get('keep_checkpoints') == 0:  # every checkpoint kept as ckpt_<step>.pt
    for s in range(cfg['checkpoint_interval'], cfg['max_iters'] + 1, cfg['checkpoint_interval']):
        open(os.path.join(out, f'ckpt_{s:06d}.pt'), 'w').write('x')
open(os.path.join(out, 'ckpt.pt'), 'w').write('x')
with open(os.path.join(out, 'log.jsonl'), 'a') as f:
    f.write(json.dumps(dict(type='run', n_params=1000, n_params_nonembed=900, config=cfg,
                            model=dict(n_layer=cfg['n_layer'], n_head=cfg['n_head'], n_embd=cfg['n_embd']))) + '\n')
    f.write(json.dumps(dict(type='eval', step=cfg['max_iters'], tokens=cfg['max_iters'], flops=1,
                            val_loss=2.0)) + '\n')
with open(os.path.join(root, 'order.txt'), 'a') as f:
    f.write(f"end {os.path.basename(out)} {time.time()!r}\n")
'''


def test_plan_run_skips_finished_runs_and_resumes_interrupted_ones(tmp_path, capsys):
    pytest.importorskip('model')
    (tmp_path / 'train_fake.py').write_text(FAKE_TRAIN)
    root = tmp_path / 'sweep'
    argv = ['plan', '--budgets', '1e13,3e13', '--sizes', '3', '--vocab_size', '257', '--out_root', str(root),
            '--run', '--train_script', str(tmp_path / 'train_fake.py')]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    calls = (root / 'calls.txt').read_text().split('\n')[:-1]
    assert len(calls) == 6 and all(c.endswith('scratch') for c in calls)
    assert out.count('python train.py ') == 6 and out.count(': starting') == 6
    # interrupt one run: its log loses the final eval, a checkpoint is left behind
    name = calls[2].split()[0]
    log = root / name / 'log.jsonl'
    log.write_text(log.read_text().split('\n')[0] + '\n')
    (root / name / 'ckpt.pt').write_bytes(b'x')
    code, out, err = run_cli(argv, capsys)
    assert code == 0 and out.count('finished, skipped') == 5
    assert (root / 'calls.txt').read_text().split('\n')[-2] == f"{name} resume"
    (root / 'FAIL').write_text('')
    log.write_text(log.read_text().split('\n')[0] + '\n')
    code, out, err = run_cli(argv, capsys)
    assert code == 1 and 'exited with status 3' in err
    other = json.loads((root / calls[0].split()[0] / 'log.jsonl').read_text().split('\n')[0])
    other['model']['n_layer'] += 1  # a directory holding another shape is never reused
    (root / calls[0].split()[0] / 'log.jsonl').write_text(json.dumps(other) + '\n')
    code, out, err = run_cli(argv, capsys)
    assert code == 1 and 'holds a different run' in err and 'n_layer' in err


def test_plan_run_jobs_runs_everything_in_parallel(tmp_path, capsys, monkeypatch):
    pytest.importorskip('model')
    monkeypatch.setattr(sweep.os, 'cpu_count', lambda: 4)
    (tmp_path / 'train_fake.py').write_text(FAKE_TRAIN)
    root = tmp_path / 'sweep'
    argv = ['plan', '--budgets', '1e13,3e13', '--sizes', '3', '--vocab_size', '257', '--out_root', str(root),
            '--run', '--jobs', '2', '--train_script', str(tmp_path / 'train_fake.py')]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    calls = sorted((root / 'calls.txt').read_text().split())
    assert len(calls) == 12 and calls.count('scratch') == 6  # every run once
    assert set((root / 'threads.txt').read_text().split()) == {'2'}  # 4 cores / 2 jobs
    assert out.count(': finished') == 6
    for d in (p for p in root.iterdir() if p.is_dir()):
        assert 'training' in (d / 'console.log').read_text()  # each run's console went to its own file
    code, out, err = run_cli(argv, capsys)
    assert code == 0 and out.count('finished, skipped') == 6


def test_plan_rejects_bad_settings(tmp_path, capsys):
    pytest.importorskip('model')
    code, _, err = run_cli(['plan', '--budgets', '1e13', '--data_dir', str(tmp_path)], capsys)
    assert code == 1 and 'vocab_size' in err
    code, _, err = run_cli(['plan', '--budgets', '1e13', '--vocab_size', '257', '--total_batch_size', '1000'], capsys)
    assert code == 1 and 'not a multiple' in err
    code, _, err = run_cli(['plan', '--budgets', '1e9', '--vocab_size', '257'], capsys)
    assert code == 1 and 'steps' in err
    code, _, err = run_cli(['plan', '--budgets', '1e13', '--vocab_size', '257', '--span', '1'], capsys)
    assert code == 1 and '--span > 1' in err
    with pytest.raises(SystemExit):
        scaling.main(['plan', '--budgets', 'abc'])
    assert 'comma-separated numbers' in capsys.readouterr().err


def test_lr_points_power_law():
    """--lr_points: the peak LR of each run follows the power law through the measured optima."""
    pts = [(16.5e3, 0.012), (948e3, 0.006)]
    assert sweep.lr_for(16.5e3, 1e-3, pts) == pytest.approx(0.012, rel=1e-3)
    assert sweep.lr_for(948e3, 1e-3, pts) == pytest.approx(0.006, rel=1e-3)
    mid = math.sqrt(16.5e3 * 948e3)  # geometric mean of N -> geometric mean of lr
    assert sweep.lr_for(mid, 1e-3, pts) == pytest.approx(math.sqrt(0.012 * 0.006), rel=1e-3)
    assert sweep.lr_for(1e5, 3e-3, None) == 3e-3
    with pytest.raises(runlog.ScalingError):
        sweep.lr_for(1e5, 3e-3, [(1e4, 0.01)])


@pytest.mark.parametrize('setup, argv, message', [
    (lambda p: (p / 'meta.json').write_text('{"vocab_size": 257,'), ['--data_dir', '{p}'], 'meta.json: not valid JSON'),
    (lambda p: (p / 'meta.json').write_text('[257]'), ['--data_dir', '{p}'], 'meta.json: not a JSON object'),
    (lambda p: (p / 'bad.py').write_text('n_layer = (4\n'), ['--vocab_size', '257', '--train_config', '{p}/bad.py'],
     'bad.py (line 1): SyntaxError'),
    (lambda p: None, ['--vocab_size', '257', '--train_config', '{p}/missing.py'], 'missing.py does not exist'),
    (lambda p: None, ['--vocab_size', '257', "--train_args=--dtype='bfloat16"], '--train_args: No closing quotation'),
    (lambda p: None, ['--vocab_size', '257', '--train_args=--norm=batchnorm'], 'the planned model: bad model config'),
])
def test_plan_bad_input_gives_one_line(tmp_path, capsys, setup, argv, message):
    pytest.importorskip('model')
    setup(tmp_path)
    code, out, err = run_cli(['plan', '--budgets', '1e13'] + [a.format(p=tmp_path) for a in argv], capsys)
    assert code == 1 and err.startswith('error: ') and message in err, err
    assert err.count('\n') == 1 and 'Traceback' not in err and out == ''


def test_lr_law_sets_each_runs_rate_from_the_fitted_law(tmp_path, capsys):
    pytest.importorskip('model')
    law = tmp_path / 'law.json'  # what `scaling.py hparams --json` writes (hparams.read_lr_law reads results.lr)
    law.write_text(json.dumps(dict(options=dict(compute='6nd'), results=dict(lr=dict(k=0.3118, s=-0.125)))))
    argv = ['plan', '--budgets', '1e13,1e14', '--sizes', '3', '--vocab_size', '257', '--lr_law', str(law),
            '--json', str(tmp_path / 'plan.json')]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    rows = json.load(open(tmp_path / 'plan.json'))['runs']
    for r in rows:  # DeepSeek LLM's eta_opt = 0.3118 C^-0.125 at the run's budget: 0.00747 at 1e13, 0.0056 at 1e14
        lr = r['config']['learning_rate']
        assert lr == pytest.approx(0.3118 * r['budget'] ** -0.125, rel=1e-3)
        assert r['config']['min_lr'] == pytest.approx(lr / 10) and f"--learning_rate={lr!r}" in r['cmd']
    assert len({r['config']['learning_rate'] for r in rows}) == 2
    with pytest.raises(SystemExit) as e:  # one way to set the rate at a time
        scaling.main(argv + ['--lr_points', '1e4:0.01,1e6:0.005'])
    assert e.value.code == 2 and 'not allowed with' in capsys.readouterr().err
    for text, message in (('{"results": {"lr": null, "batch": {"k": 1, "s": 0.3}}}', 'no learning-rate law'),
                          ('not json', 'not valid JSON'),
                          ('{"options": {"compute": "logged"}, "results": {"lr": {"k": 1, "s": -0.1}}}',
                           'fitted with --compute logged')):
        law.write_text(text)
        code, _, err = run_cli(argv, capsys)
        assert code == 1 and message in err and err.count('\n') == 1, err


# -----------------------------------------------------------------------------
# branched plans: one WSD stable run per size, a cooldown branch per (N, D) point of the grid

def test_branch_points_share_a_checkpoint_grid():
    for steps, frac in (([1746, 5239], 0.2), ([800, 2400, 8002], 0.2), ([246, 739, 2462], 0.1), ([21, 97, 1001], 0.3),
                        ([5000], 0.2)):
        g, pts = sweep.branch_points(steps, frac, snap=0.02)
        assert len(pts) == len(steps)
        for S0, (S, k, c) in zip(steps, pts):
            assert k % g == 0 and k == S - c and c == round(frac * S) and c >= 1
            assert abs(k - (S0 - round(frac * S0))) <= 0.02 * k  # the branch point moved by at most 2%
            assert abs(S - S0) <= 0.02 * S0 + 2
        assert g > 1 or min(k for _, k, _ in pts) < 50  # a grid of single steps only for tiny runs
    g, pts = sweep.branch_points([1000, 3000], 0.2)
    assert g == 800 and pts == [(1000, 800, 200), (3000, 2400, 600)]  # already on one grid: nothing moves
    with pytest.raises(runlog.ScalingError):
        sweep.branch_points([3], 0.1)  # round(0.3) = 0 cooldown steps


@pytest.fixture(scope='module')
def branched_plan(tmp_path_factory):
    pytest.importorskip('model')
    root = tmp_path_factory.mktemp('branch')
    (root / 'meta.json').write_text(json.dumps(dict(vocab_size=257, train=dict(tokens=50_000_000))))
    plain = sweep.plan([1e13, 3e13, 1e14], sizes=3, span=10, data_dir=str(root), out_root=str(root / 'sweep'))
    rows = sweep.plan([1e13, 3e13, 1e14], sizes=3, span=10, data_dir=str(root), out_root=str(root / 'sweep'),
                      branch=True, cooldown_frac=0.2)
    return plain, rows


def test_plan_branch_rows(branched_plan):
    plain, rows = branched_plan
    stables = [r for r in rows if r['kind'] == 'stable']
    branches = [r for r in rows if r['kind'] == 'branch']
    assert rows == stables + branches and 'parent' not in stables[0]  # parents first
    assert len(branches) == len(plain) == 9 and len(stables) < len(branches)  # budgets share model sizes
    by_name = {r['name']: r for r in stables}
    for C in (1e13, 3e13, 1e14):  # every budget keeps 3 sizes spanning its prior optimum, D = C / 6N within 2%
        mine = [r for r in branches if r['budget'] == C]
        assert len(mine) == 3 and min(r['N'] for r in mine) < math.sqrt(C / 120) < max(r['N'] for r in mine)
        for r in mine:
            assert r['C'] == pytest.approx(C, rel=0.025)
    for b in branches:
        p, c, pc = by_name[b['parent']], b['config'], by_name[b['parent']]['config']
        k, S = b['branch_step'], c['max_iters']
        assert c['cooldown_iters'] == round(0.2 * S) and k == S - c['cooldown_iters']  # cooldown: the last 20%
        assert k % pc['checkpoint_interval'] == 0 and k <= pc['max_iters']  # on the parent's checkpoint grid
        assert c['branch_from'] == os.path.join(pc['out_dir'], f"ckpt_{k:06d}.pt") and c['init_from'] == 'resume'
        assert c['out_dir'] != pc['out_dir'] and b['N'] == p['N']
        same = ('data_dir', 'n_layer', 'n_head', 'n_embd', 'block_size', 'batch_size', 'total_batch_size',
                'schedule', 'learning_rate', 'min_lr', 'warmup_iters', 'eval_iters', 'seed')
        assert {x: c[x] for x in same} == {x: pc[x] for x in same} and c['schedule'] == 'wsd'
        assert b['D'] == S * 8192 and b['flops_run'] == pytest.approx(6 * b['N'] * c['cooldown_iters'] * 8192)
    for p in stables:
        c, ks = p['config'], [b['branch_step'] for b in branches if b['parent'] == p['name']]
        assert c['schedule'] == 'wsd' and c['cooldown_iters'] == 0 and c['keep_checkpoints'] == 0
        assert c['max_iters'] == max(ks) and p['checkpoint_steps'] == sorted(ks) and p['budget'] is None
        assert runlog.is_stable_run(dict(config=c))  # what `fit` leaves out
        # the shared warm-up is warmup_frac of the shortest branch: it ends before every cooldown starts
        shortest = min(b['config']['max_iters'] for b in branches if b['parent'] == p['name'])
        assert c['warmup_iters'] == max(1, round(0.05 * shortest)) and c['warmup_iters'] < min(ks)


def test_plan_branch_commands_parse_back_in_train_py(branched_plan):
    pytest.importorskip('model')
    _, rows = branched_plan
    for r in rows:
        args = shlex.split(r['cmd'])  # what train.py gets from a shell running the printed command
        assert args[:2] == ['python', 'train.py'] and len(args) == len(r['args']) + 2
        for a in (args[2:], r['args']):  # and what --run passes: every knob is train.py's, every value the plan's
            cfg = parse_train_args(a)
            assert {k: cfg[k] for k in r['config']} == r['config']
        assert r['N'] == accounting.count_params(built_model(r['args']))['n_params']


def test_plan_branch_compute_accounting(branched_plan, capsys):
    plain, rows = branched_plan
    spent, separate = sweep.plan_compute(rows)
    tokens = lambda r: r['config']['max_iters'] if r['kind'] == 'stable' else r['config']['cooldown_iters']
    assert spent == pytest.approx(sum(6 * r['N'] * tokens(r) * 8192 for r in rows))  # stable runs + cooldowns
    assert separate == pytest.approx(sum(r['C'] for r in rows if r['kind'] == 'branch'))
    assert separate == pytest.approx(sum(r['C'] for r in plain), rel=0.02)  # the plain grid, up to the snapping
    assert spent < separate
    code, out, err = run_cli(['plan', '--budgets', '1e13,3e13,1e14', '--sizes', '3', '--vocab_size', '257',
                              '--branch', '--data_dir', '/nonexistent'], capsys)
    assert code == 0, err
    head = out.split('\n')[0]
    assert '4 stable runs + 9 branches' in head and f"{spent:.3g} FLOPs in all" in head
    assert f"separate runs: {separate:.3g} FLOPs ({1 - spent / separate:.0%} saved)" in head
    assert out.count('python train.py ') == 13 and out.count("--keep_checkpoints=0") == 4


def branch_argv(root, fake, *more):
    return ['plan', '--budgets', '1e13,3e13', '--sizes', '3', '--vocab_size', '257', '--out_root', str(root),
            '--branch', '--run', '--train_script', str(fake)] + list(more)


def order(root):
    """[(event, name, time, source)] from the fake train.py's order.txt."""
    return [(e, n, float(t), rest[0] if rest else None)
            for e, n, t, *rest in (line.split() for line in (root / 'order.txt').read_text().splitlines())]


def test_plan_branch_run_order_and_resume(tmp_path, capsys):
    pytest.importorskip('model')
    (tmp_path / 'train_fake.py').write_text(FAKE_TRAIN)
    root = tmp_path / 'sweep'
    argv = branch_argv(root, tmp_path / 'train_fake.py')
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    starts = [(n, src) for e, n, _, src in order(root) if e == 'start']
    stables = [n for n, _ in starts if n.endswith('_stable')]
    assert [n for n, _ in starts[:len(stables)]] == stables and len(starts) == len(stables) + 6  # stable runs first
    for n, src in starts[len(stables):]:  # each branch from its parent's checkpoint at its branch point
        assert src.startswith('ckpt_') and out.count(f"{n}: branching from ") == 1
    calls = (root / 'calls.txt').read_text().split('\n')[:-1]
    assert all(c.endswith(' resume') for c in calls if not c.split()[0].endswith('_stable'))
    # the fits see the branches only: the stable runs are left out
    assert sorted(r.name for r in runlog.load([str(root)])) == sorted(n for n, _ in starts[len(stables):])
    assert 'stable run' in capsys.readouterr().err
    # rerun: everything finished (a stable run is done once it has its eval at max_iters)
    code, out, err = run_cli(argv, capsys)
    assert code == 0 and out.count('finished, skipped') == len(starts) and len(order(root)) == 2 * len(starts)
    # a branch cut short continues from its own checkpoint, not its parent's; an interrupted stable run resumes
    branch, stable = starts[-1][0], stables[0]
    for name in (branch, stable):
        log = root / name / 'log.jsonl'
        log.write_text(log.read_text().split('\n')[0] + '\n')
    code, out, err = run_cli(argv, capsys)
    assert code == 0 and out.count('finished, skipped') == len(starts) - 2
    again = [(n, src) for e, n, _, src in order(root)[2 * len(starts):] if e == 'start']
    assert again == [(stable, 'own'), (branch, 'own')]
    assert (root / 'calls.txt').read_text().split('\n')[-3:-1] == [f"{stable} resume", f"{branch} resume"]
    # a branch whose parent lost its checkpoint: one clear line
    for p in root.glob('*_stable/ckpt_*.pt'):
        p.unlink()
    victim = starts[len(stables)][0]
    (root / victim / 'log.jsonl').unlink()
    (root / victim / 'ckpt.pt').unlink()
    code, out, err = run_cli(argv, capsys)
    last = err.strip().split('\n')[-1]  # (after a warning about epochs: the default data_dir's train split is small)
    assert code == 1 and last.startswith('error: ') and 'is missing' in last and victim in last


def test_plan_branch_jobs_start_branches_after_their_parent(tmp_path, capsys, monkeypatch):
    pytest.importorskip('model')
    monkeypatch.setattr(sweep.os, 'cpu_count', lambda: 4)
    monkeypatch.setenv('FAKE_SLEEP', '0.5')  # stable runs take a while, so branches would start early if allowed
    (tmp_path / 'train_fake.py').write_text(FAKE_TRAIN)
    root = tmp_path / 'sweep'
    code, out, err = run_cli(branch_argv(root, tmp_path / 'train_fake.py', '--jobs', '3'), capsys)
    assert code == 0, err
    events = order(root)
    end = {n: t for e, n, t, _ in events if e == 'end'}
    rows = {r['name']: r for r in sweep.plan([1e13, 3e13], sizes=3, vocab_size=257, out_root=str(root), branch=True)}
    branches = [(n, t) for e, n, t, _ in events if e == 'start' and not n.endswith('_stable')]
    assert len(branches) == 6 and len(end) == len(rows)
    for n, t in branches:
        assert t >= end[rows[n]['parent']]  # started only after its stable run had finished
    # with --keep_going a failed stable run stops its branches only
    for d in root.iterdir():
        if d.is_dir():
            for f in d.iterdir():
                f.unlink()
    (root / 'order.txt').unlink()
    (root / 'FAIL').write_text('')
    code, out, err = run_cli(branch_argv(root, tmp_path / 'train_fake.py', '--jobs', '2', '--keep_going'), capsys)
    assert code == 1 and 'not run: its stable run' in err and 'run(s) failed' in err
