"""
How a run spreads over processes, four knobs of train.py (docs/parallel.md):

    torchrun --nproc_per_node=8 train.py config/gpt2.py                   # parallel='ddp'
    torchrun --nproc_per_node=8 train.py config/gpt2.py --parallel=fsdp
    torchrun --nproc_per_node=8 train.py config/gpt2.py --parallel=fsdp --tensor_parallel=2 --pipeline_parallel=2

Data parallel, over the ranks left when tensor and pipeline parallelism have taken theirs: 'ddp', every rank holds
the whole model (of its tensor and pipeline part), its gradients and the AdamW state (16 bytes per parameter in
float32), gradients all-reduced (DistributedDataParallel); 'fsdp', FSDP2 (torch.distributed.fsdp.fully_shard),
ZeRO stage 3 (Rajbhandari et al. 2020): each of N ranks keeps 1/N of every parameter, gradient and optimizer state;
a block's weights are all-gathered before its forward and backward, gradients reduce-scattered. One process can run
'fsdp' too (a group of one), so a sharded run resumes anywhere.
tensor_parallel=t (Megatron-LM, Shoeybi et al. 2019, sec. 3): in every block q, k, v, the SwiGLU gate and the MLP's
up projection are split by output rows (whole heads per rank: model.py reads the head counts off the shapes), the
two output projections by input columns, so a block costs one all-reduce of its activations in the forward and one
in the backward (torch.distributed.tensor.parallel). Norms, embeddings and the lm_head are whole on every rank of
the group, and their gradients equal there (the activations they see are).
pipeline_parallel=p (GPipe, Huang et al. 2019; 1F1B and its interleaved form, Narayanan et al. 2021): the blocks are
split into p stages (2p, two per rank, for 'interleaved1f1b'), the embeddings go with the first, ln_f and the lm_head
with the last; the step's micro-batches (the gradient-accumulation micro-steps) flow through them in the schedule's
order, activations sent forward and their gradients back (torch.distributed.pipelining).
The ranks form one DeviceMesh (pp, dp, tp), TP innermost, as torchtitan's: a TP group is adjacent ranks (one node's
GPUs), a PP group the farthest apart (the stages talk least). Parameter names stay the GPT's at every layout, so a
checkpoint (DCP, keyed by name) written at one resumes at any other.
"""
import contextlib

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_state_dict, set_optimizer_state_dict,
                                                     set_state_dict)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor.parallel import (ColwiseParallel, PrepareModuleInput, PrepareModuleOutput,
                                               RowwiseParallel, SequenceParallel, parallelize_module)
from torch.nn.parallel import DistributedDataParallel

from pretrain.accounting import STAGES_PER_RANK, parameter_shapes, pipeline_part
from pretrain import lm_loss
from pretrain.configurator import ConfigError
from pretrain.runtime import resolve_device, resolve_dtype

MODES = ('ddp', 'fsdp')
# torch.distributed.pipelining's schedules; the stages each rank runs are accounting.STAGES_PER_RANK's: interleaved,
# two (Narayanan et al. 2021, sec. 2.2: rank r holds stages r and r + p, so the bubble shrinks by 2 for twice the
# activation sends)
SCHEDULES = {'gpipe': ScheduleGPipe, '1f1b': Schedule1F1B, 'interleaved1f1b': ScheduleInterleaved1F1B}
TIED = {'lm_head.weight': 'transformer.wte.weight'}   # a tied lm_head is the token embedding, stored under its name


# -----------------------------------------------------------------------------
# the knobs, checked before anything is touched (training.check_knobs)

def check_layout(c, world):
    """tensor_parallel, pipeline_parallel, pipeline_schedule and parallel against the world size and the model's
    knobs, and what a layout that splits the model cannot do, each refused in one line. -> the data-parallel degree."""
    for k in ('tensor_parallel', 'pipeline_parallel'):
        v = getattr(c, k)
        if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            raise ConfigError(f"{k}={v!r} is not allowed: must be an int >= 1")
    if c.pipeline_schedule not in SCHEDULES:
        raise ConfigError(f"pipeline_schedule={c.pipeline_schedule!r} is not allowed: must be one of "
                          f"{', '.join(map(repr, SCHEDULES))}")
    tp, pp = c.tensor_parallel, c.pipeline_parallel
    if world % (tp * pp):
        raise ConfigError(f"tensor_parallel={tp} x pipeline_parallel={pp} does not divide the {world} process(es)")
    check_shape(c.n_head, c.n_kv_head or c.n_head, c.n_layer, tp, pp * STAGES_PER_RANK[c.pipeline_schedule],
                c.block_size)
    split = [f"parallel={c.parallel!r}"] * (c.parallel == 'fsdp') + [f"tensor_parallel={tp}"] * (tp > 1) + \
        [f"pipeline_parallel={pp}"] * (pp > 1)
    if split:
        check_split(c, ' and '.join(split))
    return world // (tp * pp)


def check_shape(n_head, kv_heads, n_layer, tp, stages, seq_len=None):
    """What a model's shape allows: check_layout's, wrap's (a checkpoint's or GPT-2's own shape) and the budget
    planner's rule. seq_len: the training sequence, where known (wrap's was checked by check_layout)."""
    if seq_len is not None and seq_len % tp:
        raise ConfigError(f"block_size={seq_len} is not divisible by tensor_parallel={tp}: the sequence is split "
                          f"between the blocks' matrices (sequence parallelism)")
    if n_head % tp or kv_heads % tp:
        raise ConfigError(f"tensor_parallel={tp} needs n_head ({n_head}) and the key/value heads ({kv_heads}) "
                          f"divisible by it: each rank computes whole heads")
    if n_layer < stages:
        raise ConfigError(f"n_layer={n_layer} blocks cannot fill {stages} pipeline stages")


def check_split(c, what):
    """What no rank holding part of the model can do. dtype 'auto' counts as what it resolves to here."""
    dtype = c.dtype if c.dtype != 'auto' else resolve_dtype('auto', resolve_device(c.device))
    if c.optimizer == 'muon':
        raise ConfigError(f"optimizer='muon' with {what} is not supported: Muon orthogonalizes whole matrices and "
                          f"each rank holds part of each; use optimizer='adamw' or parallel='ddp' alone")
    if dtype == 'float16':
        raise ConfigError(f"dtype float16 with {what} is not supported (its GradScaler would need sharded "
                          f"gradients); use bfloat16 or float32")
    if c.noise_scale:
        raise ConfigError(f"noise_scale with {what} is not supported: it reads each micro-batch's whole gradient, "
                          f"which no rank holds here; use parallel='ddp' alone")
    if c.hellaswag_interval:
        raise ConfigError(f"hellaswag_interval with {what} is not supported; score a checkpoint with eval.py "
                          f"instead (it reads sharded checkpoints)")


def check_micro_batches(schedule, pp, n):
    """A pipeline's micro-batches per step are the step's micro-steps (n): 1F1B needs one in flight per stage,
    the interleaved schedule whole rounds of p."""
    need = {'1f1b': n >= pp, 'interleaved1f1b': n % pp == 0}.get(schedule, True)
    if pp > 1 and not need:
        how = 'at least' if schedule == '1f1b' else 'a multiple of'
        raise ConfigError(f"pipeline_schedule={schedule!r} needs {how} pipeline_parallel={pp} micro-batches per step, "
                          f"got {n} (total_batch_size / (batch_size x block_size x data-parallel ranks)): raise "
                          f"total_batch_size or lower batch_size")


# -----------------------------------------------------------------------------
# the mesh and the wrapping

def layout(rt, parallel, tp=1, pp=1):
    """rt with the run's DeviceMesh (pp, dp, tp) and its data-parallel rank, size and group, which the loader, the
    evaluation and the checkpoints read; DDP alone keeps none (rt.mesh None: DDP's own group is the world)."""
    if parallel == 'ddp' and tp * pp == 1:
        return rt
    if not dist.is_initialized():   # one process, no torchrun: a group of one (an in-memory store, no network),
        # kept for the life of the process like torchrun's (cli.run_script) and reused by the next one
        dist.init_process_group('nccl' if rt.device.type == 'cuda' else 'gloo', store=dist.HashStore(), rank=0,
                                world_size=1, device_id=rt.device if rt.device.type == 'cuda' else None)
    mesh = init_device_mesh(rt.device.type, (pp, rt.world // (pp * tp), tp), mesh_dim_names=('pp', 'dp', 'tp'))
    dp = mesh['dp']
    return type(rt)(**{**vars(rt), 'mesh': mesh, 'dp_rank': dp.get_local_rank(), 'dp_world': dp.size(),
                       'dp_group': dp.get_group()})


def wrap(model, rt, parallel, compile=False, activation_checkpointing=False, schedule='1f1b', micro_batches=1):
    """The raw GPT (on rt.device) -> what training steps run through. Call before building the optimizer: tensor
    parallelism and FSDP replace parameters by DTensors in place, and pipeline parallelism keeps in `model` only this
    rank's stages (the rest replaced by empty modules, so names do not change).
    DDP alone (rt.mesh None): DistributedDataParallel around the (compiled) model; one process: the model.
    Otherwise, in torchtitan's order (torchtitan/models/llama3/infra/parallelize.py): tensor parallelism per block;
    the pipeline split (-> a Pipeline); torch.compile per block, in place (names and checkpoints unchanged); under
    'fsdp' fully_shard each block, then the root (embeddings, the tied lm_head, ln_f; a stage under PP, whose blocks
    stay gathered between micro-batches: reshard_after_forward=False, as torchtitan). With bfloat16, FSDP2's
    MixedPrecisionPolicy keeps float32 master weights and optimizer state, all-gathers and computes in bf16 and
    reduce-scatters gradients in float32; rt.autocast stays on, as under DDP (torchtitan drops it): it keeps norms,
    softmax and the loss in float32 (FSDP also rounds embeddings and norm gains: close to DDP, not equal). Under
    'ddp' with tensor or pipeline parallelism no wrapper averages the gradients: sync_grads does, once per step."""
    model.activation_checkpointing = activation_checkpointing   # a run setting of the GPT (model.py, run_blocks)
    mesh = rt.mesh if rt.mesh is not None or parallel == 'ddp' else layout(rt, parallel).mesh
    if mesh is None:
        wrapped = torch.compile(model) if compile else model
        if rt.ddp:
            wrapped = DistributedDataParallel(wrapped, device_ids=[rt.device.index] if rt.device.type == 'cuda'
                                              else None)
        return wrapped
    tp, pp = mesh['tp'].size(), mesh['pp'].size()
    c = model.config   # the knobs were checked (check_layout); GPT-2's weights bring their own shape
    check_shape(c.n_head, c.kv_heads, c.n_layer, tp, pp * STAGES_PER_RANK[schedule])
    if tp > 1:   # Megatron-LM's split, with the residual stream, norms and dropouts split along the sequence
        # between the blocks' matrices (sequence parallelism, Korthikanti et al. 2022 sec. 4.2.2): an all-gather
        # before q, k, v and before the MLP, a reduce-scatter after each output projection, as torchtitan's plan
        seq, whole = Shard(1), Replicate()
        columns = ['attn.c_q', 'attn.c_k', 'attn.c_v', 'mlp.c_fc'] + ['mlp.c_gate'] * (c.mlp == 'swiglu')
        plan = {**{k: ColwiseParallel() for k in columns}, 'ln_1': SequenceParallel(), 'ln_2': SequenceParallel(),
                'attn': PrepareModuleInput(input_layouts=(seq, None, None, None),
                                           desired_input_layouts=(whole, None, None, None)),
                'mlp': PrepareModuleInput(input_layouts=(seq,), desired_input_layouts=(whole,)),
                'attn.c_proj': RowwiseParallel(output_layouts=seq), 'mlp.c_proj': RowwiseParallel(output_layouts=seq)}
        for block in model.transformer.h:
            parallelize_module(block, mesh['tp'], plan)
        # the embeddings' output split, ln_f's input gathered: the loss (either path) sees whole hidden states
        parallelize_module(model.transformer, mesh['tp'], {
            'drop': PrepareModuleOutput(output_layouts=whole, desired_output_layouts=seq),
            'ln_f': PrepareModuleInput(input_layouts=(seq,), desired_input_layouts=(whole,), use_local_output=True)})
    roots = _split(model, mesh['pp'], STAGES_PER_RANK[schedule], rt, tp) if pp > 1 else [model]
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if rt.dtype == 'bfloat16' else MixedPrecisionPolicy()
    for block in (b for root in roots for b in (root.blocks if pp > 1 else model.transformer.h)):
        if compile:
            block.compile()
        if parallel == 'fsdp':
            fully_shard(block, mesh=mesh['dp'], mp_policy=mp, reshard_after_forward=pp == 1)
    for root in roots if parallel == 'fsdp' else ():
        fully_shard(root, mesh=mesh['dp'], mp_policy=mp, reshard_after_forward=pp == 1)
    return Pipeline(model, roots, mesh, schedule, micro_batches, rt) if pp > 1 else model


def _split(model, pp_mesh, per_rank, rt, tp):
    """Keep in `model` this rank's part (accounting.pipeline_part: its stages, their blocks, the embeddings on the
    first stage, ln_f and the head on the last, a tied embedding on both: sync_grads sums the two copies'
    gradients) -> its stages' _Stage modules."""
    L = model.config.n_layer
    ids, n, blocks, holds = pipeline_part(pp_mesh.get_local_rank(), pp_mesh.size(), per_rank, L,
                                          model.config.tie_weights)
    for i in range(L):
        if i not in blocks:
            model.transformer.h[i] = nn.Module()   # an empty stand-in: the kept blocks keep their index
    for name in ('wte', 'wpe'):
        if name in model.transformer and not holds(f'transformer.{name}.weight'):
            del model.transformer[name]
    if not holds('transformer.ln_f.weight'):
        del model.transformer['ln_f'], model.lm_head
    return [_Stage(model, s, n, rt, tp) for s in ids]


class _Stage(nn.Module):
    """Pipeline stage s of n: blocks s*L//n .. (s+1)*L//n - 1 of the GPT, with the embeddings before them on the first
    stage and ln_f and the lm_head after them on the last. It holds the GPT's own modules and runs the GPT's own code
    (embed, run_blocks, lm_logits), under autocast; the last stage's output is the logits. Under tensor parallelism
    a stage after the first receives its rank's part of the sequence (sequence parallelism: 1/tp of it)."""

    def __init__(self, model, s, n, rt, tp):
        super().__init__()
        L, t = model.config.n_layer, model.transformer
        self.gpt = [model]   # not a submodule: its other stages are not this one's
        self.index, self.first, self.last, self.tp = s, s == 0, s == n - 1, tp
        self.blocks = nn.ModuleList(t.h[s * L // n:(s + 1) * L // n])
        if self.first:
            self.embeddings = nn.ModuleList([t[k] for k in ('wte', 'wpe', 'drop') if k in t])
        if self.last:   # the tied wte too: under FSDP one unit must hold both names of the one parameter
            self.head = nn.ModuleList([t.ln_f, model.lm_head] + ([t.wte] if model.config.tie_weights else []))
        self.autocast = dict(device_type=rt.device.type, dtype=rt.ptdtype, enabled=rt.dtype != 'float32')

    def forward(self, x):
        gpt, at = self.gpt[0], slice(0, x.size(1) * (1 if self.first else self.tp))
        with torch.autocast(**self.autocast):   # a fresh context: the caller's rt.autocast may be entered already
            if self.first:
                x = gpt.embed(x, at)
            x = gpt.run_blocks(x, self.blocks, at)
            return gpt.lm_logits(gpt.head_input(x)) if self.last else x


class Pipeline(nn.Module):
    """This rank's stages of a GPT under a torch.distributed.pipelining schedule. step() is a training step's
    forwards and backwards over its micro-batches; called like the GPT (x, y) it is an evaluation forward (the
    schedule's eval()). Both return the loss on every stage (the last stage computes it; the others receive it)."""

    def __init__(self, model, stages, mesh, schedule, micro_batches, rt):
        super().__init__()
        self.stages, self.gpt, self.n_micro = nn.ModuleList(stages), [model], micro_batches
        self.group, n = mesh['pp'].get_group(), mesh['pp'].size() * len(stages)
        self.first, self.last = any(s.first for s in stages), any(s.last for s in stages)
        self.device, vocab = rt.device, model.config.vocab_size
        pipes = [PipelineStage(s, s.index, n, rt.device, group=self.group) for s in stages]
        self.schedule = SCHEDULES[schedule](pipes if len(pipes) > 1 else pipes[0], micro_batches,
                            loss_fn=lambda logits, y: lm_loss.cross_entropy(logits, y, vocab))
        # a tied embedding's two copies, on the first and the last stage: one group per (dp, tp) pair of them
        self.tied_group = dist.new_subgroups_by_enumeration(
            [[int(a), int(b)] for a, b in zip(mesh.mesh[0].flatten(), mesh.mesh[-1].flatten())])[0] \
            if model.config.tie_weights else None

    def _run(self, run, x, y):
        losses = []
        run(*[x] * self.first, **(dict(target=y, losses=losses) if self.last else {}))
        return losses

    def step(self, batches):
        """A training step's micro-batches [(x, y)] * n_micro, one tensor each way for the schedule to split again
        -> the summed micro-batch losses (as train_step's loop gives them)."""
        x, y = (torch.cat(t) for t in zip(*batches))
        losses = self._run(self.schedule.step, x, y)
        loss = torch.stack(losses).sum().detach() if losses else torch.zeros((), device=self.device)
        dist.all_reduce(loss, group=self.group)
        return loss

    def forward(self, x, y, return_logits=False):
        """The mean loss over the batch's counted targets (not -1), as GPT.forward gives it: -> (None, loss)."""
        losses = self._run(self.schedule.eval, x, y)
        counts = [(t != -1).sum() for t in y.tensor_split(self.n_micro)]
        loss = sum(l.float() * k for l, k in zip(losses, counts) if k) / sum(counts) if losses else \
            torch.zeros((), device=self.device)
        dist.all_reduce(loss, group=self.group)
        return None, loss

    def uncounted(self):
        """The tied embedding's copy on a last stage (not also first): its gradient is the first stage's, so the
        global norm counts it once."""
        return self.gpt[0].transformer.wte.weight if self.tied_group is not None and self.last and not self.first \
            else None


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


def sync_grads(model, rt):
    """After a step's last backward, the all-reduces no wrapper made. Under 'ddp' with tensor or pipeline
    parallelism: the gradients averaged over the data-parallel group (DDP's average, unbucketed: one all-reduce per
    tensor, not overlapped with the backward). Under pipeline parallelism with tied embeddings: the first and the
    last stage's copies summed, each having the gradient of its own use (Megatron-LM's embedding group)."""
    if rt.mesh is None:
        return
    if rt.dp_world > 1 and not any(isinstance(m, FSDPModule) for m in model.modules()):
        for p in model.parameters():
            if p.grad is not None:
                g = local(p.grad)
                dist.all_reduce(g, group=rt.dp_group)
                g.div_(rt.dp_world)
    if isinstance(model, Pipeline) and model.tied_group is not None:
        dist.all_reduce(local(model.gpt[0].transformer.wte.weight.grad), group=model.tied_group)


def clip_grad_norm_(model, max_norm):
    """Scale the gradients so that their global L2 norm is at most max_norm; returns the norm before clipping.
    Gradients of several kinds (plain tensors, FSDP shards, tensor-parallel shards, both) are normed per kind, torch's
    norm refusing to mix them; a DTensor's norm is a partial one per rank, which full_tensor() all-reduces (torchtitan,
    distributed/utils.py clip_grad_norm_). Under pipeline parallelism the squares are summed over the stages too
    (torchtitan issue 596), a tied embedding's second copy left out."""
    kinds, skip = {}, model.uncounted() if isinstance(model, Pipeline) else None
    for p in model.parameters():
        if p.grad is not None:
            g = p.grad
            kinds.setdefault((g.device_mesh, g.placements) if isinstance(g, DTensor) else None, []).append(p)
    square = torch.zeros((), device=next(model.parameters()).device)
    for params in kinds.values():
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p is not skip])
        square += (norm.full_tensor() if isinstance(norm, DTensor) else norm).to(square.device) ** 2
    if isinstance(model, Pipeline):
        dist.all_reduce(square, group=model.group)
    norm = square.sqrt()
    for params in kinds.values():
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm


def local(t):
    """This rank's part of a tensor: the local shard of a DTensor, a plain tensor itself."""
    return t.to_local() if isinstance(t, DTensor) else t


# -----------------------------------------------------------------------------
# state dicts for sharded checkpoints (torch.distributed.checkpoint.state_dict, PyTorch docs "Distributed
# Checkpoint"): keyed by parameter name, so any layout reads what any other wrote

def sharded_state(model, optimizer, rt):
    """{'model', 'optimizer', 'aliases'}: this rank's parts (DTensors, or whole tensors a layout replicates: DCP
    stores those once) of the weights and optimizer state of the raw GPT, as checkpoint.save_sharded_checkpoint
    writes them and read_shards(into=...) fills them. A tied lm_head.weight is kept under the embedding's name only,
    the alias in 'aliases' (DCP would store it twice). The optimizer's groups name every parameter of the model, also
    those of other pipeline stages, in the GPT's order (the single-file form numbers them so)."""
    model_state, optim_state = get_state_dict(model, optimizer)
    aliases = TIED if model.config.tie_weights else {}
    for alias in aliases:
        model_state.pop(alias, None)
    if rt.mesh is not None and rt.mesh['pp'].size() > 1:
        stages = [None] * rt.mesh['pp'].size()
        dist.all_gather_object(stages, optim_state['param_groups'], group=rt.mesh['pp'].get_group())
        order = {n: i for i, (n, _) in enumerate(parameter_shapes(model.config))}
        optim_state['param_groups'] = [{**g, 'params': sorted({n for s in stages for n in s[i]['params']},
                                                              key=order.get)}
                                       for i, g in enumerate(optim_state['param_groups'])]
    return {'model': model_state, 'optimizer': optim_state, 'aliases': aliases}


def load_state(model, optimizer, state):
    """Put a state of sharded_state's form (filled by read_shards) into the raw model and its optimizer; the
    optimizer's groups are kept to this rank's parameters."""
    names = dict(model.named_parameters(remove_duplicate=False))
    model_state = {**state['model'], **{a: state['model'][t] for a, t in state['aliases'].items() if a in names}}
    groups = [{**g, 'params': [n for n in g['params'] if n in names]} for g in state['optimizer']['param_groups']]
    set_state_dict(model, optimizer, model_state_dict=model_state,
                   optim_state_dict={'state': state['optimizer']['state'], 'param_groups': groups})


def load_full_optimizer(model, optimizer, optim_state, order):
    """A single-file checkpoint's optimizer state (torch.optim's form, by position) into the optimizer of a model
    that holds parts: every rank holds it whole and keeps its part. order: the names of the whole model's parameters
    in the optimizer's order (the state's positions). The weights came in before the split (checkpoint.load_model)."""
    names = {n for n, _ in model.named_parameters()}
    by_name = {'state': {order[i]: s for i, s in optim_state['state'].items() if order[i] in names},
               'param_groups': [{**g, 'params': [order[i] for i in g['params'] if order[i] in names]}
                                for g in optim_state['param_groups']]}
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))
