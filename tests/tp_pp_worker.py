"""Run by tests/test_tp_pp.py under torchrun, not by pytest itself:

    torchrun --nproc_per_node=N -m tests.tp_pp_worker compare RESULT.json CASES_JSON   layouts against one process
    torchrun --nproc_per_node=N -m tests.tp_pp_worker memory RESULT.json CASES_JSON    what each rank holds

compare: for each case (a tiny GPT, parallel, tensor_parallel, pipeline_parallel, pipeline_schedule, micro-steps,
grad_clip, dtype, compile), STEPS AdamW steps of training.train_step at that layout on the same global batches as
one process taking all the micro-batches (computed on every rank, without communication): per step the mean loss
and the global gradient norm before clipping both ways, and the largest difference of the final weights (every
rank's part gathered). memory: the same layouts take one step; each rank's bytes of weights, gradients and AdamW
state (its local parts), and for pipelines the most micro-batches each stage held at once (forwards not yet
backwarded), for tests/test_tp_pp.py to hold against accounting.train_memory.
"""
import json
import sys
from types import SimpleNamespace

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from model import GPT, GPTConfig
from pretrain import training
from pretrain.cli import run_script
from pretrain.parallel import Pipeline, layout, local, wrap
from pretrain.runtime import end_of_run, setup_runtime

STEPS, B, T = 4, 2, 16
OPT = SimpleNamespace(optimizer='adamw', learning_rate=3e-3, weight_decay=0.1, beta1=0.9, beta2=0.95, muon_lr=None)


def config(kw):
    return GPTConfig(**{**dict(block_size=T, vocab_size=64, n_layer=4, n_head=4, n_embd=32), **kw})


def data(config, n_micro):
    """[step][micro] -> (x, y): the step's micro-batches in one process's order (micro-step m of data-parallel rank
    d is one process's m * dp + d: TokenLoader.micro_batches)."""
    g = torch.Generator().manual_seed(1)
    d = torch.randint(0, config.vocab_size, (STEPS, n_micro, B, T + 1), generator=g)
    return d[..., :-1], d[..., 1:]


def norms():
    """Record the global norm train_step's clip computes (training.clip_grad_norm_), every step."""
    seen, clip = [], training.clip_grad_norm_

    def recording(model, max_norm):
        seen.append(clip(model, max_norm).item())
        return seen[-1]
    training.clip_grad_norm_ = recording
    return seen, lambda: setattr(training, 'clip_grad_norm_', clip)


def train(rt, case, n_micro, place):
    """STEPS steps -> (mean loss per step, gradient norm per step, raw model, wrapped model). place(m) -> the
    micro-batch indices this rank takes at micro-step ... (its data-parallel part)."""
    conf = config(case['model'])
    torch.manual_seed(0)
    model = GPT(conf).to(rt.device)
    wrapped = wrap(model, rt, case.get('parallel', 'ddp'), case.get('compile', False), False,
                   case.get('schedule', '1f1b'), len(place))
    optimizer = training.configure_optimizer(model, OPT, rt.device)
    scaler = torch.amp.GradScaler('cpu', enabled=False)
    x, y = data(conf, n_micro)
    seen, restore = norms()
    losses = []
    try:
        for step in range(STEPS):
            loss = training.train_step(wrapped, optimizer, scaler, [(x[step, i], y[step, i]) for i in place], rt,
                                       case.get('clip', 1e9))
            losses.append(loss / len(place))
    finally:
        restore()
    return losses, seen, model, wrapped


def whole(model):
    """{name: float32 tensor} of every parameter of the GPT, gathered from every rank's part."""
    mine = {n: (p.full_tensor() if isinstance(p, DTensor) else p).detach().float() for n, p in model.named_parameters()}
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, mine)
    return {n: t for part in parts for n, t in part.items()}


def compare(path, cases):
    base = setup_runtime({'device': 'cpu', 'dtype': 'float32'})
    torch.set_num_threads(1)
    out = []
    for case in cases:
        tp, pp, accum = case.get('tp', 1), case.get('pp', 1), case['accum']
        rt = layout(setup_runtime({'device': 'cpu', 'dtype': case.get('dtype', 'float32')}),
                    case.get('parallel', 'ddp'), tp, pp)
        dp = rt.dp_world
        one = SimpleNamespace(**{**vars(base), 'ddp': False, 'world': 1, 'rank': 0, 'mesh': None, 'dp_rank': 0,
                                 'dp_world': 1, 'autocast': rt.autocast, 'dtype': rt.dtype})
        ref_losses, ref_norms, ref_model, _ = train(one, {**case, 'parallel': 'ddp', 'compile': False}, accum * dp,
                                                    range(accum * dp))
        losses, seen, model, wrapped = train(rt, case, accum * dp, [m * dp + rt.dp_rank for m in range(accum)])
        losses = torch.stack(losses)
        dist.all_reduce(losses)   # each data-parallel rank's mean, repeated by its tensor- and pipeline-parallel ranks
        ref = {n: p.detach().float() for n, p in ref_model.named_parameters()}
        got = whole(model)
        out.append(dict(case=case, losses=(losses / rt.world).tolist(), ref_losses=[l.item() for l in ref_losses],
                        norms=seen, ref_norms=ref_norms, names=sorted(got) == sorted(ref),
                        max_diff=max((got[n] - ref[n]).abs().max().item() for n in ref),
                        pipeline=isinstance(wrapped, Pipeline)))
    if base.master:
        with open(path, 'w') as f:
            json.dump(out, f)
    end_of_run(base)


def saved_bytes(model, x, y, autocast):
    """Bytes of the distinct storages autograd keeps for the backward of one forward, parameters and buffers left
    out (tests/test_memory.py's count; a DTensor's are its local tensor's)."""
    storage = lambda t: (t._local_tensor if isinstance(t, DTensor) else t).untyped_storage()
    own = {storage(t).data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    kept = {}

    def pack(t):
        if storage(t).data_ptr() not in own:
            kept[storage(t).data_ptr()] = storage(t).nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
        model(x, y, return_logits=False)
    return sum(kept.values())


def memory(path, cases):
    """Each rank's local bytes after one step; for a pipeline the most forwards each rank had not yet backwarded
    (stage-forwards; every stage output's gradient arrives when its backward starts); without one, the activations
    a forward keeps."""
    base = setup_runtime({'device': 'cpu', 'dtype': 'float32'})
    torch.set_num_threads(1)
    nbytes = lambda ts: sum(local(t).nbytes for t in ts)
    out = []
    for case in cases:
        rt = layout(setup_runtime({'device': 'cpu', 'dtype': case.get('dtype', 'float32')}),
                    case.get('parallel', 'ddp'), case.get('tp', 1), case.get('pp', 1))
        conf = config(case['model'])
        torch.manual_seed(0)
        model = GPT(conf)
        wrapped = wrap(model, rt, case.get('parallel', 'ddp'), False, False, case.get('schedule', '1f1b'),
                       case['accum'])
        optimizer = training.configure_optimizer(model, OPT, rt.device)
        x, y = data(conf, case['accum'] * rt.dp_world)
        batches = [(x[0, m * rt.dp_world + rt.dp_rank].clone(), y[0, m * rt.dp_world + rt.dp_rank].clone())
                   for m in range(case['accum'])]   # clones: a view would keep the whole data's storage
        live, most = [0], [0]

        def forward_hook(module, args, output):
            live[0] += 1
            most[0] = max(most[0], live[0])
            output.register_hook(lambda g: live.__setitem__(0, live[0] - 1))
        for stage in getattr(wrapped, 'stages', ()):
            stage.register_forward_hook(forward_hook)
        mine = {}
        if isinstance(wrapped, Pipeline):   # the first step also runs the stages once to learn the shapes it sends
            wrapped.step(batches)
            model.zero_grad()
            live[0] = most[0] = 0
            wrapped.step(batches)
        else:
            mine['saved'] = saved_bytes(model, *batches[0], rt.autocast)
            with rt.autocast:
                wrapped(*batches[0])[1].backward()
        params = list(model.parameters())
        mine.update(weights=nbytes(params) + nbytes(model.buffers()), grads=nbytes(p.grad for p in params),
                    in_flight=most[0], pipeline_rank=rt.mesh['pp'].get_local_rank())
        optimizer.step()
        mine['optimizer'] = sum(nbytes(v for v in s.values() if torch.is_tensor(v)) for s in optimizer.state.values())
        ranks = [None] * rt.world
        dist.all_gather_object(ranks, mine)
        out.append(dict(case=case, ranks=ranks))
    if base.master:
        with open(path, 'w') as f:
            json.dump(out, f)
    end_of_run(base)


def main(argv):
    {'compare': compare, 'memory': memory}[argv[0]](argv[1], json.loads(argv[2]))


if __name__ == '__main__':
    run_script(main, sys.argv[1:])
