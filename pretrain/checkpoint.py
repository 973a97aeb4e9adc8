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
process, without a process group. Every tensor of a single-file checkpoint, and every file of a shard directory, has
a CRC-32 recorded at save ('checksums') and checked at every load, so damaged weights are refused in one line.
"""
import contextlib
import dataclasses
import errno
import logging
import os
import re
import secrets
import shutil
import signal
import sys
import threading
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

from pretrain.cli import first_line
from pretrain.configurator import ConfigError
from pretrain.data import TOKENIZERS, get_tokenizer
from pretrain.gpt2_weights import HF_REPOS, unfuse
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
    as a manifest names it: keep_checkpoints keeps the manifests, so it keeps their directories too). A manifest
    that cannot be read might name one of them, perhaps the only copy of the weights: then nothing is deleted."""
    dirs = [n for n in os.listdir(out_dir) if n.startswith(DCP_PREFIX) and os.path.isdir(os.path.join(out_dir, n))]
    if not dirs:
        return
    named = set()
    for manifest in [os.path.join(out_dir, CKPT_NAME)] + [p for _, p in numbered_checkpoints(out_dir)]:
        if not os.path.exists(manifest):
            continue
        try:   # mmap: a single-file checkpoint beside them is not read into memory just to learn it names nothing
            ckpt = torch.load(manifest, map_location='cpu', weights_only=True, mmap=True)
        except Exception as e:
            raise CheckpointError(f"checkpoint {manifest} is unreadable ({type(e).__name__}: {first_line(e)[:200]}), so "
                                  f"which shard directory it names is unknown; nothing was deleted: restore it, or "
                                  f"move it and the {DCP_PREFIX}* directories out of {out_dir}") from None
        named.add(ckpt.get('sharded') if isinstance(ckpt, dict) else None)
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
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    hit = []
    old = signal.signal(signal.SIGINT, lambda signum, frame: hit.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
    if hit:   # reached only when the write went through
        raise KeyboardInterrupt


def _crc(t):
    """CRC-32 of a tensor's bytes. A checksum stored beside the data guards against accidental damage (a flipped
    bit, a bad copy), not against someone who can edit the file and the checksum alike: zlib's CRC-32 (the zip
    format's own) does that at twice the speed of sha256 or blake2b (docs/faults.md has the measurements)."""
    return zlib.crc32(t.detach().cpu().reshape(-1).view(torch.uint8).numpy())


def tensor_checksums(state):
    """{'model.<name>' | 'optimizer.state.<i>.<key>': CRC-32} of a checkpoint's tensors, hashed in threads (zlib
    releases the GIL while it hashes), a tensor with two names (the tied lm_head.weight) once."""
    def walk(tree, prefix):
        for k, v in tree.items():
            if isinstance(v, dict):
                yield from walk(v, f"{prefix}{k}.")
            elif isinstance(v, torch.Tensor):
                yield f"{prefix}{k}", v
    named = dict(walk({'model': state.get('model', {}), 'optimizer': state.get('optimizer', {})}, ''))
    same = {n: (t.device, t.data_ptr(), t.shape, t.stride(), t.dtype) for n, t in named.items()}
    first = {same[n]: t for n, t in named.items()}
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        crcs = dict(zip(first, pool.map(_crc, first.values())))
    return {n: crcs[same[n]] for n in named}


def _write_atomic(state, path):
    """torch.save to path atomically (module docstring), with the checksums of its tensors when it holds a model;
    on failure the temp file is removed and the error raised."""
    tmp = path + '.tmp'
    if 'model' in state:
        state = {**state, 'checksums': tensor_checksums(state)}
    try:
        with open(tmp, 'wb') as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX
        if sys.platform != 'win32':   # Windows cannot open a directory to fsync it (its rename is durable as is)
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
    what = "the disk is full" if full else first_line(e)[:200]
    kept = ("the previous checkpoint is intact (free space or fix permissions, then resume with "
            "--init_from=resume)" if os.path.exists(path) else
            "no checkpoint was written (free space or fix permissions, then run again)")
    return CheckpointError(f"cannot write checkpoint {path}: {what}; {kept}")


def save_checkpoint(out_dir, state, keep=1):
    """Write state to <out_dir>/ckpt.pt atomically; keep = 1: only ckpt.pt; k > 1: ckpt_<step>.pt of the last k
    too; 0: of every checkpoint. On any failure the previous checkpoint is untouched and CheckpointError says so."""
    with _defer_sigint():
        _save_checkpoint(out_dir, state, keep)


def _save_checkpoint(out_dir, state, keep):   # save_checkpoint, with Ctrl-C deferred by the caller
    path = os.path.join(out_dir, CKPT_NAME)
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
    with _defer_sigint():   # Ctrl-C: the shard write and the manifest both finish (a save is both), then it counts
        try:
            # every rank writes its own file __<rank>_0.distcp; rank 0 also the .metadata, after all have written
            # (DCP's save is collective: one rank's failed write fails it on every rank)
            tensors = {'model': shards['model'], 'optimizer': {'state': shards['optimizer']['state']}}
            dcp.save(tensors, storage_writer=dcp.FileSystemWriter(shard_dir, sync_files=True))
        except (Exception, dcp.api.CheckpointException) as e:
            if master:
                shutil.rmtree(shard_dir, ignore_errors=True)
            raise _write_error(os.path.join(out_dir, CKPT_NAME), _dcp_failure(e)) from None
        # each rank checksums the file it wrote (rank 0 the .metadata too), read back from the page cache
        own = [n for n in os.listdir(shard_dir) if n.startswith(f'__{dist.get_rank()}_') or master and n == '.metadata']
        sums = [None] * dist.get_world_size()
        dist.all_gather_object(sums, {n: _file_crc(os.path.join(shard_dir, n)) for n in own})
        failed = [None]
        if master:
            try:   # save_checkpoint also removes the directories no manifest names any more
                _save_checkpoint(out_dir, {**state, 'sharded': name[0], 'aliases': shards['aliases'],
                                           'param_groups': shards['optimizer']['param_groups'],
                                           'checksums': {k: v for rank in sums for k, v in rank.items()}}, keep)
            except CheckpointError as e:
                failed = [str(e)]
                _remove_unnamed_shards(out_dir)   # the new directory, whose manifest could not be written
        dist.broadcast_object_list(failed, src=0)   # all ranks learn the outcome: none waits for a rank that stopped
    if failed[0]:
        raise CheckpointError(failed[0])


def _file_crc(path):
    crc, buf = 0, bytearray(1 << 24)   # read into one buffer: 1.6x the speed of a new bytes object per chunk
    with open(path, 'rb', buffering=0) as f:
        while n := f.readinto(buf):
            crc = zlib.crc32(memoryview(buf)[:n], crc)
    return crc


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
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(e).__name__}: {first_line(e)[:200]}); "
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
    ckpt.setdefault('checksums', {})   # optional too: checkpoints written before checksums load unchecked
    if not isinstance(ckpt['checksums'], dict):
        raise CheckpointError(f"checkpoint {path}: 'checksums' is a {type(ckpt['checksums']).__name__}, not a dict")
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
            del ckpt['sharded'], ckpt['param_groups'], ckpt['aliases'], ckpt['checksums']
    if 'model' in ckpt and not all(isinstance(v, torch.Tensor) for v in ckpt['model'].values()):
        raise CheckpointError(f"checkpoint {path}: 'model' holds something other than tensors")
    if not sharded:   # the tensors this load uses against the CRC-32s written with them (a shard directory's files
        # were checked by read_shards); checkpoints written before checksums have none and load as before
        used = {k: ckpt[k] for k in ('model', 'optimizer') if k == 'model' or for_resume}
        bad = [k for k, crc in tensor_checksums(used).items() if ckpt['checksums'].get(k, crc) != crc]
        if bad:
            raise CheckpointError(f"checkpoint {path} is damaged: tensor {bad[0]} does not match the checksum written "
                                  f"with it ({len(bad)} tensor(s) differ); use an earlier checkpoint or a good copy")
    if 'model' in ckpt and not sharded:   # an older checkpoint's fused q/k/v: as this model holds them (read_shards
        # splits a shard directory's itself)
        config = model_config(ckpt, path)
        split = {n: t for name, w in ckpt['model'].items() for n, t in unfuse(name, w, config)}
        ckpt['fused'], ckpt['model'] = len(split) != len(ckpt['model']), split
    return ckpt


def read_shards(manifest, with_optimizer=True, into=None):
    """A sharded checkpoint's tensors (manifest: load_checkpoint(..., shards=False)). into=None: read whole in this
    process without a process group, as DCP's own format_utils.dcp_to_torch_save -> {'model', 'optimizer'} as a
    single-file checkpoint holds them. into = this rank's shards (parallel.sharded_state): DCP fills in place the
    parts this rank holds, whatever world size wrote them. Each file is checked against the manifest's CRC-32 first
    (under a process group every rank checks its share of the files). A missing or damaged file: CheckpointError."""
    shard_dir = manifest['sharded']
    keys = {'model', 'optimizer'} if with_optimizer else {'model'}
    if into is None:
        bad = _damaged_file(manifest)
    else:
        import torch.distributed as dist
        found = [None] * dist.get_world_size()
        dist.all_gather_object(found, _damaged_file(manifest, dist.get_rank(), dist.get_world_size()))
        bad = next((b for b in found if b), None)
    if bad:
        raise CheckpointError(f"shard directory {shard_dir} is damaged: {bad}; resume from an earlier checkpoint")
    root_logger = logging.getLogger()   # DCP logs a failed read (a damaged .metadata) with its traceback on the
    root_logger.disabled = True         # root logger before it raises: the one line below says it instead
    try:
        if into is not None:
            if any('.attn.c_attn.' in k for k in dcp.FileSystemReader(shard_dir).read_metadata().state_dict_metadata):
                raise CheckpointError(f"{shard_dir} holds q, k and v fused (an older train.py): resume it once with "
                                      f"parallel='ddp', which reads it whole and splits them, then go on with fsdp")
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
    except CheckpointError:
        raise
    except (Exception, dcp.api.CheckpointException) as e:
        e = _dcp_failure(e)
        raise CheckpointError(f"shard directory {shard_dir} is incomplete or damaged ({type(e).__name__}: "
                              f"{first_line(e)[:200]}); resume from an earlier checkpoint") from None
    finally:
        root_logger.disabled = False
    for alias, name in manifest['aliases'].items():   # a tied weight, stored once: the same tensor under both names
        state['model'][alias] = state['model'][name]
    config = model_config(manifest, shard_dir)   # an older checkpoint's fused q/k/v: as this model holds them
    parts = {name: unfuse(name, w, config) for name, w in state['model'].items()}
    names = {name: [n for n, _ in split] for name, split in parts.items()}
    state['model'] = dict(kv for split in parts.values() for kv in split)
    if with_optimizer:
        groups = [{**g, 'params': [n for name in g['params'] for n in names[name]]} for g in manifest['param_groups']]
        named = {n: st for name, s in state['optimizer']['state'].items() for n, st in _unfuse_state(name, s, config)}
        state['optimizer'] = optimizer_by_index({'state': named, 'param_groups': groups})
    return state


def _unfuse_state(name, s, config):
    """One parameter's optimizer state -> [(name, state)] as unfuse splits the parameter: its tensors shaped like
    the parameter (exp_avg, ...) are split likewise, scalars (the step) copied to every part."""
    shaped = next(v for v in s.values() if torch.is_tensor(v) and v.dim())
    names = [n for n, _ in unfuse(name, shaped, config)]
    parts = [{} for _ in names]
    for key, v in s.items():
        pieces = ([t.clone() for _, t in unfuse(name, v, config)] if torch.is_tensor(v) and v.dim() else
                  [v.clone() if torch.is_tensor(v) else v for _ in names])   # one step counter each, not shared
        for part, piece in zip(parts, pieces):
            part[key] = piece
    return list(zip(names, parts))


def unfuse_optimizer(osd, group_names, config):
    """A single-file checkpoint's optimizer state (by index) from a model with fused q/k/v (and SwiGLU gate+up) ->
    this model's, given this optimizer's parameter names per group: the groups' rule is the same, a fused matrix
    standing where its first part stands, so the old indices can be named."""
    first = {'c_q': 'c_attn', 'c_gate': 'c_fc'}
    rest = ('c_k', 'c_v') + (('c_fc',) if config.mlp == 'swiglu' else ())
    old = [[n.replace(f'.{m}.', f'.{first[m]}.') if m in first else n for n in names
            if (m := n.rsplit('.', 2)[-2]) not in rest] for names in group_names]
    if [len(g) for g in old] != [len(g['params']) for g in osd['param_groups']]:
        raise CheckpointError("the checkpoint's optimizer groups do not match this optimizer's (fused q/k/v with "
                              "other groups): resume it with the train.py that wrote it")
    named = {n: st for i, name in enumerate(n for g in old for n in g) if i in osd['state']
             for n, st in _unfuse_state(name, osd['state'][i], config)}
    return optimizer_by_index({'state': named, 'param_groups': [{**g, 'params': names}
                                                                for g, names in zip(osd['param_groups'], group_names)]})


def _damaged_file(manifest, rank=0, world=1):
    """The first of this rank's share of the shard directory's files (every world-th, by name) that is missing or
    differs from its CRC-32 in the manifest, in words; None if all check out. Files are hashed in threads."""
    names = sorted(manifest['checksums'])[rank::world]
    paths = [os.path.join(manifest['sharded'], n) for n in names]
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        crcs = list(pool.map(lambda p: _file_crc(p) if os.path.isfile(p) else None, paths))
    return next((f"{n} is missing" if crc is None else f"{n} does not match the checksum written with it"
                 for n, crc in zip(names, crcs) if crc != manifest['checksums'][n]), None)


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


def model_config(ckpt, path, **overrides):
    """The GPTConfig of ckpt['model_config'] (+ overrides, e.g. dropout); one line if this model.py cannot build it."""
    try:
        return GPTConfig(**{**ckpt['model_config'], **overrides})
    except (TypeError, ModelError) as e:   # keys this model.py does not know, or impossible values
        raise CheckpointError(f"checkpoint {path} has a model_config this model.py cannot build "
                              f"({first_line(e)[:200]})") from None


def model_from_checkpoint(ckpt, path, weights=True, **overrides):
    """GPT on the CPU from ckpt['model_config'] (+ overrides, e.g. dropout), with its weights unless not weights."""
    model = GPT(model_config(ckpt, path, **overrides))
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


def load_model_and_tokenizer(init_from, out_dir):
    """load_model for the scripts that read and write text (sample.py, eval.py, export.py) -> (model on the CPU,
    tokenizer, one-line description, checkpoint or None): the tokenizer the run recorded (a trained BPE from the
    checkpoint itself), which must have the model's vocabulary."""
    model, tokenizer_name, where, ckpt = load_model(init_from, out_dir)
    tokenizer = get_tokenizer(tokenizer_name, source=ckpt)
    if tokenizer.vocab_size != model.config.vocab_size:
        raise CheckpointError(f"the model's vocab_size is {model.config.vocab_size} but its tokenizer "
                              f"{tokenizer.name!r} has {tokenizer.vocab_size} tokens")
    return model, tokenizer, where, ckpt


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
