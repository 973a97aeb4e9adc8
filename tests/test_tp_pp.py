"""Tests for tensor and pipeline parallelism (pretrain/parallel.py) on CPU with gloo: each layout trains as one process
does (tests/tp_pp_worker.py under torchrun, 2, 3 and 4 processes: TP, PP with three schedules, TP x FSDP, PP x DDP,
TP x PP x FSDP), train.py end to end with checkpoints that resume at other layouts and that sample.py, eval.py and
export.py read, the memory estimate (accounting.train_memory) against what each rank holds, and every refusal as
one line. The multi-process tests are slow (each launch 15-60 s on 2 cores)."""
import json
import os

from types import SimpleNamespace

import pytest
import torch

import conftest
import eval as evaluation
import export
import sample
import train
import test_parallel as fsdp_tests
from conftest import one_error_line, torchrun
from test_parallel import log
from model import GPTConfig
from pretrain import training
from pretrain.accounting import in_flight, train_memory
from pretrain.checkpoint import load_checkpoint

LLAMA = dict(n_kv_head=2, norm='rmsnorm', pos_emb='rope', mlp='swiglu', bias=False, tie_weights=False)
GPT2 = {}   # tied embeddings, learned positions, LayerNorm, GELU, biases
CLIP = dict(accum=2, clip=0.05)   # 2 micro-steps a step; the clip acts (norms 0.5-1.7)
TWO = [dict(model=LLAMA, tp=2, **CLIP), dict(model=GPT2, tp=2, **CLIP),
       dict(model={'n_layer': 3}, pp=2, schedule='gpipe', **CLIP),   # stages of 1 and 2 blocks
       dict(model=LLAMA, pp=2, schedule='1f1b', **CLIP),
       dict(model=GPT2, pp=2, schedule='interleaved1f1b', **CLIP),
       dict(model=LLAMA, tp=2, dtype='bfloat16', **CLIP), dict(model=GPT2, pp=2, dtype='bfloat16', **CLIP),
       dict(model=LLAMA, tp=2, compile=True, **CLIP), dict(model=LLAMA, pp=2, compile=True, **CLIP)]
FOUR = [dict(model=LLAMA, tp=2, parallel='fsdp', **CLIP), dict(model=GPT2, pp=2, **CLIP),
        dict(model=GPT2, tp=2, pp=2, parallel='fsdp', schedule='interleaved1f1b', **CLIP),
        dict(model=LLAMA, tp=2, pp=2, **CLIP)]   # RoPE on a later stage's part of the sequence
THREE = [dict(model={'n_layer': 3}, pp=3, **{**CLIP, 'accum': 3})]   # a middle stage, outside the tied pair


def launch(tmp_path_factory, command, nproc, cases):
    path = tmp_path_factory.mktemp(command) / 'result.json'
    r = torchrun(['-m', 'tests.tp_pp_worker', command, str(path), json.dumps(cases)], timeout=900, nproc=nproc)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(path.read_text())


@pytest.fixture(scope='module')
def compared(tmp_path_factory):
    return [r for n, cases in ((2, TWO), (3, THREE), (4, FOUR)) for r in launch(tmp_path_factory, 'compare', n, cases)]


def rel(a, b):
    return max(abs(x - y) / abs(y) for x, y in zip(a, b))


@pytest.mark.slow
def test_layouts_train_as_one_process(compared):
    """4 AdamW steps of 2 micro-steps with a clip that acts, float32: the mean losses and the global gradient
    norms (plain and DTensor gradients normed together, squares summed over stages, a tied embedding's second copy
    left out) within 1e-5 of one process taking every micro-batch (measured: 3e-7), and the weights within 5e-5
    (measured <= 2.4e-5: the all-reduces sum in another order and AdamW amplifies it where gradients are near 0)."""
    for r in compared:
        if r['case'].get('dtype', 'float32') != 'float32' or r['case'].get('compile'):
            continue
        assert r['names'], r['case']   # every parameter, under the GPT's own name, on some rank
        assert rel(r['losses'], r['ref_losses']) < 1e-5, r['case']
        assert rel(r['norms'], r['ref_norms']) < 1e-5 and min(r['ref_norms']) > 0.05, r['case']
        assert r['max_diff'] < 5e-5, r['case']
    assert {(r['case'].get('tp', 1), r['case'].get('pp', 1), r['pipeline']) for r in compared} >= {
        (2, 1, False), (1, 2, True), (2, 2, True), (1, 3, True)}


@pytest.mark.slow
def test_bf16_and_compile(compared):
    """bf16 autocast: a pipeline changes no arithmetic but the order the micro-batches' gradients are summed and
    scaled in (losses within 3e-5 of one process, measured 9e-6 by the 4th step); tensor parallelism sums partial
    bf16 products of each output projection across ranks, one rounding more than one matmul (within 2e-4, measured
    2.5e-5). torch.compile per block composes with tensor (and sequence) parallelism and with a pipeline on CPU:
    the eager losses within 1e-5 (measured equal)."""
    by = {(r['case'].get('tp', 1), r['case'].get('dtype'), r['case'].get('compile')): r for r in compared}
    assert rel(by[2, 'bfloat16', None]['losses'], by[2, 'bfloat16', None]['ref_losses']) < 2e-4
    assert rel(by[1, 'bfloat16', None]['losses'], by[1, 'bfloat16', None]['ref_losses']) < 3e-5
    for key in ((2, None, True), (1, None, True)):
        assert rel(by[key]['losses'], by[key]['ref_losses']) < 1e-5


MEMORY_TWO = [dict(model=LLAMA, tp=2, accum=1), dict(model=LLAMA, tp=2, accum=1, dtype='bfloat16'),
              dict(model=GPT2, tp=2, accum=1, dtype='bfloat16'),
              dict(model=dict(qk_norm=True, pos_emb='rope', mlp='relu2'), tp=2, accum=1),
              dict(model=GPT2, pp=2, accum=4, schedule='1f1b'), dict(model=LLAMA, pp=2, accum=4, schedule='gpipe'),
              dict(model=GPT2, pp=2, accum=4, schedule='interleaved1f1b')]
MEMORY_FOUR = [dict(model={**LLAMA, 'n_layer': 2}, tp=2, parallel='fsdp', accum=1),
               dict(model=GPT2, pp=2, parallel='fsdp', accum=2)]


@pytest.fixture(scope='module')
def held(tmp_path_factory):
    return launch(tmp_path_factory, 'memory', 2, MEMORY_TWO) + launch(tmp_path_factory, 'memory', 4, MEMORY_FOUR)


def estimate(r, rank, parallel=None):
    c = r['case']
    from tests.tp_pp_worker import config
    return train_memory(config(c['model']), 2, len(r['ranks']), parallel or c.get('parallel', 'ddp'),
                        compute_dtype=c.get('dtype', 'float32'), tp=c.get('tp', 1), pp=c.get('pp', 1),
                        schedule=c.get('schedule', '1f1b'), micro_batches=c['accum'], rank=rank)


@pytest.mark.slow
def test_memory_estimate_is_what_each_rank_holds(held):
    """Each rank's weights (and buffers), gradients and AdamW state after a step (its local parts) are
    train_memory's for its pipeline rank, exactly: tensor-parallel shards of q, k, v, gate, up (rows) and the output
    projections (columns), the rest whole; a pipeline rank's blocks and its end's embeddings (a tied copy on both).
    Under FSDP the estimate also counts the parameters gathered at once (a pipeline stage's all; two blocks and the
    root: here, with 2 blocks, all) in the compute dtype and, in a pipeline, the stage's unsharded gradients. The
    activations a forward keeps under tensor (and sequence) parallelism (autograd's saved tensors, a DTensor's
    local part) are the estimate's exactly (the matmuls' gathered inputs whole, the rest 1/t). A pipeline rank held,
    at most, as many micro-batches (forwards not yet backwarded) as in_flight says for its schedule (1F1B: 2 then 1;
    GPipe: 4; the interleaved schedule 5 then 3 stage-forwards of half the part)."""
    for r in held:
        c = r['case']
        for m in r['ranks']:
            est, p = estimate(r, m['pipeline_rank']), m['pipeline_rank']
            assert est['optimizer'] == m['optimizer'], c
            if c.get('parallel') == 'fsdp':
                whole = estimate(r, p, 'ddp')   # its parameters unsharded: here all gathered at once
                buffers = whole['weights'] - whole['grads']   # the RoPE tables
                assert est['weights'] - (whole['weights'] - buffers) == m['weights'], c
                if c.get('pp', 1) > 1:
                    assert est['grads'] - whole['grads'] == m['grads'], c
                continue
            assert (est['weights'], est['grads']) == (m['weights'], m['grads']), c
            if 'saved' in m:   # the plain loss's transient (the backward's two float32 gradients) aside
                assert est['activations'] - 8 * 2 * 16 * 64 == m['saved'], c
            if c.get('pp', 1) > 1:
                assert m['in_flight'] == in_flight(c['schedule'], 2, c['accum'], p) * (
                    2 if c['schedule'] == 'interleaved1f1b' else 1), c


def test_memory_estimate_tensor_and_pipeline():
    """A GPT-2 XL shape with 32 heads on 64 GPUs under DDP: TP 8 splits the blocks' matrices 8 ways, not the
    embeddings; PP 4 with 1F1B holds 4 micro-batches of a quarter of the blocks on its first stage, the activations
    of all the blocks for one (Korthikanti et al. 2022, sec. 4.2.3), GPipe all 16."""
    C, L, V = 1600, 48, 50304
    config = GPTConfig(n_layer=L, n_head=32, n_embd=C, pad_vocab_multiple=64)
    ddp, tp = train_memory(config, 1, 64), train_memory(config, 1, 64, tp=8)
    root, blocks = (V + 1024 + 2) * C, L * (12 * C * C + 13 * C)
    assert ddp['weights'] == pytest.approx(4 * (root + blocks), rel=1e-3)
    assert tp['weights'] == pytest.approx(4 * (root + blocks / 8), rel=2e-3)
    assert tp['activations'] < ddp['activations']
    one_f = train_memory(config, 1, 64, tp=8, pp=4, micro_batches=16)
    gpipe = train_memory(config, 1, 64, tp=8, pp=4, schedule='gpipe', micro_batches=16)
    assert one_f['weights'] < tp['weights'] / 2 and gpipe['activations'] > 3.5 * one_f['activations']
    assert in_flight('1f1b', 4, 16, 0) == 4 and in_flight('gpipe', 4, 16, 0) == 16
    assert in_flight('interleaved1f1b', 4, 16, 0) == (4 + 6 + 1) / 2


@pytest.mark.parametrize('name,world,note', [('llama3-405b.py', 16384, 'the first stage: 37.88'),
                                             ('llama3-70b.py', 1024, 'With --tensor_parallel=8 (DP 128): 28.26')])
def test_llama3_configs_quote_their_memory(name, world, note):
    """The worked plans (docs/parallel.md): each config's layout fits 72 GiB (90% of an H100's 80) by train_memory at
    Llama 3's vocabulary, and its comment quotes the estimate's current figures (stale if train_memory changes)."""
    from test_memory import config_knobs
    cfg = config_knobs(name)
    config = GPTConfig(**{**{k: cfg[k] for k in ('n_layer', 'n_head', 'n_kv_head', 'n_embd', 'mlp', 'mlp_hidden',
                                                 'norm', 'pos_emb', 'bias', 'tie_weights', 'rope_theta',
                                                 'block_size')}, 'vocab_size': 128256})
    tp, pp = cfg['tensor_parallel'], cfg['pipeline_parallel']
    n = cfg['total_batch_size'] // (cfg['batch_size'] * cfg['block_size'] * (world // (tp * pp)))
    m = train_memory(config, cfg['batch_size'], world, cfg['parallel'], cfg['activation_checkpointing'], tp=tp, pp=pp,
                     schedule=cfg['pipeline_schedule'], micro_batches=n)
    assert m['total'] <= 0.9 * 80 * 2 ** 30
    text = open(os.path.join(conftest.ROOT, 'config', name)).read().replace('\n#', '')
    for k in ('weights', 'grads', 'optimizer', 'activations', 'total'):
        assert f"{m[k] / 2 ** 30:.2f}" in text, k
    assert note in text
    # 405B: one sequence per GPU would be more than the batch; 70B: data parallelism alone holds it
    assert (world * cfg['block_size'] > cfg['total_batch_size']) == (tp * pp > 1)


# -----------------------------------------------------------------------------
# train.py end to end: the run log, checkpoints across layouts, the scripts

DDP = dict(parallel='ddp', keep_checkpoints=0)   # over test_parallel.py's tiny run (FSDP there)
data_dir = fsdp_tests.data_dir   # its corpus (a fixture)


def argv(data_dir, out_dir, **over):
    return fsdp_tests.argv(data_dir, out_dir, **{**DDP, **over})


def cfg(data_dir, out_dir, **over):
    return fsdp_tests.cfg(data_dir, out_dir, **{**DDP, **over})


@pytest.fixture(scope='module')
def one(data_dir, tmp_path_factory):
    """The reference: one process, 6 steps, checkpoints at 3 and 6 kept."""
    out = tmp_path_factory.mktemp('one')
    train.train(cfg(data_dir, out))
    return out


def layout_run(data_dir, tmp_path_factory, name, **over):
    out = tmp_path_factory.mktemp(name)
    r = torchrun(['train.py', *argv(data_dir, out, **over)])
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.fixture(scope='module')
def tp_run(data_dir, tmp_path_factory):
    return layout_run(data_dir, tmp_path_factory, 'tp', tensor_parallel=2)


@pytest.fixture(scope='module')
def pp_run(data_dir, tmp_path_factory):
    return layout_run(data_dir, tmp_path_factory, 'pp', pipeline_parallel=2)


@pytest.mark.slow
def test_train_py_at_tp_and_pp_is_one_process(one, tp_run, pp_run):
    """train.py with --tensor_parallel=2 and with --pipeline_parallel=2 (1F1B over the step's 2 micro-steps, tied
    embeddings on both ends): the same train and val losses as one process within 1e-5, and sharded checkpoints
    (a manifest naming a DCP directory, a file per rank; the tied embedding once, the optimizer's groups naming
    every parameter in the GPT's order)."""
    for run in (tp_run, pp_run):
        assert log(run) == pytest.approx(log(one), rel=1e-5)
        assert log(run, 'eval', 'val_loss') == pytest.approx(log(one, 'eval', 'val_loss'), rel=1e-5)
        manifest = torch.load(run / 'ckpt.pt', weights_only=True)
        assert sorted(os.listdir(run / manifest['sharded'])) == ['.metadata', '__0_0.distcp', '__1_0.distcp']
        assert manifest['aliases'] == {'lm_head.weight': 'transformer.wte.weight'}
        whole = torch.load(one / 'ckpt.pt', weights_only=True)['optimizer']['param_groups']
        assert [g['params'] for g in load_checkpoint(str(run), for_resume=True)['optimizer']['param_groups']] \
            == [g['params'] for g in whole]


@pytest.mark.slow
def test_checkpoints_resume_at_other_layouts(data_dir, one, tp_run, pp_run, tmp_path):
    """A TP=2 checkpoint continued by one process, a PP=2 checkpoint by FSDP over 2 processes, and one process's
    single-file checkpoint by a PP=2 pipeline: steps 4..6 as the uninterrupted one-process run's (rel. 1e-5)."""
    ref = {k: v for k, v in log(one).items() if k > 3}
    train.train(cfg(data_dir, tmp_path / 'a', init_from='resume', branch_from=str(tp_run / 'ckpt_000003.pt')))
    assert log(tmp_path / 'a') == pytest.approx(ref, rel=1e-5)
    for out, over in ((tmp_path / 'b', dict(parallel='fsdp', branch_from=str(pp_run / 'ckpt_000003.pt'))),
                      (tmp_path / 'c', dict(pipeline_parallel=2, branch_from=str(one / 'ckpt_000003.pt')))):
        r = torchrun(['train.py', *argv(data_dir, out, init_from='resume', **over)])
        assert r.returncode == 0, r.stderr[-3000:]
        assert log(out) == pytest.approx(ref, rel=1e-5)


@pytest.mark.slow
def test_scripts_read_tp_and_pp_checkpoints(tp_run, pp_run, one, tmp_path, capsys):
    """sample.py, eval.py and export.py read a TP and a PP checkpoint in one process as they read its single-file
    conversion; eval.py's loss on the first 8 val sequences is the run's logged val loss."""
    common = ['--device=cpu', '--dtype=float32']
    for run in (tp_run, pp_run):
        whole = tmp_path / f'{run.name}.pt'
        code, _, err = conftest.run_cli(export.main, [f'--out_dir={run}', f'--pt_path={whole}'], capsys)
        assert code == 0, err
        got = []
        for source in (run, whole):
            code, out, err = conftest.run_cli(sample.main, [f'--out_dir={source}', '--max_new_tokens=20', '--seed=7',
                                                            *common], capsys)
            assert code == 0, err
            code, _, err = conftest.run_cli(evaluation.main, [f'--out_dir={source}', f'--json={tmp_path}/bpb.json',
                                                              '--max_seqs=8', '--progress=False', '--batch_size=4',
                                                              *common], capsys)
            assert code == 0, err
            got += [out, json.loads((tmp_path / 'bpb.json').read_text())['bpb']['loss']]
        assert got[0] == got[2] and got[1] == got[3]
        assert got[1] == pytest.approx(log(run, 'eval', 'val_loss')[6], rel=1e-5)
        code, _, err = conftest.run_cli(export.main, [f'--out_dir={run}', f'--hf_dir={tmp_path}/hf-{run.name}'],
                                        capsys)
        assert code == 0, err


# -----------------------------------------------------------------------------
# refusals: one line, before anything is written

@pytest.mark.parametrize('world,over,match', [
    (1, dict(tensor_parallel=2), "tensor_parallel=2 x pipeline_parallel=1 does not divide the 1 process(es)"),
    (2, dict(tensor_parallel=0), "tensor_parallel=0 is not allowed: must be an int >= 1"),
    (2, dict(tensor_parallel=2, block_size=33), "block_size=33 is not divisible by tensor_parallel=2"),
    (3, dict(tensor_parallel=3, block_size=48, total_batch_size=384), "tensor_parallel=3 needs n_head (2) and the "
                                                                      "key/value heads (2) divisible by it"),
    (2, dict(tensor_parallel=2, n_head=4, n_kv_head=1), "the key/value heads (1) divisible"),
    (3, dict(pipeline_parallel=3), "n_layer=2 blocks cannot fill 3 pipeline stages"),
    (2, dict(pipeline_parallel=2, pipeline_schedule='interleaved1f1b'), "n_layer=2 blocks cannot fill 4 pipeline"),
    (2, dict(pipeline_parallel=2, pipeline_schedule='zb'), "pipeline_schedule='zb' is not allowed"),
    (2, dict(pipeline_parallel=2, total_batch_size=128), "pipeline_schedule='1f1b' needs at least "
                                                         "pipeline_parallel=2 micro-batches per step, got 1"),
    (2, dict(pipeline_parallel=2, pipeline_schedule='interleaved1f1b', n_layer=4, total_batch_size=384),
     "needs a multiple of pipeline_parallel=2 micro-batches per step, got 3"),
    (2, dict(tensor_parallel=2, optimizer='muon', muon_lr=0.02), "optimizer='muon' with tensor_parallel=2 is not"),
    (2, dict(pipeline_parallel=2, noise_scale=True), "noise_scale with pipeline_parallel=2 is not supported"),
    (4, dict(parallel='fsdp', tensor_parallel=2, hellaswag_interval=10),
     "hellaswag_interval with parallel='fsdp' and tensor_parallel=2 is not supported"),
])
def test_refusals(data_dir, tmp_path, capsys, monkeypatch, world, over, match):
    with pytest.raises(train.ConfigError, match=match.replace('(', r'\(').replace(')', r'\)')):
        training.check_knobs(SimpleNamespace(**cfg(data_dir, tmp_path / 'x', **over)), world)
    monkeypatch.setenv('WORLD_SIZE', str(world))   # the refusal comes before any process group is made
    line = one_error_line(*conftest.run_cli(train.main, argv(data_dir, tmp_path / 'x', **over), capsys)[::2])
    assert match in line and not (tmp_path / 'x').exists()
