"""
How a run spreads over processes, one knob of train.py (docs/parallel.md):

    torchrun --nproc_per_node=8 train.py config/gpt2.py                   # parallel='ddp'
    torchrun --nproc_per_node=8 train.py config/gpt2.py --parallel=fsdp

'ddp': every process holds the whole model, its gradients and the AdamW state (16 bytes per parameter in float32)
and gradients are all-reduced (DistributedDataParallel). 'fsdp': FSDP2 (torch.distributed.fsdp.fully_shard), ZeRO
stage 3 (Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion Parameter Models"): each
of N processes keeps 1/N of every parameter, gradient and optimizer state; a block's weights are all-gathered
before its forward and backward and freed after, gradients reduce-scattered: the same update at 16 / N bytes per
parameter. One process can run 'fsdp' too (a group of one), so a sharded run resumes anywhere.
"""
import contextlib

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_state_dict, set_optimizer_state_dict,
                                                     set_state_dict)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from pretrain.configurator import ConfigError
from pretrain.runtime import resolve_device, resolve_dtype

MODES = ('ddp', 'fsdp')


def check_fsdp(c):
    """What parallel='fsdp' cannot do, each refused in one line. c: the knobs (attributes); dtype 'auto' counts as
    what it resolves to on this machine (float16 on GPUs without bf16)."""
    dtype = c.dtype if c.dtype != 'auto' else resolve_dtype('auto', resolve_device(c.device))
    if c.optimizer == 'muon':
        raise ConfigError("optimizer='muon' with parallel='fsdp' is not supported: Muon orthogonalizes whole "
                          "matrices and FSDP holds 1/N of each; use optimizer='adamw' or parallel='ddp'")
    if dtype == 'float16':
        raise ConfigError("dtype float16 with parallel='fsdp' is not supported (its GradScaler would need "
                          "sharded gradients); use bfloat16 or float32, or parallel='ddp'")
    if c.noise_scale:
        raise ConfigError("noise_scale with parallel='fsdp' is not supported: it reads each micro-batch's whole "
                          "gradient, which FSDP never holds; use parallel='ddp'")
    if c.hellaswag_interval:
        raise ConfigError("hellaswag_interval with parallel='fsdp' is not supported; score a checkpoint with "
                          "eval.py instead (it reads sharded checkpoints)")


def wrap(model, rt, parallel, compile=False, activation_checkpointing=False):
    """The raw GPT (on rt.device) -> the module training steps run through. Call before building the optimizer:
    under 'fsdp' fully_shard replaces the parameters by DTensors in place and returns `model` itself.
    'ddp' (several processes): DistributedDataParallel around the (compiled) model; one process: the model.
    'fsdp', as torchtitan (torchtitan/models/llama3/infra/parallelize.py): fully_shard each block, then the root
    (embeddings, the tied lm_head, ln_f); torch.compile per block before sharding (Module.compile, in place, so
    parameter names and checkpoints do not change; FSDP's hooks and the root stay eager).
    With bfloat16, FSDP2's MixedPrecisionPolicy keeps float32 master weights and optimizer state, all-gathers (half
    the bytes) and computes in bf16 and reduce-scatters gradients in float32 (PyTorch docs, MixedPrecisionPolicy).
    rt.autocast stays on, as under DDP (torchtitan drops it): it keeps norms, softmax and the loss in float32, so
    the matmuls see the bf16 weights DDP's autocast would make (FSDP also rounds embeddings and norm gains: close
    to DDP, not equal; tests/test_parallel.py)."""
    model.activation_checkpointing = activation_checkpointing   # a run setting of the GPT (model.py, features)
    if parallel != 'fsdp':
        wrapped = torch.compile(model) if compile else model
        if rt.ddp:
            wrapped = DistributedDataParallel(wrapped, device_ids=[rt.device.index] if rt.device.type == 'cuda'
                                              else None)
        return wrapped
    if not dist.is_initialized():   # one process, no torchrun: a group of one (an in-memory store, no network),
        # kept for the life of the process like torchrun's (cli.run_script) and reused by the next wrap
        dist.init_process_group('nccl' if rt.device.type == 'cuda' else 'gloo', store=dist.HashStore(), rank=0,
                                world_size=1, device_id=rt.device if rt.device.type == 'cuda' else None)
    mesh = init_device_mesh(rt.device.type, (rt.world,))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if rt.dtype == 'bfloat16' else MixedPrecisionPolicy()
    for block in model.transformer.h:
        if compile:
            block.compile()
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)   # the rest: wte (= the tied lm_head), wpe, ln_f
    return model


def no_sync(model, skip):
    """The context of one micro-step: skip=True (all but the last of an optimizer step) accumulates gradients without
    communicating. DDP: no_sync() skips the all-reduce. FSDP2: set_requires_gradient_sync(False) skips the reduce-
    scatter; the unsharded gradients (one per rank) accumulate until the last micro-step reduce-scatters their sum."""
    if skip and isinstance(model, DistributedDataParallel):
        return model.no_sync()
    if isinstance(model, FSDPModule):
        return _fsdp_sync(model, not skip)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _fsdp_sync(model, sync):
    model.set_requires_gradient_sync(sync)   # applies to every FSDP unit under the root
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def clip_grad_norm_(parameters, max_norm):
    """Scale the gradients so that their global L2 norm is at most max_norm; returns the norm before clipping.
    For sharded gradients (DTensors) torch's norm is a partial one per rank: full_tensor() all-reduces it into the
    global norm first (torchtitan, dist_utils.clip_grad_norm_). Plain tensors: torch.nn.utils.clip_grad_norm_."""
    parameters = list(parameters)
    grads = [p.grad for p in parameters if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads)
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, norm)
    return norm


def local(t):
    """This rank's part of a tensor: the local shard of a DTensor, a plain tensor itself."""
    return t.to_local() if isinstance(t, DTensor) else t


# -----------------------------------------------------------------------------
# state dicts for sharded checkpoints (torch.distributed.checkpoint.state_dict, PyTorch docs "Distributed
# Checkpoint"): keyed by parameter name, so any world size reads what any other wrote

def sharded_state(model, optimizer):
    """{'model', 'optimizer', 'aliases'}: this rank's shards (DTensors) of the weights and optimizer state, as
    checkpoint.save_sharded_checkpoint writes them and read_shards(into=...) fills them. A tensor under two names
    (the tied lm_head.weight) is kept under its first only, the others in 'aliases' {name: first name}: DCP would
    store it twice."""
    model_state, optim_state = get_state_dict(model, optimizer)
    first, aliases = {}, {}
    for name, p in model.named_parameters(remove_duplicate=False):   # the same on every rank
        if first.setdefault(id(p), name) != name:
            aliases[name] = first[id(p)]
            del model_state[name]
    return {'model': model_state, 'optimizer': optim_state, 'aliases': aliases}


def load_state(model, optimizer, state):
    """Put a state of sharded_state's form (filled by read_shards) into the sharded model and optimizer."""
    model_state = {**state['model'], **{a: state['model'][t] for a, t in state['aliases'].items()}}
    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=state['optimizer'])


def load_full_optimizer(model, optimizer, optim_state):
    """A single-file checkpoint's optimizer state (torch.optim's form, by position) into a sharded optimizer: every
    rank holds it whole and keeps its part. The weights came in before sharding (checkpoint.load_model)."""
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for g in optimizer.param_groups for p in g['params']]
    by_name = {'state': {order[i]: s for i, s in optim_state['state'].items()},
               'param_groups': [{**g, 'params': [order[i] for i in g['params']]} for g in optim_state['param_groups']]}
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))
