"""Tests for hellaswag.py: answers known by construction (a tiny GPT that memorized the right endings; a unigram
GPT whose summed and mean losses disagree), every score checked against a plain float64 loop written here, the
loader's strictness, the download against a local HTTP server, and (slow, GPU, online) OpenAI GPT-2 124M's
llm.c figure."""
import copy
import hashlib
import json
import os
import socket
from functools import partial

import pytest
import torch

import conftest
from pretrain import hellaswag
from pretrain.data import DataError, get_tokenizer
from model import GPT, GPTConfig
from pretrain.runtime import setup_runtime

BLOCK = 64


pytestmark = pytest.mark.usefixtures('one_thread')   # tests/conftest.py


@pytest.fixture(scope='module')
def tok():
    return get_tokenizer('gpt2')


# GPT-2's vocabulary (needed for GPT-2 tokens) on the smallest body: ~1.6M parameters, nearly all embedding
tiny_gpt = partial(conftest.tiny_gpt, block_size=BLOCK, vocab_size=50257, n_layer=1, n_head=2, n_embd=32)


# Six stories; each example's three wrong endings are the right endings of other stories, so a model that ignored
# the context could not tell them apart: it has to read it.
STORIES = [
    ("The chef cracked two eggs into the bowl and then", "whisked them with a fork."),
    ("The pilot checked the instruments before she", "taxied the plane onto the runway."),
    ("After the rain stopped, the children ran outside and", "jumped into every puddle."),
    ("The old dog lay by the fire while the cat", "watched the mice from the shelf."),
    ("He tuned the guitar carefully, and then he", "played a slow song for the crowd."),
    ("The gardener knelt in the soil and", "planted a row of tulips."),
]


def story_examples():
    out = []
    for i, (ctx, right) in enumerate(STORIES):
        label = i % 4
        others = [STORIES[(i + k) % len(STORIES)][1] for k in range(1, 4)]
        out.append({'ctx': ctx, 'endings': others[:label] + [right] + others[label:], 'label': label})
    return out


@pytest.fixture(scope='module')
def memorized(tok):
    """A tiny GPT trained for 60 steps on the six right context + ending texts (loss 10.8 -> ~0.2; ~4 s)."""
    model = tiny_gpt()
    rows = [tok.encode(ctx) + tok.encode(' ' + end) for ctx, end in STORIES]
    T = max(map(len, rows)) - 1
    x = torch.zeros(len(rows), T, dtype=torch.long)
    y = torch.full((len(rows), T), -1, dtype=torch.long)
    for i, r in enumerate(rows):
        x[i, :len(r) - 1], y[i, :len(r) - 1] = torch.tensor(r[:-1]), torch.tensor(r[1:])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(60):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5
    return model.eval()


def reference(model, tok, example):
    """llm.c's scoring written plainly: one row at a time, float64, the context cut from the left to fit. Returns
    (summed losses, mean losses) of the four endings."""
    m = copy.deepcopy(model).double().eval()
    ctx = tok.encode(example['ctx'])
    sums, means = [], []
    for ending in example['endings']:
        end = tok.encode(' ' + ending)
        row = (ctx + end)[-(m.config.block_size + 1):]
        with torch.no_grad():
            logits, _ = m(torch.tensor([row[:-1]]))
        logp = torch.log_softmax(logits[0, :, :m.config.vocab_size], dim=-1)
        losses = [-logp[p, row[p + 1]].item() for p in range(len(row) - 1 - len(end), len(row) - 1)]
        sums.append(sum(losses))
        means.append(sum(losses) / len(losses))
    return sums, means


def argmin(values):
    return min(range(len(values)), key=lambda i: values[i])   # first of equals, as torch.argmin


def write_jsonl(path, examples, extra_lines=()):
    with open(path, 'w') as f:
        for ex in examples:
            f.write(json.dumps(ex) + '\n')
        for line in extra_lines:
            f.write(line + '\n')
    return str(path)


# -----------------------------------------------------------------------------
# scoring

def test_memorized_endings_score_one(memorized, tok, rt):
    examples = story_examples()
    assert hellaswag.score(memorized, tok, examples, rt, progress=False) == \
        {'acc': 1.0, 'acc_norm': 1.0, 'n': 6, 'truncated': 0}
    # not vacuous: the same model untrained gets some wrong
    untrained = hellaswag.score(tiny_gpt(), tok, examples, rt, progress=False)
    assert untrained['acc'] < 1.0 and untrained['acc_norm'] < 1.0


def test_losses_match_a_float64_reference(memorized, tok, rt):
    """Batched, padded rows of different lengths (and one context cut to fit) give llm.c's per-row losses."""
    examples = story_examples()
    long_ctx = ' '.join(['Meanwhile, far away in another town, nothing at all was happening that day.'] * 8)
    examples.append({**examples[0], 'ctx': long_ctx + ' ' + examples[0]['ctx']})
    assert len(tok.encode(examples[-1]['ctx'])) > BLOCK   # really cut
    rendered = [hellaswag.render(ex, tok, BLOCK) for ex in examples]
    assert [cut for _, _, cut in rendered] == [False] * 6 + [True]
    sums, means = hellaswag.ending_losses(memorized, rendered, rt)
    for i, ex in enumerate(examples):
        # float32 against float64 through a trained model: up to ~3e-4 nats apart (a plain float32 forward of
        # the same rows agrees with ending_losses to ~4e-6); the endings' losses differ by nats
        ref_sums, ref_means = reference(memorized, tok, ex)
        assert sums[i].tolist() == pytest.approx(ref_sums, abs=1e-3)
        assert means[i].tolist() == pytest.approx(ref_means, abs=1e-3)
        assert int(sums[i].argmin()) == argmin(ref_sums) and int(means[i].argmin()) == argmin(ref_means)
    # the cut context kept its end: the story's own ending still wins
    assert int(means[-1].argmin()) == examples[-1]['label']
    r = hellaswag.score(memorized, tok, examples, rt, batch_size=3, progress=False)
    assert r['truncated'] == 1 and r['n'] == 7


@pytest.mark.parametrize('batch_size', [1, 2, 4, 100])
def test_batch_size_does_not_change_the_figures(batch_size, tok, rt):
    """A random (context-dependent) model: its answers are arbitrary, but the same at any batch size, and equal
    to the reference loop's."""
    model = tiny_gpt(seed=3)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.3)
    examples = story_examples()
    refs = [reference(model, tok, ex) for ex in examples]
    want_acc = sum(argmin(s) == ex['label'] for (s, _), ex in zip(refs, examples)) / len(examples)
    want_norm = sum(argmin(m) == ex['label'] for (_, m), ex in zip(refs, examples)) / len(examples)
    r = hellaswag.score(model, tok, examples, rt, batch_size=batch_size, progress=False)
    assert (r['acc'], r['acc_norm'], r['n']) == (want_acc, want_norm, 6)


def unigram_gpt(boost):
    """A GPT whose next-token distribution ignores its input: ln_f's gain is 0, so every position's features are
    ln_f's bias e_0, and the (untied) lm_head's first column is the logits: 0, or 8 for the tokens in boost."""
    model = tiny_gpt(tie_weights=False)
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.zero_()
        model.transformer.ln_f.bias[0] = 1.0
        model.lm_head.weight.zero_()
        model.lm_head.weight[boost, 0] = 8.0
    return model


def test_acc_sums_and_acc_norm_averages(tok, rt):
    """One short unlikely ending against a long likely one: per token the long one is far cheaper (~3 nats vs
    ~11), in total dearer (4 x 3 > 11). The sum (acc) picks the short ending, the mean (acc_norm) the long one."""
    long_end, short_end = 'the cat sat on', 'X'
    boost = tok.encode(' ' + long_end)
    assert len(boost) == 4 and len(tok.encode(' ' + short_end)) == 1
    others = ['dog runs fast', 'blue']
    assert not set(boost) & {t for e in others + [short_end] for t in tok.encode(' ' + e)}
    model = unigram_gpt(boost)
    endings = [short_end, long_end] + others
    examples = [{'ctx': 'Once upon a time', 'endings': endings, 'label': 1},     # the long one is right
                {'ctx': 'In the morning', 'endings': endings, 'label': 1},
                {'ctx': 'Later that night', 'endings': endings, 'label': 0}]    # the short one is right
    for ex in examples:
        sums, means = reference(model, tok, ex)
        assert argmin(sums) == 0 and argmin(means) == 1
        assert means[1] < 3.1 < 11 < sums[0] < sums[1]
    r = hellaswag.score(model, tok, examples, rt, progress=False)
    assert r == {'acc': pytest.approx(1 / 3), 'acc_norm': pytest.approx(2 / 3), 'n': 3, 'truncated': 0}


def test_needs_gpt2_tokens(rt):
    model = GPT(GPTConfig(block_size=16, vocab_size=257, n_layer=1, n_head=1, n_embd=8))
    with pytest.raises(DataError, match='HellaSwag needs a GPT-2-token model; this one uses bytes'):
        hellaswag.score(model, get_tokenizer('bytes'), story_examples(), rt)


def test_model_mode_is_restored(memorized, tok, rt):
    memorized.train()
    hellaswag.score(memorized, tok, story_examples()[:2], rt, progress=False)
    assert memorized.training
    memorized.eval()
    hellaswag.score(memorized, tok, story_examples()[:2], rt, progress=False)
    assert not memorized.training


def test_ending_longer_than_the_context_is_an_error(tok):
    ex = {'ctx': 'A', 'endings': ['word ' * 70, 'b', 'c', 'd'], 'label': 0}
    with pytest.raises(DataError, match='does not fit'):
        hellaswag.render(ex, tok, BLOCK)


def test_render_rows(tok):
    """context + " " + ending, the ending whole; an empty context is the end-of-text token (a document start)."""
    rows, lengths, cut = hellaswag.render({'ctx': 'A man', 'endings': ['sat.', 'b', 'c', 'd'], 'label': 0}, tok, BLOCK)
    assert rows[0] == tok.encode('A man sat.') and lengths[0] == len(tok.encode(' sat.')) and not cut
    rows, _, _ = hellaswag.render({'ctx': '', 'endings': ['sat.', 'b', 'c', 'd'], 'label': 0}, tok, BLOCK)
    assert rows[0] == [tok.eot] + tok.encode(' sat.')


@pytest.mark.gpu
def test_cuda_bf16_agrees_with_cpu(memorized, tok):
    if not torch.cuda.is_available():
        pytest.skip('needs CUDA')
    gpu = setup_runtime({'device': 'cuda', 'dtype': 'bfloat16'})
    model = copy.deepcopy(memorized).to(gpu.device)
    r = hellaswag.score(model, tok, story_examples(), gpu, batch_size=4, progress=False)
    assert r == {'acc': 1.0, 'acc_norm': 1.0, 'n': 6, 'truncated': 0}


# -----------------------------------------------------------------------------
# the file

def test_load_examples_reads_a_local_file(tmp_path):
    examples = story_examples()
    path = write_jsonl(tmp_path / 'hs.jsonl', [{**ex, 'ind': i, 'split': 'val'} for i, ex in enumerate(examples)],
                       extra_lines=[''])
    assert hellaswag.load_examples(path) == examples
    assert hellaswag.load_examples(path, limit=2) == examples[:2]


@pytest.mark.parametrize('line, message', [
    ('{"ctx": "a", "endings": ["b", "c", "d", "e"], "label": 0', r':2: not JSON'),
    ('[1, 2]', r':2: expected a JSON object'),
    ('{"endings": ["b", "c", "d", "e"], "label": 0}', r":2: 'ctx' must be a string"),
    ('{"ctx": "a", "endings": ["b", "c", "d"], "label": 0}', r":2: 'endings' must be a list of 4 strings"),
    ('{"ctx": "a", "endings": ["b", "c", "d", 5], "label": 0}', r":2: 'endings' must be a list of 4 strings"),
    ('{"ctx": "a", "endings": ["b", "c", "d", "e"], "label": 4}', r":2: 'label' must be 0, 1, 2 or 3"),
    ('{"ctx": "a", "endings": ["b", "c", "d", "e"], "label": ""}', r":2: 'label' must be 0, 1, 2 or 3"),
    ('{"ctx": "a", "endings": ["b", "c", "d", "e"]}', r":2: 'label' must be 0, 1, 2 or 3, got None \(HellaSwag's test"),
])
def test_corrupt_file_names_file_and_line(tmp_path, line, message):
    path = write_jsonl(tmp_path / 'bad.jsonl', story_examples()[:1], extra_lines=[line])
    with pytest.raises(DataError, match=message) as e:
        hellaswag.load_examples(path)
    assert str(tmp_path / 'bad.jsonl') in str(e.value) and '\n' not in str(e.value)


def test_missing_empty_and_binary_files(tmp_path):
    with pytest.raises(DataError, match='no HellaSwag file at'):
        hellaswag.load_examples(str(tmp_path / 'nope.jsonl'))
    (tmp_path / 'empty.jsonl').write_text('\n')
    with pytest.raises(DataError, match='holds no examples'):
        hellaswag.load_examples(str(tmp_path / 'empty.jsonl'))
    (tmp_path / 'bin.jsonl').write_bytes(b'\xff\xfe\x00garbage\n')
    with pytest.raises(DataError, match=r'bin.jsonl:1: not UTF-8'):
        hellaswag.load_examples(str(tmp_path / 'bin.jsonl'))


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A local HTTP server standing in for raw.githubusercontent.com; the cache directory is the test's own."""
    root = tmp_path / 'srv'
    root.mkdir()
    with conftest.serve_dir(root) as url:
        monkeypatch.setenv('NO_PROXY', '127.0.0.1,localhost')
        monkeypatch.setattr(hellaswag, 'VAL_URL', f'{url}/hellaswag_val.jsonl')
        monkeypatch.setattr(hellaswag, 'DATA_DIR', str(tmp_path / 'cache' / 'hellaswag'))
        yield root


def pin(monkeypatch, path, n):
    monkeypatch.setattr(hellaswag, 'VAL_SHA256', hashlib.sha256(open(path, 'rb').read()).hexdigest())
    monkeypatch.setattr(hellaswag, 'VAL_EXAMPLES', n)


def test_download_checksum_and_count(server, monkeypatch):
    src = write_jsonl(server / 'hellaswag_val.jsonl', story_examples())
    pin(monkeypatch, src, 6)
    assert hellaswag.load_examples() == story_examples()
    cached = hellaswag.official_path()
    assert open(cached, 'rb').read() == open(src, 'rb').read()
    os.remove(src)                                   # from the cache now: the server no longer has it
    assert hellaswag.load_examples(limit=3) == story_examples()[:3]
    monkeypatch.setattr(hellaswag, 'VAL_EXAMPLES', 10042)
    with pytest.raises(DataError, match='holds 6 examples, the HellaSwag val set has 10042'):
        hellaswag.load_examples()
    with open(cached, 'a') as f:                     # a cached copy edited since: caught on every use
        f.write('\n')
    with pytest.raises(DataError, match='is not the official HellaSwag val file .*delete it'):
        hellaswag.load_examples()


def test_corrupt_download_is_one_line_and_leaves_nothing(server, monkeypatch):
    src = write_jsonl(server / 'hellaswag_val.jsonl', story_examples())
    pin(monkeypatch, src, 6)
    with open(src, 'a') as f:                        # the server's copy differs from the pinned one
        f.write('{"ctx": "tampered"}\n')
    with pytest.raises(DataError, match='checksum mismatch') as e:
        hellaswag.load_examples()
    assert '\n' not in str(e.value)
    assert os.listdir(hellaswag.DATA_DIR) == []      # neither the file nor a .part is left behind


def test_download_not_found(server, monkeypatch):
    with pytest.raises(DataError, match='HTTP 404'):
        hellaswag.load_examples()


# -----------------------------------------------------------------------------
# the reference figure: OpenAI GPT-2 124M on all 10,042 val examples (llm.c: acc 0.2859, acc_norm 0.2955)

def reachable(host):
    try:
        socket.create_connection((host, 443), timeout=3).close()
        return True
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.gpu
def test_gpt2_124m_matches_llm_c():
    if not torch.cuda.is_available():
        pytest.skip('needs CUDA (40,168 rows through GPT-2 124M: hours on a few CPU cores)')
    cache = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    have_weights = os.path.exists(os.path.join(cache, 'gpt-scaling', 'gpt2', 'model.safetensors'))
    have_data = os.path.exists(hellaswag.official_path())
    if not (have_weights or reachable('huggingface.co')) or not (have_data or reachable('raw.githubusercontent.com')):
        pytest.skip('offline: GPT-2 weights or HellaSwag val data not cached and not downloadable')
    rt = setup_runtime({'device': 'cuda', 'dtype': 'float32'})   # llm.c: float32 with TF32 matmuls
    model = GPT.from_pretrained('gpt2').to(rt.device)
    r = hellaswag.score(model, get_tokenizer('gpt2'), hellaswag.load_examples(), rt, batch_size=16, progress=False)
    assert r['n'] == 10042 and r['truncated'] == 0
    assert r['acc_norm'] == pytest.approx(0.2955, abs=1e-3)
    assert r['acc'] == pytest.approx(0.2859, abs=1e-3)


# ----------------------------------------------------------------------------- in training

def test_train_py_logs_hellaswag_records(tmp_path):
    """train.py --hellaswag_interval scores during training and logs 'hellaswag' records (DESIGN.md, the run log);
    on byte-level data it refuses in one line before training."""
    import numpy as np
    from pretrain.data import write_json
    from conftest import write_shard
    data = tmp_path / 'gpt2data'
    data.mkdir()
    ids = np.random.default_rng(0).integers(0, 50257, 20_000).astype(np.uint16)
    write_shard(str(data / 'r_train_000000.bin'), ids)
    write_shard(str(data / 'r_val_000000.bin'), ids[:4000])
    write_json(str(data / 'meta.json'), {'tokenizer': 'gpt2', 'vocab_size': 50257, 'eot': 50256, 'complete': True,
                                         'train': {'shards': 1, 'tokens': 20_000}, 'val': {'shards': 1, 'tokens': 4000}})
    path = tmp_path / 'hs.jsonl'
    write_jsonl(path, story_examples())
    args = ['train.py', f'--data_dir={data}', f'--out_dir={tmp_path / "out"}', '--n_layer=1',
            '--n_head=2', '--n_embd=32', '--block_size=64', '--batch_size=2', '--total_batch_size=128',
            '--max_iters=4', '--warmup_iters=1', '--eval_interval=2', '--eval_iters=1', '--device=cpu',
            '--dtype=float32', '--hellaswag_interval=2', f'--hellaswag_path={path}']
    r = conftest.run_python(args, one_thread=False)
    assert r.returncode == 0, r.stderr
    recs = [json.loads(line) for line in open(tmp_path / 'out' / 'log.jsonl')]
    hs = [x for x in recs if x['type'] == 'hellaswag']
    assert [x['step'] for x in hs] == [0, 2, 4]
    assert all(x['n'] == len(story_examples()) and 0 <= x['acc'] <= 1 and 0 <= x['acc_norm'] <= 1 for x in hs)
    assert 'hellaswag acc' in r.stdout
    bytes_meta = dict(json.load(open(data / 'meta.json')), tokenizer='bytes', vocab_size=257, eot=256)
    write_json(str(data / 'meta.json'), bytes_meta)
    r = conftest.run_python(args + [f'--out_dir={tmp_path / "out2"}'], one_thread=False)
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        f"error: hellaswag_interval needs GPT-2 tokens; {data} has bytes"]


# -----------------------------------------------------------------------------
# few-shot (GPT-3 style): k solved train examples before each context

# ending_losses' summed losses of tiny_gpt(seed=3) with N(0, 0.3) matrices on story_examples(), measured with the
# 0-shot scoring as it was before few-shot scoring existed: 0 shots must keep giving exactly these
ZERO_SHOT_SUMS = [[82.7253, 89.5083, 72.2045, 86.9967], [71.3197, 94.5054, 90.0096, 92.3452],
                  [82.0822, 84.3143, 74.0396, 82.3403], [90.1557, 85.7789, 84.4005, 88.165],
                  [97.9865, 91.5122, 93.5112, 90.7207], [88.3323, 87.878, 91.8133, 75.4803]]


def random_story_model():
    model = tiny_gpt(seed=3)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.3)
    return model.eval()


def train_stories():
    """The six stories as a train split: the same solutions, other wrong endings (so no train example equals an
    example scored)."""
    return [{'ctx': ctx, 'endings': [right, 'a', 'b', 'c'], 'label': 0} for ctx, right in STORIES]


def test_zero_shots_score_as_before(tok, rt):
    model, examples = random_story_model(), story_examples()
    for shots in ((), hellaswag.draw_shots(train_stories(), 0, 1234, 0, examples[0])):
        rendered = [hellaswag.render(ex, tok, BLOCK, shots) for ex in examples]
        assert [r[0] for r in rendered] == [[tok.encode(ex['ctx']) + tok.encode(' ' + e) for e in ex['endings']]
                                           for ex in examples]
        sums, _ = hellaswag.ending_losses(model, rendered, rt)
        assert sums.tolist() == [pytest.approx(row, abs=2e-3) for row in ZERO_SHOT_SUMS]
    before = {'acc': 1 / 6, 'acc_norm': 0.0, 'n': 6, 'truncated': 0}
    assert hellaswag.score(model, tok, examples, rt, progress=False) == before
    assert hellaswag.score(model, tok, examples, rt, progress=False, shots=0, train=train_stories()) == before


def test_shots_come_before_the_context(tok):
    """The scored rows are shot_1 + blank line + ... + shot_k + blank line + context, then the ending."""
    train, ex = train_stories(), story_examples()[1]
    shots = hellaswag.draw_shots(train, 2, 7, 1, ex)
    rows, lengths, cut = hellaswag.render(ex, tok, 1024, shots)
    text = ''.join(f"{s['ctx']} {s['endings'][0]}\n\n" for s in shots) + ex['ctx']
    assert [row for row in rows] == [tok.encode(text) + tok.encode(' ' + e) for e in ex['endings']]
    assert lengths == [len(tok.encode(' ' + e)) for e in ex['endings']] and not cut
    assert tok.decode(rows[0]).startswith(f"{shots[0]['ctx']} {shots[0]['endings'][0]}\n\n")
    rows, _, cut = hellaswag.render(ex, tok, 24, shots)   # too long for 24 tokens: the first shot goes first
    assert cut and rows[0][-len(tok.encode(ex['ctx'])) - lengths[0]:] == tok.encode(ex['ctx']) + tok.encode(
        ' ' + ex['endings'][0])


def test_draw_shots_is_reproducible_distinct_and_never_the_example():
    train = [{'ctx': f'c{i}', 'endings': ['a', 'b', 'c', 'd'], 'label': i % 4} for i in range(20)]
    a = hellaswag.draw_shots(train, 5, 1234, 3, {})
    assert a == hellaswag.draw_shots(train, 5, 1234, 3, {}) and len({s['ctx'] for s in a}) == 5
    assert a != hellaswag.draw_shots(train, 5, 1235, 3, {}) and a != hellaswag.draw_shots(train, 5, 1234, 4, {})
    for index in range(20):   # the example is in the train file: it never shows itself
        assert train[index] not in hellaswag.draw_shots(train, 19, 0, index, train[index])
    with pytest.raises(DataError, match='20 shots need 20 train examples besides the one scored'):
        hellaswag.draw_shots(train, 20, 0, 0, train[0])


class InductionModel(torch.nn.Module):
    """A model that follows the pattern in its context (an induction head, Olsson et al. 2022, over three tokens):
    after tokens (a, b, c) it predicts, with logit 10, the token that followed the latest earlier (a, b, c); where
    they have not been seen, every token is equally likely. It has GPT's scoring interface: features() (the
    predicted token id, -1 for none, per position) and lm_logits()."""

    def __init__(self, vocab_size, block_size):
        super().__init__()
        self.config = GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=1, n_head=1, n_embd=1)

    def features(self, idx):
        pred = torch.full(idx.shape, -1.0)
        for b in range(idx.size(0)):
            row, last = idx[b].tolist(), {}
            for t in range(len(row)):
                key = tuple(row[max(0, t - 2):t + 1])
                pred[b, t] = last.get(key, -1)
                if t + 1 < len(row):
                    last[key] = row[t + 1]
        return pred[..., None]

    def lm_logits(self, h):
        logits = torch.zeros(h.size(0), self.config.vocab_size)
        seen = h[:, 0] >= 0
        logits[seen.nonzero()[:, 0], h[seen, 0].long()] = 10.0
        return logits


def test_a_model_that_follows_the_context_uses_the_shots(tok, rt):
    """With the stories' solutions among the shots, a model that copies what followed before picks every right
    ending; at 0 shots it cannot (nothing to copy), so the shots are what it read."""
    model, examples = InductionModel(50257, 1024), story_examples()
    zero = hellaswag.score(model, tok, examples, rt, progress=False)
    assert zero['acc_norm'] < 0.5
    six = hellaswag.score(model, tok, examples, rt, progress=False, shots=6, train=train_stories(), batch_size=4)
    assert six == {'acc': 1.0, 'acc_norm': 1.0, 'n': 6, 'truncated': 0}
    with pytest.raises(DataError, match='needs train examples'):
        hellaswag.score(model, tok, examples, rt, progress=False, shots=2)


def test_official_train_download_checks_the_count(server, monkeypatch):
    monkeypatch.setattr(hellaswag, 'TRAIN_URL', hellaswag.VAL_URL.replace('_val', '_train'))
    write_jsonl(server / 'hellaswag_train.jsonl', train_stories())
    monkeypatch.setattr(hellaswag, 'TRAIN_EXAMPLES', 6)
    assert hellaswag.load_examples(split='train') == train_stories()
    assert os.path.isfile(hellaswag.official_path('train'))
    monkeypatch.setattr(hellaswag, 'TRAIN_EXAMPLES', 39905)
    with pytest.raises(DataError, match='holds 6 examples, the HellaSwag train set has 39905'):
        hellaswag.load_examples(split='train')
