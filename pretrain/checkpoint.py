"""
Checkpoints and the one way to get a model: from scratch, from a checkpoint (resume), from OpenAI's GPT-2
weights by name, or from a Hugging Face GPT-2 directory. train.py, sample.py, eval.py and bench.py all load here.

A checkpoint is <out_dir>/ckpt.pt, a dict that torch.load(weights_only=True) reads (DESIGN.md, "Checkpoints",
lists its keys). It is written atomically (temp file, fsync, rename, fsync of the directory): a crash at any moment
leaves the previous checkpoint or the new one, never half of one. With keep > 1 (or 0 = all) the last checkpoints
also stay as ckpt_<step:06d>.pt (hard links, so no extra disk), for branching cooldowns (train.py branch_from).
A sharded checkpoint (train.py --parallel=fsdp, docs/parallel.md) is a manifest ckpt.pt without 'model' and
'optimizer' that names a directory beside it, ckpt.dcp.<step>-<hex>/, which every rank wrote its shards into with
torch.distributed.checkpoint (DCP). The manifest is written last, so it names a complete directory or the previous
one; directories no manifest names are swept. load_checkpoint reads either kind into the single-file form in one
process, without a process group.
"""
import contextlib
import dataclasses
import errno
import os
import re
import secrets
import shutil
import signal
import threading
import warnings

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

from pretrain.configurator import ConfigError
from pretrain.data import TOKENIZERS
from pretrain.gpt2_weights import HF_REPOS
from model import GPT, PRESETS, GPTConfig, ModelError

CKPT_NAME = 'ckpt.pt'
# init_from, the one rule of every script: the words below, or OpenAI's GPT-2 by name (gpt2_weights.HF_REPOS) or
# a local Hugging Face GPT-2 directory ('gpt2'), or any PRESETS shape with random weights ('preset', bench.py)
INIT_WORDS = ('scratch', 'resume', 'auto')
NUMBERED_RE = re.compile(r'^ckpt_(\d{6,})\.pt$')
DCP_PREFIX = 'ckpt.dcp.'           # a sharded checkpoint's directory: ckpt.dcp.<step:06d>-<8 hex digits>
REQUIRED = {'model': dict, 'model_config': dict, 'step': int, 'tokenizer': str, 'config': dict}
BPE_KEYS = {'tokenizer_sha256': str, 'tokenizer_ranks': bytes, 'tokenizer_pattern': str}   # tokenizer 'bpe' only
FOR_RESUME = {'optimizer': dict, 'loader': dict, 'tokens': int}
IN_SHARDS = ('model', 'optimizer')   # a sharded checkpoint keeps these in its directory, not in the manifest


class CheckpointError(Exception):
    """A checkpoint that cannot be written or used: one line naming the path and what to do."""


def _first_line(e):
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def _dcp_failure(e):
    """The first rank's own exception inside DCP's CheckpointException (a BaseException holding each failed rank's
    (exception, traceback)), or e itself."""
    if isinstance(e, dcp.api.CheckpointException) and e.failures:
        return next(iter(e.failures.values()))[0]
    return e


# -----------------------------------------------------------------------------
# writing

def sweep_stale(out_dir):
    """Remove what a killed writer left behind: temp files (ckpt.pt.tmp can be as large as a checkpoint) and shard
    directories that no manifest (ckpt.pt, ckpt_<step>.pt) names, i.e. a sharded save killed before its manifest."""
    if not os.path.isdir(out_dir):
        return
    for name in os.listdir(out_dir):
        if name.startswith('ckpt') and name.endswith('.tmp'):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(out_dir, name))
    _remove_unnamed_shards(out_dir)


def _remove_unnamed_shards(out_dir):
    """Delete the ckpt.dcp.* directories in out_dir that no manifest there names (a shard directory lives as long
    as a manifest names it: keep_checkpoints keeps the manifests, so it keeps their directories too)."""
    dirs = [n for n in os.listdir(out_dir) if n.startswith(DCP_PREFIX) and os.path.isdir(os.path.join(out_dir, n))]
    if not dirs:
        return
    named = set()
    for manifest in [os.path.join(out_dir, CKPT_NAME)] + [p for _, p in numbered_checkpoints(out_dir)]:
        try:   # mmap: a single-file checkpoint beside them is not read into memory just to learn it names nothing
            ckpt = torch.load(manifest, map_location='cpu', weights_only=True, mmap=True)
            named.add(ckpt.get('sharded'))
        except Exception:   # missing or unreadable: it names nothing
            pass
    for name in dirs:
        if name not in named:
            shutil.rmtree(os.path.join(out_dir, name), ignore_errors=True)


def numbered_checkpoints(out_dir):
    """[(step, path)] of the ckpt_<step>.pt files in out_dir, by step."""
    if not os.path.isdir(out_dir):
        return []
    found = [(int(m.group(1)), os.path.join(out_dir, f)) for f in os.listdir(out_dir) if (m := NUMBERED_RE.match(f))]
    return sorted(found)


@contextlib.contextmanager
def _defer_sigint():
    """Ctrl-C while a checkpoint is being written: finish the write, then raise KeyboardInterrupt. Interrupting
    torch's writer midway surfaces as a RuntimeError from inside it, not as a clean KeyboardInterrupt."""
    hit, old = [], None
    if threading.current_thread() is threading.main_thread():
        old = signal.signal(signal.SIGINT, lambda signum, frame: hit.append(signum))
    try:
        yield
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, old)
    if hit:   # reached only when the write went through
        raise KeyboardInterrupt


def _write_atomic(state, path):
    """torch.save to path atomically (module docstring); on failure the temp file is removed and the error raised."""
    tmp = path + '.tmp'
    try:
        with open(tmp, 'wb') as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX
        dir_fd = os.open(os.path.dirname(path) or '.', os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def _write_error(path, e):
    full = isinstance(e, OSError) and e.errno == errno.ENOSPC or 'No space left' in str(e)
    what = "the disk is full" if full else _first_line(e)
    kept = ("the previous checkpoint is intact (free space or fix permissions, then resume with "
            "--init_from=resume)" if os.path.exists(path) else
            "no checkpoint was written (free space or fix permissions, then run again)")
    return CheckpointError(f"cannot write checkpoint {path}: {what}; {kept}")


def save_checkpoint(out_dir, state, keep=1):
    """Write state to <out_dir>/ckpt.pt atomically; keep = 1: only ckpt.pt; k > 1: ckpt_<step>.pt of the last k
    too; 0: of every checkpoint. On any failure the previous checkpoint is untouched and CheckpointError says so."""
    path = os.path.join(out_dir, CKPT_NAME)
    with _defer_sigint():
        try:
            _write_atomic(state, path)
            if keep != 1:
                numbered = os.path.join(out_dir, f"ckpt_{state['step']:06d}.pt")
                if os.path.exists(numbered):
                    os.remove(numbered)
                os.link(path, numbered)
                old = numbered_checkpoints(out_dir)
                for _, p in (old[:-keep] if keep > 1 else []):
                    os.remove(p)
            _remove_unnamed_shards(out_dir)   # shard directories whose manifests are gone or replaced
        except (OSError, RuntimeError) as e:
            raise _write_error(path, e) from None


def save_sharded_checkpoint(out_dir, state, shards, keep=1):
    """A sharded checkpoint (DESIGN.md, "Checkpoints"); every rank calls this with shards = this rank's part
    (parallel.sharded_state) and state = the rest (step, loader, config, ...). The directory holds tensors only:
    DCP reads non-tensors back with torch.load(weights_only=False), so they go to the manifest, read with
    weights_only=True. Failure: CheckpointError on every rank."""
    import torch.distributed as dist
    master = dist.get_rank() == 0
    name = [f"{DCP_PREFIX}{state['step']:06d}-{secrets.token_hex(4)}"]   # fresh: never a directory in use
    dist.broadcast_object_list(name, src=0)   # one name for all ranks
    shard_dir = os.path.join(out_dir, name[0])
    with _defer_sigint():
        try:
            # every rank writes its own file __<rank>_0.distcp; rank 0 also the .metadata, after all have written
            # (DCP's save is collective: one rank's failed write fails it on every rank)
            tensors = {'model': shards['model'], 'optimizer': {'state': shards['optimizer']['state']}}
            dcp.save(tensors, storage_writer=dcp.FileSystemWriter(shard_dir, sync_files=True))
        except (Exception, dcp.api.CheckpointException) as e:
            if master:
                shutil.rmtree(shard_dir, ignore_errors=True)
            raise _write_error(os.path.join(out_dir, CKPT_NAME), _dcp_failure(e)) from None
    failed = [None]
    if master:
        try:   # save_checkpoint also removes the directories no manifest names any more
            save_checkpoint(out_dir, {**state, 'sharded': name[0], 'param_groups': shards['optimizer']['param_groups'],
                                      'aliases': shards['aliases']}, keep)
        except CheckpointError as e:
            failed = [str(e)]
            _remove_unnamed_shards(out_dir)   # the new directory, whose manifest could not be written
    dist.broadcast_object_list(failed, src=0)   # all ranks learn the outcome: none waits for a rank that stopped
    if failed[0]:
        raise CheckpointError(failed[0])


# -----------------------------------------------------------------------------
# reading

def checkpoint_path(path):
    """A run directory (-> its ckpt.pt) or a .pt file."""
    return path if path.endswith('.pt') and not os.path.isdir(path) else os.path.join(path, CKPT_NAME)


def load_checkpoint(path, for_resume=False, shards=True):
    """Load and validate a checkpoint (a run directory or a .pt file) with weights_only=True, on the CPU: every
    key the schema names is checked, so a file that is not ours gets one line, not a KeyError later. A sharded
    checkpoint comes back in the single-file form (read_shards), unless shards=False: then the manifest alone, with
    'sharded' the directory's path, for an FSDP run that reads only its own part (parallel.load_state)."""
    path = checkpoint_path(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path} (train one with train.py, or start from GPT-2 with "
                              f"--init_from=gpt2)")
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:   # truncated, empty, not a zip, unpickling refused: the file's problem, one line
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(e).__name__}: {_first_line(e)}); "
                              f"it may be truncated or not a checkpoint") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {path} is a {type(ckpt).__name__}, not a train.py checkpoint")
    sharded = 'sharded' in ckpt
    schema = {k: kind for k, kind in {**REQUIRED, **(FOR_RESUME if for_resume else {}),
                                      **(BPE_KEYS if ckpt.get('tokenizer') == 'bpe' else {})}.items()
              if not (sharded and k in IN_SHARDS)}
    for key, kind in schema.items():
        if not isinstance(ckpt.get(key), kind) or isinstance(ckpt.get(key), bool):
            got = 'missing' if key not in ckpt else f"a {type(ckpt[key]).__name__}"
            raise CheckpointError(f"checkpoint {path}: '{key}' is {got}, expected {kind.__name__} "
                                  f"(not written by this train.py?)")
    if ckpt['tokenizer'] not in (*TOKENIZERS, 'bpe'):
        raise CheckpointError(f"checkpoint {path}: unknown tokenizer {ckpt['tokenizer']!r}")
    if for_resume and not all(isinstance(ckpt['loader'].get(k), int) for k in ('next_seq', 'seqs_per_step')):
        raise CheckpointError(f"checkpoint {path}: 'loader' lacks next_seq / seqs_per_step")
    guard = ckpt.get('guard', {'best_val_loss': 0.0})   # optional: checkpoints written before the guard lack it
    if not isinstance(guard, dict) or type(guard.get('best_val_loss')) is not float:
        raise CheckpointError(f"checkpoint {path}: 'guard' lacks best_val_loss (a float)")
    if sharded:
        name = ckpt['sharded']
        if not isinstance(name, str) or not name.startswith(DCP_PREFIX) or os.sep in name:
            raise CheckpointError(f"checkpoint {path}: 'sharded' is {name!r}, not a {DCP_PREFIX}* directory name")
        ckpt['sharded'] = os.path.join(os.path.dirname(path), name)
        if not isinstance(ckpt.get('param_groups'), list) or not isinstance(ckpt.get('aliases'), dict):
            raise CheckpointError(f"checkpoint {path}: 'param_groups' (the optimizer's groups) or 'aliases' (tied "
                                  f"weights' other names) is missing")
        if not os.path.isfile(os.path.join(ckpt['sharded'], '.metadata')):
            raise CheckpointError(f"checkpoint {path}: its shard directory {ckpt['sharded']} is missing or has no "
                                  f".metadata (copy the whole run directory, not ckpt.pt alone)")
        if shards:
            ckpt.update(read_shards(ckpt, with_optimizer=for_resume))
            del ckpt['sharded'], ckpt['param_groups'], ckpt['aliases']
    if 'model' in ckpt and not all(isinstance(v, torch.Tensor) for v in ckpt['model'].values()):
        raise CheckpointError(f"checkpoint {path}: 'model' holds something other than tensors")
    return ckpt


def read_shards(manifest, with_optimizer=True, into=None):
    """A sharded checkpoint's tensors (manifest: load_checkpoint(..., shards=False)). into=None: read whole in this
    process without a process group, as DCP's own format_utils.dcp_to_torch_save -> {'model', 'optimizer'} as a
    single-file checkpoint holds them. into = this rank's shards (parallel.sharded_state): DCP fills in place the
    parts this rank holds, whatever world size wrote them. A missing or damaged rank file: CheckpointError."""
    shard_dir = manifest['sharded']
    keys = {'model', 'optimizer'} if with_optimizer else {'model'}
    try:
        if into is not None:
            dcp.load({'model': into['model'], 'optimizer': {'state': into['optimizer']['state']}},
                     checkpoint_id=shard_dir)
            into['optimizer']['param_groups'] = manifest['param_groups']
            into['aliases'] = manifest['aliases']
            return into
        state = {}   # filled from the directory's own metadata (dcp.load would fill a copy of an empty dict)
        with warnings.catch_warnings():   # "assuming the intent is to load in a single process": it is
            warnings.filterwarnings('ignore', message='torch.distributed is disabled')
            _load_state_dict(state, storage_reader=dcp.FileSystemReader(shard_dir),
                             planner=_EmptyStateDictLoadPlanner(keys=keys), no_dist=True)
    except (Exception, dcp.api.CheckpointException) as e:
        e = _dcp_failure(e)
        raise CheckpointError(f"shard directory {shard_dir} is incomplete or damaged ({type(e).__name__}: "
                              f"{_first_line(e)}); resume from an earlier checkpoint") from None
    for alias, name in manifest['aliases'].items():   # a tied weight, stored once: the same tensor under both names
        state['model'][alias] = state['model'][name]
    if with_optimizer:
        state['optimizer'] = optimizer_by_index({**state['optimizer'], 'param_groups': manifest['param_groups']})
    return state


def optimizer_by_index(osd):
    """DCP keys optimizer state by parameter name ({'state': {name: ...}, 'param_groups': [{'params': [names]}]});
    torch.optim's state_dict by position (0, 1, ... over the groups in order). Same order, so renumber."""
    index = {n: i for i, n in enumerate(n for g in osd['param_groups'] for n in g['params'])}
    return {'state': {i: osd['state'][n] for n, i in index.items() if n in osd['state']},
            'param_groups': [{**g, 'params': [index[n] for n in g['params']]} for g in osd['param_groups']]}


def consolidate(path, pt_path):
    """Any checkpoint -> a single-file one at pt_path, atomically (export.py --pt_path). Returns the step."""
    ckpt = load_checkpoint(path, for_resume=True)
    try:
        _write_atomic(ckpt, pt_path)
    except (OSError, RuntimeError) as e:
        raise _write_error(pt_path, e) from None
    return ckpt['step']


def check_state_dict(expected, got, path):
    """The checkpoint's tensors must be exactly those of its model_config: say which ones are not, in one line."""
    shapes = [f"{k} is {tuple(got[k].shape)}, expected {tuple(v.shape)}"
              for k, v in expected.items() if k in got and tuple(got[k].shape) != tuple(v.shape)]
    problems = (('shape(s) differ', shapes), ('missing', [k for k in expected if k not in got]),
                ('unexpected', [k for k in got if k not in expected]))
    parts = [f"{len(ks)} {what}, e.g. {ks[0]}" for what, ks in problems if ks]
    if parts:
        raise CheckpointError(f"checkpoint {path} does not match its own model_config: {'; '.join(parts)}")


def model_from_checkpoint(ckpt, path, weights=True, **overrides):
    """GPT on the CPU from ckpt['model_config'] (+ overrides, e.g. dropout), with its weights unless not weights."""
    try:
        model = GPT(GPTConfig(**{**ckpt['model_config'], **overrides}))
    except (TypeError, ModelError) as e:   # keys this model.py does not know, or impossible values
        raise CheckpointError(f"checkpoint {path} has a model_config this model.py cannot build "
                              f"({_first_line(e)})") from None
    if weights:
        check_state_dict(model.state_dict(), ckpt['model'], path)
        model.load_state_dict(ckpt['model'])
    return model


# -----------------------------------------------------------------------------
# the loader

def init_from_kind(init_from, allowed):
    """What init_from names -> 'scratch' | 'resume' | 'auto' (resume if out_dir has a checkpoint, else scratch) |
    'gpt2' (OpenAI's weights: a name of HF_REPOS or a local Hugging Face directory) | 'preset' (a PRESETS shape,
    random weights). ConfigError in one line unless the kind is one of `allowed`, the kinds the script takes."""
    if not isinstance(init_from, str):
        kind = None
    elif init_from in INIT_WORDS:
        kind = init_from
    elif init_from in PRESETS and 'preset' in allowed:
        kind = 'preset'
    elif init_from in HF_REPOS or os.path.isdir(init_from):
        kind = 'gpt2'
    else:
        kind = None
    if kind not in allowed:
        names = [f"'{w}'" for w in INIT_WORDS if w in allowed]
        names += [f"one of {', '.join(HF_REPOS)} or a Hugging Face GPT-2 directory"] if 'gpt2' in allowed else []
        names += [f"a shape of {', '.join(PRESETS)} (random weights)"] if 'preset' in allowed else []
        raise ConfigError(f"init_from={init_from!r} is not allowed here: must be {' | '.join(names)}")
    return kind


MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(GPTConfig))


def model_config_from(cfg, vocab_size=None):
    """The GPTConfig a script's knobs describe (the knobs named like GPTConfig's fields); GPTConfig checks them.
    vocab_size: the data's vocabulary (None: GPTConfig's default, until the data is read)."""
    vocab = {} if vocab_size is None else {'vocab_size': vocab_size}
    return GPTConfig(**{k: cfg[k] for k in MODEL_FIELDS if k in cfg and k != 'vocab_size'}, **vocab)


def load_model(init_from, out_dir='out', cfg=None, vocab_size=None, tokenizer=None, pretrained=True, for_resume=False,
               shards=True):
    """The one way to get a model -> (model on the CPU, tokenizer name, one-line description, checkpoint or None).
    init_from: 'scratch' (GPTConfig from cfg's knobs, vocab_size and tokenizer from the data) | 'resume' (out_dir's
    ckpt.pt, or a .pt path) | 'gpt2' ... 'gpt2-xl' (OpenAI's weights; with pretrained=False any PRESETS name, random
    weights: bench.py needs only the shape) | a local Hugging Face GPT-2 directory. Dropout comes from cfg when given.
    for_resume: the checkpoint must also hold the optimizer, loader and tokens. shards=False: a sharded checkpoint's
    model keeps its fresh weights until the caller, an FSDP run, loads its own part in place (parallel.load_state)."""
    overrides = {'dropout': cfg['dropout']} if cfg and 'dropout' in cfg else {}
    if init_from == 'scratch':
        if cfg is None or vocab_size is None:
            raise ConfigError("init_from='scratch' needs the model knobs and the data's vocab_size")
        return GPT(model_config_from(cfg, vocab_size)), tokenizer, 'a new model', None
    if init_from == 'resume':
        path = checkpoint_path(out_dir)
        ckpt = load_checkpoint(path, for_resume, shards)
        model = model_from_checkpoint(ckpt, path, weights='sharded' not in ckpt, **overrides)
        return model, ckpt['tokenizer'], f"{path} (step {ckpt['step']})", ckpt
    if not pretrained and init_from in PRESETS:
        return GPT(GPTConfig(**{**PRESETS[init_from], **overrides})), 'gpt2', f"{init_from} (random weights)", None
    return GPT.from_pretrained(init_from, **overrides), 'gpt2', init_from, None   # GPT-2 weights: GPT-2 BPE, always
