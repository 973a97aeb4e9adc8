"""
Checkpoints and the one way to get a model: from scratch, from a checkpoint (resume), from OpenAI's GPT-2
weights by name, or from a Hugging Face GPT-2 directory. train.py, sample.py, eval.py and bench.py all load here.

A checkpoint (DESIGN.md, "Checkpoints") is <out_dir>/ckpt.pt, a dict that torch.load(weights_only=True) reads:
    model         state_dict of GPT (tensors)          model_config  GPTConfig fields (dict)
    optimizer     the optimizer's state_dict           scaler        GradScaler state_dict (fp16 runs)
    step          optimizer steps taken (int)          tokens        step * tokens per step (int)
    loader        {'next_seq': int, 'seqs_per_step': int}: where the data continues
    config        every train.py knob of the run       tokenizer     'gpt2' | 'bytes'
    guard         {'best_val_loss': float}: the divergence guard's memory (optional: older checkpoints lack it)
It is written atomically (temp file, fsync, rename, fsync of the directory): a crash at any moment leaves the
previous checkpoint or the new one, never half of one. With keep > 1 (or 0 = all) the last checkpoints also stay
as ckpt_<step:06d>.pt (hard links, so no extra disk), for branching cooldowns from them (train.py branch_from).
"""
import dataclasses
import errno
import os
import re
import signal
import threading

import torch

from pretrain.configurator import ConfigError
from pretrain.data import TOKENIZERS
from pretrain.gpt2_weights import HF_REPOS
from model import GPT, PRESETS, GPTConfig, ModelError

CKPT_NAME = 'ckpt.pt'
# init_from, the one rule of every script: the words below, or OpenAI's GPT-2 by name (gpt2_weights.HF_REPOS) or
# a local Hugging Face GPT-2 directory ('gpt2'), or any PRESETS shape with random weights ('preset', bench.py)
INIT_WORDS = ('scratch', 'resume', 'auto')
NUMBERED_RE = re.compile(r'^ckpt_(\d{6,})\.pt$')
REQUIRED = {'model': dict, 'model_config': dict, 'step': int, 'tokenizer': str, 'config': dict}
FOR_RESUME = {'optimizer': dict, 'loader': dict, 'tokens': int}


class CheckpointError(Exception):
    """A checkpoint that cannot be written or used: one line naming the path and what to do."""


def _first_line(e):
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


# -----------------------------------------------------------------------------
# writing

def sweep_stale(out_dir):
    """Remove temp files a killed writer left behind (ckpt.pt.tmp can be as large as a checkpoint)."""
    if os.path.isdir(out_dir):
        for name in os.listdir(out_dir):
            if name.startswith('ckpt') and name.endswith('.tmp'):
                try:
                    os.remove(os.path.join(out_dir, name))
                except OSError:
                    pass


def numbered_checkpoints(out_dir):
    """[(step, path)] of the ckpt_<step>.pt files in out_dir, by step."""
    if not os.path.isdir(out_dir):
        return []
    found = [(int(m.group(1)), os.path.join(out_dir, f)) for f in os.listdir(out_dir) if (m := NUMBERED_RE.match(f))]
    return sorted(found)


class _DeferSigint:
    """Ctrl-C while a checkpoint is being written: finish the write, then raise KeyboardInterrupt. Interrupting
    torch's writer midway surfaces as a RuntimeError from inside it, not as a clean KeyboardInterrupt."""

    def __enter__(self):
        self.hit, self.old = False, None
        if threading.current_thread() is threading.main_thread():
            self.old = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame):
        self.hit = True

    def __exit__(self, *exc):
        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)
        if self.hit and exc[0] is None:
            raise KeyboardInterrupt
        return False


def save_checkpoint(out_dir, state, keep=1):
    """Write state to <out_dir>/ckpt.pt atomically; keep = 1: only ckpt.pt; k > 1: ckpt_<step>.pt of the last k
    too; 0: of every checkpoint. On any failure (disk full, permissions) the temp file is removed, the previous
    checkpoint is untouched, and CheckpointError says so in one line."""
    path = os.path.join(out_dir, CKPT_NAME)
    tmp = path + '.tmp'
    with _DeferSigint():
        try:
            with open(tmp, 'wb') as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one, never half of one
            dir_fd = os.open(out_dir, os.O_RDONLY)
            try:
                os.fsync(dir_fd)  # make the rename itself durable
            finally:
                os.close(dir_fd)
            if keep != 1:
                numbered = os.path.join(out_dir, f"ckpt_{state['step']:06d}.pt")
                if os.path.exists(numbered):
                    os.remove(numbered)
                os.link(path, numbered)
                old = numbered_checkpoints(out_dir)
                for _, p in (old[:-keep] if keep > 1 else []):
                    os.remove(p)
        except (OSError, RuntimeError) as e:
            try:
                os.remove(tmp)
            except OSError:
                pass
            full = isinstance(e, OSError) and e.errno == errno.ENOSPC or 'No space left' in str(e)
            what = "the disk is full" if full else _first_line(e)
            kept = ("the previous checkpoint is intact (free space or fix permissions, then resume with "
                    "--init_from=resume)" if os.path.exists(path) else
                    "no checkpoint was written (free space or fix permissions, then run again)")
            raise CheckpointError(f"cannot write checkpoint {path}: {what}; {kept}") from None


# -----------------------------------------------------------------------------
# reading

def checkpoint_path(path):
    """A run directory (-> its ckpt.pt) or a .pt file."""
    return path if path.endswith('.pt') and not os.path.isdir(path) else os.path.join(path, CKPT_NAME)


def load_checkpoint(path, for_resume=False):
    """Load and validate a checkpoint (a run directory or a .pt file) with weights_only=True, on the CPU.
    Every key the schema names is checked, so a file that is not ours, truncated or from an older writer gets one
    line (CheckpointError) rather than a KeyError later."""
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
    schema = {**REQUIRED, **(FOR_RESUME if for_resume else {})}
    for key, kind in schema.items():
        if not isinstance(ckpt.get(key), kind) or isinstance(ckpt.get(key), bool):
            got = 'missing' if key not in ckpt else f"a {type(ckpt[key]).__name__}"
            raise CheckpointError(f"checkpoint {path}: '{key}' is {got}, expected {kind.__name__} "
                                  f"(not written by this train.py?)")
    if ckpt['tokenizer'] not in TOKENIZERS:
        raise CheckpointError(f"checkpoint {path}: unknown tokenizer {ckpt['tokenizer']!r}")
    if for_resume and not all(isinstance(ckpt['loader'].get(k), int) for k in ('next_seq', 'seqs_per_step')):
        raise CheckpointError(f"checkpoint {path}: 'loader' lacks next_seq / seqs_per_step")
    guard = ckpt.get('guard', {'best_val_loss': 0.0})   # optional: checkpoints written before the guard lack it
    if not isinstance(guard, dict) or type(guard.get('best_val_loss')) is not float:
        raise CheckpointError(f"checkpoint {path}: 'guard' lacks best_val_loss (a float)")
    if not all(isinstance(v, torch.Tensor) for v in ckpt['model'].values()):
        raise CheckpointError(f"checkpoint {path}: 'model' holds something other than tensors")
    return ckpt


def check_state_dict(expected, got, path):
    """The checkpoint's tensors must be exactly those of its model_config: say which ones are not, in one line."""
    missing = [k for k in expected if k not in got]
    extra = [k for k in got if k not in expected]
    shapes = [f"{k} is {tuple(got[k].shape)}, expected {tuple(v.shape)}"
              for k, v in expected.items() if k in got and tuple(got[k].shape) != tuple(v.shape)]
    if missing or extra or shapes:
        parts = ([f"{len(shapes)} shape(s) differ, e.g. {shapes[0]}"] if shapes else []) + \
                ([f"{len(missing)} missing, e.g. {missing[0]}"] if missing else []) + \
                ([f"{len(extra)} unexpected, e.g. {extra[0]}"] if extra else [])
        raise CheckpointError(f"checkpoint {path} does not match its own model_config: {'; '.join(parts)}")


def model_from_checkpoint(ckpt, path, **overrides):
    """GPT built from ckpt['model_config'] (+ overrides, e.g. dropout) with its weights loaded, on the CPU."""
    try:
        model = GPT(GPTConfig(**{**ckpt['model_config'], **overrides}))
    except (TypeError, ModelError) as e:   # keys this model.py does not know, or impossible values
        raise CheckpointError(f"checkpoint {path} has a model_config this model.py cannot build "
                              f"({_first_line(e)})") from None
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


def model_config_from(cfg, vocab_size):
    """The GPTConfig a script's knobs describe (the knobs named like GPTConfig's fields), for vocab_size."""
    return GPTConfig(**{k: cfg[k] for k in MODEL_FIELDS if k in cfg and k != 'vocab_size'}, vocab_size=vocab_size)


def load_model(init_from, out_dir='out', cfg=None, vocab_size=None, tokenizer=None, pretrained=True, for_resume=False):
    """The one way to get a model -> (model on the CPU, tokenizer name, one-line description, checkpoint or None).
    init_from: 'scratch' (GPTConfig from cfg's knobs, vocab_size and tokenizer from the data) | 'resume' (out_dir's
    ckpt.pt, or a .pt path) | 'gpt2' ... 'gpt2-xl' (OpenAI's weights; with pretrained=False any PRESETS name, random
    weights: bench.py needs only the shape) | a local Hugging Face GPT-2 directory. Dropout comes from cfg when given.
    for_resume: the checkpoint must also hold what continuing the run needs (optimizer, loader, tokens)."""
    overrides = {'dropout': cfg['dropout']} if cfg and 'dropout' in cfg else {}
    if init_from == 'scratch':
        if cfg is None or vocab_size is None:
            raise ConfigError("init_from='scratch' needs the model knobs and the data's vocab_size")
        return GPT(model_config_from(cfg, vocab_size)), tokenizer, 'a new model', None
    if init_from == 'resume':
        path = checkpoint_path(out_dir)
        ckpt = load_checkpoint(path, for_resume)
        return model_from_checkpoint(ckpt, path, **overrides), ckpt['tokenizer'], f"{path} (step {ckpt['step']})", ckpt
    if not pretrained and init_from in PRESETS:
        return GPT(GPTConfig(**{**PRESETS[init_from], **overrides})), 'gpt2', f"{init_from} (random weights)", None
    return GPT.from_pretrained(init_from, **overrides), 'gpt2', init_from, None   # GPT-2 weights: GPT-2 BPE, always
