"""Tests for checkpoint.py: atomic writes (a full disk, Ctrl-C mid-write, stale temp files), keep-last-k numbered
checkpoints as hard links, the validated schema of load_checkpoint, and load_model, the one loader."""
import dataclasses
import errno
import os
import signal
import subprocess
import sys
from functools import partial

import pytest
import torch

import conftest
from pretrain import checkpoint
from pretrain.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from pretrain.configurator import ConfigError
from model import GPTConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


tiny_gpt = partial(conftest.tiny_gpt, vocab_size=257, n_layer=1, n_head=2, n_embd=16)


def state_of(net, step=7, **overrides):
    """A checkpoint in train.py's format (DESIGN.md); overrides replace keys (None deletes one)."""
    state = {'model': net.state_dict(), 'model_config': dataclasses.asdict(net.config), 'optimizer': {},
             'step': step, 'tokens': step * 64, 'loader': {'next_seq': step * 4, 'seqs_per_step': 4},
             'config': {'n_layer': net.config.n_layer}, 'tokenizer': 'bytes'}
    for k, v in overrides.items():
        if v is None:
            del state[k]
        else:
            state[k] = v
    return state


def files(d):
    return {f: open(os.path.join(d, f), 'rb').read() for f in sorted(os.listdir(d))}


@pytest.fixture(scope='module')
def model():
    return tiny_gpt()


# -----------------------------------------------------------------------------
# writing: keep-last-k

def test_keep_one_writes_only_ckpt_pt(tmp_path, model):
    for step in (1, 2, 3):
        save_checkpoint(str(tmp_path), state_of(model, step), keep=1)
    assert sorted(os.listdir(tmp_path)) == ['ckpt.pt']
    assert load_checkpoint(str(tmp_path))['step'] == 3


def test_keep_three_keeps_the_last_three_as_hard_links(tmp_path, model):
    for step in (1, 2, 3, 4, 5):
        save_checkpoint(str(tmp_path), state_of(model, step), keep=3)
    assert sorted(os.listdir(tmp_path)) == ['ckpt.pt', 'ckpt_000003.pt', 'ckpt_000004.pt', 'ckpt_000005.pt']
    # the newest numbered file is ckpt.pt itself (a hard link: no second copy on disk) ...
    assert os.path.samefile(tmp_path / 'ckpt.pt', tmp_path / 'ckpt_000005.pt')
    assert os.stat(tmp_path / 'ckpt.pt').st_nlink == 2
    # ... and each older one is the file that was ckpt.pt at its step (renamed over since, so linked once)
    for step in (3, 4):
        assert os.stat(tmp_path / f'ckpt_{step:06d}.pt').st_nlink == 1
    for step in (3, 4, 5):
        assert load_checkpoint(str(tmp_path / f'ckpt_{step:06d}.pt'))['step'] == step
    assert checkpoint.numbered_checkpoints(str(tmp_path)) == [(s, str(tmp_path / f'ckpt_{s:06d}.pt'))
                                                            for s in (3, 4, 5)]
    # saving a step again (a resumed run re-reaching it) replaces its numbered file
    save_checkpoint(str(tmp_path), state_of(model, 5, tokens=1), keep=3)
    assert load_checkpoint(str(tmp_path / 'ckpt_000005.pt'))['tokens'] == 1
    assert os.path.samefile(tmp_path / 'ckpt.pt', tmp_path / 'ckpt_000005.pt')


def test_keep_zero_keeps_every_checkpoint(tmp_path, model):
    for step in (1, 2, 3, 4, 5):
        save_checkpoint(str(tmp_path), state_of(model, step), keep=0)
    assert sorted(os.listdir(tmp_path)) == ['ckpt.pt'] + [f'ckpt_{s:06d}.pt' for s in (1, 2, 3, 4, 5)]
    assert [load_checkpoint(str(tmp_path / f'ckpt_{s:06d}.pt'))['step'] for s in (1, 2, 3, 4, 5)] == [1, 2, 3, 4, 5]


# -----------------------------------------------------------------------------
# writing: failures and interruptions

@pytest.mark.parametrize('error', [RuntimeError('[enforce fail at inline_container.cc:626] . unexpected pos 1234 vs '
                                                '5678: PytorchStreamWriter failed writing file data/0: No space left '
                                                'on device'),
                                   OSError(errno.ENOSPC, 'No space left on device')])
@pytest.mark.parametrize('keep', [1, 3])
def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, model, monkeypatch, error, keep):
    save_checkpoint(str(tmp_path), state_of(model, 1), keep=keep)
    before = files(tmp_path)

    def full(obj, f, *a, **k):
        f.write(b'PK\x03\x04 the first bytes of a zip')   # a partial temp file, as a real full disk leaves
        raise error
    monkeypatch.setattr(checkpoint.torch, 'save', full)
    with pytest.raises(CheckpointError) as e:
        save_checkpoint(str(tmp_path), state_of(model, 2), keep=keep)
    msg = str(e.value)
    assert '\n' not in msg and 'the disk is full' in msg and str(tmp_path / 'ckpt.pt') in msg, msg
    assert files(tmp_path) == before   # ckpt.pt byte-identical, no ckpt.pt.tmp, no ckpt_000002.pt


def test_another_write_error_is_one_line(tmp_path, model, monkeypatch):
    def denied(obj, f, *a, **k):
        raise PermissionError(errno.EACCES, 'Permission denied')
    monkeypatch.setattr(checkpoint.torch, 'save', denied)
    with pytest.raises(CheckpointError, match='Permission denied; no checkpoint was written') as e:
        save_checkpoint(str(tmp_path), state_of(model, 2))
    assert '\n' not in str(e.value) and os.listdir(tmp_path) == []
    monkeypatch.undo()
    save_checkpoint(str(tmp_path), state_of(model, 1))
    monkeypatch.setattr(checkpoint.torch, 'save', denied)
    with pytest.raises(CheckpointError, match='Permission denied; the previous checkpoint is intact'):
        save_checkpoint(str(tmp_path), state_of(model, 2))


def test_a_full_disk_at_the_first_checkpoint_claims_no_previous_one(tmp_path, model, monkeypatch):
    """issue 23: the line said 'the previous checkpoint is intact' when there was none."""
    def full(obj, f, *a, **k):
        f.write(b'PK')
        raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(checkpoint.torch, 'save', full)
    with pytest.raises(CheckpointError) as e:
        save_checkpoint(str(tmp_path), state_of(model, 1))
    msg = str(e.value)
    assert 'the disk is full' in msg and str(tmp_path / 'ckpt.pt') in msg and 'no checkpoint was written' in msg
    assert 'intact' not in msg and os.listdir(tmp_path) == []


def test_sigint_during_a_write_finishes_the_write_then_interrupts(tmp_path, model, monkeypatch):
    """Ctrl-C arriving mid-write: the new checkpoint is written whole and loads; then KeyboardInterrupt."""
    save_checkpoint(str(tmp_path), state_of(model, 1))
    handler = signal.getsignal(signal.SIGINT)
    real_save = torch.save

    def interrupted(obj, f, *a, **k):
        os.kill(os.getpid(), signal.SIGINT)   # delivered now, in the middle of save_checkpoint
        real_save(obj, f, *a, **k)
    monkeypatch.setattr(checkpoint.torch, 'save', interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(str(tmp_path), state_of(model, 2), keep=2)
    assert load_checkpoint(str(tmp_path))['step'] == 2
    assert load_checkpoint(str(tmp_path / 'ckpt_000002.pt'))['step'] == 2   # the keep-k links were made too
    assert sorted(os.listdir(tmp_path)) == ['ckpt.pt', 'ckpt_000002.pt']
    assert signal.getsignal(signal.SIGINT) is handler   # Ctrl-C works as before afterwards


def test_sweep_stale_removes_temp_files_only(tmp_path, model):
    save_checkpoint(str(tmp_path), state_of(model, 1), keep=2)
    (tmp_path / 'ckpt.pt.tmp').write_bytes(b'PK\x03\x04 half a zip')   # a writer killed mid-write (SIGKILL)
    (tmp_path / 'log.jsonl').write_text('{}\n')
    (tmp_path / 'notes.tmp').write_text('not ours')
    before = {f: b for f, b in files(tmp_path).items() if f != 'ckpt.pt.tmp'}
    checkpoint.sweep_stale(str(tmp_path))
    assert files(tmp_path) == before
    checkpoint.sweep_stale(str(tmp_path / 'does-not-exist'))   # nothing to sweep: no error


# -----------------------------------------------------------------------------
# reading: the schema

def test_load_checkpoint_round_trip_and_paths(tmp_path, model):
    save_checkpoint(str(tmp_path), state_of(model, 7))
    ckpt = load_checkpoint(str(tmp_path))   # a run directory ...
    assert ckpt['step'] == 7 and ckpt['tokenizer'] == 'bytes'
    assert all(torch.equal(ckpt['model'][k], v) for k, v in model.state_dict().items())
    assert load_checkpoint(str(tmp_path / 'ckpt.pt'), for_resume=True)['step'] == 7   # ... or the .pt file
    assert checkpoint.checkpoint_path(str(tmp_path)) == str(tmp_path / 'ckpt.pt')
    assert checkpoint.checkpoint_path(str(tmp_path / 'ckpt_000004.pt')) == str(tmp_path / 'ckpt_000004.pt')


def write_raw(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(obj, path)


BAD = {   # name -> (what ckpt.pt holds, words of the one-line error)
    'zero-length file': (b'', 'is unreadable'),
    'not a zip': (b'this is not a checkpoint', 'is unreadable'),
    'a list': ([1, 2, 3], 'is a list, not a train.py checkpoint'),
    'a tensor': (torch.zeros(3), 'is a Tensor, not a train.py checkpoint'),
    'no model_config': (dict(model_config=None), "'model_config' is missing, expected dict"),
    'no model': (dict(model=None), "'model' is missing, expected dict"),
    'step is a string': (dict(step='7'), "'step' is a str, expected int"),
    'step is a bool': (dict(step=True), "'step' is a bool, expected int"),
    'no tokenizer': (dict(tokenizer=None), "'tokenizer' is missing, expected str"),
    'unknown tokenizer': (dict(tokenizer='llama'), "unknown tokenizer 'llama'"),
    'not tensors': (dict(model={'w': [1.0]}), "'model' holds something other than tensors"),
    'a guard without its number': (dict(guard={'best': 1.0}), "'guard' lacks best_val_loss"),
}


@pytest.mark.parametrize('case', list(BAD))
def test_bad_checkpoints_are_one_line(tmp_path, model, case):
    content, words = BAD[case]
    path = str(tmp_path / 'run' / 'ckpt.pt')
    if isinstance(content, bytes):
        os.makedirs(os.path.dirname(path))
        open(path, 'wb').write(content)
    elif isinstance(content, dict):
        write_raw(path, state_of(model, **content))
    else:
        write_raw(path, content)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(str(tmp_path / 'run'))
    msg = str(e.value)
    assert '\n' not in msg and path in msg and words in msg, msg


def test_resume_needs_the_optimizer_and_loader(tmp_path, model):
    write_raw(str(tmp_path / 'ckpt.pt'), state_of(model, loader=None))
    load_checkpoint(str(tmp_path))   # enough to sample from
    with pytest.raises(CheckpointError, match="'loader' is missing, expected dict"):
        load_checkpoint(str(tmp_path), for_resume=True)
    write_raw(str(tmp_path / 'ckpt.pt'), state_of(model, loader={'next_seq': 3}))
    with pytest.raises(CheckpointError, match="'loader' lacks next_seq / seqs_per_step"):
        load_checkpoint(str(tmp_path), for_resume=True)


def test_no_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match=f"no checkpoint at {tmp_path / 'ckpt.pt'} \\(train one"):
        load_checkpoint(str(tmp_path))


def test_zero_length_checkpoint_through_sample_cli(tmp_path):
    """A run killed while an old writer truncated ckpt.pt: sample.py says so in one line, no traceback."""
    (tmp_path / 'ckpt.pt').write_bytes(b'')
    r = subprocess.run([sys.executable, 'sample.py', f'--out_dir={tmp_path}', '--device=cpu'], cwd=ROOT,
                       capture_output=True, text=True, timeout=120, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert r.returncode == 1 and r.stdout == '' and 'Traceback' not in r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: ') and 'is unreadable' in lines[0], r.stderr
    assert str(tmp_path / 'ckpt.pt') in lines[0]


# -----------------------------------------------------------------------------
# reading: the model

def test_weights_that_do_not_fit_their_model_config(tmp_path, model):
    write_raw(str(tmp_path / 'ckpt.pt'), state_of(model, model=tiny_gpt(n_embd=32).state_dict()))
    with pytest.raises(CheckpointError, match="does not match its own model_config: .*shape.*differ") as e:
        load_model('resume', str(tmp_path))
    assert '\n' not in str(e.value)
    sd = dict(model.state_dict())
    extra = sd.pop('transformer.ln_f.weight')
    write_raw(str(tmp_path / 'ckpt.pt'), state_of(model, model={**sd, 'stray.weight': extra}))
    with pytest.raises(CheckpointError, match="1 missing, e.g. transformer.ln_f.weight; 1 unexpected, e.g. stray"):
        load_model('resume', str(tmp_path))


def test_a_model_config_this_model_py_cannot_build(tmp_path, model):
    write_raw(str(tmp_path / 'ckpt.pt'), state_of(model, model_config={'n_layer': 2, 'n_wings': 3}))
    with pytest.raises(CheckpointError, match='has a model_config this model.py cannot build') as e:
        load_model('resume', str(tmp_path))
    assert '\n' not in str(e.value)


def test_load_model_resume_scratch_and_presets(tmp_path, model):
    save_checkpoint(str(tmp_path), state_of(model, 7))
    for where in (str(tmp_path), str(tmp_path / 'ckpt.pt')):
        loaded, tokenizer, desc, ckpt = load_model('resume', where)
        assert tokenizer == 'bytes' and '(step 7)' in desc and ckpt['step'] == 7
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    # dropout comes from the knobs, the shape from the checkpoint
    loaded, *_ = load_model('resume', str(tmp_path), {'dropout': 0.25, 'n_layer': 9})
    assert loaded.config.dropout == 0.25 and loaded.config.n_layer == 1
    knobs = {f.name: getattr(model.config, f.name) for f in dataclasses.fields(GPTConfig)}
    scratch, tok, desc, ckpt = load_model('scratch', cfg=knobs, vocab_size=300, tokenizer='bytes')
    assert scratch.config == dataclasses.replace(model.config, vocab_size=300) and ckpt is None and tok == 'bytes'
    assert checkpoint.model_config_from({**knobs, 'vocab_size': 5}, 300).vocab_size == 300
    with pytest.raises(ConfigError, match="init_from='scratch' needs"):
        load_model('scratch')
    shaped, tok, desc, _ = load_model('gpt2', pretrained=False)   # bench.py: the shape only, random weights
    assert shaped.config.n_layer == 12 and shaped.config.n_embd == 768 and tok == 'gpt2' and 'random' in desc


def test_init_from_is_decided_in_one_place(tmp_path):
    """checkpoint.init_from_kind: every script's allowed init_from values, one line naming them otherwise."""
    kind = checkpoint.init_from_kind
    assert [kind(v, ('scratch', 'resume', 'auto', 'gpt2')) for v in ('scratch', 'resume', 'auto', 'gpt2-xl',
                                                                      str(tmp_path))] == \
        ['scratch', 'resume', 'auto', 'gpt2', 'gpt2']
    assert kind('gpt3-small', ('scratch', 'resume', 'preset')) == 'preset'   # bench.py: a shape, random weights
    assert kind('gpt2', ('scratch', 'resume', 'preset')) == 'preset'
    for value, allowed, words in (('scratch', ('resume', 'gpt2'), "init_from='scratch' is not allowed here: must be "
                                                                   "'resume' | one of gpt2, gpt2-medium"),
                                  ('gpt3-small', ('resume', 'gpt2'), "init_from='gpt3-small'"),
                                  (str(tmp_path / 'nope'), ('resume', 'gpt2'), 'nope'),
                                  (3, ('scratch',), 'init_from=3')):
        with pytest.raises(ConfigError, match=words) as e:
            kind(value, allowed)
        assert '\n' not in str(e.value)


# -----------------------------------------------------------------------------
# issue 35: checksums, an unreadable manifest, Windows

def flip_bytes(path, tensor, at=100, n=16):
    """Invert n bytes of `tensor`'s data inside the checkpoint file at path (found by its first 64 bytes)."""
    raw = bytearray(open(path, 'rb').read())
    i = raw.find(tensor.contiguous().numpy().tobytes()[:64])
    assert i >= 0 and raw.find(tensor.contiguous().numpy().tobytes()[:64], i + 1) < 0
    raw[i + at:i + at + n] = bytes(b ^ 0xFF for b in raw[i + at:i + at + n])
    open(path, 'wb').write(bytes(raw))


def test_a_damaged_tensor_is_refused_naming_it_and_the_file(tmp_path, model):
    """16 flipped bytes inside a weight loaded everywhere (sample.py printed '@@@@@', eval.py a loss of 1e28). The
    CRC-32 written with each tensor is checked at every load: one line naming the tensor and the file."""
    opt = torch.optim.AdamW(model.parameters())
    model(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))[1].backward()
    opt.step()
    save_checkpoint(str(tmp_path), state_of(model, optimizer=opt.state_dict()))
    sums = torch.load(tmp_path / 'ckpt.pt', weights_only=True)['checksums']
    assert set(sums) == {f'model.{k}' for k in model.state_dict()} | \
        {f'optimizer.state.{i}.{k}' for i, s in opt.state_dict()['state'].items() for k in s}
    name = 'transformer.h.0.attn.c_q.weight'
    flip_bytes(tmp_path / 'ckpt.pt', model.state_dict()[name])
    for load in (load_checkpoint, lambda p: load_model('resume', p)):
        with pytest.raises(CheckpointError) as e:
            load(str(tmp_path))
        msg = str(e.value)
        assert '\n' not in msg and str(tmp_path / 'ckpt.pt') in msg and f'tensor model.{name} does not match' in msg
    # the optimizer's state is checked when a resume uses it
    save_checkpoint(str(tmp_path), state_of(model, optimizer=opt.state_dict()))
    flip_bytes(tmp_path / 'ckpt.pt', opt.state_dict()['state'][2]['exp_avg'], at=0, n=4)
    load_checkpoint(str(tmp_path))
    with pytest.raises(CheckpointError, match='tensor optimizer.state.2.exp_avg does not match'):
        load_checkpoint(str(tmp_path), for_resume=True)


def test_checkpoints_without_checksums_still_load(tmp_path, model):
    write_raw(str(tmp_path / 'ckpt.pt'), state_of(model))   # written before the key existed
    assert 'checksums' not in torch.load(tmp_path / 'ckpt.pt', weights_only=True)
    assert load_checkpoint(str(tmp_path), for_resume=True)['step'] == 7
    write_raw(str(tmp_path / 'ckpt.pt'), state_of(model, checksums=[1, 2]))
    with pytest.raises(CheckpointError, match="'checksums' is a list, not a dict"):
        load_checkpoint(str(tmp_path))


def test_an_unreadable_manifest_deletes_no_shard_directory(tmp_path, model):
    """issue 35: a truncated ckpt.pt beside intact shards was taken as naming nothing, and the start-up sweep deleted
    the shard directory, the only copy of the weights. Now nothing is deleted and one line says why."""
    shards = tmp_path / 'ckpt.dcp.000003-0badc0de'
    shards.mkdir()
    (shards / '__0_0.distcp').write_bytes(b'the weights')
    write_raw(str(tmp_path / 'ckpt.pt'), {'sharded': shards.name})
    (tmp_path / 'ckpt.pt').write_bytes((tmp_path / 'ckpt.pt').read_bytes()[:100])   # truncated
    with pytest.raises(CheckpointError) as e:
        checkpoint.sweep_stale(str(tmp_path))
    msg = str(e.value)
    assert '\n' not in msg and 'is unreadable' in msg and 'nothing was deleted' in msg and str(tmp_path) in msg
    assert (shards / '__0_0.distcp').read_bytes() == b'the weights'
    os.remove(tmp_path / 'ckpt.pt')   # no manifest at all: the directory is a killed save's, swept
    checkpoint.sweep_stale(str(tmp_path))
    assert not shards.exists()


def test_windows_saves_without_a_directory_fsync(tmp_path, model, monkeypatch):
    """Windows cannot open a directory (os.open raises PermissionError), so the rename is not fsynced there."""
    real_open = os.open

    def windows_open(path, flags, *a):
        if os.path.isdir(path):
            raise PermissionError(errno.EACCES, 'Permission denied', path)
        return real_open(path, flags, *a)
    monkeypatch.setattr(checkpoint.sys, 'platform', 'win32')
    monkeypatch.setattr(checkpoint.os, 'open', windows_open)
    save_checkpoint(str(tmp_path), state_of(model, 3))
    assert load_checkpoint(str(tmp_path))['step'] == 3
