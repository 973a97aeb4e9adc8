"""Fixtures and helpers shared by several test files: a local HTTP server for the downloader (tests/test_data.py) and
for prepare.py's sources that download (tests/test_prepare.py), no test touching the internet; a script's main run
in-process (`run_cli`); tiny GPTs (`tiny_config`, `tiny_gpt`); a small byte-level corpus made by prepare.py
(`word_corpus`)."""
import gzip
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

from model import GPT, GPTConfig
from pretrain import data


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        st = self.server.state
        st["requests"].append((self.path, self.headers.get("Range")))
        if st["fail"].get(self.path, 0) > 0:
            st["fail"][self.path] -= 1
            return self.send_error(503)
        body = st["files"].get(self.path)
        if body is None:
            return self.send_error(404)
        m = re.match(r"bytes=(\d+)-", self.headers.get("Range") or "")
        start = int(m.group(1)) if m and st["ranges"] else 0
        if m and st["wrong_range"]:  # a 206 for another range than the one asked for
            self.send_response(206)
            self.send_header("Content-Range", f"bytes 0-{len(body) - 1}/{len(body)}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            return self.wfile.write(body)
        if start >= len(body) and start:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.send_header("Content-Length", "0")
            return self.end_headers()
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        payload = body[start:]
        if "gzip" in (self.headers.get("Accept-Encoding") or ""):  # as GitHub's raw server does for text
            payload = gzip.compress(payload)
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(payload)))
        for k, v in st["headers"].items():
            self.send_header(k, v)
        self.end_headers()
        cut = st["cut"].pop(self.path, None)  # drop the connection mid-body, once
        self.wfile.write(payload if cut is None else payload[:cut])

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    """A local server whose files, failures (503s), cut connections, headers and Range behaviour a test sets.
    data.download's back-off sleeps are recorded instead of waited."""
    state = {"files": {}, "fail": {}, "cut": {}, "requests": [], "headers": {}, "ranges": True, "wrong_range": False,
             "sleeps": []}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.state = state
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    state["url"] = f"http://127.0.0.1:{httpd.server_port}"
    monkeypatch.setattr(data.time, "sleep", state["sleeps"].append)  # back-off without waiting
    yield state
    httpd.shutdown()
    httpd.server_close()


def write_shard(path, tokens, magic=data.HEADER_MAGIC, version=data.HEADER_VERSION, n=None):
    """A shard written by hand the way llm.c's write_datafile does (DESIGN.md's format): 256 int32, then uint16."""
    header = np.zeros(256, dtype=np.int32)
    header[0], header[1], header[2] = magic, version, len(tokens) if n is None else n
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(np.asarray(tokens, dtype=np.uint16).tobytes())


def run_cli(main, argv, capsys):
    """A script's main(argv) in-process -> (exit code, stdout, stderr). The code is SystemExit's (a string for
    sys.exit("error: ..."), which exits 1), else what main returned, None counting as 0."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return (0 if code is None else code), out, err


def run_scaling_cli(argv, capsys):
    """scaling.py's command line in-process -> (exit code, stdout, stderr)."""
    import scaling
    return run_cli(scaling.main, argv, capsys)


def tiny_config(**kw):
    """A GPTConfig small enough to run hundreds of times in a few seconds; keywords override."""
    return GPTConfig(**{**dict(block_size=16, vocab_size=61, n_layer=2, n_head=4, n_embd=32), **kw})


def tiny_gpt(seed=0, large_weights=False, **kw):
    """GPT(tiny_config(**kw)) seeded. large_weights: matrices drawn from N(0, 0.3) instead of GPT-2's 0.02, so that
    the logits depend on the context (near-uniform logits would make greedy-decoding and loss tests vacuous)."""
    torch.manual_seed(seed)
    model = GPT(tiny_config(**kw))
    if large_weights:
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() >= 2:
                    p.normal_(0, 0.3)
    return model


@pytest.fixture(scope='module')
def one_thread():
    """One torch thread for a module of tiny models (`pytestmark = pytest.mark.usefixtures('one_thread')`): they gain
    nothing from threads, and on a busy 2-core machine two spinning OpenMP threads made tests/test_model.py several
    times slower (measured: 66 s vs 12 s at load 9)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


WORDS = ['the', 'king', 'queen', 'crown', 'sword', 'love', 'night', 'day', 'speak', 'thou', 'art', 'my', 'lord']


def word_corpus(tmp_path_factory, docs, lines=80):
    """A byte-tokenized dataset that prepare.py makes (in-process, one worker) from `docs` documents of `lines`
    random 12-word sentences, 10% held out for val -> its directory. The same text for the same arguments."""
    import prepare
    src = tmp_path_factory.mktemp('text')
    rng = np.random.default_rng(0)
    for i in range(docs):
        (src / f'doc{i:02d}.txt').write_text('\n'.join(' '.join(rng.choice(WORDS, size=12)) + '.' for _ in range(lines)))
    out = tmp_path_factory.mktemp('data') / 'tiny_bytes'
    prepare.prepare('text', out=str(out), tokenizer='bytes', val_fraction=0.1, num_proc=1, inputs=[str(src)])
    return str(out)
