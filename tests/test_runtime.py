"""Tests for runtime.py: device and precision resolution (with a strict stand-in for CUDA, so the CPU suite catches
what crashed on a GPU), the bf16-on-CPU warning, DDP set-up under torchrun's variables, the GPU peak table, the
measured CPU peak and MFU."""
import json
import re
import os
import subprocess
import sys

import pytest
import torch
from torch.cuda._utils import _get_device_index

from pretrain import hardware, runtime
from pretrain.configurator import ConfigError
from pretrain.accounting import flops_per_token
from model import PRESETS, GPTConfig


# -----------------------------------------------------------------------------
# devices: a strict stand-in for two CUDA GPUs

@pytest.fixture
def fake_cuda(monkeypatch):
    """torch sees two CUDA GPUs with bf16. torch.cuda.set_device is replaced by a fake that resolves its argument
    exactly as the real one does (torch.cuda._utils._get_device_index, which raises ValueError 'Expected a
    torch.device with a specified index or an integer' for torch.device('cuda')) and records what it got;
    init_process_group is recorded, not run. The float32 matmul precision setup_runtime sets on CUDA is restored
    afterwards through torch's public getter and setter (no torch.backends attribute is patched)."""
    calls = {'set_device': [], 'init_process_group': []}

    def set_device(device):
        index = _get_device_index(device)   # the real function's first line: the ValueError of issue 13
        calls['set_device'].append(device)
        return index
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    monkeypatch.setattr(torch.cuda, 'current_device', lambda: 0)
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, 'set_device', set_device)
    monkeypatch.setattr(torch.distributed, 'is_initialized', lambda: False)
    monkeypatch.setattr(torch.distributed, 'init_process_group',
                        lambda *a, **k: calls['init_process_group'].append((a, k)))
    for var in ('WORLD_SIZE', 'RANK', 'LOCAL_RANK', 'LOCAL_WORLD_SIZE'):
        monkeypatch.delenv(var, raising=False)
    precision = torch.get_float32_matmul_precision()
    yield calls
    torch.set_float32_matmul_precision(precision)


def test_the_fake_set_device_is_as_strict_as_the_real_one(fake_cuda):
    with pytest.raises(ValueError, match='Expected a torch.device with a specified index'):
        torch.cuda.set_device(torch.device('cuda'))
    assert fake_cuda['set_device'] == []


@pytest.mark.parametrize('name, expected', [('auto', 'cuda:0'), ('cuda', 'cuda:0'), ('cuda:1', 'cuda:1')])
def test_cuda_device_gets_an_index_before_set_device(fake_cuda, name, expected):
    """Issue 13: setup_runtime passed torch.device('cuda') to set_device, a ValueError on every GPU."""
    rt = runtime.setup_runtime({'device': name, 'dtype': 'auto'})
    assert fake_cuda['set_device'] == [torch.device(expected)]
    assert fake_cuda['set_device'][0].index is not None
    assert rt.device == torch.device(expected) and rt.dtype == 'bfloat16' and rt.ptdtype == torch.bfloat16
    assert not rt.ddp and (rt.rank, rt.local_rank, rt.world, rt.master) == (0, 0, 1, True)
    assert fake_cuda['init_process_group'] == []
    assert torch.get_float32_matmul_precision() == 'high'   # float32 matmuls may use TF32 on the GPU


@pytest.mark.parametrize('name', ['auto', 'cuda'])
def test_cuda_under_torchrun_is_the_local_rank(fake_cuda, monkeypatch, name):
    monkeypatch.setenv('WORLD_SIZE', '2')
    monkeypatch.setenv('RANK', '1')
    monkeypatch.setenv('LOCAL_RANK', '1')
    rt = runtime.setup_runtime({'device': name, 'dtype': 'auto'})
    assert fake_cuda['set_device'] == [torch.device('cuda:1')]
    assert rt.ddp and (rt.rank, rt.local_rank, rt.world, rt.master) == (1, 1, 2, False)
    assert rt.device == torch.device('cuda:1')
    (args, kwargs), = fake_cuda['init_process_group']
    assert kwargs['backend'] == 'nccl' and kwargs['device_id'] == torch.device('cuda:1')


def test_a_cuda_device_that_does_not_exist(fake_cuda):
    with pytest.raises(ConfigError, match='device cuda:5 does not exist: torch sees 2 CUDA GPU') as e:
        runtime.setup_runtime({'device': 'cuda:5', 'dtype': 'auto'})
    assert '\n' not in str(e.value) and fake_cuda['set_device'] == []


def test_more_processes_than_gpus_is_the_same_error_on_every_rank(fake_cuda, monkeypatch):
    """issue 35: under torchrun only rank 0 says an error met before the process group (cli.cli), so such an error
    must not depend on the rank: 4 processes on 2 GPUs fail alike on ranks 0 to 3, not only on ranks 2 and 3."""
    monkeypatch.setenv('WORLD_SIZE', '4')
    monkeypatch.setenv('LOCAL_WORLD_SIZE', '4')
    for rank in ('0', '3'):
        monkeypatch.setenv('RANK', rank)
        monkeypatch.setenv('LOCAL_RANK', rank)
        with pytest.raises(ConfigError, match='torchrun starts 4 processes on this machine but torch sees 2 CUDA GPU'):
            runtime.setup_runtime({'device': 'cuda', 'dtype': 'auto'})
    assert fake_cuda['init_process_group'] == []


def test_cuda_without_a_gpu_and_unknown_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    with pytest.raises(ConfigError, match='device is cuda but torch sees no CUDA GPU'):
        runtime.resolve_device('cuda')
    for name in ('gpu', 'tpu', 'cuda:x'):
        with pytest.raises(ConfigError, match=f"got '{name}'"):
            runtime.resolve_device(name)
    assert runtime.resolve_device('cpu') == torch.device('cpu')


def test_cpu_runtime_is_float32_without_autocast():
    rt = runtime.setup_runtime({'device': 'cpu', 'dtype': 'auto'})
    assert rt.device == torch.device('cpu') and rt.dtype == 'float32' and rt.ptdtype == torch.float32
    with rt.autocast:
        assert not torch.is_autocast_enabled('cpu')
    with pytest.raises(ConfigError, match='float16 needs CUDA'):
        runtime.setup_runtime({'device': 'cpu', 'dtype': 'float16'})
    with pytest.raises(ConfigError, match="dtype must be auto, float32, bfloat16 or float16, got 'fp8'"):
        runtime.setup_runtime({'device': 'cpu', 'dtype': 'fp8'})


# -----------------------------------------------------------------------------
# bfloat16 on a CPU

@pytest.mark.parametrize('fast, dtype, warnings', [(False, 'bfloat16', 1), (True, 'bfloat16', 0),
                                                   (False, 'float32', 0), (False, 'auto', 0)])
def test_bf16_on_a_cpu_without_bf16_instructions_warns_once(monkeypatch, capsys, fast, dtype, warnings):
    monkeypatch.setattr(runtime, 'cpu_has_fast_bf16', lambda: fast)
    rt = runtime.setup_runtime({'device': 'cpu', 'dtype': dtype})
    assert rt.dtype == ('float32' if dtype == 'auto' else dtype)
    out, err = capsys.readouterr()
    assert out == ''
    lines = err.splitlines()
    assert len(lines) == warnings and all(line.startswith('warning: ') for line in lines), err
    if warnings:
        assert "dtype='float32'" in lines[0]


def test_cpu_has_fast_bf16_reads_cpuinfo_flags(monkeypatch, tmp_path):
    def cpuinfo_with(flags):   # runtime.py's open() (only) reads a /proc/cpuinfo with these flags
        cpuinfo = tmp_path / 'cpuinfo'
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        return lambda path, *a, **k: open(cpuinfo if path == '/proc/cpuinfo' else path, *a, **k)
    for flags, fast in (('fpu sse avx2 fma', False), ('avx2 avx512f avx512_bf16', True),
                        ('avx2 amx_bf16 amx_tile', True), ('avx512_bf16x', False)):
        monkeypatch.setattr(runtime, 'open', cpuinfo_with(flags), raising=False)
        assert runtime.cpu_has_fast_bf16() is fast, flags


# -----------------------------------------------------------------------------
# MFU arithmetic

def test_mfu_hand_checked_gpt2_on_a100():
    # GPT-2 124M: 124,439,808 parameters; wpe 1024*768 = 786,432; wte 50257*768 = 38,597,376.
    # PaLM: N = 124,439,808 - 786,432 = 123,653,376; 6N = 741,920,256; 12*L*H*Q*T = 12*12*12*64*1024 = 113,246,208
    # -> 855,166,464 FLOPs/token. Kaplan: N = 124,439,808 - 786,432 - 38,597,376 = 85,056,000;
    # 6N + 6*L*T*d_attn = 510,336,000 + 6*12*1024*768 = 510,336,000 + 56,623,104 = 566,959,104.
    cfg = GPTConfig(**PRESETS['gpt2'])
    assert flops_per_token(cfg, 'palm') == 855_166_464
    assert flops_per_token(cfg, 'kaplan') == 566_959_104
    # 100k tokens/s on one A100 (312 TFLOP/s dense bf16): 855,166,464e5 / 312e12 = 0.274091815...
    assert hardware.mfu(855_166_464, 100_000, 312e12) == pytest.approx(0.2740918, rel=1e-6)
    # the same throughput spread over 8 GPUs is 1/8 of the utilization
    assert hardware.mfu(855_166_464, 100_000, 312e12, n_devices=8) == pytest.approx(0.2740918 / 8, rel=1e-6)
    assert hardware.mfu(855_166_464, 100_000, None) is None


# -----------------------------------------------------------------------------
# the peak table

@pytest.mark.parametrize('name,dtype,tf32,expected', [
    ('NVIDIA H100 80GB HBM3', torch.bfloat16, True, 989.4),     # SXM: 1979 is the 2:4-sparse figure
    ('NVIDIA H100 PCIe', torch.bfloat16, True, 756.5),
    ('NVIDIA H100 NVL', torch.float16, True, 835.5),
    ('NVIDIA H200', torch.bfloat16, True, 989.4),
    ('NVIDIA GH200 480GB', torch.bfloat16, True, 989.4),
    ('NVIDIA A100-SXM4-80GB', torch.bfloat16, True, 312.0),
    ('NVIDIA A100 80GB PCIe', torch.float32, True, 156.0),      # float32 matmuls in TF32
    ('NVIDIA A100-PCIE-40GB', torch.float32, False, 19.5),      # TF32 off: plain float32
    ('NVIDIA L40S', torch.bfloat16, True, 362.05),
    ('NVIDIA L4', torch.bfloat16, True, 121.0),
    ('NVIDIA A10G', torch.bfloat16, True, 70.0),
    ('NVIDIA A10', torch.bfloat16, True, 125.0),
    ('NVIDIA GeForce RTX 4090', torch.bfloat16, True, 165.2),
    ('NVIDIA GeForce RTX 3090', torch.bfloat16, True, 71.0),
    ('Tesla V100-SXM2-16GB', torch.float16, True, 125.0),
    ('Tesla V100-SXM2-16GB', torch.float32, True, 15.7),        # no TF32 units: float32 peak
    ('Tesla V100-SXM2-16GB', torch.bfloat16, True, None),       # no bf16 tensor cores
    ('NVIDIA B200', torch.bfloat16, True, 2250.0),
])
def test_peak_table_known_names(name, dtype, tf32, expected):
    assert hardware.gpu_peak_tflops(name, dtype, tf32=tf32) == expected


def test_peak_unknown_gpu_gives_no_mfu_rather_than_a_guess(monkeypatch):
    assert hardware.gpu_peak_tflops('NVIDIA GeForce GTX 1080', torch.bfloat16) is None
    assert hardware.gpu_peak_tflops('Imaginary Accelerator 9000', torch.float16) is None
    # through peak_info, as bench and train.py reach it on a CUDA device (the name lookup needs no GPU)
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda device=None: 'Imaginary Accelerator 9000')
    peak, source = hardware.peak_info(torch.device('cuda'), torch.bfloat16)
    assert peak is None and 'peak_tflops' in source
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda device=None: 'NVIDIA H100 80GB HBM3')
    peak, source = hardware.peak_info(torch.device('cuda'), torch.bfloat16)
    assert peak == pytest.approx(989.4e12) and 'H100' in source
    assert hardware.peak_flops(torch.device('cuda:0'), torch.bfloat16, measure=False) == pytest.approx(989.4e12)


# -----------------------------------------------------------------------------
# the measured CPU peak

@pytest.fixture
def peak_cache(tmp_path, monkeypatch):
    """A machine never measured: PEAK_CACHE in tmp, no in-process measurement."""
    path = tmp_path / 'peaks.json'
    monkeypatch.setattr(hardware, 'PEAK_CACHE', str(path))
    monkeypatch.setattr(hardware, '_measured', {})
    return path


def test_cpu_peak_is_measured_and_cached(peak_cache, monkeypatch):
    first = hardware.peak_flops(torch.device('cpu'), torch.float32)
    assert first is not None and 1e9 < first < 1e14  # any CPU: between 1 GFLOP/s and 100 TFLOP/s
    assert hardware.peak_flops('cpu', torch.float32) == first  # cached: train.py calls it once per run
    assert 'measured' in hardware.peak_info('cpu', torch.float32)[1]
    # a later process on the same machine: the best ever measured wins over its own (maybe busy) measurement
    (key, best), = json.loads(peak_cache.read_text()).items()
    assert best == first and 'float32' in key and f'{torch.get_num_threads()} threads' in key
    peak_cache.write_text(json.dumps({key: first * 10}))
    monkeypatch.setattr(hardware, '_measured', {})
    assert hardware.peak_flops('cpu', torch.float32) == first * 10


def test_peak_without_measuring_reads_only_the_recorded_best(peak_cache, monkeypatch):
    """train.py asks with measure=False: None on a machine never measured (no MFU, and no 2048^3 benchmark at the
    start of a run), and the recorded best once bench.py has measured it."""
    def no_matmul(*a, **k):
        raise AssertionError('measure=False must not run a matmul')
    monkeypatch.setattr(torch, 'mm', no_matmul)
    assert hardware.peak_flops(torch.device('cpu'), torch.float32, measure=False) is None
    peak, source = hardware.peak_info(torch.device('cpu'), torch.float32, measure=False)
    assert peak is None and 'never measured' in source
    assert not peak_cache.exists()   # reading records nothing
    monkeypatch.undo()
    monkeypatch.setattr(hardware, 'PEAK_CACHE', str(peak_cache))
    monkeypatch.setattr(hardware, '_measured', {})
    measured = hardware.peak_flops(torch.device('cpu'), torch.float32)   # bench.py measures and records
    monkeypatch.setattr(hardware, '_measured', {})   # a new process
    assert hardware.peak_flops(torch.device('cpu'), torch.float32, measure=False) == measured
    (key, _), = json.loads(peak_cache.read_text()).items()
    peak_cache.write_text(json.dumps({key: measured * 3}))   # a better measurement recorded meanwhile
    monkeypatch.setattr(hardware, '_measured', {})
    assert hardware.peak_flops(torch.device('cpu'), torch.float32, measure=False) == measured * 3
    assert hardware.peak_flops(torch.device('cpu'), torch.bfloat16, measure=False) is None   # per dtype


def test_best_peak_so_far_only_rises_and_survives_a_bad_cache(tmp_path, monkeypatch):
    path = tmp_path / 'cache' / 'peaks.json'
    monkeypatch.setattr(hardware, 'PEAK_CACHE', str(path))
    assert hardware._best_so_far('cpu x', 5.0) == 5.0 and json.loads(path.read_text()) == {'cpu x': 5.0}
    assert hardware._best_so_far('cpu x', 3.0) == 5.0   # a measurement on a busy machine does not lower the peak
    assert hardware._best_so_far('cpu x', 7.0) == 7.0 and json.loads(path.read_text()) == {'cpu x': 7.0}
    assert hardware._best_so_far('cpu y', 1.0) == 1.0 and len(json.loads(path.read_text())) == 2
    path.write_text('{not json')                     # corrupt: ignored and rewritten
    assert hardware._best_so_far('cpu x', 2.0) == 2.0 and json.loads(path.read_text()) == {'cpu x': 2.0}
    monkeypatch.setattr(hardware, 'PEAK_CACHE', str(tmp_path / 'a-file' / 'peaks.json'))
    (tmp_path / 'a-file').write_text('')             # cannot be written: the measurement still counts
    assert hardware._best_so_far('cpu x', 4.0) == 4.0


def test_peak_memory_and_device_name_on_cpu():
    used, how = hardware.peak_memory(torch.device('cpu'))
    assert used > 10 * 2 ** 20 and 'RSS' in how
    assert isinstance(hardware.device_name(torch.device('cpu')), str) and hardware.device_name(torch.device('cpu'))


def test_a_macs_chip_and_mps_memory(monkeypatch):
    """issue 35: on macOS the device was named 'arm' (platform.processor()), and MPS memory was the process's RSS."""
    import subprocess
    calls = []

    def sysctl(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout='Apple M2 Pro\n')
    monkeypatch.setattr(hardware.sys, 'platform', 'darwin')
    monkeypatch.setattr(hardware.subprocess, 'run', sysctl)
    assert hardware.device_name(torch.device('cpu')) == hardware.device_name(torch.device('mps')) == 'Apple M2 Pro'
    assert calls[0] == ['sysctl', '-n', 'machdep.cpu.brand_string']
    monkeypatch.setattr(torch.mps, 'driver_allocated_memory', lambda: 3 * 2 ** 30)
    assert hardware.peak_memory(torch.device('mps')) == (3 * 2 ** 30, 'torch.mps.driver_allocated_memory (Metal, '
                                                                      'with its cache)')


def test_every_script_imports_without_the_unix_only_resource_module():
    """issue 35: Windows has no `resource`, and hardware.py imported it at the top: every script failed at import.
    Simulated here by making the import fail; peak_memory then says it cannot tell."""
    code = ("import sys; sys.modules['resource'] = None\nimport importlib, torch\n"
            "for m in ('train', 'sample', 'eval', 'bench', 'export', 'prepare', 'scaling'):\n"
            "    importlib.import_module(m)\n"
            "from pretrain import hardware\nprint(hardware.peak_memory(torch.device('cpu')))")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "(None, 'unknown: no getrusage on this system')"


def test_cpu_flushes_subnormals():
    """On CPU setup_runtime makes float32 subnormals zero (x86 computes with them ~100x slower); values a float32
    loss or update can resolve are untouched. The flag is the process's: restored for the other tests."""
    tiny = torch.tensor([1e-30, 1.0])
    try:
        torch.set_flush_denormal(False)
        assert (tiny * 1e-10)[0].item() > 0                      # 1e-40: a subnormal, kept
        runtime.setup_runtime({'device': 'cpu', 'dtype': 'float32'})
        if not torch.set_flush_denormal(True):                   # the CPU has no FTZ/DAZ (not x86 with SSE3)
            pytest.skip('this CPU cannot flush subnormals')
        assert (tiny * 1e-10)[0].item() == 0.0 and (tiny * 1e-10)[1].item() == pytest.approx(1e-10)
        assert (tiny * 1e-7)[0].item() == pytest.approx(1e-37)   # the smallest normal float32 is 1.18e-38
    finally:
        torch.set_flush_denormal(False)


def test_subnormals_flushed_on_every_thread():
    """The flag is per thread: a fresh process that sets up as train.py does flushes in the OpenMP workers too
    (a 2-thread product of 4M subnormals, which torch splits between the threads, comes out all zero)."""
    supported = torch.set_flush_denormal(True)
    torch.set_flush_denormal(False)
    if not supported:
        pytest.skip('this CPU cannot flush subnormals')
    code = ("import torch; torch.set_num_threads(2); from pretrain import runtime; "
            "runtime.setup_runtime({'device': 'cpu', 'dtype': 'float32'}); "
            "x = torch.full((4_000_000,), 1e-30); print(int(((x * 1e-10) != 0).sum()))")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[-1] == '0'


@pytest.mark.parametrize('version,outcome', [
    ('2.10.1+cu128', 'refuse'), ('1.13.1', 'refuse'), ('garbage', 'refuse'), ('2.11.0+cu130', 'run'),
    ('2.13.0+cpu', 'run'), ('2.14.0.dev20261201', 'warn'), ('3.0.0', 'warn')])
def test_torch_outside_the_supported_range_is_refused_or_warned_in_one_line(monkeypatch, capsys, version, outcome):
    """setup_runtime checks torch.__version__ against TORCH_SUPPORTED = (2.11, 2.13) before anything else."""
    assert runtime.TORCH_SUPPORTED == ((2, 11), (2, 13))
    monkeypatch.setattr(torch, '__version__', version)
    if outcome == 'refuse':
        msg = f"torch {version} is older than this code supports (2.11 to 2.13)"
        with pytest.raises(ConfigError, match=re.escape(msg)):
            runtime.setup_runtime({'device': 'cpu', 'dtype': 'float32'})
        return
    rt = runtime.setup_runtime({'device': 'cpu', 'dtype': 'float32'})
    assert rt.device.type == 'cpu'
    err = capsys.readouterr().err
    warned = outcome == 'warn'
    assert err.count('\n') == warned and ('newer than this code was checked on' in err) == warned


ENDS = """
import atexit, sys
import torch
import torch.distributed as dist
from pretrain.cli import run_script

def main(argv):
    atexit.register(lambda: print('finalized', file=sys.stderr))
    if argv[0] == 'group':   # a group of one, as parallel.wrap makes, and a collective on a tensor Python holds
        dist.init_process_group('gloo', store=dist.HashStore(), rank=0, world_size=1)
        t = torch.ones(3)
        dist.all_reduce(t)
    print('the last words', end='')   # buffered: stdout is a pipe, and nothing flushes it
    if argv[1] != 'return':
        sys.exit(int(argv[1]))

run_script(main, sys.argv[1:])
"""


@pytest.mark.parametrize('status', ['return', '0', '3'])
@pytest.mark.parametrize('group', ['group', 'none'])
def test_a_script_with_a_process_group_ends_without_tearing_it_down(group, status):
    """run_script: with a process group the process ends by os._exit (no group teardown, no interpreter
    finalization, so no atexit handler runs) and still keeps main's exit status and its buffered output; without
    one it ends as Python does."""
    r = subprocess.run([sys.executable, '-c', ENDS, group, status], capture_output=True, text=True, timeout=120,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == (0 if status == 'return' else int(status)), r.stderr
    assert r.stdout == 'the last words'
    assert ('finalized' in r.stderr) == (group == 'none'), r.stderr
