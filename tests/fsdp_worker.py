"""Run by tests/test_parallel.py, not by pytest itself:

    torchrun --nproc_per_node=2 -m tests.fsdp_worker compare RESULT.json    FSDP2 against DDP, same model and batches
    python -m tests.fsdp_worker kill STEP TRAIN_ARGS...                       train.py, SIGKILLed inside a sharded save
    torchrun --nproc_per_node=2 -m tests.fsdp_worker memory CONFIGS_JSON     what each rank holds, for test_memory.py

compare: the same tiny GPT (same seed) and the same per-rank batches go through training.train_step under DDP and
under FSDP (parallel.wrap), and rank 0 writes what the tests assert on: the largest weight difference after several
AdamW steps (plain; with clipping and gradient accumulation; with activation checkpointing; in bf16), the global
gradient norm both ways, and the elements of weights and AdamW state each rank holds.
memory: for each GPTConfig (JSON keyword dicts), a GPT sharded by parallel.wrap takes one AdamW step; rank 0 prints
one JSON line with every rank's local bytes of weights (and buffers), gradients and optimizer state.
kill: train.py's main with DCP's file writer patched to SIGKILL this process midway through the save of STEP
(after some shard bytes are on disk, before the manifest), as a power cut or the OOM killer would.
"""
import json
import os
import signal
import sys
from types import SimpleNamespace

import torch
import torch.distributed as dist

from model import GPT, GPTConfig
from pretrain.parallel import clip_grad_norm_, local, wrap
from pretrain.cli import run_script
from pretrain.runtime import end_of_run, setup_runtime
from pretrain.training import configure_optimizer, train_step

CONFIG = GPTConfig(block_size=16, vocab_size=61, n_layer=2, n_head=4, n_embd=32, tie_weights=True)
OPT = SimpleNamespace(optimizer='adamw', learning_rate=1e-2, weight_decay=0.1, beta1=0.9, beta2=0.95, muon_lr=None)
STEPS, B = 5, 4


def batches(world, accum):
    """[step][micro][rank] -> (x, y): every rank's micro-batches of every step, the same in both modes."""
    g = torch.Generator().manual_seed(1)
    data = torch.randint(0, CONFIG.vocab_size, (STEPS, accum, world, B, CONFIG.block_size + 1), generator=g)
    return data[..., :-1], data[..., 1:]


def run(rt, parallel, accum=1, clip=0.0, checkpointing=False):
    """STEPS AdamW steps -> (the whole weights by name, float32 on CPU; the losses; the sharded model and optimizer)."""
    torch.manual_seed(0)
    model = GPT(CONFIG).to(rt.device)
    wrapped = wrap(model, rt, parallel, activation_checkpointing=checkpointing)
    optimizer = configure_optimizer(model, OPT, rt.device)
    scaler = torch.amp.GradScaler('cpu', enabled=False)
    x, y = batches(rt.world, accum)
    losses = []
    for step in range(STEPS):
        loss = train_step(wrapped, optimizer, scaler, [(x[step, m, rt.rank], y[step, m, rt.rank]) for m in range(accum)],
                          rt, clip)
        losses.append(loss.item())
    weights = {n: (p.full_tensor() if hasattr(p, 'full_tensor') else p).detach().float()
               for n, p in model.named_parameters()}
    return weights, losses, model, optimizer


def max_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


def grad_norm(rt, parallel):
    """The global gradient norm of one backward on this rank's batch, as parallel.clip_grad_norm_ computes it."""
    torch.manual_seed(0)
    model = GPT(CONFIG)
    wrapped = wrap(model, rt, parallel)
    x, y = batches(rt.world, 1)
    _, loss = wrapped(x[0, 0, rt.rank], y[0, 0, rt.rank])
    loss.backward()
    return clip_grad_norm_(model, 1e9).item()   # max_norm that never clips: the norm alone


def compare(path):
    rt = setup_runtime({'device': 'cpu', 'dtype': 'float32'})
    torch.set_num_threads(1)
    out = {}
    ddp, ddp_losses, _, _ = run(rt, 'ddp')
    fsdp, fsdp_losses, model, optimizer = run(rt, 'fsdp')
    out['plain'] = {'max_diff': max_diff(ddp, fsdp), 'ddp_losses': ddp_losses, 'fsdp_losses': fsdp_losses}

    # what this rank holds: its shards of the weights and of AdamW's two moments, against the whole
    held = sum(local(p).numel() for p in model.parameters())
    state = sum(local(t).numel() for s in optimizer.state.values() for k, t in s.items() if k != 'step')
    counts = torch.tensor([held, state, sum(p.numel() for p in model.parameters())])
    gathered = [torch.zeros_like(counts) for _ in range(rt.world)]
    dist.all_gather(gathered, counts)
    out['counts'] = [c.tolist() for c in gathered]

    ddp, ddp_losses, _, _ = run(rt, 'ddp', accum=2, clip=0.05)
    fsdp, fsdp_losses, _, _ = run(rt, 'fsdp', accum=2, clip=0.05)
    out['clip_accum'] = {'max_diff': max_diff(ddp, fsdp), 'ddp_losses': ddp_losses, 'fsdp_losses': fsdp_losses}
    out['norm'] = {'ddp': grad_norm(rt, 'ddp'), 'fsdp': grad_norm(rt, 'fsdp')}

    plain, _, _, _ = run(rt, 'fsdp', accum=2)
    ckpt, _, _, _ = run(rt, 'fsdp', accum=2, checkpointing=True)
    out['checkpointing'] = {'max_diff': max_diff(plain, ckpt)}

    # bf16: FSDP's MixedPrecisionPolicy (bf16 compute weights, float32 master weights and reduction) against DDP
    # with autocast. The weights a block computes with are recorded by a forward pre-hook.
    rt16 = setup_runtime({'device': 'cpu', 'dtype': 'bfloat16'})
    seen = []
    ddp, ddp_losses, _, _ = run(rt16, 'ddp')
    fsdp, fsdp_losses, model, optimizer = run(rt16, 'fsdp')
    master = sorted({str(p.dtype) for p in model.parameters()} |
                    {str(t.dtype) for s in optimizer.state.values() for k, t in s.items() if k != 'step'})
    model.transformer.h[0].register_forward_pre_hook(lambda m, args: seen.append(str(m.attn.c_q.weight.dtype)))
    model(batches(rt.world, 1)[0][0, 0, rt.rank])
    out['bf16'] = {'max_diff': max_diff(ddp, fsdp), 'ddp_losses': ddp_losses, 'fsdp_losses': fsdp_losses,
                   'master_dtypes': master, 'compute_dtype': seen[0]}
    if rt.master:
        with open(path, 'w') as f:
            json.dump(out, f)
    end_of_run(rt)


def memory(configs_json):
    rt = setup_runtime({'device': 'cpu', 'dtype': 'float32'})
    torch.set_num_threads(1)
    nbytes = lambda ts: sum(local(t).nbytes for t in ts)
    out = []
    for kw in json.loads(configs_json):
        config = GPTConfig(**kw)
        torch.manual_seed(0)
        model = wrap(GPT(config), rt, 'fsdp')
        optimizer = configure_optimizer(model, OPT, rt.device)
        x = torch.randint(0, config.vocab_size, (2, config.block_size))
        _, loss = model(x, x, return_logits=False)
        loss.backward()
        optimizer.step()
        params = list(model.parameters())
        mine = dict(weights=nbytes(params) + nbytes(model.buffers()), grads=nbytes(p.grad for p in params),
                    optimizer=sum(nbytes(v for v in s.values() if torch.is_tensor(v)) for s in optimizer.state.values()))
        ranks = [None] * rt.world
        dist.all_gather_object(ranks, mine)
        out.append(ranks)
    if rt.rank == 0:
        print(json.dumps(out))
    end_of_run(rt)


def kill(step, argv):
    import torch.distributed.checkpoint as dcp
    import train
    write = dcp.FileSystemWriter.write_data

    def write_then_die(self, plan, planner):
        if f'ckpt.dcp.{step:06d}-' in str(self.path):
            with open(os.path.join(self.path, '__0_0.distcp'), 'wb') as f:
                f.write(b'half a shard')   # bytes on disk, no .metadata, no manifest
            os.kill(os.getpid(), signal.SIGKILL)
        return write(self, plan, planner)
    dcp.FileSystemWriter.write_data = write_then_die
    train.main(argv)


def main(argv):
    if argv[0] == 'compare':
        compare(argv[1])
    elif argv[0] == 'memory':
        memory(argv[1])
    else:
        kill(int(argv[1]), argv[2:])


if __name__ == '__main__':
    run_script(main, sys.argv[1:])   # the end every script has (pretrain/runtime.py, run_script)
