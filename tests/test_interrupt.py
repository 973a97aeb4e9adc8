"""Ctrl-C at any moment of any script ends with one line and exit status 130, never a traceback (issue 23): inside
`import torch` (the first second of every script: pretrain/cli.py installs its hook first) and in the middle of the work
(cli.cli, the boundary every script ends through)."""
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = {'train.py': [], 'prepare.py': [], 'sample.py': [], 'eval.py': [], 'bench.py': [],
           'scaling.py': ['fit', 'nothing-here']}


def start(args):
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    # A shell without job control starts background commands (`pytest &`, nohup) with SIGINT ignored, and Python
    # keeps an ignored SIGINT ignored: give the child Ctrl-C's default, as a terminal would
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for_library(proc, marker, timeout=60):
    """Poll the process's memory map until a shared library whose path holds `marker` is loaded: then the
    interpreter is inside that import (torch's takes about a second), whatever the machine's load."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with open(f'/proc/{proc.pid}/maps') as f:
                if marker in f.read():
                    return
        except OSError:
            pass
        if proc.poll() is not None:
            pytest.fail(f'the process ended before loading {marker}: {proc.communicate()}')
        time.sleep(0.002)
    pytest.fail(f'{marker} was not loaded within {timeout} s')


def assert_interrupted(proc):
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (proc.returncode, err)
    assert 'Traceback' not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and 'interrupted' in lines[0], err


@pytest.mark.skipif(not os.path.exists('/proc/self/maps'), reason='needs /proc to see the import of torch')
@pytest.mark.parametrize('script', list(SCRIPTS))
def test_ctrl_c_inside_import_torch(script):
    proc = start([script, *SCRIPTS[script]])
    wait_for_library(proc, 'libtorch')   # the first of torch's libraries: the import has begun
    proc.send_signal(signal.SIGINT)
    assert_interrupted(proc)


@pytest.mark.slow
def test_ctrl_c_while_training_and_preparing(tmp_path):
    """In the middle of the work: train.py between steps (cli's line), prepare.py while tokenizing."""
    src = tmp_path / 'text'
    src.mkdir()
    for i in range(4):
        (src / f'{i}.txt').write_text('to be or not to be, that is the question.\n' * 3000)
    data = tmp_path / 'data'
    r = subprocess.run([sys.executable, 'prepare.py', 'text', '--input', str(src), '--tokenizer', 'bytes', '--out',
                        str(data), '--num_proc', '1'], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    proc = start(['train.py', f'--data_dir={data}', f'--out_dir={tmp_path / "out"}', '--device=cpu',
                  '--dtype=float32', '--n_layer=1', '--n_embd=32', '--n_head=2', '--block_size=32',
                  '--batch_size=2', '--total_batch_size=64', '--max_iters=100000', '--log_interval=1',
                  '--eval_interval=100000', '--checkpoint_interval=0'])
    for line in proc.stdout:   # training has started once a step is printed
        if line.startswith('step 1/'):
            break
    proc.send_signal(signal.SIGINT)
    assert_interrupted(proc)
