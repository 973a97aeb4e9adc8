"""Tests for train.py --parallel=fsdp (pretrain/parallel.py) and sharded checkpoints, on CPU with gloo: FSDP2 against
DDP on the same batches (tests/fsdp_worker.py under torchrun), each rank holding half the weights and AdamW state,
resume 2 -> 2, 2 -> 1 and 1 -> 2 processes and across modes, a save killed midway, the one loader reading a sharded
checkpoint in one process (sample.py, eval.py, export.py), and every refusal as one line. Launches are shared
between assertions: the whole file runs in about a minute on 2 cores."""
import json
import os
import shutil
import signal

from types import SimpleNamespace

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

import conftest
import eval as evaluation
import export
import sample
import train
from pretrain import checkpoint, training
from conftest import one_error_line, run_python, torchrun
from pretrain.checkpoint import CheckpointError, load_checkpoint, numbered_checkpoints, sweep_stale

TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=4, total_batch_size=256, max_iters=6,
            warmup_iters=2, learning_rate=3e-3, min_lr=3e-4, eval_interval=3, eval_iters=2, log_interval=1,
            checkpoint_interval=3, dtype='float32', device='cpu', compile=False, pos_emb='learned',
            parallel='fsdp')


def check_train_knobs(cfg, world=1):
    """train.py's knob check (training.check_knobs) on a dict of knobs."""
    return training.check_knobs(SimpleNamespace(**cfg), world)


def argv(data_dir, out_dir, **over):
    return [f'--{k}={v!r}' if isinstance(v, str) else f'--{k}={v}'
            for k, v in {**TINY, 'data_dir': data_dir, 'out_dir': str(out_dir), **over}.items()]


def cfg(data_dir, out_dir, **over):
    return {**train.DEFAULTS, **TINY, 'data_dir': data_dir, 'out_dir': str(out_dir), **over}


def log(out_dir, kind='train', field='loss'):
    """{step: value} of the run log's records of one type, the last per step (as the log's readers do)."""
    recs = [json.loads(line) for line in open(os.path.join(out_dir, 'log.jsonl'))]
    return {r['step']: r[field] for r in recs if r['type'] == kind}


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    return conftest.word_corpus(tmp_path_factory, 30, 80)


@pytest.fixture(scope='module')
def straight(data_dir, tmp_path_factory):
    """A 2-process FSDP run of 6 steps, sharded checkpoints at steps 3 and 6, both kept (keep_checkpoints=0)."""
    out = tmp_path_factory.mktemp('straight')
    r = torchrun(['train.py', *argv(data_dir, out, keep_checkpoints=0)])
    assert r.returncode == 0, r.stderr[-3000:]
    return out


# -----------------------------------------------------------------------------
# FSDP against DDP: one torchrun launch of tests/fsdp_worker.py

@pytest.fixture(scope='module')
def compared(tmp_path_factory):
    path = tmp_path_factory.mktemp('compare') / 'result.json'
    r = torchrun(['-m', 'tests.fsdp_worker', 'compare', str(path)])
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(path.read_text())


def test_fsdp_trains_bit_identically_to_ddp(compared):
    """Without clipping or accumulation the same float32 operations run in the same order: each rank computes the
    whole block on its batch, and a reduce-scatter's average of two numbers is the all-reduce's."""
    assert compared['plain']['fsdp_losses'] == compared['plain']['ddp_losses']
    assert compared['plain']['max_diff'] == 0.0


def test_clipping_and_accumulation_match_ddp(compared):
    """Clipping takes the global norm of the sharded gradients: the same norm as DDP's up to the order of a sum
    (1 ulp). 5 steps of accumulation over 2 micro-steps with a clip that acts (0.05 against norms near 1) leave
    the weights within 1e-5 of DDP's (measured 8e-7): float32 rounding of the norm, not a different update."""
    assert compared['norm']['fsdp'] == pytest.approx(compared['norm']['ddp'], rel=1e-6)
    assert compared['norm']['ddp'] > 0.05   # so the clip acted
    assert compared['clip_accum']['max_diff'] < 1e-5
    assert compared['clip_accum']['fsdp_losses'] == pytest.approx(compared['clip_accum']['ddp_losses'], rel=1e-6)


def test_each_rank_holds_half(compared):
    """Weights and both AdamW moments: each of 2 ranks holds half (a row more or less: dim 0 split in two)."""
    (held0, state0, total), (held1, state1, _) = compared['counts']
    assert held0 + held1 == total
    assert abs(held0 - total / 2) < 0.01 * total and abs(held1 - total / 2) < 0.01 * total
    assert state0 == 2 * held0 and state1 == 2 * held1


def test_activation_checkpointing_changes_nothing(compared):
    """Recomputing each block in the backward gives the same gradients, so the same weights, bit for bit."""
    assert compared['checkpointing']['max_diff'] == 0.0


def test_bf16_mixed_precision(compared):
    """bf16 weights in the forward, float32 master weights and AdamW state; close to DDP under autocast, not
    identical (FSDP also rounds the embeddings and norm gains to bf16; autocast keeps those float32)."""
    bf16 = compared['bf16']
    assert bf16['compute_dtype'] == 'torch.bfloat16' and bf16['master_dtypes'] == ['torch.float32']
    assert bf16['fsdp_losses'] == pytest.approx(bf16['ddp_losses'], abs=5e-3)


# -----------------------------------------------------------------------------
# sharded checkpoints: layout, resume at other world sizes and across modes

def test_sharded_checkpoint_layout(straight):
    """ckpt.pt is a small manifest naming its shard directory; every rank wrote a file; keep_checkpoints=0 keeps
    each numbered manifest and the directory it names."""
    manifest = torch.load(straight / 'ckpt.pt', weights_only=True)
    assert 'model' not in manifest and 'optimizer' not in manifest and manifest['step'] == 6
    assert manifest['sharded'].startswith('ckpt.dcp.000006-')
    assert sorted(os.listdir(straight / manifest['sharded'])) == ['.metadata', '__0_0.distcp', '__1_0.distcp']
    # tensors only in the directory (DCP unpickles anything else without weights_only); the groups are in ckpt.pt
    meta = dcp.FileSystemReader(str(straight / manifest['sharded'])).read_metadata()
    assert all(isinstance(m, TensorStorageMetadata) for m in meta.state_dict_metadata.values())
    assert [len(g['params']) for g in manifest['param_groups']] and 'lm_head.weight' not in str(manifest['param_groups'])
    # the tied embedding is stored once, under its first name; its other name is an alias in the manifest
    assert manifest['aliases'] == {'lm_head.weight': 'transformer.wte.weight'}
    assert 'model.lm_head.weight' not in meta.state_dict_metadata
    named = sorted(torch.load(p, weights_only=True)['sharded'] for _, p in numbered_checkpoints(straight))
    assert [s for s, _ in numbered_checkpoints(straight)] == [3, 6]
    assert sorted(n for n in os.listdir(straight) if n.startswith('ckpt.dcp.')) == named
    full = load_checkpoint(str(straight), for_resume=True)   # one process, no process group: the single-file form
    assert set(full['model']) >= {'transformer.wte.weight', 'lm_head.weight'} and 'sharded' not in full
    assert full['model']['lm_head.weight'] is full['model']['transformer.wte.weight']
    assert len(full['optimizer']['state']) == sum(len(g['params']) for g in full['optimizer']['param_groups'])


def test_resume_2_to_2_is_exact(data_dir, straight, tmp_path):
    """A branch from the step-3 checkpoint on 2 processes repeats steps 4..6 bit for bit, and writes one
    checkpoint directory (keep_checkpoints=1 removes the older one)."""
    r = torchrun(['train.py', *argv(data_dir, tmp_path, init_from='resume',
                                    branch_from=str(straight / 'ckpt_000003.pt'))])
    assert r.returncode == 0, r.stderr[-3000:]
    assert log(tmp_path) == {k: v for k, v in log(straight).items() if k > 3}
    assert log(tmp_path, 'eval', 'val_loss')[6] == log(straight, 'eval', 'val_loss')[6]
    assert len([n for n in os.listdir(tmp_path) if n.startswith('ckpt.dcp.')]) == 1


def test_resume_2_to_1_both_modes(data_dir, straight, tmp_path):
    """One process continues a 2-process sharded checkpoint, sharded (a group of one) or not (the loader reads it
    whole): the same data (the loader position is a global sequence index), the same losses up to float32
    rounding (one process sums the gradient of both halves of the batch at once)."""
    for mode in ('fsdp', 'ddp'):
        out = tmp_path / mode
        train.train(cfg(data_dir, out, parallel=mode, init_from='resume', branch_from=str(straight / 'ckpt_000003.pt')))
        assert list(log(out)) == [4, 5, 6]
        assert log(out) == pytest.approx({k: v for k, v in log(straight).items() if k > 3}, rel=1e-5)
        assert ('sharded' in torch.load(out / 'ckpt.pt', weights_only=True)) == (mode == 'fsdp')


def test_switching_mode_in_place(data_dir, straight, tmp_path):
    """A sharded run continued under DDP in its own directory: the new ckpt.pt is a single file, and the shard
    directory that only the replaced manifest named is removed as it is written."""
    run = tmp_path / 'run'
    shutil.copytree(straight, run)
    os.remove(run / 'ckpt_000003.pt')   # so step 3's directory is swept at the start, step 6's when the new
    os.remove(run / 'ckpt_000006.pt')   # ckpt.pt replaces the manifest that named it
    train.train(cfg(data_dir, run, parallel='ddp', init_from='resume', max_iters=7, lr_decay_iters=6))
    assert 'sharded' not in torch.load(run / 'ckpt.pt', weights_only=True)
    assert [n for n in os.listdir(run) if n.startswith('ckpt.dcp.')] == []
    assert load_checkpoint(str(run))['step'] == 7


def test_resume_1_to_2(data_dir, straight, tmp_path):
    """A single-process sharded run to step 3, continued by 2 processes, lands where the 2-process run does."""
    train.train(cfg(data_dir, tmp_path, max_iters=3, lr_decay_iters=6))
    assert log(tmp_path) == pytest.approx({k: v for k, v in log(straight).items() if k <= 3}, rel=1e-5)
    r = torchrun(['train.py', *argv(data_dir, tmp_path, init_from='resume')])
    assert r.returncode == 0, r.stderr[-3000:]
    assert log(tmp_path) == pytest.approx(log(straight), rel=1e-5)


def test_single_file_checkpoint_resumes_sharded(data_dir, straight, tmp_path, capsys):
    """export.py --pt_path writes the single-file form (what a DDP run writes); 2 FSDP processes resume from it
    (each keeps its part of the whole optimizer state) bit for bit as from the sharded one."""
    code, out, err = conftest.run_cli(export.main, [f'--out_dir={straight}/ckpt_000003.pt',
                                                    f'--pt_path={tmp_path}/ckpt.pt'], capsys)
    assert code == 0, err
    whole = torch.load(tmp_path / 'ckpt.pt', weights_only=True)
    assert 'sharded' not in whole and whole['step'] == 3 and 'optimizer' in whole
    r = torchrun(['train.py', *argv(data_dir, tmp_path, init_from='resume')])
    assert r.returncode == 0, r.stderr[-3000:]
    assert {k: v for k, v in log(tmp_path).items()} == {k: v for k, v in log(straight).items() if k > 3}


# -----------------------------------------------------------------------------
# the one loader: every script reads a sharded checkpoint in one process

def test_scripts_read_a_sharded_checkpoint(straight, tmp_path, capsys):
    """sample.py, eval.py and export.py on the sharded run give what they give on its single-file conversion."""
    code, _, err = conftest.run_cli(export.main, [f'--out_dir={straight}', f'--pt_path={tmp_path}/whole.pt'], capsys)
    assert code == 0, err
    common = ['--device=cpu', '--dtype=float32']
    texts = []
    for source in (straight, tmp_path / 'whole.pt'):
        code, out, err = conftest.run_cli(sample.main, [f'--out_dir={source}', '--max_new_tokens=40', '--seed=7',
                                                        *common], capsys)
        assert code == 0, err
        texts.append(out)
        code, out, err = conftest.run_cli(evaluation.main, [f'--out_dir={source}', f'--json={tmp_path}/e.json',
                                                            '--progress=False', '--max_seqs=8', '--batch_size=4',
                                                            *common], capsys)
        assert code == 0, err
        texts.append(json.loads((tmp_path / 'e.json').read_text())['bpb'])
    assert texts[0] == texts[2] and texts[1] == texts[3]
    assert len(texts[0]) > 40   # 40 new tokens (bytes), printed
    # the first 8 val sequences are what train.py evaluated at step 6 (eval_iters x batch_size)
    assert texts[1]['loss'] == pytest.approx(log(straight, 'eval', 'val_loss')[6], rel=1e-5)
    code, _, err = conftest.run_cli(export.main, [f'--out_dir={straight}', f'--hf_dir={tmp_path}/hf'], capsys)
    assert code == 0, err
    assert (tmp_path / 'hf' / 'model.safetensors').exists()


def test_damaged_sharded_checkpoints(straight, tmp_path, capsys):
    """A shard directory missing a rank's file, or missing altogether: one line, exit 1, for every reader."""
    run = tmp_path / 'run'
    shutil.copytree(straight, run)
    manifest = torch.load(run / 'ckpt.pt', weights_only=True)
    os.remove(run / manifest['sharded'] / '__1_0.distcp')
    line = one_error_line(*conftest.run_cli(sample.main, [f'--out_dir={run}', '--device=cpu'], capsys)[::2])
    assert 'is damaged: __1_0.distcp is missing' in line
    with pytest.raises(CheckpointError, match='is damaged: __1_0.distcp is missing'):
        load_checkpoint(str(run))
    shutil.rmtree(run / manifest['sharded'])
    line = one_error_line(*conftest.run_cli(evaluation.main, [f'--out_dir={run}', '--device=cpu'], capsys)[::2])
    assert 'is missing' in line


def test_resume_of_another_shape_is_one_line(data_dir, straight, tmp_path, capsys, monkeypatch):
    """A sharded checkpoint resumed with a config of another shape: one line before anything is read or written."""
    monkeypatch.setattr(train, 'wrap', lambda *a, **k: pytest.fail("the model was sharded before the refusal"))
    line = one_error_line(*conftest.run_cli(train.main, argv(data_dir, tmp_path / 'x', n_embd=64, init_from='resume',
                                                             branch_from=str(straight)), capsys)[::2])
    assert 'checkpoint model differs from this config: n_embd is 32 in the checkpoint, 64 here' in line


# -----------------------------------------------------------------------------
# a save that fails or is killed never replaces the good checkpoint

def test_failed_sharded_save_keeps_the_previous(data_dir, tmp_path, monkeypatch):
    """The shard write of step 6 fails (a full disk): CheckpointError in one line, ckpt.pt still names step 3's
    complete directory, the failed directory is gone."""
    write = dcp.FileSystemWriter.write_data

    def full_disk(self, plan, planner):
        if 'ckpt.dcp.000006-' in str(self.path):
            raise OSError(28, 'No space left on device')
        return write(self, plan, planner)
    monkeypatch.setattr(dcp.FileSystemWriter, 'write_data', full_disk)
    with pytest.raises(CheckpointError, match='the disk is full; the previous checkpoint is intact'):
        train.train(cfg(data_dir, tmp_path))
    assert load_checkpoint(str(tmp_path), for_resume=True)['step'] == 3
    assert len([n for n in os.listdir(tmp_path) if n.startswith('ckpt.dcp.')]) == 1


def test_killed_sharded_save_keeps_the_previous(data_dir, tmp_path):
    """SIGKILL inside the step-6 shard write: the step-3 checkpoint still loads whole; the next start sweeps the
    half-written directory and the run finishes from step 3."""
    r = run_python(['-m', 'tests.fsdp_worker', 'kill', '6', *argv(data_dir, tmp_path)], timeout=600)
    assert r.returncode == -9, r.stderr[-3000:]
    dirs = sorted(n for n in os.listdir(tmp_path) if n.startswith('ckpt.dcp.'))
    assert len(dirs) == 2 and dirs[1].startswith('ckpt.dcp.000006-')
    assert load_checkpoint(str(tmp_path), for_resume=True)['step'] == 3
    sweep_stale(str(tmp_path))
    assert sorted(n for n in os.listdir(tmp_path) if n.startswith('ckpt.dcp.')) == dirs[:1]
    train.train(cfg(data_dir, tmp_path, init_from='resume'))
    assert load_checkpoint(str(tmp_path))['step'] == 6 and list(log(tmp_path)) == [1, 2, 3, 4, 5, 6]


def test_sigint_between_the_shard_write_and_the_manifest_finishes_the_save(data_dir, tmp_path, monkeypatch):
    """issue 35: Ctrl-C landing after the shard write but before the manifest threw the finished save away (the
    deferral covered the shard write only). Both are one save now: step 6 is written whole, then KeyboardInterrupt."""
    save = checkpoint.dcp.save

    def interrupted(state, **kw):
        save(state, **kw)
        if 'ckpt.dcp.000006-' in str(kw['storage_writer'].path):
            os.kill(os.getpid(), signal.SIGINT)
    monkeypatch.setattr(checkpoint.dcp, 'save', interrupted)
    with pytest.raises(KeyboardInterrupt):
        train.train(cfg(data_dir, tmp_path))
    assert load_checkpoint(str(tmp_path), for_resume=True)['step'] == 6


# -----------------------------------------------------------------------------
# issue 35: a damaged shard directory is refused in one line

def test_a_damaged_rank_file_is_refused_by_its_checksum(data_dir, straight, tmp_path, capsys):
    """16 flipped bytes in a rank's file loaded before; the manifest now holds each file's CRC-32, checked by the
    one-process reader and by an FSDP resume (each rank checks its share of the files), which does not then blame
    the learning rate."""
    run = tmp_path / 'run'
    shutil.copytree(straight, run)
    manifest = torch.load(run / 'ckpt.pt', weights_only=True)
    assert set(manifest['checksums']) == {'.metadata', '__0_0.distcp', '__1_0.distcp'}
    rank_file = run / manifest['sharded'] / '__1_0.distcp'
    raw = bytearray(rank_file.read_bytes())
    raw[len(raw) // 2:len(raw) // 2 + 16] = bytes(b ^ 0xFF for b in raw[len(raw) // 2:len(raw) // 2 + 16])
    rank_file.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match='is damaged: __1_0.distcp does not match the checksum'):
        load_checkpoint(str(run))
    line = one_error_line(*conftest.run_cli(train.main, argv(data_dir, run, init_from='resume', max_iters=9),
                                            capsys)[::2])
    assert '__1_0.distcp does not match the checksum' in line and 'learning_rate' not in line


def test_garbage_metadata_is_one_line_and_no_logged_traceback(straight, tmp_path):
    """A .metadata that is not DCP's, under a manifest written before checksums: DCP logged two tracebacks before
    the one line (sample, eval, export, train alike: one reader). Now the line alone."""
    run = tmp_path / 'run'
    shutil.copytree(straight, run)
    manifest = torch.load(run / 'ckpt.pt', weights_only=True)
    manifest.pop('checksums', None)
    torch.save(manifest, run / 'ckpt.pt')
    (run / manifest['sharded'] / '.metadata').write_bytes(os.urandom(3000))
    r = run_python(['sample.py', f'--out_dir={run}', '--device=cpu', '--max_new_tokens=4'], timeout=120)
    assert 'incomplete or damaged' in one_error_line(r.returncode, r.stderr)


# -----------------------------------------------------------------------------
# what fsdp refuses: one line, before anything is written

@pytest.mark.parametrize('over,match', [
    (dict(parallel='zero3'), "parallel='zero3' is not allowed: must be 'ddp' or 'fsdp'"),
    (dict(optimizer='muon', muon_lr=0.02), "optimizer='muon' with parallel='fsdp' is not supported"),
    (dict(dtype='float16'), "dtype float16 with parallel='fsdp' is not supported"),
    (dict(noise_scale=True, total_batch_size=512), "noise_scale with parallel='fsdp' is not supported"),
])
def test_refusals(data_dir, tmp_path, capsys, over, match):
    with pytest.raises(train.ConfigError, match=match.replace('(', r'\(')):
        check_train_knobs(cfg(data_dir, tmp_path / 'x', **over), world=1)
    line = one_error_line(*conftest.run_cli(train.main, argv(data_dir, tmp_path / 'x', **over), capsys)[::2])
    assert match in line and not (tmp_path / 'x').exists()


def test_a_refusal_under_torchrun_is_one_line(data_dir, tmp_path):
    """issue 35: under torchrun each rank printed the same error line. The knobs are checked before any process
    group, alike on every rank, so rank 0 alone says it; torchrun's own report follows (docs/faults.md)."""
    r = torchrun(['train.py', *argv(data_dir, tmp_path / 'x', optimizer='muon', muon_lr=0.02)], timeout=300)
    lines = [line for line in r.stderr.splitlines() if line.startswith('error: ')]
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert "optimizer='muon' with parallel='fsdp' is not supported" in lines[0] and 'ChildFailedError' in r.stderr
    assert not (tmp_path / 'x').exists()


@pytest.mark.slow
def test_compile_and_checkpointing_compose(data_dir, straight, tmp_path):
    """torch.compile per block (before sharding) with activation checkpointing, 2 processes: the eager run's
    losses up to the compiler's float32 reordering. Compiling takes ~30 s on 2 cores."""
    r = torchrun(['train.py', *argv(data_dir, tmp_path, compile=True, activation_checkpointing=True, max_iters=3,
                                    lr_decay_iters=6)])
    assert r.returncode == 0, r.stderr[-3000:]
    assert log(tmp_path) == pytest.approx({k: v for k, v in log(straight).items() if k <= 3}, rel=1e-4)
