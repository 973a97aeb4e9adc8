"""Tests for export.py and pretrain/hf_export.py: for each family and several shapes (GQA and MQA, odd vocabularies
padded to 64s, tied and untied, with and without biases, muP and CompleteP's multipliers), the exported directory
loaded by `transformers` gives this repo's logits within 1e-5 in float32 and the same greedy tokens; GPT.from_pretrained reads an exported GPT-2
directory back to the same weights; AutoTokenizer encodes as the repo's tokenizers do; every knob neither class
computes is refused in one line; bad input is one line and leaves nothing half-written."""
import copy
import errno
import json
import os
from functools import partial

import pytest
import torch

transformers = pytest.importorskip('transformers')   # requirements-dev.txt

import conftest
import export   # the script under test
from conftest import one_error_line, write_ckpt
from model import GPT, GPTConfig
from pretrain.generate import generate
from pretrain.data import get_tokenizer
from pretrain.hf_export import ExportError, hf_class

pytestmark = pytest.mark.usefixtures('one_thread')   # tests/conftest.py

GPT2_VOCAB, BYTES_VOCAB = 50257, 257
BODY = dict(block_size=32, n_layer=2, n_head=4, n_embd=32)
SHAPES = {   # name: (tokenizer, GPTConfig fields, the class it must become)
    'gpt2-tied-padded': ('gpt2', dict(BODY, vocab_size=GPT2_VOCAB, pad_vocab_multiple=64), 'GPT2LMHeadModel'),
    'gpt2-untied-nobias-mqa': ('bytes', dict(BODY, vocab_size=BYTES_VOCAB, pad_vocab_multiple=64, tie_weights=False,
                                             bias=False, n_kv_head=1, mlp_hidden=48, norm_eps=1e-6), 'GPT2LMHeadModel'),
    'gpt2-gqa-3layers': ('bytes', dict(BODY, vocab_size=BYTES_VOCAB, n_layer=3, n_kv_head=2, zero_init_proj=True,
                                       dropout=0.1), 'GPT2LMHeadModel'),
    'llama-gqa-tied-padded': ('bytes', dict(BODY, vocab_size=BYTES_VOCAB, pad_vocab_multiple=64, n_kv_head=2,
                                            bias=False, norm='rmsnorm', pos_emb='rope', mlp='swiglu',
                                            rope_theta=500000.0, norm_eps=1e-6), 'LlamaForCausalLM'),
    'llama-mqa-untied-bias': ('gpt2', dict(BODY, vocab_size=GPT2_VOCAB, n_kv_head=1, bias=True, tie_weights=False,
                                           norm='rmsnorm', pos_emb='rope', mlp='swiglu', mlp_hidden=40),
                              'LlamaForCausalLM'),
    # muP / CompleteP: the attention scale, output and branch multipliers folded into the weights (hf_export._folded)
    'gpt2-completep': ('bytes', dict(BODY, vocab_size=BYTES_VOCAB, parametrization='completep', base_n_embd=24,
                                     base_n_layer=1, base_head_dim=4), 'GPT2LMHeadModel'),
    'llama-mup-untied': ('bytes', dict(BODY, vocab_size=BYTES_VOCAB, n_kv_head=2, bias=False, norm='rmsnorm',
                                       pos_emb='rope', mlp='swiglu', tie_weights=False, parametrization='mup',
                                       base_n_embd=48, base_head_dim=2), 'LlamaForCausalLM'),
    'llama-mha-wide-heads': ('bytes', dict(vocab_size=BYTES_VOCAB, block_size=48, n_layer=1, n_head=2, n_embd=48,
                                           bias=False, norm='rmsnorm', pos_emb='rope', mlp='swiglu',
                                           tie_weights=False), 'LlamaForCausalLM'),
}


def random_gpt(fields, seed=1):
    """Matrices N(0, 0.2), norm gains 1 + N(0, 0.2), biases N(0, 0.2): the logits are far from uniform, so greedy
    decoding is decisive and a wrong mapping of any tensor shows."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**fields))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0 if '.ln_' in name or 'ln_f' in name else 0.0, 0.2)
    return model.eval()


run_main = partial(conftest.run_cli, export.main)   # (argv, capsys) -> (exit code, stdout, stderr)


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """Every shape trained-as-saved, exported by the command line: name -> (our model, hf_dir)."""
    out = {}
    for name, (tok, fields, _) in SHAPES.items():
        tmp = tmp_path_factory.mktemp(name)
        model = random_gpt(fields)
        run = write_ckpt(tmp / 'run', model, tokenizer=tok)
        export.main([f'--out_dir={run}', f'--hf_dir={tmp / "hf"}'])
        out[name] = (model, str(tmp / 'hf'))
    return out


def load_hf(hf_dir):
    return transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()


# -----------------------------------------------------------------------------
# the same function

@pytest.mark.parametrize('name', SHAPES)
def test_transformers_logits_equal_ours(exported, name):
    model, hf_dir = exported[name]
    hf = load_hf(hf_dir)
    assert type(hf).__name__ == SHAPES[name][2]
    c = model.config
    assert hf.config.vocab_size == c.vocab_size   # the padded rows are gone
    assert hf.get_output_embeddings().weight.shape == (c.vocab_size, c.n_embd)
    torch.manual_seed(1)
    x = torch.randint(0, c.vocab_size, (3, c.block_size))
    with torch.no_grad():
        ours = model(x)[0][..., :c.vocab_size]
        theirs = hf(x).logits
    assert theirs.shape == ours.shape
    assert ours.std() > 1.0   # not near-uniform: a wrong weight would show
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    # in float64 the rounding of either side is gone: GPT-2 is the same function to 1e-12. Llama's cos/sin tables
    # stay float32 on both sides at any dtype (model.apply_rope rotates in float32; transformers builds the tables
    # in float32), from angles computed differently (float64 here, float32 there), so 1e-5 remains its bound; so it
    # is for muP's multipliers, folded into the float32 weights (each product rounded once)
    with torch.no_grad():
        ours64 = copy.deepcopy(model).double()(x)[0][..., :c.vocab_size]
        theirs64 = hf.double()(x).logits
    exact = c.pos_emb == 'learned' and c.parametrization == 'sp'
    torch.testing.assert_close(theirs64, ours64, atol=1e-12 if exact else 1e-5, rtol=0)


@pytest.mark.parametrize('name', SHAPES)
def test_greedy_generation_gives_the_same_tokens(exported, name):
    model, hf_dir = exported[name]
    hf = load_hf(hf_dir)
    c = model.config
    torch.manual_seed(2)
    prompt = torch.randint(0, c.vocab_size, (2, 6))
    new = c.block_size - prompt.size(1)   # up to the full context, the longest both can see
    ours = generate(model, prompt, new, temperature=0)
    theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new, min_new_tokens=new,
                         do_sample=False, pad_token_id=hf.generation_config.pad_token_id)
    assert theirs.tolist() == ours.tolist()
    assert len(set(ours[0, 6:].tolist())) > 1   # not one token repeated: the comparison says something


def test_gpt2_round_trip_through_from_pretrained(exported):
    """GPT.from_pretrained (the repo's reader of Hugging Face GPT-2 directories) gives back the exported weights;
    the padded rows come back as zeros."""
    for name in ('gpt2-tied-padded',):
        model, hf_dir = exported[name]
        back = GPT.from_pretrained(hf_dir, pad_vocab_multiple=model.config.pad_vocab_multiple)
        assert back.config == model.config
        V = model.config.vocab_size
        ours, theirs = model.state_dict(), back.state_dict()
        assert ours.keys() == theirs.keys()
        for k, w in ours.items():
            if k in ('transformer.wte.weight', 'lm_head.weight'):
                assert torch.equal(theirs[k][:V], w[:V]) and not theirs[k][V:].any(), k
            else:
                assert torch.equal(theirs[k], w), k


def test_gpt2_round_trip_untied_without_biases(tmp_path):
    """bias=False exports zero biases and reads back as bias=True with zeros: the same function, GPT-2's shape."""
    fields = dict(BODY, vocab_size=BYTES_VOCAB, tie_weights=False, bias=False)
    model = random_gpt(fields)
    export.main([f'--out_dir={write_ckpt(tmp_path / "run", model)}', f'--hf_dir={tmp_path / "hf"}'])
    back = GPT.from_pretrained(str(tmp_path / 'hf')).eval()
    assert back.config.tie_weights is False and back.config.bias is True
    theirs = back.state_dict()
    for k, w in model.state_dict().items():
        assert torch.equal(theirs[k], w), k
    assert all(not v.any() for k, v in theirs.items() if k.endswith('.bias'))
    x = torch.randint(0, BYTES_VOCAB, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(back(x)[0], model(x)[0], atol=1e-6, rtol=0)


def test_config_carries_rope_theta_eps_and_kv_heads(exported):
    model, hf_dir = exported['llama-gqa-tied-padded']
    cfg = json.load(open(os.path.join(hf_dir, 'config.json')))
    assert cfg['rope_theta'] == cfg['rope_parameters']['rope_theta'] == 500000.0
    assert (cfg['rms_norm_eps'], cfg['num_key_value_heads'], cfg['tie_word_embeddings']) == (1e-6, 2, True)
    hf = load_hf(hf_dir)
    assert hf.config.num_key_value_heads == 2 and hf.config.rms_norm_eps == 1e-6
    assert hf.get_output_embeddings().weight.data_ptr() == hf.get_input_embeddings().weight.data_ptr()   # tied
    from safetensors import safe_open
    with safe_open(os.path.join(hf_dir, 'model.safetensors'), 'pt') as f:
        assert 'lm_head.weight' not in f.keys()   # tied: stored once
    assert json.load(open(os.path.join(hf_dir, 'generation_config.json')))['eos_token_id'] == 256


# -----------------------------------------------------------------------------
# the tokenizer

TEXTS = ["Hello world, it's 2026!", " héllo  wörld\n\n\tfoo  🙂 they'll've", "First Citizen:\nBefore we proceed",
         "  leading spaces and trailing   "]


def test_gpt2_tokenizer_encodes_as_ours(exported):
    _, hf_dir = exported['gpt2-tied-padded']
    assert sorted(os.listdir(hf_dir)) == ['config.json', 'generation_config.json', 'merges.txt', 'model.safetensors',
                                         'special_tokens_map.json', 'tokenizer_config.json', 'vocab.json']
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    ours = get_tokenizer('gpt2')
    for text in TEXTS:
        assert tok.encode(text) == ours.encode(text), text
        assert tok.decode(tok.encode(text)) == text
    assert tok.eos_token_id == tok.bos_token_id == ours.eot == 50256
    assert tok.encode('a<|endoftext|>b') == [64, 50256, 65]   # Hugging Face's convention: the text is the token


def test_bytes_tokenizer_round_trips_bytes(exported):
    _, hf_dir = exported['llama-gqa-tied-padded']
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    ours = get_tokenizer('bytes')
    for text in TEXTS + [''.join(map(chr, range(1, 300)))]:
        assert tok.encode(text) == ours.encode(text) == list(text.encode('utf-8')), text
        assert tok.decode(tok.encode(text)) == text
    assert tok.eos_token_id == 256 and tok.encode('<|endoftext|>') == [256]


def test_export_prints_the_bytes_tokenizer_statement(tmp_path, capsys):
    model = random_gpt(dict(BODY, vocab_size=BYTES_VOCAB))
    code, out, err = run_main([f'--out_dir={write_ckpt(tmp_path / "run", model)}',
                               f'--hf_dir={tmp_path / "hf"}'], capsys)
    assert code == 0 and 'GPT2LMHeadModel' in out and 'UTF-8 bytes' in out and 'tokenizer.json' in out


# -----------------------------------------------------------------------------
# refusals: one line naming the knob, nothing written

LLAMA = dict(BODY, vocab_size=BYTES_VOCAB, bias=False, norm='rmsnorm', pos_emb='rope', mlp='swiglu')
GPT2 = dict(BODY, vocab_size=BYTES_VOCAB)


@pytest.mark.parametrize('fields, message', [
    (dict(LLAMA, qk_norm=True), 'cannot export qk_norm=True'),
    (dict(GPT2, qk_norm=True), 'cannot export qk_norm=True'),
    (dict(GPT2, mlp='relu2'), "cannot export mlp='relu2'"),
    (dict(LLAMA, mlp='relu2'), "cannot export mlp='relu2'"),
    (dict(LLAMA, logit_softcap=15.0), 'cannot export logit_softcap=15.0'),
    (dict(GPT2, norm='rmsnorm'), "cannot export norm='rmsnorm' with pos_emb='learned'"),
    (dict(GPT2, mlp='swiglu'), "cannot export mlp='swiglu' with pos_emb='learned'"),
    (dict(LLAMA, norm='layernorm'), "cannot export norm='layernorm' with pos_emb='rope'"),
    (dict(LLAMA, mlp='gelu'), "cannot export mlp='gelu' with pos_emb='rope'"),
])
def test_unexpressible_knobs_are_refused(tmp_path, capsys, fields, message):
    run = write_ckpt(tmp_path / 'run', random_gpt(fields))
    code, out, err = run_main([f'--out_dir={run}', f'--hf_dir={tmp_path / "hf"}'], capsys)
    assert out == '' and message in one_error_line(code, err)
    assert sorted(os.listdir(tmp_path)) == ['run']   # no hf_dir, no temporary directory


def test_expressible_set():
    assert hf_class(GPTConfig(**GPT2, zero_init_proj=True, dropout=0.2, n_kv_head=2)) == 'GPT2LMHeadModel'
    assert hf_class(GPTConfig(**dict(LLAMA, bias=True, tie_weights=False, n_kv_head=1))) == 'LlamaForCausalLM'
    with pytest.raises(ExportError):
        hf_class(GPTConfig(**LLAMA, qk_norm=True))


# -----------------------------------------------------------------------------
# bad input

@pytest.fixture
def small_run(tmp_path):
    return write_ckpt(tmp_path / 'run', random_gpt(dict(BODY, vocab_size=BYTES_VOCAB)))


def test_non_checkpoint_and_missing_checkpoint(tmp_path, capsys):
    bad = tmp_path / 'notes.pt'
    bad.write_bytes(b'this is not a checkpoint')
    code, _, err = run_main([f'--out_dir={bad}', f'--hf_dir={tmp_path / "hf"}'], capsys)
    assert 'unreadable' in one_error_line(code, err)
    torch.save({'weights': torch.zeros(2)}, tmp_path / 'other.pt')
    code, _, err = run_main([f'--out_dir={tmp_path / "other.pt"}', f'--hf_dir={tmp_path / "hf"}'], capsys)
    assert "'model' is missing" in one_error_line(code, err)
    code, _, err = run_main([f'--out_dir={tmp_path / "nowhere"}', f'--hf_dir={tmp_path / "hf"}'], capsys)
    assert 'no checkpoint at' in one_error_line(code, err)
    code, _, err = run_main([f'--out_dir={tmp_path}'], capsys)
    assert 'hf_dir must name the directory' in one_error_line(code, err)
    assert not os.path.exists(tmp_path / 'hf')


def test_a_pt_file_exports_too(small_run, tmp_path, capsys):
    code, out, _ = run_main([f'--out_dir={small_run}/ckpt.pt', f'--hf_dir={tmp_path / "hf"}'], capsys)
    assert code == 0 and 'ckpt.pt (step 7)' in out and os.path.isfile(tmp_path / 'hf' / 'model.safetensors')


def test_existing_directory_needs_force(small_run, tmp_path, capsys):
    hf = tmp_path / 'hf'
    hf.mkdir()   # empty: fine
    assert run_main([f'--out_dir={small_run}', f'--hf_dir={hf}'], capsys)[0] == 0
    (hf / 'README.md').write_text('mine')
    code, _, err = run_main([f'--out_dir={small_run}', f'--hf_dir={hf}'], capsys)
    assert 'exists and is not empty (pass --force=True' in one_error_line(code, err)
    assert (hf / 'README.md').read_text() == 'mine'
    code, _, _ = run_main([f'--out_dir={small_run}', f'--hf_dir={hf}', '--force=True'], capsys)
    assert code == 0 and not (hf / 'README.md').exists() and (hf / 'model.safetensors').exists()
    assert sorted(os.listdir(tmp_path)) == ['hf', 'run']   # the replaced directory and the temporary one are gone
    (tmp_path / 'file').write_text('x')
    code, _, err = run_main([f'--out_dir={small_run}', f'--hf_dir={tmp_path / "file"}', '--force=True'], capsys)
    assert 'exists and is not a directory' in one_error_line(code, err)


def test_full_disk_leaves_the_old_export_and_no_temporary(small_run, tmp_path, capsys, monkeypatch):
    hf = tmp_path / 'hf'
    assert run_main([f'--out_dir={small_run}', f'--hf_dir={hf}'], capsys)[0] == 0
    before = {f: (hf / f).read_bytes() for f in os.listdir(hf)}
    import safetensors.torch

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(safetensors.torch, 'save_file', full)
    code, _, err = run_main([f'--out_dir={small_run}', f'--hf_dir={hf}', '--force=True'], capsys)
    assert 'No space left on device; nothing was changed' in one_error_line(code, err)
    assert {f: (hf / f).read_bytes() for f in os.listdir(hf)} == before
    assert sorted(os.listdir(tmp_path)) == ['hf', 'run']


def test_vocab_mismatch_is_refused(tmp_path, capsys):
    run = write_ckpt(tmp_path / 'run', random_gpt(dict(BODY, vocab_size=300)))
    code, _, err = run_main([f'--out_dir={run}', f'--hf_dir={tmp_path / "hf"}'], capsys)
    assert "vocab_size is 300 but its tokenizer 'bytes' has 257" in one_error_line(code, err)


# -----------------------------------------------------------------------------
# lm-evaluation-harness (an optional extra: pip install "lm_eval[hf]"; docs/export.md)

def lm_eval_task(tmp_path, name, docs):
    """A multiple-choice task for lm-eval over a local JSONL (no download): its YAML in tmp_path/tasks."""
    data = tmp_path / f'{name}.jsonl'
    data.write_text(''.join(json.dumps(d) + '\n' for d in docs))
    (tmp_path / 'tasks').mkdir(exist_ok=True)
    (tmp_path / 'tasks' / f'{name}.yaml').write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        f"  cache_dir: {tmp_path / 'datasets'}\noutput_type: multiple_choice\ntest_split: test\n"
        'doc_to_text: "{{context}}"\ndoc_to_target: "{{label}}"\ndoc_to_choice: "{{choices}}"\n'
        'metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n'
        '  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n')
    return str(tmp_path / 'tasks')


def need_lm_eval(monkeypatch):
    """lm_eval, offline, or a skip saying how to get it."""
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('HF_DATASETS_OFFLINE', '1')
    lm_eval = pytest.importorskip('lm_eval', reason='lm-evaluation-harness is an optional extra: '
                                                    'pip install "lm_eval[hf]" (docs/export.md)')
    pytest.importorskip('accelerate', reason="lm-eval's Hugging Face backend needs accelerate: "
                                             'pip install "lm_eval[hf]"')
    return lm_eval


def lm_eval_score(monkeypatch, hf_dir, task, include_path):
    lm_eval = need_lm_eval(monkeypatch)
    from lm_eval.tasks import TaskManager
    out = lm_eval.simple_evaluate(model='hf', model_args=f'pretrained={hf_dir},dtype=float32', tasks=[task],
                                  task_manager=TaskManager(include_path=include_path), device='cpu', batch_size=4)
    return out['results'][task]


@pytest.mark.slow
def test_lm_eval_scores_an_exported_model(tmp_path, monkeypatch):
    """A random tiny GPT-2-token model, exported, scored by lm-eval's Python API: a finite accuracy over all docs."""
    need_lm_eval(monkeypatch)
    model = random_gpt(dict(BODY, vocab_size=GPT2_VOCAB, pad_vocab_multiple=64))
    export.main([f'--out_dir={write_ckpt(tmp_path / "run", model, tokenizer="gpt2")}', f'--hf_dir={tmp_path / "hf"}'])
    docs = [dict(context=f'The number after {i} is', choices=[f' {i + 1}', f' {i + 2}', f' {i * 3}'], label=0)
            for i in range(6)]
    r = lm_eval_score(monkeypatch, str(tmp_path / 'hf'), 'tiny_numbers', lm_eval_task(tmp_path, 'tiny_numbers', docs))
    assert r['sample_len'] == 6
    assert 0.0 <= r['acc,none'] <= 1.0 and 0.0 <= r['acc_norm,none'] <= 1.0


@pytest.mark.slow
def test_lm_eval_accuracy_of_a_model_that_always_says_a(tmp_path, monkeypatch):
    """A byte-level GPT made to predict 'a' after anything (ln_f's gain 0 and bias e_0 make every final hidden state
    e_0; lm_head maps e_0 to logit 20 for 'a', 0 for the rest): lm-eval must pick the choice 'a' every time, so the
    accuracy is exactly the share of docs whose answer is 'a', 3 of 4."""
    need_lm_eval(monkeypatch)
    model = random_gpt(dict(BODY, vocab_size=BYTES_VOCAB, pad_vocab_multiple=64))
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.zero_()
        model.transformer.ln_f.bias[0] = 1.0
        model.lm_head.weight.zero_()   # tied: the embedding too; the hidden state after ln_f ignores the input anyway
        model.lm_head.weight[ord('a'), 0] = 20.0
    export.main([f'--out_dir={write_ckpt(tmp_path / "run", model)}', f'--hf_dir={tmp_path / "hf"}'])
    docs = [dict(context='Pick one:', choices=['b', 'a', 'c'], label=1),
            dict(context='Again:', choices=['a', 'b', 'c'], label=0),
            dict(context='More:', choices=['c', 'b', 'a'], label=2),
            dict(context='Last:', choices=['a', 'b', 'c'], label=1)]   # the answer is 'b': the model misses it
    r = lm_eval_score(monkeypatch, str(tmp_path / 'hf'), 'always_a', lm_eval_task(tmp_path, 'always_a', docs))
    assert r['sample_len'] == 4
    assert r['acc,none'] == 0.75 and r['acc_norm,none'] == 0.75
