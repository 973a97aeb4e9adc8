"""
Benchmark training throughput, MFU against this device's peak, sampling speed, and multi-process scaling.

    python bench.py                                   # the quick-start model (train.py's defaults) on this device
    python bench.py config/gpt2.py --batch_size=1 --block_size=1024 --dtype=float32
    python bench.py --peak_tflops=312                 # MFU against a peak you supply (unknown GPU, or to compare)
    python bench.py --nprocs=1,2                      # strong and weak scaling under torchrun (gloo on CPU)
    python bench.py --json >> results.jsonl           # one JSON object per run

MFU = model FLOPs per token * tokens/s / peak FLOP/s of the devices used. The peak is a table of dense
(not 2:4-sparse) tensor-core figures by CUDA device name, or a matrix-product microbenchmark on CPU.
"""
import re
import time

import torch

# -----------------------------------------------------------------------------
# peak FLOP/s

# Dense peak TFLOP/s per GPU from the vendors' datasheets/whitepapers. NVIDIA quotes tensor-core figures
# "with sparsity" (2:4 structured) in headlines: those are 2x the dense numbers used here, e.g. H100 SXM's
# 1979 bf16 TFLOP/s is sparse, 989.4 dense. 'tf32' is what float32 matmuls get when TF32 is allowed
# (train.py allows it on CUDA); 'fp32' is the non-tensor-core figure. None = dtype not supported in hardware.
# Patterns are tried in order against torch.cuda.get_device_name(), so more specific names come first.
_GPU_PEAKS = [
    # (regex on device name, {dtype: dense TFLOP/s})
    # Blackwell. HGX B200 datasheet: FP16/BF16 4.5 PF, TF32 2.2 PF (sparse) per GPU, FP32 75 TF (Mar 2024).
    (r'GB200', dict(bf16=2500.0, fp16=2500.0, tf32=1250.0, fp32=80.0)),  # GB200 NVL72 datasheet, per GPU, /2
    (r'B200', dict(bf16=2250.0, fp16=2250.0, tf32=1100.0, fp32=75.0)),
    (r'B100', dict(bf16=1750.0, fp16=1750.0, tf32=875.0, fp32=60.0)),  # HGX B100: 3.5 PF sparse bf16 per GPU
    # Hopper. H100 datasheet (nvidia.com/en-us/data-center/h100): SXM bf16/fp16 1979, tf32 989 sparse, fp32 67;
    # PCIe 1513 / 756 sparse, fp32 51; NVL 1671 / 835 sparse, fp32 60. H200 (SXM) = H100 SXM compute;
    # H200 NVL = H100 NVL compute (H200 datasheet). GH200's Hopper = H100 SXM (GH200 datasheet).
    # H800 = H100 with less NVLink, same compute; H20: 148 dense bf16, 74 tf32, 44 fp32 (H20 spec sheet).
    (r'GH200', dict(bf16=989.4, fp16=989.4, tf32=494.7, fp32=66.9)),
    (r'H200 NVL', dict(bf16=835.5, fp16=835.5, tf32=417.5, fp32=60.0)),
    (r'H200', dict(bf16=989.4, fp16=989.4, tf32=494.7, fp32=66.9)),
    (r'H100 NVL', dict(bf16=835.5, fp16=835.5, tf32=417.5, fp32=60.0)),
    (r'H100 PCIe|H800 PCIe', dict(bf16=756.5, fp16=756.5, tf32=378.0, fp32=51.2)),
    (r'H100|H800', dict(bf16=989.4, fp16=989.4, tf32=494.7, fp32=66.9)),  # "NVIDIA H100 80GB HBM3" = SXM
    (r'\bH20\b', dict(bf16=148.0, fp16=148.0, tf32=74.0, fp32=44.0)),
    # Ampere. A100 datasheet: bf16/fp16 312, tf32 156 dense (624/312 sparse), fp32 19.5; PCIe and SXM alike.
    # A800 = A100 compute. A30: 165 / 82 / 10.3. A40: 149.7 / 74.8 / 37.4. A10: 125 / 62.5 / 31.2.
    # A10G (AWS g5): AWS quotes no tensor figure; GA102 at 80 SMs, 1710 MHz with half-rate fp32 accumulate like
    # the GeForce parts gives ~70 bf16 (consistent with measured g5 matmul throughput); fp32 31.2.
    (r'A100|A800', dict(bf16=312.0, fp16=312.0, tf32=156.0, fp32=19.5)),
    (r'\bA30\b', dict(bf16=165.0, fp16=165.0, tf32=82.0, fp32=10.3)),
    (r'\bA40\b', dict(bf16=149.7, fp16=149.7, tf32=74.8, fp32=37.4)),
    (r'\bA10G\b', dict(bf16=70.0, fp16=70.0, tf32=35.0, fp32=31.2)),
    (r'\bA10\b', dict(bf16=125.0, fp16=125.0, tf32=62.5, fp32=31.2)),
    (r'RTX A6000', dict(bf16=154.8, fp16=154.8, tf32=77.4, fp32=38.7)),  # RTX A6000 datasheet (309.7 sparse)
    # GeForce Ampere, GA102 whitepaper appendix: fp16/bf16 tensor with fp32 accumulate (what autocast uses),
    # dense: RTX 3090 71, 3090 Ti 80; tf32 35.6 / 40; fp32 35.6 / 40.
    (r'RTX 3090 Ti', dict(bf16=80.0, fp16=80.0, tf32=40.0, fp32=40.0)),
    (r'RTX 3090', dict(bf16=71.0, fp16=71.0, tf32=35.6, fp32=35.6)),
    # Ada. L40S datasheet: bf16/fp16 362.05 dense (733 sparse), tf32 183, fp32 91.6. L40: 181 / 90.5 / 90.5.
    # L4 datasheet: 121 dense (242 sparse), tf32 60, fp32 30.3. RTX 4090, Ada whitepaper appendix: fp16/bf16
    # with fp32 accumulate 165.2 dense (330.3 sparse), tf32 82.6, fp32 82.6.
    (r'L40S', dict(bf16=362.05, fp16=362.05, tf32=183.0, fp32=91.6)),
    (r'\bL40\b', dict(bf16=181.0, fp16=181.0, tf32=90.5, fp32=90.5)),
    (r'\bL4\b', dict(bf16=121.0, fp16=121.0, tf32=60.0, fp32=30.3)),
    (r'RTX 4090', dict(bf16=165.2, fp16=165.2, tf32=82.6, fp32=82.6)),
    # Volta/Turing: no bf16 tensor cores. V100 datasheet: SXM2 fp16 tensor 125, fp32 15.7; PCIe 112 / 14;
    # V100S 130 / 16.4. T4 datasheet: fp16 65, fp32 8.1.
    (r'V100S', dict(bf16=None, fp16=130.0, tf32=None, fp32=16.4)),
    (r'V100.*PCIE', dict(bf16=None, fp16=112.0, tf32=None, fp32=14.0)),
    (r'V100', dict(bf16=None, fp16=125.0, tf32=None, fp32=15.7)),
    (r'\bT4\b', dict(bf16=None, fp16=65.0, tf32=None, fp32=8.1)),
    # AMD (ROCm torch reports these as cuda devices). MI300X/MI325X datasheets: bf16/fp16 1307.4 dense,
    # tf32 653.7, fp32 matrix 163.4; MI250X: bf16/fp16 383, fp32 matrix 95.7 (no tf32).
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


_measured = {}  # (device, dtype, threads) -> FLOP/s, so train.py and repeated calls pay the microbenchmark once


def measure_matmul_flops(device, dtype, n=2048, repeats=5):
    """Best FLOP/s of an n x n x n matrix product in `dtype` on `device` (2*n^3 FLOPs each)."""
    device = torch.device(device)
    key = (str(device), dtype, torch.get_num_threads(), n)
    if key not in _measured:
        g = torch.Generator(device='cpu').manual_seed(0)
        a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
        b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
        sync = torch.mps.synchronize if device.type == 'mps' else (lambda: None)
        best = float('inf')
        for i in range(repeats + 1):  # the first product warms up the kernels and allocator; not counted
            sync()
            t0 = time.perf_counter()
            torch.mm(a, b)
            sync()
            if i:
                best = min(best, time.perf_counter() - t0)
        _measured[key] = 2 * n ** 3 / best
    return _measured[key]


def peak_flops(device, dtype):
    """
    Dense peak FLOP/s of one device for matmuls in `dtype`, or None when unknown.
    CUDA: the datasheet table above by device name (unknown name -> None: never a silent A100 guess).
    CPU: measured with a 2048^3 matrix product in `dtype` (best of 5, cached in-process), so MFU on CPU is
    relative to what this machine's BLAS reaches, not a vendor figure. MPS: measured the same way.
    """
    device = torch.device(device)
    if device.type == 'cuda':
        name = torch.cuda.get_device_name(device)
        tf32 = torch.backends.cuda.matmul.allow_tf32
        tflops = gpu_peak_tflops(name, dtype, tf32=tf32)
        return tflops * 1e12 if tflops else None
    if device.type in ('cpu', 'mps'):
        try:
            return measure_matmul_flops(device, dtype)
        except (RuntimeError, TypeError):  # dtype not supported by this backend
            return None
    return None
