"""
The runtime: which torch, which device, which precision, which processes (DDP under torchrun). train.py, sample.py,
eval.py and bench.py all set up through here (what the hardware can do is hardware.py).

    rt = setup_runtime(cfg)          # cfg needs 'device' and 'dtype'
    with rt.autocast: ...            # bf16/fp16 autocast, or nothing for float32
"""
import contextlib
import os
import re
import sys
from types import SimpleNamespace

import torch

from pretrain.configurator import ConfigError


# The torch versions this code is checked on, (major, minor) oldest and newest: its tests pass and `--compile=True`
# learns at both ends. Older ones refuse to start (before 2.12 torch.compile gave zero gradients through a custom
# autograd.Function, PyTorch issue 180642: lm_loss.linear_cross_entropy stays out of compiled graphs); newer warn.
TORCH_SUPPORTED = ((2, 11), (2, 13))


def check_torch_version(version=None):
    """ConfigError below TORCH_SUPPORTED, a one-line warning (rank 0) above it, nothing inside."""
    version = version or torch.__version__
    (lo, hi), m = TORCH_SUPPORTED, re.match(r'(\d+)\.(\d+)', version)
    span = f"{lo[0]}.{lo[1]} to {hi[0]}.{hi[1]}"
    v = (int(m[1]), int(m[2])) if m else None
    if v is None or v < lo:
        raise ConfigError(f"torch {version} is older than this code supports ({span}); install a newer torch, "
                          f"e.g. pip install torch=={hi[0]}.{hi[1]}.0")
    if v > hi and os.environ.get('RANK', '0') == '0':
        print(f"warning: torch {version} is newer than this code was checked on ({span})", file=sys.stderr)


def resolve_device(name, local_rank=0, ddp=False):
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' | 'mps' -> a torch.device with an index for CUDA. torch.cuda.set_device
    and DDP's device_ids need the index: 'cuda' alone means cuda:<LOCAL_RANK> under torchrun, else the current
    device (cuda:0 unless CUDA_VISIBLE_DEVICES says otherwise)."""
    if name == 'auto':
        name = 'cuda' if torch.cuda.is_available() else 'mps' if torch.backends.mps.is_available() else 'cpu'
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ('cpu', 'cuda', 'mps'):
        raise ConfigError(f"device must be auto, cpu, cuda, cuda:N or mps, got {name!r}")
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            raise ConfigError("device is cuda but torch sees no CUDA GPU")
        per_machine = int(os.environ.get('LOCAL_WORLD_SIZE', 1))   # checked alike on every rank (cli.cli says why)
        if ddp and device.index is None and per_machine > torch.cuda.device_count():
            raise ConfigError(f"torchrun starts {per_machine} processes on this machine but torch sees "
                              f"{torch.cuda.device_count()} CUDA GPU(s): give --nproc_per_node <= that")
        if device.index is None:
            device = torch.device('cuda', local_rank if ddp else torch.cuda.current_device())
        if device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {device} does not exist: torch sees {torch.cuda.device_count()} CUDA GPU(s)")
    elif device.type == 'mps' and not torch.backends.mps.is_available():
        raise ConfigError("device is mps but torch sees no MPS backend")
    return device


def cpu_has_fast_bf16():
    """True when the CPU has bf16 matmul instructions (AVX-512-BF16 or AMX-BF16: /proc/cpuinfo flags)."""
    try:
        with open('/proc/cpuinfo') as f:
            flags = next((line for line in f if line.startswith('flags')), '')
    except OSError:
        return False
    return bool(re.search(r'\b(avx512_bf16|amx_bf16)\b', flags))


def resolve_dtype(dtype, device):
    """'auto' | 'float32' | 'bfloat16' | 'float16' -> the dtype name to run in on this device. 'auto': bf16 on CUDA
    GPUs that have it (else fp16 + GradScaler), float32 on CPU and MPS, as nanoGPT. A CPU runs bf16 matmuls fast
    only with AVX-512-BF16 or AMX (with AVX2 alone ~130x slower): an explicit bfloat16 there gets a warning."""
    if dtype == 'auto':
        if device.type == 'cuda':
            return 'bfloat16' if torch.cuda.is_bf16_supported() else 'float16'
        return 'float32'
    if dtype not in ('float32', 'bfloat16', 'float16'):
        raise ConfigError(f"dtype must be auto, float32, bfloat16 or float16, got {dtype!r}")
    if dtype == 'float16' and device.type != 'cuda':
        raise ConfigError("dtype float16 needs CUDA (its GradScaler); use bfloat16 or float32")
    if dtype == 'bfloat16' and device.type == 'cuda' and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"{torch.cuda.get_device_name(device)} has no bfloat16; use float16 (or dtype='auto')")
    if dtype == 'bfloat16' and device.type == 'cpu' and not cpu_has_fast_bf16() and os.environ.get('RANK', '0') == '0':
        print("warning: this CPU has no AVX-512-BF16/AMX, so bfloat16 matmuls run far slower than float32 "
              "(~130x measured on an AVX2 CPU); use dtype='float32'", file=sys.stderr)
    return dtype


def setup_runtime(cfg):
    """Device, dtype, autocast context and DDP ranks from cfg['device'] and cfg['dtype'] (torchrun's RANK,
    LOCAL_RANK, WORLD_SIZE; one process is rank 0 of 1)."""
    check_torch_version()
    ddp = int(os.environ.get('WORLD_SIZE', 1)) > 1
    rank, local_rank, world = (int(os.environ['RANK']), int(os.environ['LOCAL_RANK']),
                               int(os.environ['WORLD_SIZE'])) if ddp else (0, 0, 1)
    device = resolve_device(cfg['device'], local_rank, ddp)
    dtype = resolve_dtype(cfg['dtype'], device)
    if device.type == 'cuda':
        torch.cuda.set_device(device)
        # float32 matmuls in TF32 on Ampere+, the usual speed lever; the public switch, stable across releases
        torch.set_float32_matmul_precision('high')
    elif device.type == 'cpu' and ddp:
        # processes on one machine share its cores: give each its part instead of oversubscribing
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get('LOCAL_WORLD_SIZE', world))))
    if device.type == 'cpu':
        # float32 subnormals (|x| < 1.2e-38) as zero: x86 cores take a slow path on each, and a run can make them
        # (AdamW at its peak LR without warm-up: benchmarks/subnormals.py); no float32 loss or update resolves them.
        # The flag is per thread: set before the first parallel op, OpenMP's workers inherit it (tests/test_runtime.py)
        torch.set_flush_denormal(True)
    if ddp and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend='nccl' if device.type == 'cuda' else 'gloo',
                                             device_id=device if device.type == 'cuda' else None)
    ptdtype = getattr(torch, dtype)
    autocast = (contextlib.nullcontext() if dtype == 'float32'
                else torch.autocast(device_type=device.type, dtype=ptdtype))
    # data parallel over the whole world: parallel.layout narrows it when tensor or pipeline parallelism take ranks
    return SimpleNamespace(ddp=ddp, rank=rank, local_rank=local_rank, world=world, master=rank == 0,
                           device=device, dtype=dtype, ptdtype=ptdtype, autocast=autocast, mesh=None, dp_rank=rank,
                           dp_world=world, dp_group=None)


def end_of_run(rt):
    """The last collective of a run: with several processes, a barrier, so that no rank leaves while another still
    talks to it. The process group is not destroyed: it lives until the process ends (cli.run_script says why)."""
    if rt.world > 1:
        torch.distributed.barrier()


def device_sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    elif device.type == 'mps':
        torch.mps.synchronize()
