"""Tests for eval.py: bits per byte checked by hand for both tokenizers, the same figures at 1 and 2 processes
(torchrun on CPU/gloo), and every bad input as one `error:` line with exit status 1. Checkpoints and datasets are
tiny and written here."""
import json
import math
import os
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import conftest
import eval as evaluation   # the script under test (the name shadows the builtin only as a module attribute)
from pretrain.data import get_tokenizer, write_json
from conftest import free_port, one_error_line, run_python, serve_dir, torchrun, write_ckpt, write_shard

TEXT = ("First Citizen: Before we proceed any further, hear me speak. All: Speak, speak. First Citizen: You are "
        "all resolved rather to die than to famish? All: Resolved. resolved. First Citizen: First, you know Caius "
        "Marcius is chief enemy to the people. All: We know't, we know't. First Citizen: Let us kill him, and "
        "we'll have corn at our own price. Is't a verdict? ")
HELLASWAG = [
    {'ctx': 'The chef cracked two eggs into the bowl and then', 'label': 0,
     'endings': ['whisked them with a fork.', 'taxied the plane.', 'jumped into a puddle.', 'sang a song.']},
    {'ctx': 'The pilot checked the instruments before she', 'label': 1,
     'endings': ['whisked the eggs.', 'taxied the plane onto the runway.', 'slept.', 'planted tulips.']},
    {'ctx': 'After the rain stopped, the children ran outside and', 'label': 2,
     'endings': ['cooked dinner.', 'flew to Paris.', 'jumped into every puddle.', 'read a book.']},
    {'ctx': 'The old dog lay by the fire while the cat', 'label': 3,
     'endings': ['barked.', 'drove a truck.', 'wrote a letter.', 'watched the mice from the shelf.']},
    {'ctx': 'He tuned the guitar carefully, and then he', 'label': 0,
     'endings': ['played a slow song.', 'ate soup.', 'swam.', 'painted the wall blue.']},
    {'ctx': 'The gardener knelt in the soil and', 'label': 1,
     'endings': ['typed an email.', 'planted a row of tulips.', 'fixed the car.', 'ran a marathon.']},
    {'ctx': 'The runner crossed the finish line and', 'label': 2,
     'endings': ['fell asleep at the desk.', 'baked bread.', 'raised both arms in triumph.', 'sold the house.']},
]


pytestmark = pytest.mark.usefixtures('one_thread')   # tests/conftest.py


# large random weights: the losses depend on the context, so nothing below is true by accident
tiny_gpt = partial(conftest.tiny_gpt, large_weights=True, n_layer=1, n_head=2, n_embd=32)


def write_dataset(path, tokenizer_name, val, train=None):
    """A prepared dataset as prepare.py leaves it: one shard per split and a complete meta.json."""
    vocab_size, eot = {'gpt2': (50257, 50256), 'bytes': (257, 256)}[tokenizer_name]
    os.makedirs(path)
    splits = {'val': np.asarray(val, dtype=np.uint16), 'train': np.asarray(val if train is None else train,
                                                                           dtype=np.uint16)}
    for split, tokens in splits.items():
        write_shard(os.path.join(path, f'tiny_{split}_000000.bin'), tokens)
    write_json(os.path.join(path, 'meta.json'), {
        'name': 'tiny', 'tokenizer': tokenizer_name, 'vocab_size': vocab_size, 'eot': eot, 'complete': True,
        **{s: {'shards': 1, 'tokens': len(t), 'max_token': int(t.max())} for s, t in splits.items()}})
    return str(path)


@pytest.fixture(scope='module')
def gpt2_run(tmp_path_factory):
    """A GPT-2-token checkpoint whose run trained on a GPT-2-token dataset, and a HellaSwag-format file."""
    tmp = tmp_path_factory.mktemp('gpt2')
    tok = get_tokenizer('gpt2')
    ids = tok.encode(TEXT * 4)
    data = write_dataset(tmp / 'data', 'gpt2', ids)
    hs = tmp / 'hellaswag.jsonl'
    hs.write_text(''.join(json.dumps(ex) + '\n' for ex in HELLASWAG))
    return {'out': write_ckpt(tmp / 'run', tiny_gpt(vocab_size=50257, block_size=64), tokenizer='gpt2',
                              config={'data_dir': data}),
            'data': data, 'hs': str(hs), 'ids': ids}


@pytest.fixture(scope='module')
def bytes_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('bytes')
    data = write_dataset(tmp / 'data', 'bytes', list(TEXT.encode()))
    return {'out': write_ckpt(tmp / 'run', tiny_gpt(vocab_size=257, block_size=16), config={'data_dir': data}),
            'data': data}


def direct_nats(model, ids, n_seqs):
    """Summed loss over the targets of sequences 0..n_seqs-1: chunk i is ids[i*T : i*T+T+1], one plain forward
    each, float64."""
    T = model.config.block_size
    total = 0.0
    for i in range(n_seqs):
        chunk = torch.tensor(ids[i * T:i * T + T + 1])
        with torch.no_grad():
            logits, _ = model(chunk[None, :-1])
        total += F.cross_entropy(logits[0, :, :model.config.vocab_size].double(), chunk[1:], reduction='sum').item()
    return total


def targets(ids, T, n_seqs):
    return [t for i in range(n_seqs) for t in ids[i * T + 1:i * T + T + 1]]


# -----------------------------------------------------------------------------
# bits per byte, by hand

def test_bpb_bytes_is_loss_over_ln2(bytes_run, rt):
    """One token per byte and no end-of-text among the targets: bits per byte is the loss in bits."""
    model, tok = tiny_gpt(vocab_size=257, block_size=16), get_tokenizer('bytes')
    ids = list(TEXT.encode())
    n = (len(ids) - 1) // 16
    loader = evaluation.open_split(bytes_run['data'], 'val', tok, model)
    r = evaluation.bpb(model, tok, loader, rt, batch_size=4)   # n % 4 != 0: a short last batch
    assert n % 4 and r['seqs'] == n and r['tokens'] == r['bytes'] == n * 16
    assert r['loss'] == pytest.approx(direct_nats(model, ids, n) / (n * 16), rel=1e-6)
    assert r['bpb'] == pytest.approx(r['loss'] / math.log(2), rel=1e-12)


def test_bpb_bytes_does_not_count_end_of_text(tmp_path, rt):
    model, tok = tiny_gpt(vocab_size=257, block_size=16), get_tokenizer('bytes')
    ids = [256] + list(TEXT[:150].encode()) + [256] + list(TEXT[150:].encode())   # two documents
    data = write_dataset(tmp_path / 'data', 'bytes', ids)
    n = (len(ids) - 1) // 16
    eots = targets(ids, 16, n).count(256)
    assert eots == 1   # the first eot is never a target; the second is
    r = evaluation.bpb(model, tok, evaluation.open_split(data, 'val', tok, model), rt, batch_size=4)
    assert r['bytes'] == n * 16 - eots
    assert r['bpb'] == pytest.approx(direct_nats(model, ids, n) / (math.log(2) * (n * 16 - eots)), rel=1e-6)


@pytest.mark.parametrize('max_seqs', [None, 3])
def test_bpb_gpt2_by_hand(gpt2_run, rt, max_seqs):
    """Nats from plain forwards; bytes from the UTF-8 of the decoded target tokens."""
    model, tok, ids = tiny_gpt(vocab_size=50257, block_size=64), get_tokenizer('gpt2'), gpt2_run['ids']
    n = (len(ids) - 1) // 64 if max_seqs is None else max_seqs
    r = evaluation.bpb(model, tok, evaluation.open_split(gpt2_run['data'], 'val', tok, model), rt, batch_size=2,
                       max_seqs=max_seqs)
    n_bytes = len(tok.decode(targets(ids, 64, n)).encode('utf-8'))
    assert (r['seqs'], r['tokens'], r['bytes']) == (n, n * 64, n_bytes)
    nats = direct_nats(model, ids, n)
    assert r['loss'] == pytest.approx(nats / (n * 64), rel=1e-6)
    assert r['bpb'] == pytest.approx(nats / (math.log(2) * n_bytes), rel=1e-6)
    assert n_bytes > n * 64   # GPT-2 tokens average several bytes: bpb is well below loss / ln 2
    assert r['bpb'] < r['loss'] / math.log(2) / 2


def test_cli_json_and_table(gpt2_run, tmp_path, capfd):
    """Both tasks, the run's own data_dir by default; --json=- is one object alone on stdout (the table on stderr),
    --json=FILE writes it beside the table, the convention of every script (issue 35)."""
    args = ['--init_from=resume', f"--out_dir={gpt2_run['out']}", '--tasks=hellaswag,bpb',
            f"--hellaswag_path={gpt2_run['hs']}", '--batch_size=3']
    code, out, err = run_main([*args, '--json=-'], capfd)
    assert code == 0, err
    r = json.loads(out)
    assert out.count('\n') == 1 and 'hellaswag  acc ' in err
    code, out, err = run_main([*args, f'--json={tmp_path}/r.json'], capfd)
    assert code == 0 and json.loads((tmp_path / 'r.json').read_text()) == r and out.startswith('hellaswag  acc ')
    assert list(r) == ['hellaswag', 'bpb'] and r['hellaswag']['n'] == 7
    assert set(r['bpb']) >= {'loss', 'bpb', 'tokens', 'bytes', 'split'} and r['bpb']['data_dir'] == gpt2_run['data']
    code, out, err = run_main(['--init_from=resume', f"--out_dir={gpt2_run['out']}", '--tasks=hellaswag',
                               f"--hellaswag_path={gpt2_run['hs']}", '--limit=2'], capfd)
    assert code == 0 and out.startswith('hellaswag  acc ') and '(2 examples)' in out


def test_cli_few_shot(gpt2_run, rt, capfd):
    """--shots=k: hellaswag.score with k shots drawn from --shots_path with --shots_seed; 'shots' in the results."""
    from pretrain import hellaswag
    args = ['--init_from=resume', f"--out_dir={gpt2_run['out']}", '--tasks=hellaswag',
            f"--hellaswag_path={gpt2_run['hs']}", f"--shots_path={gpt2_run['hs']}", '--json=-']
    code, out, err = run_main(args + ['--shots=3', '--shots_seed=5'], capfd)
    assert code == 0, err
    r = json.loads(out)['hellaswag']
    model = tiny_gpt(vocab_size=50257, block_size=64)   # the checkpoint's model (same seed)
    want = hellaswag.score(model, get_tokenizer('gpt2'), HELLASWAG, rt, progress=False, shots=3, train=HELLASWAG,
                           shots_seed=5)
    assert r == {**want, 'shots': 3}
    zero = hellaswag.score(model, get_tokenizer('gpt2'), HELLASWAG, rt, progress=False)
    assert json.loads(run_main(args, capfd)[1])['hellaswag'] == {**zero, 'shots': 0}
    code, out, _ = run_main(args[:-1] + ['--shots=3', '--shots_seed=5'], capfd)
    assert code == 0 and '(7 examples, 3-shot)' in out


# -----------------------------------------------------------------------------
# one process or two: the same figures

@pytest.mark.slow
def test_two_processes_match_one(gpt2_run):
    """7 examples and 6 sequences: the ranks get unequal slices (3 + 4 examples) and batches of several sizes."""
    args = ['--init_from=resume', f"--out_dir={gpt2_run['out']}", '--tasks=hellaswag,bpb', '--device=cpu',
            '--dtype=float32', f"--hellaswag_path={gpt2_run['hs']}", '--batch_size=2', '--json=-', '--progress=False']
    one, two = run_python(['eval.py', *args]), torchrun(['eval.py', *args])
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-2000:]
    r1, r2 = json.loads(one.stdout), json.loads(two.stdout)   # rank 0 alone prints: exactly one object
    assert r1['hellaswag'] == r2['hellaswag'] and r1['hellaswag']['n'] == 7
    assert 0 < r1['hellaswag']['acc'] < 1 or 0 < r1['hellaswag']['acc_norm'] < 1   # not a degenerate answer
    for k in ('tokens', 'bytes', 'seqs', 'split'):
        assert r1['bpb'][k] == r2['bpb'][k]
    assert r2['bpb']['loss'] == pytest.approx(r1['bpb']['loss'], rel=1e-6)
    assert r2['bpb']['bpb'] == pytest.approx(r1['bpb']['bpb'], rel=1e-6)


# -----------------------------------------------------------------------------
# bad input: one `error:` line, exit 1

def run_main(argv, capsys):
    """eval.main in-process, on CPU in float32 without progress bars -> (exit code, stdout, stderr)."""
    return conftest.run_cli(evaluation.main, ['--device=cpu', '--dtype=float32', '--progress=False', *argv], capsys)


@pytest.mark.parametrize('case, message', [
    (['--tasks=mmlu'], "unknown task 'mmlu' (tasks: hellaswag, bpb)"),
    (['--tasks=,'], 'tasks must name at least one'),
    (['--split=test'], "split must be 'val' or 'train'"),
    (['--limit=0'], 'limit must be None or an int >= 1'),
    (['--max_seqs=-2'], 'max_seqs must be None or an int >= 1'),
    (['--batch_size=0'], 'batch_size must be >= 1'),
    (['--init_from=scratch'], "init_from='scratch' is not allowed here: must be 'resume'"),
    (['--shots=-1'], 'shots must be an int >= 0'),
    (['--tasks=hellaswag', '--hellaswag_path=HS', '--shots=2', '--shots_path=/nonexistent/train.jsonl'],
     'no HellaSwag file at /nonexistent/train.jsonl'),
    (['--tasks=hellaswag', '--hellaswag_path=HS', '--shots=8', '--shots_path=HS'],
     '--shots=8 needs at least 8 train examples; HS has 7'),
    (['--tasks=hellaswag', '--hellaswag_path=/nonexistent/hs.jsonl'], 'no HellaSwag file at /nonexistent/hs.jsonl'),
    (['--tasks=bpb', '--data_dir=/nonexistent/data'], '/nonexistent/data'),
    (['--tasks=bpb', '--data_dir=BYTES'], 'holds bytes tokens but the model reads gpt2 tokens'),
    (['--tasks=bpb', '--data_dir=SHORT'], 'fewer than block_size+1 = 65 tokens'),
    (['--tasks=bpb', '--split=train', '--data_dir=NOTRAIN'], 'no train shards'),
])
def test_cli_errors(gpt2_run, bytes_run, tmp_path, capsys, case, message):
    dirs = {'BYTES': bytes_run['data'], 'HS': gpt2_run['hs'],
            'SHORT': lambda: write_dataset(tmp_path / 'short', 'gpt2', gpt2_run['ids'][:64]),
            'NOTRAIN': lambda: write_dataset(tmp_path / 'notrain', 'gpt2', gpt2_run['ids'])}
    args = []
    for a in case:
        for k, v in dirs.items():
            if a.endswith('=' + k):
                a = a[:-len(k)] + (v() if callable(v) else v)
        args.append(a)
    if 'NOTRAIN' in ''.join(case):
        os.remove(os.path.join(tmp_path / 'notrain', 'tiny_train_000000.bin'))
    code, out, err = run_main([f"--out_dir={gpt2_run['out']}", *args], capsys)
    assert out == '' and message.replace('HS', gpt2_run['hs']) in one_error_line(code, err)


def test_cli_corrupt_hellaswag_file(gpt2_run, tmp_path, capsys):
    bad = tmp_path / 'bad.jsonl'
    bad.write_text(json.dumps(HELLASWAG[0]) + '\n{"ctx": "a", "endings": ["b"], "label": 0}\n')
    code, _, err = run_main([f"--out_dir={gpt2_run['out']}", '--tasks=hellaswag', f'--hellaswag_path={bad}'], capsys)
    assert f"{bad}:2: 'endings' must be a list of 4 strings" in one_error_line(code, err)
    bad.write_text('{"ctx": "a", "endings": ["b", "c", "d", "e"], "label": 0}\nnot json\n')
    code, _, err = run_main([f"--out_dir={gpt2_run['out']}", '--tasks=hellaswag', f'--hellaswag_path={bad}'], capsys)
    assert f'{bad}:2: not JSON' in one_error_line(code, err)


def test_cli_byte_model_cannot_do_hellaswag(bytes_run, gpt2_run, capsys):
    code, _, err = run_main([f"--out_dir={bytes_run['out']}", '--tasks=hellaswag',
                             f"--hellaswag_path={gpt2_run['hs']}"], capsys)
    assert one_error_line(code, err) == 'error: HellaSwag needs a GPT-2-token model; this one uses bytes'


def test_cli_missing_or_corrupt_checkpoint(tmp_path, capsys):
    code, _, err = run_main([f'--out_dir={tmp_path}'], capsys)
    assert 'no checkpoint at' in one_error_line(code, err)
    (tmp_path / 'ckpt.pt').write_bytes(b'not a checkpoint')
    code, _, err = run_main([f'--out_dir={tmp_path}'], capsys)
    assert 'unreadable' in one_error_line(code, err)


def test_cli_bpb_needs_a_data_dir(tmp_path, capsys):
    out = write_ckpt(tmp_path / 'run', tiny_gpt(vocab_size=257, block_size=16))   # its run records no data_dir
    code, _, err = run_main([f'--out_dir={out}', '--tasks=bpb'], capsys)
    assert 'bpb needs --data_dir' in one_error_line(code, err)


def test_cli_corrupt_or_failed_download_is_one_line(gpt2_run, tmp_path, monkeypatch, capsys):
    """The official val file from a local server that serves another file (its sha256 is not the pinned one),
    then from a port where nothing listens: each one `error:` line, nothing left in the cache."""
    from pretrain import hellaswag
    srv_dir = tmp_path / 'srv'
    srv_dir.mkdir()
    (srv_dir / 'hellaswag_val.jsonl').write_text(open(gpt2_run['hs']).read())
    with serve_dir(srv_dir) as url:
        monkeypatch.setattr(hellaswag, 'DATA_DIR', str(tmp_path / 'hs'))
        monkeypatch.setattr(hellaswag, 'VAL_URL', f'{url}/hellaswag_val.jsonl')
        monkeypatch.setenv('NO_PROXY', '127.0.0.1,localhost')
        code, out, err = run_main([f"--out_dir={gpt2_run['out']}", '--tasks=hellaswag'], capsys)
    assert code == 1 and out == ''
    assert err.strip().splitlines()[-1].startswith('error: checksum mismatch for http://127.0.0.1')
    assert sum(line.startswith('error:') for line in err.splitlines()) == 1 and 'Traceback' not in err
    assert os.listdir(tmp_path / 'hs') == []
    monkeypatch.setattr(hellaswag, 'VAL_URL', f'http://127.0.0.1:{free_port()}/hellaswag_val.jsonl')
    monkeypatch.setattr('pretrain.data.time.sleep', lambda s: None)   # no back-off between the retries
    code, out, err = run_main([f"--out_dir={gpt2_run['out']}", '--tasks=hellaswag'], capsys)
    assert code == 1 and err.strip().splitlines()[-1].startswith('error: could not download http://127.0.0.1')
    assert sum(line.startswith('error:') for line in err.splitlines()) == 1 and 'Traceback' not in err


def test_cli_subprocess_errors(bytes_run, gpt2_run):
    """The real command line: no traceback, one line, exit 1."""
    r = run_python(['eval.py', f"--out_dir={bytes_run['out']}", '--tasks=bpb,nope', '--device=cpu'])
    assert r.stdout == '' and one_error_line(r.returncode, r.stderr) == \
        "error: unknown task 'nope' (tasks: hellaswag, bpb)"
    r = run_python(['eval.py', f"--out_dir={bytes_run['out']}", '--tasks=hellaswag', '--device=cpu'])
    assert one_error_line(r.returncode, r.stderr).endswith('this one uses bytes')
