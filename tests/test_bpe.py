"""Tests for the trained BPE tokenizer (prepare.py --tokenizer=bpe): deterministic training on the train documents
only, tiktoken encoding to the trainer's own ids, the file in tiktoken's format and its sha256 in meta.json and in
every checkpoint; train.py, sample.py, eval.py, bench.py, export.py and `scaling.py budget` on it; and every bad
input as one `error:` line. Corpora and vocabularies are tiny, so each test takes seconds."""
import os
import shutil
from functools import partial

import numpy as np
import pytest
import torch

import conftest
import prepare
import train
from conftest import WORDS, one_error_line, run_cli, write_ckpt
from pretrain.checkpoint import load_checkpoint
from pretrain.data import (BPE_FILE, BPE_PATTERN, EOT_TEXT, DataError, get_tokenizer, read_meta, read_ranks,
                           read_shard, shard_paths, tokenizer_id, train_bpe)

pytestmark = pytest.mark.usefixtures('one_thread')   # tests/conftest.py

TEXTS = ["Hello world, it's 2026! 1234567 x", " héllo  wörld\n\n\tfoo  🙂 they'll've THEY'LL",
         "def f(x):\n    return x\n", "  leading spaces and trailing   ", "\r\n\r\n", "", "日本語のテキスト",
         "a<|endoftext|>b"]
TINY = dict(n_layer=1, n_head=2, n_embd=32, block_size=32, batch_size=4, total_batch_size=128, max_iters=6,
            warmup_iters=1, eval_interval=3, eval_iters=2, log_interval=3, checkpoint_interval=3, dtype='float32',
            device='cpu', compile=False)


def documents(n, lines=30, seed=0, extra=''):
    """n documents of random sentences of conftest.WORDS (the same for the same arguments)."""
    rng = np.random.default_rng(seed)
    return ['\n'.join(' '.join(rng.choice(WORDS, size=10)) + f'{extra} {i * 7 + j}.' for j in range(lines))
            for i in range(n)]


def write_corpus(root, docs):
    os.makedirs(root, exist_ok=True)
    for i, d in enumerate(docs):
        (root / f'doc{i:02d}.txt').write_text(d, encoding='utf-8')
    return str(root)


def make(tmp, docs, vocab_size=300, **kw):
    """A bpe dataset prepare.py makes in-process (one worker) from docs -> its directory."""
    out = tmp / f'bpe{vocab_size}'
    prepare.prepare('text', out=str(out), tokenizer='bpe', vocab_size=vocab_size, num_proc=1,
                    inputs=[write_corpus(tmp / 'src', docs)], **kw)
    return str(out)


@pytest.fixture(scope='module')
def bpe_data(tmp_path_factory):
    return make(tmp_path_factory.mktemp('bpe'), documents(20))


@pytest.fixture(scope='module')
def bpe_run(bpe_data, tmp_path_factory):
    """A tiny train.py run on bpe_data -> its out_dir."""
    out = tmp_path_factory.mktemp('run')
    train.train({**train.DEFAULTS, **TINY, 'data_dir': bpe_data, 'out_dir': str(out)})
    return str(out)


# -----------------------------------------------------------------------------
# the tokenizer

def test_training_is_deterministic_and_tiktoken_gives_the_trainers_ids(tmp_path, monkeypatch):
    rustbpe = pytest.importorskip('rustbpe')
    docs = documents(8) + TEXTS
    ranks_file = train_bpe(docs, 320)
    assert train_bpe(iter(docs), 320) == ranks_file   # byte for byte
    trainer = rustbpe.Tokenizer()
    trainer.train_from_iterator(docs, 319, pattern=BPE_PATTERN)
    ranks = read_ranks(ranks_file)
    assert ranks == {bytes(t): r for t, r in trainer.get_mergeable_ranks()} and len(ranks) == 319
    # tiktoken's own reader takes the file (its cache off: it would keep a copy of any path it reads)
    monkeypatch.setenv('TIKTOKEN_CACHE_DIR', '')
    from tiktoken.load import load_tiktoken_bpe
    import hashlib
    (tmp_path / BPE_FILE).write_bytes(ranks_file)
    sha = hashlib.sha256(ranks_file).hexdigest()
    assert load_tiktoken_bpe(str(tmp_path / BPE_FILE), sha) == ranks
    tok = get_tokenizer('bpe', source={'tokenizer_ranks': ranks_file, 'tokenizer_sha256': sha,
                                       'tokenizer_pattern': BPE_PATTERN})
    assert (tok.vocab_size, tok.eot) == (320, 319)
    for text in TEXTS + docs[:2]:
        ids = tok.encode(text)
        assert ids == trainer.encode(text) == tok.encode_array(text).tolist(), text
        assert tok.decode(ids) == text and tok.count_bytes(ids + [tok.eot]) == len(text.encode('utf-8'))
    assert len(tok.encode(docs[0])) < len(docs[0]) / 2   # it compresses what it learned from
    assert tok.eot not in tok.encode(EOT_TEXT)   # ordinary encoding: document boundaries are ours alone


def test_prepare_writes_the_file_and_meta_and_the_shards_decode_back(bpe_data, capsys):
    meta = read_meta(bpe_data)
    path = os.path.join(bpe_data, BPE_FILE)
    import hashlib
    assert meta['tokenizer'] == 'bpe' and (meta['vocab_size'], meta['eot']) == (300, 299)
    assert meta['special_tokens'] == {EOT_TEXT: 299} and meta['tokenizer_file'] == BPE_FILE
    assert meta['tokenizer_sha256'] == hashlib.sha256(open(path, 'rb').read()).hexdigest()
    assert meta['tokenizer_pattern'] == BPE_PATTERN and meta['settings']['vocab_size'] == 300
    tok = get_tokenizer('bpe', source=bpe_data)
    docs = documents(20)
    val = prepare._val_indices(20, 0.1, 1337)
    for split, want in (('val', [d for i, d in enumerate(docs) if i in val]),
                        ('train', [d for i, d in enumerate(docs) if i not in val])):
        tokens = np.concatenate([read_shard(p) for p in shard_paths(bpe_data, split)])
        assert tok.decode(tokens) == ''.join(EOT_TEXT + d for d in want)
    # the same settings again: nothing to do
    prepare.prepare('text', out=bpe_data, tokenizer='bpe', vocab_size=300, num_proc=1,
                    inputs=[os.path.join(os.path.dirname(bpe_data), 'src')])
    assert 'already prepared' in capsys.readouterr().out


def test_the_val_documents_never_train_the_bpe(tmp_path):
    """Each document repeats its own word: the train documents' words become tokens, the val documents' do not."""
    names = ['alphonse', 'beatrice', 'cordelia', 'desdemona', 'emilia', 'fabian', 'gratiano', 'hermione',
             'iachimo', 'jessica']
    docs = [documents(1, lines=30, seed=i, extra=f' {w}')[0] for i, w in enumerate(names)]
    with pytest.raises(DataError, match='ask for at most') as e:   # every merge the train documents allow
        make(tmp_path / 'all', docs, vocab_size=65535)
    tok = get_tokenizer('bpe', source=make(tmp_path, docs, vocab_size=int(str(e.value).rsplit(' ', 1)[1])))
    val = prepare._val_indices(len(docs), 0.1, 1337)
    assert len(val) == 1
    for i, w in enumerate(names):
        assert (len(tok.encode(f' {w}')) == 1) == (i not in val), (w, i in val, tok.encode(f' {w}'))


@pytest.mark.parametrize('vocab_size', [257, 260])
def test_the_smallest_vocabularies(tmp_path, vocab_size):
    tok = get_tokenizer('bpe', source=make(tmp_path, documents(4), vocab_size=vocab_size))
    assert tok.vocab_size == vocab_size and tok.eot == vocab_size - 1
    assert (tok.encode('the king') == list(b'the king')) == (vocab_size == 257)   # 257: bytes, no merges


# -----------------------------------------------------------------------------
# bad input: one line each

run_prepare = partial(run_cli, prepare.main)


@pytest.mark.parametrize('args, words', [
    (['--tokenizer=bpe', '--vocab_size=256'], ['--vocab_size must be between 257', '65535', 'got 256']),
    (['--tokenizer=bpe', '--vocab_size=65536'], ['--vocab_size must be between 257', 'got 65536']),
    (['--tokenizer=bpe'], ['--tokenizer bpe needs --vocab_size']),
    (['--tokenizer=gpt2', '--vocab_size=1000'], ['--vocab_size is for --tokenizer bpe', 'gpt2 has 50257']),
    (['--tokenizer=bytes', '--vocab_size=1000'], ['--vocab_size is for --tokenizer bpe', 'bytes has 257']),
    (['--tokenizer=bpe', '--vocab_size=5000'], ['allow only', 'merges', '--vocab_size 5000 needs 4743',
                                                  'ask for at most']),
])
def test_bad_vocab_sizes(tmp_path, capsys, args, words):
    src = write_corpus(tmp_path / 'src', documents(4))
    code, _, err = run_prepare(['text', '--input', src, '--out', tmp_path / 'out', '--num_proc=1', *args], capsys)
    one_error_line(code, err, *words, alone=False)
    assert not os.path.exists(tmp_path / 'out' / 'meta.json')


def test_the_largest_vocabulary_the_corpus_allows_is_said_and_works(tmp_path, capsys):
    src = write_corpus(tmp_path / 'src', documents(4))
    code, _, err = run_prepare(['text', '--input', src, '--out', tmp_path / 'out', '--tokenizer=bpe',
                                '--vocab_size=5000', '--num_proc=1'], capsys)
    most = int(one_error_line(code, err, alone=False).rsplit(' ', 1)[1])
    code, out, err = run_prepare(['text', '--input', src, '--out', tmp_path / 'out', '--tokenizer=bpe',
                                  f'--vocab_size={most}', '--num_proc=1'], capsys)
    assert code == 0, err
    assert read_meta(str(tmp_path / 'out'))['vocab_size'] == most


def test_an_empty_corpus(tmp_path, capsys):
    src = write_corpus(tmp_path / 'src', ['', '', ''])
    code, _, err = run_prepare(['text', '--input', src, '--out', tmp_path / 'out', '--tokenizer=bpe',
                                '--vocab_size=300', '--num_proc=1'], capsys)
    one_error_line(code, err, 'no documents found', alone=False)   # empty documents are none (issue 35)


def test_invalid_utf8_while_training_is_one_line(tmp_path, capsys):
    src = write_corpus(tmp_path / 'src', documents(3))
    (tmp_path / 'src' / 'bad.txt').write_bytes(b'ok \xff no')
    code, _, err = run_prepare(['text', '--input', src, '--out', tmp_path / 'out', '--tokenizer=bpe',
                                '--vocab_size=300', '--num_proc=1', '--val_fraction=0.01'], capsys)
    one_error_line(code, err, 'bad.txt', 'invalid UTF-8', alone=False)


def test_without_rustbpe_the_line_says_how_to_get_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(__import__('sys').modules, 'rustbpe', None)
    src = write_corpus(tmp_path / 'src', documents(3))
    code, _, err = run_prepare(['text', '--input', src, '--out', tmp_path / 'out', '--tokenizer=bpe',
                                '--vocab_size=300', '--num_proc=1'], capsys)
    one_error_line(code, err, 'pip install rustbpe', alone=False)


# -----------------------------------------------------------------------------
# every script uses it

def test_a_run_records_the_tokenizer_and_samples_evaluates_without_the_data(bpe_data, bpe_run, tmp_path, capsys):
    import eval as evaluation
    import sample
    ckpt = load_checkpoint(bpe_run)
    meta = read_meta(bpe_data)
    assert ckpt['tokenizer'] == 'bpe' and ckpt['tokenizer_sha256'] == meta['tokenizer_sha256']
    assert ckpt['tokenizer_ranks'] == open(os.path.join(bpe_data, BPE_FILE), 'rb').read()
    assert ckpt['model_config']['vocab_size'] == 300
    scored = evaluation.run({**evaluation.DEFAULTS, 'out_dir': bpe_run, 'progress': False}, lambda doc: None)['bpb']
    assert scored['data_dir'] == bpe_data and 0 < scored['bpb'] < 10
    # the checkpoint alone: its data moved away, sample.py still encodes and decodes with the run's BPE
    moved = shutil.copytree(bpe_run, tmp_path / 'copy')
    texts = sample.sample({**sample.DEFAULTS, 'out_dir': str(moved), 'start': 'the king', 'max_new_tokens': 20,
                           'device': 'cpu', 'dtype': 'float32', 'temperature': 0})
    capsys.readouterr()
    tok = get_tokenizer('bpe', source=bpe_data)
    assert texts[0].startswith('the king') and len(tok.encode(texts[0])) >= 20


def test_resume_and_eval_refuse_data_in_another_bpe(bpe_run, tmp_path, capsys):
    other = make(tmp_path, documents(20, seed=1), vocab_size=300)   # same vocabulary size, other merges
    code, _, err = run_cli(train.main, [f'--out_dir={bpe_run}', f'--data_dir={other}', '--init_from=resume',
                                        *(f'--{k}={v}' for k, v in TINY.items()), '--max_iters=9'], capsys)
    line = one_error_line(code, err, 'checkpoint was trained on bpe (sha256', alone=False)
    assert read_meta(other)['tokenizer_sha256'] in line
    import eval as evaluation
    code, _, err = run_cli(evaluation.main, [f'--out_dir={bpe_run}', f'--data_dir={other}', '--progress=False'], capsys)
    one_error_line(code, err, 'holds bpe (sha256', 'but the model reads bpe (sha256', alone=False)


def test_an_edited_tokenizer_file_is_refused(bpe_data, tmp_path, capsys):
    data = shutil.copytree(bpe_data, tmp_path / 'data')
    path = data / BPE_FILE
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b''.join(lines[:-1]))   # one merge less
    with pytest.raises(DataError, match='edited or is corrupt'):
        get_tokenizer('bpe', source=str(data))
    code, _, err = run_cli(train.main, [f'--data_dir={data}', f'--out_dir={tmp_path / "run"}',
                                        *(f'--{k}={v}' for k, v in TINY.items())], capsys)
    one_error_line(code, err, BPE_FILE, 'edited or is corrupt', alone=False)
    os.remove(path)
    with pytest.raises(DataError, match='cannot read the dataset'):
        get_tokenizer('bpe', source=str(data))


def test_a_checkpoints_tokenizer_is_checked_too(bpe_run, tmp_path, capsys):
    import sample
    ckpt = torch.load(os.path.join(bpe_run, 'ckpt.pt'), weights_only=True)
    model = conftest.tiny_gpt(vocab_size=300, block_size=32)
    edited = write_ckpt(tmp_path / 'edited', model, tokenizer='bpe', tokenizer_pattern=BPE_PATTERN,
                        tokenizer_sha256=ckpt['tokenizer_sha256'], tokenizer_ranks=ckpt['tokenizer_ranks'][:-10])
    code, _, err = run_cli(sample.main, [f'--out_dir={edited}', '--device=cpu', '--max_new_tokens=2'], capsys)
    one_error_line(code, err, "the checkpoint's tokenizer", 'edited or is corrupt', alone=False)
    missing = write_ckpt(tmp_path / 'missing', model, tokenizer='bpe')
    code, _, err = run_cli(sample.main, [f'--out_dir={missing}', '--device=cpu'], capsys)
    one_error_line(code, err, "'tokenizer_sha256' is missing", alone=False)


def test_bench_and_budget_read_the_vocabulary(bpe_data, capsys):
    import bench
    from conftest import run_scaling_cli
    rec = bench.main(['--device=cpu', '--dtype=float32', f'--data_dir={bpe_data}', '--n_layer=1', '--n_head=2',
                      '--n_embd=32', '--block_size=32', '--batch_size=2', '--total_batch_size=64', '--warmup_steps=1',
                      '--timed_steps=1', '--repeats=1', '--phases=False', '--sample_tokens=0'])
    assert rec['model']['vocab_size'] == 300 and '(bpe tokens)' in rec['data']
    capsys.readouterr()
    code, out, err = run_scaling_cli(['budget', '--params', '2e4', '--tokens', '2e4', '--block_size', '32',
                                      '--head_dim', '16', '--aspect', '16', '--data_dir', bpe_data], capsys)
    assert code == 0 and 'vocab 300' in out, err


def test_export_writes_a_tokenizer_that_encodes_to_our_ids(bpe_data, bpe_run, tmp_path, capsys):
    transformers = pytest.importorskip('transformers')   # requirements-dev.txt
    import export
    ckpt = load_checkpoint(bpe_run)
    model = conftest.tiny_gpt(vocab_size=300, block_size=32)   # GPT-2's family (the run's RoPE + LayerNorm is not)
    run = write_ckpt(tmp_path / 'run', model, **{k: ckpt[k] for k in ckpt if k.startswith('tokenizer')})
    code, out, err = run_cli(export.main, [f'--out_dir={run}', f'--hf_dir={tmp_path / "hf"}'], capsys)
    assert code == 0, err
    assert "the run's byte-level BPE, bpe (sha256" in out and 'tokenizer.json' in out
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path / 'hf'))
    ours = get_tokenizer('bpe', source=bpe_data)
    for text in TEXTS[:-1] + documents(2, seed=5):
        assert hf.encode(text) == ours.encode(text), text
        assert hf.decode(hf.encode(text)) == text
    assert hf.eos_token_id == 299 and hf.encode(EOT_TEXT) == [299]
    assert tokenizer_id(ckpt).startswith('bpe (sha256 ')
