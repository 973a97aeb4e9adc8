"""
What the hardware can do, for MFU and memory reports (train.py, bench.py, scaling.py's planner): dense peak FLOP/s
per device (a datasheet table for GPUs, a measured matrix product on CPUs and Apple GPUs), measured copy bandwidth,
the device's name and the run's peak memory.
"""
import json
import os
import platform
import re
import subprocess
import sys
import time

import torch

from pretrain.cli import first_line
from pretrain.data import CACHE_DIR, write_json
from pretrain.runtime import device_sync


# Dense peak TFLOP/s per GPU from the vendors' datasheets/whitepapers. NVIDIA's headline tensor-core figures are
# "with sparsity" (2:4 structured), 2x the dense ones used here (H100 SXM bf16: 1979 sparse, 989.4 dense). 'tf32':
# float32 matmuls with TF32 allowed (setup_runtime allows it); 'fp32': without tensor cores; None: no such unit.
# Patterns are tried in order against torch.cuda.get_device_name(), so more specific names come first.
_GPU_PEAKS = [
    # Blackwell. HGX B200 datasheet: FP16/BF16 4.5 PF, TF32 2.2 PF (sparse) per GPU, FP32 75 TF.
    (r'GB200', dict(bf16=2500.0, fp16=2500.0, tf32=1250.0, fp32=80.0)),  # GB200 NVL72 datasheet, per GPU, /2
    (r'B200', dict(bf16=2250.0, fp16=2250.0, tf32=1100.0, fp32=75.0)),
    (r'B100', dict(bf16=1750.0, fp16=1750.0, tf32=875.0, fp32=60.0)),  # HGX B100: 3.5 PF sparse bf16 per GPU
    # Hopper. H100 datasheet (nvidia.com/en-us/data-center/h100): SXM, PCIe and NVL sparse figures halved.
    # H200 (SXM) and GH200 = H100 SXM compute, H200 NVL = H100 NVL (H200, GH200 datasheets); H800 = H100 with
    # less NVLink; H20 spec sheet (dense).
    (r'GH200', dict(bf16=989.4, fp16=989.4, tf32=494.7, fp32=66.9)),
    (r'H200 NVL', dict(bf16=835.5, fp16=835.5, tf32=417.5, fp32=60.0)),
    (r'H200', dict(bf16=989.4, fp16=989.4, tf32=494.7, fp32=66.9)),
    (r'H100 NVL', dict(bf16=835.5, fp16=835.5, tf32=417.5, fp32=60.0)),
    (r'H100 PCIe|H800 PCIe', dict(bf16=756.5, fp16=756.5, tf32=378.0, fp32=51.2)),
    (r'H100|H800', dict(bf16=989.4, fp16=989.4, tf32=494.7, fp32=66.9)),  # "NVIDIA H100 80GB HBM3" = SXM
    (r'\bH20\b', dict(bf16=148.0, fp16=148.0, tf32=74.0, fp32=44.0)),
    # Ampere. A100 datasheet (dense; A800 = A100 compute); A30, A40, A10 datasheets. A10G (AWS g5): AWS publishes
    # no tensor figure; taken to behave like the GeForce GA102 parts (half-rate fp32 accumulate): an estimate.
    (r'A100|A800', dict(bf16=312.0, fp16=312.0, tf32=156.0, fp32=19.5)),
    (r'\bA30\b', dict(bf16=165.0, fp16=165.0, tf32=82.0, fp32=10.3)),
    (r'\bA40\b', dict(bf16=149.7, fp16=149.7, tf32=74.8, fp32=37.4)),
    (r'\bA10G\b', dict(bf16=70.0, fp16=70.0, tf32=35.0, fp32=31.2)),
    (r'\bA10\b', dict(bf16=125.0, fp16=125.0, tf32=62.5, fp32=31.2)),
    (r'RTX A6000', dict(bf16=154.8, fp16=154.8, tf32=77.4, fp32=38.7)),  # RTX A6000 datasheet (309.7 sparse)
    # GeForce Ampere, GA102 whitepaper appendix: fp16/bf16 tensor with fp32 accumulate (what autocast uses), dense.
    (r'RTX 3090 Ti', dict(bf16=80.0, fp16=80.0, tf32=40.0, fp32=40.0)),
    (r'RTX 3090', dict(bf16=71.0, fp16=71.0, tf32=35.6, fp32=35.6)),
    # Ada. L40S, L40 and L4 datasheets (dense); RTX 4090: Ada whitepaper appendix, fp16/bf16 with fp32 accumulate.
    (r'L40S', dict(bf16=362.05, fp16=362.05, tf32=183.0, fp32=91.6)),
    (r'\bL40\b', dict(bf16=181.0, fp16=181.0, tf32=90.5, fp32=90.5)),
    (r'\bL4\b', dict(bf16=121.0, fp16=121.0, tf32=60.0, fp32=30.3)),
    (r'RTX 4090', dict(bf16=165.2, fp16=165.2, tf32=82.6, fp32=82.6)),
    # Volta/Turing: no bf16 tensor cores. V100 (SXM2, PCIe, V100S) and T4 datasheets.
    (r'V100S', dict(bf16=None, fp16=130.0, tf32=None, fp32=16.4)),
    (r'V100.*PCIE', dict(bf16=None, fp16=112.0, tf32=None, fp32=14.0)),
    (r'V100', dict(bf16=None, fp16=125.0, tf32=None, fp32=15.7)),
    (r'\bT4\b', dict(bf16=None, fp16=65.0, tf32=None, fp32=8.1)),
    # AMD (ROCm torch reports these as cuda devices): MI300X/MI325X and MI250X datasheets (fp32: matrix cores).
    (r'MI3[02]5X|MI300X', dict(bf16=1307.4, fp16=1307.4, tf32=653.7, fp32=163.4)),
    (r'MI250X', dict(bf16=383.0, fp16=383.0, tf32=None, fp32=95.7)),
]


def gpu_peak_tflops(name, dtype, tf32=True):
    """Dense peak TFLOP/s of the GPU called `name` (as torch.cuda.get_device_name) for matmuls in `dtype`;
    None if the name is not in the table or the GPU lacks the dtype. float32 counts as TF32 when allowed."""
    key = {torch.bfloat16: 'bf16', torch.float16: 'fp16', torch.float32: 'tf32' if tf32 else 'fp32'}.get(dtype)
    for pattern, peaks in _GPU_PEAKS:
        if re.search(pattern, name, flags=re.IGNORECASE):
            if key == 'tf32' and peaks['tf32'] is None:  # no TF32 units (pre-Ampere): float32 runs as float32
                key = 'fp32'
            return peaks.get(key)
    return None


_measured = {}  # (device, dtype, threads, n) -> FLOP/s: repeated calls pay the microbenchmark once
# The best matmul FLOP/s ever measured per CPU model, threads, dtype, size and torch version: a measurement taken
# while other jobs share the cores understates the peak, and MFU against it would read high.
PEAK_CACHE = os.path.join(CACHE_DIR, 'matmul_peaks.json')


def _machine_key(device, dtype, n):
    return (f"{device_name(device)} | {device.type} | {str(dtype).replace('torch.', '')} | "
            f"{torch.get_num_threads()} threads | n={n} | torch {torch.__version__}")


def _recorded_peaks():
    try:
        with open(PEAK_CACHE) as f:
            peaks = json.load(f)
    except (OSError, ValueError):
        return {}
    return peaks if isinstance(peaks, dict) else {}


def _best_so_far(key, measured):
    """max(measured, what PEAK_CACHE holds for key), recording a new best there (atomically; best effort)."""
    peaks = _recorded_peaks()
    if isinstance(peaks.get(key), (int, float)) and peaks[key] >= measured:
        return float(peaks[key])
    peaks[key] = measured
    try:
        os.makedirs(os.path.dirname(PEAK_CACHE), exist_ok=True)
        write_json(PEAK_CACHE, peaks)
    except OSError:
        pass
    return measured


def measure_matmul_flops(device, dtype, n=2048, repeats=5, measure=True):
    """Best FLOP/s of an n x n x n matrix product in `dtype` on `device` (2*n^3 FLOPs each): the best of this
    measurement and of earlier ones on this machine (PEAK_CACHE). measure=False only reads PEAK_CACHE (None if
    this machine was never measured): train.py does not stop to benchmark, bench.py measures."""
    device = torch.device(device)
    key = (str(device), dtype, torch.get_num_threads(), n)
    if key not in _measured:
        if not measure:
            best = _recorded_peaks().get(_machine_key(device, dtype, n))
            return float(best) if isinstance(best, (int, float)) else None
        g = torch.Generator().manual_seed(0)
        a, b = (torch.randn(n, n, generator=g).to(device=device, dtype=dtype) for _ in range(2))
        best = float('inf')
        for i in range(repeats + 1):  # the first product warms up kernels and allocator and is not counted
            device_sync(device)
            t0 = time.perf_counter()
            torch.mm(a, b)
            device_sync(device)
            if i:
                best = min(best, time.perf_counter() - t0)
        _measured[key] = _best_so_far(_machine_key(device, dtype, n), 2 * n ** 3 / best)
    return _measured[key]


def peak_info(device, dtype, measure=True):
    """(dense peak FLOP/s of one device for matmuls in dtype, or None; where the number comes from).
    measure=False: on CPU/MPS only the best recorded measurement, never a new one."""
    device = torch.device(device)
    dname = str(dtype).replace('torch.', '')
    if device.type == 'cuda':
        name = torch.cuda.get_device_name(device)
        tf32 = dtype == torch.float32 and torch.get_float32_matmul_precision() != 'highest'
        tflops = gpu_peak_tflops(name, dtype, tf32=tf32)
        if tflops is None:
            return None, f"unknown: {name!r} with {dname} is not in hardware.py's table (give --peak_tflops)"
        return tflops * 1e12, f"datasheet: {name}, dense {'tf32' if tf32 else dname}"
    if device.type in ('cpu', 'mps'):
        try:
            flops = measure_matmul_flops(device, dtype, measure=measure)
        except (RuntimeError, TypeError) as e:  # dtype not supported by this backend
            return None, f"unknown: {dname} matmul failed on {device.type} ({first_line(e)[:80]})"
        if flops is None:
            return None, f"unknown: this {device.type} was never measured (python bench.py measures and records it)"
        return flops, (f"measured: best 2048^3 {dname} matmul on {device.type}"
                       + (f", {torch.get_num_threads()} threads" if device.type == 'cpu' else '')
                       + f", this run or earlier ones in {os.path.relpath(PEAK_CACHE)}")
    return None, f"unknown: no peak for {device.type}"


def peak_flops(device, dtype, measure=True):
    """Dense peak FLOP/s of one device for matmuls in `dtype`, or None when unknown (peak_info). CUDA: the
    datasheet table by device name, never a silent A100 guess; float32 as TF32 unless the float32 matmul precision
    is 'highest'. CPU and MPS: measured, so MFU there is relative to what this machine's BLAS reaches."""
    return peak_info(device, dtype, measure)[0]


def mfu(flops_per_token, tokens_per_s, peak_per_device, n_devices=1):
    """Model FLOPs utilization: achieved model FLOP/s over the peak of all devices used; None without a peak."""
    if not peak_per_device:
        return None
    return flops_per_token * tokens_per_s / (peak_per_device * n_devices)


def copy_bandwidth(device, n_bytes=1 << 30, repeats=5):
    """Device memory bandwidth in bytes/s, measured (CUDA only, else None): the best of `repeats` device-to-device
    copies of n_bytes, counting bytes read plus written (a datasheet figure is a lead, this is what the card does)."""
    if device.type != 'cuda':
        return None
    src = torch.empty(n_bytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    best = float('inf')
    for i in range(repeats + 1):   # the first copy is a warm-up
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        if i:
            best = min(best, start.elapsed_time(end) / 1e3)
    return 2 * src.numel() * 4 / best


def device_name(device):
    """The GPU's name, or the CPU model (a Mac's chip, e.g. 'Apple M2 Pro', for its CPU and its MPS GPU alike): it
    makes a results file comparable across machines."""
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    if sys.platform == 'darwin':   # no /proc there, and platform.processor() says only 'arm'
        try:
            return subprocess.run(['sysctl', '-n', 'machdep.cpu.brand_string'], capture_output=True, text=True,
                                  timeout=10).stdout.strip() or platform.processor() or device.type
        except (OSError, subprocess.SubprocessError):
            return platform.processor() or device.type
    try:
        with open('/proc/cpuinfo') as f:
            return next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        return platform.processor() or device.type


def peak_memory(device):
    """(bytes, what they count) of the run's memory: CUDA's peak allocation; on MPS the Metal driver's allocation
    (the caching allocator keeps what it took, so about its peak; torch.mps records no peak); on the CPU the
    process's peak RSS; (None, why) on Windows, which has no getrusage."""
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device), 'torch.cuda.max_memory_allocated'
    if device.type == 'mps':
        return torch.mps.driver_allocated_memory(), 'torch.mps.driver_allocated_memory (Metal, with its cache)'
    try:
        import resource   # Unix only
    except ImportError:
        return None, 'unknown: no getrusage on this system'
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss * (1 if sys.platform == 'darwin' else 1024), 'process peak RSS (getrusage ru_maxrss)'
