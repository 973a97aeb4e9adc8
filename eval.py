"""
Evaluate a checkpoint or OpenAI's GPT-2: HellaSwag accuracy, and loss / bits per byte on a prepared dataset.

    python eval.py                                            # bpb of the quick start's run (out/), its val split
    python eval.py --out_dir=out-gpt2 --tasks=hellaswag,bpb   # both, the data_dir recorded in the run's checkpoint
    python eval.py --init_from=gpt2 --tasks=hellaswag         # OpenAI GPT-2 124M: acc_norm 0.2955 (llm.c)
    python eval.py --out_dir=out-gpt2 --tasks=hellaswag --shots=10   # 10-shot: solved train examples first (GPT-3)
    python eval.py --init_from=gpt2 --tasks=bpb --data_dir=data/fineweb10B --max_seqs=100 --json=-
    torchrun --nproc_per_node=8 eval.py --init_from=gpt2-xl --tasks=hellaswag

Tasks:
  hellaswag  acc / acc_norm on the 10,042 HellaSwag val examples, scored as llm.c does (hellaswag.py says how);
             needs a model with GPT-2 tokens. --hellaswag_path scores another file in the same format instead.
             --shots=k puts k solved examples of the train split before each context, as GPT-3's few-shot
             evaluation does (hellaswag.py says how); --shots_path draws them from another file in that format.
  bpb        mean loss (nats per token) over a split's sequences of block_size tokens, and bits per byte: summed
             nats / (ln 2 x UTF-8 bytes of exactly the tokens scored as targets), comparable across tokenizers.
             The dataset must be in the model's tokenizer (a trained BPE: the same file, by its sha256).
Results go to stdout as a short table; --json=FILE also writes them as one JSON object {task: {figures}}, and
--json=- prints that object alone on stdout (one line; the table then goes to stderr). What was loaded and the
progress bars go to stderr. Under torchrun every rank scores its share and rank 0 reports.
"""
from pretrain.cli import cli, run_script  # first: Ctrl-C from here on, the import of torch included, is one line and exit 130
import math
import sys

import torch

from pretrain import hellaswag
from pretrain.accounting import count_params
from pretrain.checkpoint import CheckpointError, init_from_kind, load_model_and_tokenizer
from pretrain.configurator import ConfigError, knobs, parse_config
from pretrain.data import DataError, TokenLoader, json_output, read_meta, tokenizer_id
from model import ModelError
from pretrain.runtime import end_of_run, setup_runtime
from pretrain.training import bits_per_byte, evaluate

# -----------------------------------------------------------------------------
# defaults (same --key=value / config-file style as train.py)
init_from = 'resume'       # 'resume' (out_dir's ckpt.pt, or a .pt path) | 'gpt2' ... 'gpt2-xl' | a Hugging Face dir
out_dir = 'out'            # the run to evaluate, with init_from='resume'
tasks = 'bpb'              # comma-separated: 'bpb', 'hellaswag', or 'hellaswag,bpb'
data_dir = None            # bpb's dataset (prepare.py); None = the run's own data_dir (init_from='resume' only)
split = 'val'              # bpb: 'val' | 'train'
max_seqs = None            # bpb: the first max_seqs sequences of block_size tokens; None = the whole split
hellaswag_path = None      # a HellaSwag-format JSONL file instead of the official val set (downloaded once)
limit = None               # hellaswag: only the first `limit` examples (None = all)
shots = 0                  # hellaswag: solved train examples before each context (GPT-3's k-shot); 0 = llm.c's 0-shot
shots_seed = 1234          # hellaswag: which train examples are the shots (drawn per example from seed and index)
shots_path = None          # a HellaSwag-format JSONL to draw shots from instead of the official train file (downloaded)
batch_size = 8             # per forward: sequences for bpb, examples (4 rows each) for hellaswag
device = 'auto'            # 'auto' | 'cpu' | 'cuda' | 'cuda:1' | 'mps'
dtype = 'auto'             # 'auto' (bf16 or fp16 on CUDA, float32 elsewhere) | 'float32' | 'bfloat16' | 'float16'
compile = False            # torch.compile the model's forward (dynamic shapes: HellaSwag's batches vary in length)
json = ''                  # FILE: also write the results there as JSON; '-': print them alone on stdout, in one line
progress = True            # progress bars on stderr (rank 0)
# -----------------------------------------------------------------------------
DEFAULTS = knobs(globals())

TASKS = ('hellaswag', 'bpb')
BYTES_CHUNK = 1024   # sequences per count_bytes call: a whole split's tokens as int64 could be gigabytes


def check_eval_knobs(cfg):
    """-> the task list; ConfigError (one line) for anything impossible, before any model or data is loaded."""
    names = [t.strip() for t in cfg['tasks'].split(',') if t.strip()]
    if not names:
        raise ConfigError(f"tasks must name at least one of {', '.join(TASKS)}")
    for t in names:
        if t not in TASKS:
            raise ConfigError(f"unknown task {t!r} (tasks: {', '.join(TASKS)})")
    init_from_kind(cfg['init_from'], ('resume', 'gpt2'))
    if cfg['split'] not in ('val', 'train'):
        raise ConfigError(f"split must be 'val' or 'train', got {cfg['split']!r}")
    for k in ('max_seqs', 'limit'):
        if cfg[k] is not None and (not isinstance(cfg[k], int) or isinstance(cfg[k], bool) or cfg[k] < 1):
            raise ConfigError(f"{k} must be None or an int >= 1, got {cfg[k]!r}")
    if cfg['shots'] < 0:
        raise ConfigError(f"shots must be an int >= 0, got {cfg['shots']}")
    if cfg['batch_size'] < 1:
        raise ConfigError(f"batch_size must be >= 1, got {cfg['batch_size']}")
    return list(dict.fromkeys(names))   # each task once, in the order given


# -----------------------------------------------------------------------------
# bits per byte

def open_split(data_dir, split, tokenizer, model):
    """The split's TokenLoader in sequences of the model's block_size, once the dataset is known to be in the
    model's tokenizer (DataError otherwise, and for a missing, corrupt or too short split)."""
    meta = read_meta(data_dir)
    if tokenizer_id(meta) != tokenizer_id(tokenizer.record()):
        raise DataError(f"{data_dir} holds {tokenizer_id(meta)} tokens but the model reads "
                        f"{tokenizer_id(tokenizer.record())} tokens")
    return TokenLoader(data_dir, split, model.config.block_size, vocab_size=model.config.vocab_size)


def bpb(model, tokenizer, loader, rt, batch_size, max_seqs=None):
    """Loss and bits per byte of the model on the loader's first n = max_seqs (default all) sequences -> {'loss',
    'bpb', 'tokens', 'bytes', 'seqs'}: training.evaluate's loss, and the UTF-8 bytes that exactly the target tokens
    spell (end-of-text spells none); each rank takes its share of both, and they are summed."""
    n = loader.n_chunks if max_seqs is None else min(max_seqs, loader.n_chunks)
    loss = evaluate(model, loader, n, rt, batch_size)
    lo, hi = rt.rank * n // rt.world, (rt.rank + 1) * n // rt.world
    n_bytes = sum(tokenizer.count_bytes(loader.batch(first, min(BYTES_CHUNK, hi - first), torch.device('cpu'))[1]
                                        .numpy().ravel()) for first in range(lo, hi, BYTES_CHUNK))
    if rt.ddp:
        total = torch.tensor([n_bytes], dtype=torch.int64, device=rt.device)
        torch.distributed.all_reduce(total)
        n_bytes = int(total.item())
    if n_bytes == 0:
        raise DataError("the sequences scored spell no text (only end-of-text tokens)")
    if not math.isfinite(loss):
        raise DataError(f"the loss is {loss}: the model's weights hold NaN or inf")
    return {'loss': loss, 'bpb': bits_per_byte(loss, n * loader.T, n_bytes), 'tokens': n * loader.T,
            'bytes': n_bytes, 'seqs': n}


def run_data_dir(cfg, ckpt):
    """bpb's dataset: --data_dir, else the one the checkpoint's run trained on."""
    if cfg['data_dir'] is not None:
        return cfg['data_dir']
    recorded = (ckpt or {}).get('config', {}).get('data_dir')
    if not isinstance(recorded, str):
        raise ConfigError("bpb needs --data_dir (a dataset prepared by prepare.py in the model's tokenizer)"
                          + ("" if ckpt is None else "; the checkpoint records none"))
    return recorded


# -----------------------------------------------------------------------------
# the run

def run(cfg, emit):
    """Load the model, run the tasks, report the results on rank 0: the table, and emit(results) for --json.
    Returns {task: {figures}}."""
    names = check_eval_knobs(cfg)
    rt = setup_runtime(cfg)
    say = (lambda msg: print(msg, file=sys.stderr)) if rt.master else (lambda msg: None)
    model, tokenizer, where, ckpt = load_model_and_tokenizer(cfg['init_from'], cfg['out_dir'])
    data_dir = run_data_dir(cfg, ckpt) if 'bpb' in names else None
    del ckpt   # the optimizer state can be twice the model's size
    if 'hellaswag' in names and tokenizer.name != 'gpt2':   # before any download
        raise DataError(f"HellaSwag needs a GPT-2-token model; this one uses {tokenizer.name}")
    # every task's data is read and checked before any work: a bad file is one line, not a line after a run
    inputs = {task: hellaswag.load_examples(cfg['hellaswag_path'], cfg['limit'], rt) if task == 'hellaswag'
              else open_split(data_dir, cfg['split'], tokenizer, model) for task in names}
    shots = cfg['shots'] if 'hellaswag' in names else 0
    train = hellaswag.load_examples(cfg['shots_path'], None, rt, split='train') if shots else None
    if shots and len(train) < shots:
        raise DataError(f"--shots={shots} needs at least {shots} train examples; "
                        f"{cfg['shots_path'] or 'the train file'} has {len(train)}")
    model.to(rt.device).eval()
    if cfg['compile']:
        model.features = torch.compile(model.features, dynamic=True)   # hellaswag.py calls features() directly
    say(f"{where}: {count_params(model.config)['n_params'] / 1e6:.2f}M parameters, {tokenizer.name} tokenizer, "
        f"{rt.device} {rt.dtype}" + (f", {rt.world} processes" if rt.ddp else ""))

    results = {}
    for task in names:
        if task == 'hellaswag':
            results[task] = {**hellaswag.score(model, tokenizer, inputs[task], rt, cfg['batch_size'], cfg['progress'],
                                               shots, train, cfg['shots_seed']), 'shots': shots}
            if results[task]['truncated']:
                say(f"note: {results[task]['truncated']} HellaSwag context(s) were longer than the model's "
                    f"{model.config.block_size} tokens and lost their beginning")
        else:
            r = bpb(model, tokenizer, inputs[task], rt, cfg['batch_size'], cfg['max_seqs'])
            results[task] = {**r, 'split': cfg['split'], 'data_dir': data_dir}
    end_of_run(rt)
    if rt.master:
        print(table(results), flush=True)   # on stderr with --json=- (data.json_output)
        emit(results)
    return results


def table(results):
    lines = []
    for task, r in results.items():
        if task == 'hellaswag':
            k = f", {r['shots']}-shot" if r['shots'] else ''
            lines.append(f"hellaswag  acc {r['acc']:.4f}  acc_norm {r['acc_norm']:.4f}  ({r['n']:,} examples{k})")
        else:
            lines.append(f"bpb        {r['split']} loss {r['loss']:.4f} nats/token  {r['bpb']:.4f} bits/byte  "
                         f"({r['tokens']:,} tokens, {r['bytes']:,} bytes of {r['data_dir']})")
    return '\n'.join(lines)


def main(argv):

    def go():
        cfg = parse_config(argv, DEFAULTS, __doc__)
        with json_output(cfg['json']) as emit:   # --json=FILE, or - for stdout (data.json_output)
            return run(cfg, emit)
    cli(go, (ConfigError, DataError, ModelError, CheckpointError))


if __name__ == '__main__':
    run_script(main, sys.argv[1:])
