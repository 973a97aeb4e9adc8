"""
HellaSwag (Zellers et al. 2019, https://github.com/rowanz/hellaswag): pick the right one of four endings of a
sentence. Scored as llm.c's dev/data/hellaswag.py scores it ("completion style"), so its reference numbers apply:

    OpenAI GPT-2 124M   acc 0.2859  acc_norm 0.2955      (llm.c dev/data/hellaswag.py, all 10,042 val examples)
    OpenAI GPT-2 XL     acc 0.3842  acc_norm 0.4893

    examples = load_examples()                       # the 10,042 val examples, downloaded once into CACHE_DIR
    score(model, tokenizer, examples, rt)            # {'acc': ..., 'acc_norm': ..., 'n': ..., 'truncated': ...}
    score(model, tokenizer, examples, rt, shots=10, train=load_examples(split='train'))   # 10-shot (GPT-3 style)

Each example is four rows, context + ending, with ending = encode(" " + ending) (GPT-2's BPE puts the space
inside the next token); an ending token's loss is its cross-entropy given everything before it. llm.c's numbers:
    acc       the ending with the lowest SUMMED loss wins (llm.c: pred = sum_loss.argmin()); favours short endings
    acc_norm  the ending with the lowest MEAN loss per token wins (llm.c: pred_norm = avg_loss.argmin())
Ties go to the lowest index (torch.argmin). EleutherAI's harness normalizes by characters and frames the task as
multiple choice, so its numbers differ (0.3114 acc_norm for GPT-2 124M). Only val has labels, so only val is scored.
A row longer than the model's context loses the start of its context (never of the ending); score() counts those.
Under torchrun each rank scores a contiguous slice and the counts are all-reduced: the same result at any world size.

Few-shot (Brown et al. 2020, "Language Models are Few-Shot Learners", sec. 2.4): "we evaluate each example in the
evaluation set by randomly drawing K examples from that task's training set as conditioning, delimited by 1 or 2
newlines". Each shot is a solved train example, context + " " + right ending, then a blank line (lm-eval's default
delimiter too):  shot_1 + "\n\n" + ... + shot_k + "\n\n" + ctx, then " " + ending, scored as at 0 shots. The
shots of example number `index` are k distinct train examples, never the example itself, drawn from
random.Random(f"{seed}:{index}"): independent of batch size and process count. k = 0 gives the 0-shot rows.
"""
import json
import os
import random

import torch
import torch.nn.functional as F

from pretrain.data import CACHE_DIR, DataError, download, sha256_of

VAL_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"  # as llm.c
# sha256 of that file as independent public evaluation harnesses pin it (one names rowanz/hellaswag commit a29ff8e9)
VAL_SHA256 = "0aa3b88843990f3f10a97b9575c94d7b71fb2205240ba04ae4884d9e9c992588"
VAL_EXAMPLES = 10042      # examples in the official val file (llm.c: "a total of 10,042 examples")
# The train split, for the few-shot examples: no published sha256, so checked by its example count (Hugging Face's copy,
# Rowan/hellaswag, lists 39,905 train rows)
TRAIN_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_train.jsonl"
TRAIN_EXAMPLES = 39905
SHOT_SEPARATOR = "\n\n"   # after each shot (GPT-3 sec. 2.4: "1 or 2 newlines"; lm-eval's fewshot_delimiter)
DATA_DIR = os.path.join(CACHE_DIR, "hellaswag")
N_ENDINGS = 4


# -----------------------------------------------------------------------------
# the data

def official_path(split="val"):
    return os.path.join(DATA_DIR, os.path.basename(VAL_URL if split == "val" else TRAIN_URL))


def fetch(split="val", rt=None):
    """The official val (or train) file in DATA_DIR, downloaded once; val is checked against VAL_SHA256 each time.
    Under torchrun each machine's local rank 0 downloads while the other ranks wait."""
    path, val = official_path(split), split == "val"
    if rt is None or rt.local_rank == 0:
        download(VAL_URL if val else TRAIN_URL, path, sha256=VAL_SHA256 if val else None)
    if rt is not None and rt.ddp:
        torch.distributed.barrier()
    # download() checks new files only: this catches an old or edited copy
    if val and VAL_SHA256 and (got := sha256_of(path)) != VAL_SHA256:
        raise DataError(f"{path} is not the official HellaSwag val file (sha256 {got[:16]}..., expected "
                        f"{VAL_SHA256[:16]}...); delete it to download it again")
    return path


def check_example(ex, where):
    """One JSON line -> {ctx, endings, label}, or a DataError naming the file and line."""
    if not isinstance(ex, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(ex).__name__}")
    ctx, endings, label = ex.get("ctx"), ex.get("endings"), ex.get("label")
    if not isinstance(ctx, str):
        raise DataError(f"{where}: 'ctx' must be a string, got {'nothing' if 'ctx' not in ex else repr(ctx)[:40]}")
    if not (isinstance(endings, list) and len(endings) == N_ENDINGS and all(isinstance(e, str) for e in endings)):
        raise DataError(f"{where}: 'endings' must be a list of {N_ENDINGS} strings")
    if isinstance(label, str) and label.isdigit():   # the Hugging Face copy stores labels as strings
        label = int(label)
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < N_ENDINGS:
        raise DataError(f"{where}: 'label' must be 0, 1, 2 or 3, got {label!r} (HellaSwag's test split has no "
                        f"labels: only val can be scored)")
    return {"ctx": ctx, "endings": endings, "label": label}


def load_examples(path=None, limit=None, rt=None, split="val"):
    """The examples of a HellaSwag-format JSONL file -> [{ctx, endings, label}], every line checked. path None: the
    official file of `split` (fetch), which must hold exactly VAL_EXAMPLES or TRAIN_EXAMPLES. limit: only the
    first `limit` examples (the whole file is still checked)."""
    official = path is None
    if official:
        path = fetch(split, rt)
    if not os.path.isfile(path):
        raise DataError(f"no HellaSwag file at {path}")
    examples = []
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            where = f"{path}:{i}"
            try:
                line = raw.decode("utf-8")
                if line.strip():
                    examples.append(check_example(json.loads(line), where))
            except UnicodeDecodeError:
                raise DataError(f"{where}: not UTF-8 text") from None
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: not JSON ({e.msg} at column {e.colno})") from None
    if not examples:
        raise DataError(f"{path} holds no examples")
    expected = VAL_EXAMPLES if split == "val" else TRAIN_EXAMPLES
    if official and len(examples) != expected:
        raise DataError(f"{path} holds {len(examples)} examples, the HellaSwag {split} set has {expected}; "
                        f"delete it to download it again")
    if limit is not None:
        if limit < 1:
            raise DataError(f"limit must be None or >= 1, got {limit}")
        examples = examples[:limit]
    return examples


# -----------------------------------------------------------------------------
# scoring

def draw_shots(train, k, seed, index, example):
    """The k solved train examples shown before example number `index` (module docstring); [] for k = 0."""
    if k == 0:
        return []
    rng = random.Random(f"{seed}:{index}")   # a str seed is hashed with SHA-512: the same draw on every platform
    picks = [train[i] for i in rng.sample(range(len(train)), min(k + 1, len(train)))]
    picks = [shot for shot in picks if shot != example][:k]
    if len(picks) < k:
        raise DataError(f"{k} shots need {k} train examples besides the one scored; the train file has {len(train)}")
    return picks


def render(example, tokenizer, block_size, shots=()):
    """-> (four rows of token ids, context + ending; the ending lengths; whether the context was cut). A row may be
    block_size + 1 tokens (the model reads row[:-1] and predicts row[1:]); a longer one loses the start of its
    context, the first shots first. An empty context becomes the end-of-text token (a document start)."""
    prefix = "".join(shot["ctx"] + " " + shot["endings"][shot["label"]] + SHOT_SEPARATOR for shot in shots)
    ctx = tokenizer.encode(prefix + example["ctx"]) or [tokenizer.eot]
    rows, lengths, cut = [], [], False
    for ending in example["endings"]:
        end = tokenizer.encode(" " + ending)   # llm.c: " " + ending, because of how GPT-2's BPE splits words
        if len(end) > block_size:
            raise DataError(f"a HellaSwag ending of {len(end)} tokens does not fit the model's context of "
                            f"{block_size} tokens")
        keep = ctx[-(block_size + 1 - len(end)):]   # >= 1 token, as len(end) <= block_size
        cut = cut or len(keep) < len(ctx)
        rows.append(keep + end)
        lengths.append(len(end))
    return rows, lengths, cut


def unwrap(model):
    """The GPT inside a DDP or torch.compile wrapper: scoring needs its features() and lm_logits(), and each rank
    scores different examples, so no gradient synchronization is wanted."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


@torch.no_grad()
def ending_losses(model, rendered, rt):
    """Rendered examples (render's output) in one forward -> (summed loss, mean loss per token), each a float64
    CPU tensor (n_examples, 4). Rows are padded to the longest (the model is causal: padding after a row changes
    nothing before it), and the lm_head runs only at the ending positions: the context's logits would be waste."""
    model = unwrap(model)
    rows = [(row, n) for r, lengths, _ in rendered for row, n in zip(r, lengths)]
    T = max(len(row) for row, _ in rows) - 1
    x = torch.full((len(rows), T), model.config.vocab_size - 1, dtype=torch.long)   # any valid id: never read
    y = torch.full((len(rows), T), -1, dtype=torch.long)
    for i, (row, n) in enumerate(rows):
        x[i, :len(row) - 1] = torch.tensor(row[:-1])
        y[i, len(row) - 1 - n:len(row) - 1] = torch.tensor(row[-n:])   # only the ending's tokens are targets
    row_of, col = (y != -1).nonzero(as_tuple=True)    # the ending positions, found on the CPU
    with rt.autocast:
        h = model.features(x.to(rt.device))[row_of.to(rt.device), col.to(rt.device)]   # (n_scored, n_embd)
        logits = model.lm_logits(h)[:, :model.config.vocab_size]   # padded vocabulary columns are not tokens
    loss = F.cross_entropy(logits.float(), y[row_of, col].to(rt.device), reduction="none")
    # summed per row in float64 on the CPU: MPS has no float64
    sums = torch.zeros(len(rows), dtype=torch.float64).index_add_(0, row_of, loss.cpu().double()).view(-1, N_ENDINGS)
    counts = torch.tensor([n for _, n in rows], dtype=torch.float64).view(-1, N_ENDINGS)
    return sums, sums / counts


def score(model, tokenizer, examples, rt, batch_size=8, progress=True, shots=0, train=None, shots_seed=1234):
    """{'acc', 'acc_norm', 'n', 'truncated'} of the model on the examples, in eval mode under rt.autocast (the mode is
    restored); every rank passes the same examples. batch_size: examples per forward. progress: a tqdm bar on rank 0.
    shots: k solved examples of `train` (load_examples(split='train')) before each context (draw_shots)."""
    from tqdm import tqdm
    if tokenizer.name != "gpt2":
        raise DataError(f"HellaSwag needs a GPT-2-token model; this one uses {tokenizer.name}")
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    if shots and not train:
        raise DataError(f"{shots}-shot scoring needs train examples to draw the shots from")
    raw = unwrap(model)
    was_training = raw.training
    raw.eval()
    n = len(examples)
    lo, hi = rt.rank * n // rt.world, (rt.rank + 1) * n // rt.world
    counts = torch.zeros(4, dtype=torch.long)   # [right by sum, right by mean, examples, contexts cut]
    try:
        with tqdm(total=hi - lo, desc="hellaswag", unit="ex", disable=not (progress and rt.master),
                  leave=False) as bar:
            for first in range(lo, hi, batch_size):
                batch = examples[first:min(first + batch_size, hi)]
                rendered = [render(ex, tokenizer, raw.config.block_size,
                                   draw_shots(train, shots, shots_seed, first + j, ex)) for j, ex in enumerate(batch)]
                sums, means = ending_losses(raw, rendered, rt)
                labels = torch.tensor([ex["label"] for ex in batch])
                counts += torch.tensor([(sums.argmin(1) == labels).sum().item(),
                                        (means.argmin(1) == labels).sum().item(),
                                        len(batch), sum(cut for _, _, cut in rendered)])
                bar.update(len(batch))
    finally:
        raw.train(was_training)
    if rt.ddp:
        counts = counts.to(rt.device)   # gloo reduces CPU tensors, nccl CUDA ones: rt.device is the right one
        torch.distributed.all_reduce(counts)
    right, right_norm, total, cut = (int(v) for v in counts.tolist())
    if total == 0:
        raise DataError("no HellaSwag examples to score")
    return {"acc": right / total, "acc_norm": right_norm / total, "n": total, "truncated": cut}
