"""Worker for tests/test_memory.py, run under torchrun (gloo, CPU): for each GPTConfig given as JSON on the command
line, shard a GPT with FSDP2, take one AdamW step, and print, on rank 0, one JSON line with every rank's local bytes of
parameters (and buffers), gradients and optimizer state (DTensor.to_local(): what the rank holds between steps).

    torchrun --nproc_per_node=2 tests/fsdp_memory_worker.py '[{"n_layer": 3, ...}, ...]'
"""
import json
import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

from model import GPT, GPTConfig
from pretrain.training import configure_optimizer


def shard(model):
    """FSDP2 as issue 26 has it (and torchtitan): fully_shard each block, then the root (wte, the tied or untied
    lm_head, wpe, ln_f); parameters split along dim 0 over the ranks. The one place to swap for pretrain/parallel.py."""
    for block in model.transformer.h:
        fully_shard(block)
    fully_shard(model)
    return model


def local_bytes(tensors):
    return sum((t.to_local() if hasattr(t, 'to_local') else t).nbytes for t in tensors)


def measure(config):
    torch.manual_seed(0)
    model = shard(GPT(config))
    cfg = dict(optimizer='adamw', learning_rate=1e-3, weight_decay=0.1, beta1=0.9, beta2=0.95)
    opt = configure_optimizer(model, cfg, torch.device('cpu'))
    x = torch.randint(0, config.vocab_size, (2, config.block_size))
    _, loss = model(x, x, return_logits=False)
    loss.backward()
    opt.step()
    params = list(model.parameters())
    return dict(weights=local_bytes(params) + local_bytes(model.buffers()),
                grads=local_bytes(p.grad for p in params),
                optimizer=sum(local_bytes(v for v in s.values() if torch.is_tensor(v)) for s in opt.state.values()))


def main():
    dist.init_process_group('gloo')
    out = []
    for kw in json.loads(sys.argv[1]):
        mine = measure(GPTConfig(**kw))
        ranks = [None] * dist.get_world_size()
        dist.all_gather_object(ranks, mine)
        out.append(ranks)
    if dist.get_rank() == 0:
        print(json.dumps(out))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == '__main__':
    main()
