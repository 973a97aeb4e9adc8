"""Fixtures and helpers shared by several test files: a local HTTP server for the downloader (tests/test_data.py) and
for prepare.py's sources that download (tests/test_prepare.py), and one serving a directory (`serve_dir`), no test
touching the internet; a script's main run in-process (`run_cli`) or as a child process (`run_python`, `torchrun`)
and its one `error:` line (`one_error_line`); the CPU runtime (`rt`); tiny GPTs (`tiny_config`, `tiny_gpt`,
`make_gpt`) and their checkpoints (`write_ckpt`); a small byte-level corpus made by prepare.py (`word_corpus`)."""
import contextlib
import dataclasses
import functools
import gzip
import os
import re
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

from model import GPT, GPTConfig
from pretrain.generate import KVCache
from pretrain import data
from pretrain.checkpoint import save_checkpoint
from pretrain.runtime import setup_runtime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


class QuietFiles(SimpleHTTPRequestHandler):
    """The standard library's file server without its line per request on stderr."""
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve_dir(root):
    """A local HTTP server of the files under root, for the `with` block -> its base URL (http://127.0.0.1:port)."""
    srv = ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(QuietFiles, directory=str(root)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f'http://127.0.0.1:{srv.server_address[1]}'
    finally:
        srv.shutdown()
        srv.server_close()


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


def one_error_line(code, err, *words, alone=True):
    """Asserts exit code 1 and one `error:` line on stderr containing each of words, no traceback -> that line.
    alone=False lets other lines (progress) stand beside it."""
    lines = err.splitlines() if alone else [line for line in err.splitlines() if line.startswith('error: ')]
    assert code == 1 and 'Traceback' not in err and len(lines) == 1 and lines[0].startswith('error: '), err
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def run_python(args, timeout=300, one_thread=True):
    """`python *args` in the repository root -> the CompletedProcess, output as text. one_thread: OMP_NUM_THREADS=1
    (tiny models gain nothing from threads on a shared machine); else the child inherits this environment."""
    env = {**os.environ, 'OMP_NUM_THREADS': '1'} if one_thread else None
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, encoding='utf-8',
                          timeout=timeout)


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on (the OS picks one)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def torchrun(args, timeout=600, nproc=2):
    """run_python of torchrun launching `args` as nproc local processes (CPU: gloo) on a free port."""
    return run_python(['-m', 'torch.distributed.run', f'--nproc_per_node={nproc}', '--master_addr=127.0.0.1',
                       f'--master_port={free_port()}', *args], timeout)


def run_scaling_cli(argv, capsys):
    """scaling.py's command line in-process -> (exit code, stdout, stderr)."""
    import scaling
    return run_cli(scaling.main, argv, capsys)


@pytest.fixture(scope='module')
def rt():
    """The runtime of a CPU run in float32 (pretrain.runtime.setup_runtime)."""
    return setup_runtime({'device': 'cpu', 'dtype': 'float32'})


def rel(a, b):
    """|a - b| / |b|, Frobenius norms, as a float."""
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def compared(grads):
    """The parameters whose gradients a test compares: all but the key biases. Adding a vector to every key adds
    one number per query to all its attention logits, which the softmax ignores: their gradient is zero in exact
    arithmetic, and what any implementation computes is rounding noise (~1e-12), with no relative error to speak of."""
    return [n for n in grads if not n.endswith('attn.c_k.bias')]


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


def make_gpt(config, seed=0):
    """GPT(config) built after torch.manual_seed(seed), in eval mode."""
    torch.manual_seed(seed)
    return GPT(config).eval()


def cache_setup(kw):
    """For the KV-cache tests: make_gpt(tiny_config(**kw)), a random (2, 16) batch of ids, the logits of one full
    forward over it and an empty KVCache."""
    model = make_gpt(tiny_config(**kw))
    idx = torch.randint(0, 61, (2, 16))
    return model, idx, model(idx)[0], KVCache(model.config, 2)


def write_ckpt(out_dir, net, **keys):
    """A checkpoint of the model `net` in train.py's format (bytes tokenizer) in out_dir -> out_dir as a string;
    keys replace its entries, None deleting one."""
    os.makedirs(out_dir, exist_ok=True)
    ckpt = {'model': net.state_dict(), 'model_config': dataclasses.asdict(net.config), 'optimizer': {}, 'step': 7,
            'tokens': 0, 'loader': {}, 'rng': {}, 'config': {}, 'tokenizer': 'bytes', **keys}
    save_checkpoint(str(out_dir), {k: v for k, v in ckpt.items() if v is not None})
    return str(out_dir)


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
