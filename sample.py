"""
Sample text from a trained checkpoint or from OpenAI's GPT-2 weights: KV cache, streaming, reproducible.

    python sample.py                                             # the quick start's checkpoint in out/
    python sample.py --out_dir=out-shakespeare --start="ROMEO:" --max_new_tokens=300
    python sample.py --init_from=gpt2-xl --start=FILE:prompt.txt --num_samples=3 --top_p=0.95
    python sample.py --temperature=0                             # greedy: the same text every time
    python sample.py config/my_sampling.py --seed=7              # a config file of the knobs below, then overrides

The text (prompt included) goes to stdout, streamed token by token when num_samples=1; samples are separated
by a line of dashes. A tokens/s line and what was loaded go to stderr, so `> out.txt` captures only text.
The tokenizer is the one the checkpoint's run used (recorded in the checkpoint, a trained BPE's file included;
GPT-2 BPE for GPT-2 weights).
"""
from pretrain.cli import cli, run_script  # first: Ctrl-C from here on, the import of torch included, is one line and exit 130
import contextlib
import sys
import time

import torch

from pretrain.accounting import count_params
from pretrain.checkpoint import CheckpointError, init_from_kind, load_model_and_tokenizer
from pretrain.configurator import ConfigError, knobs, parse_config
from pretrain.data import DataError
from pretrain.generate import generate_stream
from model import ModelError
from pretrain.runtime import device_sync, setup_runtime

# -----------------------------------------------------------------------------
# defaults (same --key=value / config-file style as train.py)
init_from = 'resume'       # 'resume' (latest checkpoint in out_dir) | 'gpt2' ... 'gpt2-xl' | a local Hugging Face dir
out_dir = 'out'            # a run's directory (reads <out_dir>/ckpt.pt), or the path of a .pt file
start = '\n'               # the prompt; 'FILE:path' reads it from a file; '' = a document start (end-of-text token)
num_samples = 1            # independent samples, generated as one batch
max_new_tokens = 500       # tokens generated per sample
temperature = 0.8          # 0 = greedy (argmax); 1 = the model's distribution; < 1 sharper, > 1 flatter
top_k = 200                # keep only the k most likely tokens (None or 0 = all)
top_p = None               # nucleus sampling: keep the most likely tokens up to this total probability (None = off)
seed = 1337                # same seed, same text (for a given device, dtype and batch)
device = 'auto'            # 'auto' | 'cpu' | 'cuda' | 'cuda:1' | 'mps'
dtype = 'auto'             # 'auto' (as train.py: bf16 or fp16 on CUDA, float32 elsewhere) | 'float32' | 'bfloat16'
compile = False            # one-token steps through a static cache, compiled once (CUDA graphs on GPU: gpt-fast's way)
kv_cache = True            # reuse earlier keys/values: one token per step instead of the whole window
# -----------------------------------------------------------------------------
DEFAULTS = knobs(globals())
NULLABLE = ('top_k',)      # knobs that also take None although their default is a number

SEPARATOR = '---------------'


def check_sample_knobs(cfg):
    def need(ok, msg):
        if not ok:
            raise ConfigError(msg)
    init_from_kind(cfg['init_from'], ('resume', 'gpt2'))
    need(cfg['num_samples'] >= 1, f"num_samples must be >= 1, got {cfg['num_samples']}")
    need(cfg['max_new_tokens'] >= 1, f"max_new_tokens must be >= 1, got {cfg['max_new_tokens']}")
    need(cfg['temperature'] >= 0, f"temperature must be >= 0 (0 = greedy), got {cfg['temperature']}")
    k, p = cfg['top_k'], cfg['top_p']
    need(k is None or k >= 0, f"top_k must be None, 0 (both: off) or a positive int, got {k}")
    need(p is None or (isinstance(p, (int, float)) and not isinstance(p, bool) and 0 < p <= 1),
         f"top_p must be None or a number in (0, 1], got {p!r}")


# -----------------------------------------------------------------------------
# model and tokenizer

def load_for_sampling(cfg):
    """-> (model on CPU in eval mode, tokenizer, a one-line description). The tokenizer is read from the run."""
    model, tokenizer, where, _ = load_model_and_tokenizer(cfg['init_from'], cfg['out_dir'])
    check_finite(model, where)
    model.eval()
    return model, tokenizer, where


def check_finite(model, where):
    """A diverged run's weights (inf/NaN) would make torch.multinomial fail deep inside generation."""
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise ConfigError(f"{where}: {len(bad)} weight tensor(s) hold NaN or inf (e.g. {bad[0]}): the run diverged; "
                          f"sample from an earlier checkpoint")


def check_probabilities(model, prompt, temperature, where):
    """The next-token distribution after the prompt must be finite. Weights can be finite yet so large that the
    logits overflow (a run that blew up without reaching inf): torch.multinomial would then fail deep inside
    generation (on CUDA, perhaps with a device-side assert), and greedy decoding would print garbage."""
    logits, _ = model(prompt)
    logits = logits[:, -1, :model.config.vocab_size].float()
    probs = torch.softmax(logits / temperature if temperature > 0 else logits, dim=-1)
    if not (torch.isfinite(logits).all() and torch.isfinite(probs).all()):
        raise ModelError(f"{where}: the model's probabilities are not finite (its weights are finite but overflow "
                         f"the logits: the run diverged); sample from an earlier checkpoint")


def encode_prompt(text_or_file, tokenizer, block_size):
    """start -> (token ids, the prompt's text). 'FILE:path' reads the prompt from a UTF-8 file. An empty prompt
    is the end-of-text token, which is how every training document begins (prepare.py). A prompt longer than
    the context is an error rather than silently cut: the model would never see its beginning."""
    text = text_or_file
    if text.startswith('FILE:'):
        path = text[len('FILE:'):]
        try:
            with open(path, encoding='utf-8') as f:
                text = f.read()
        except FileNotFoundError:
            raise ConfigError(f"start file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"start file {path} is unreadable ({type(e).__name__}: {e})") from None
    ids = tokenizer.encode(text) or [tokenizer.eot]
    if len(ids) > block_size:
        raise ConfigError(f"the prompt is {len(ids)} tokens but the model's context is {block_size}; nothing was "
                          f"generated (shorten it to at most {block_size} tokens: the model sees no more)")
    return ids, text


# -----------------------------------------------------------------------------
# generation

class StreamDecoder:
    """Token ids in, text out, as they come. A character can span several tokens (a byte-level token is one
    byte of a multi-byte UTF-8 character; a GPT-2 token can end mid-character), and decoding an unfinished
    character yields U+FFFD. So the pending tokens are decoded together and trailing U+FFFDs are held back
    until more tokens complete them (or finish() flushes them): the pieces joined equal tokenizer.decode of all
    the tokens, and no piece ever shows a character that is still being written."""

    def __init__(self, tokenizer):
        self.tok, self.pending, self.shown = tokenizer, [], 0   # shown: characters of decode(pending) printed

    def push(self, ids):
        self.pending.extend(ids)
        text = self.tok.decode(self.pending)
        ready = len(text.rstrip('\ufffd'))
        piece = text[self.shown:ready]
        if ready == len(text):   # ends on a whole character: a clean boundary, start afresh (keeps decode O(1))
            self.pending, self.shown = [], 0
        else:
            self.shown = ready
        return piece

    def finish(self):
        piece = self.tok.decode(self.pending)[self.shown:]
        self.pending, self.shown = [], 0
        return piece


def sample(cfg):
    """Load, generate and print. Returns the texts (prompt included), one per sample."""
    check_sample_knobs(cfg)
    rt = setup_runtime(cfg)
    model, tok, where = load_for_sampling(cfg)
    model.to(rt.device)
    if rt.device.type == 'cuda' and rt.dtype != 'float32':
        # weights in bf16/fp16 rather than float32 under autocast: decoding reads every weight once per token, so
        # this halves the bytes it moves and drops the per-step casts (gpt-fast's way)
        model.to(rt.ptdtype)
    prompt, prompt_text = encode_prompt(cfg['start'], tok, model.config.block_size)
    autocast = rt.autocast if next(model.parameters()).dtype == torch.float32 else contextlib.nullcontext()
    with torch.no_grad(), autocast:
        check_probabilities(model, torch.tensor([prompt], dtype=torch.long, device=rt.device), cfg['temperature'],
                            where)
    n_params = count_params(model.config)['n_params']
    print(f"{where}: {n_params / 1e6:.2f}M parameters, {tok.name} tokenizer, {rt.device} {rt.dtype}, "
          f"prompt {len(prompt)} tokens", file=sys.stderr)

    torch.manual_seed(cfg['seed'])
    generator = torch.Generator(device=rt.device).manual_seed(cfg['seed'])
    B, T = cfg['num_samples'], cfg['max_new_tokens']
    idx = torch.tensor([prompt] * B, dtype=torch.long, device=rt.device)
    out = sys.stdout
    rows = [[] for _ in range(B)]
    live = StreamDecoder(tok) if B == 1 else None   # one sample streams; a batch prints when done
    if live:
        out.write(prompt_text)
        out.flush()
    device_sync(rt.device)
    t0 = t_first = time.perf_counter()
    with torch.no_grad(), autocast:
        try:
            for k, nxt in enumerate(generate_stream(model, idx, T, cfg['temperature'], cfg['top_k'], cfg['top_p'],
                                                    generator, cfg['kv_cache'], compile_decode=cfg['compile'])):
                ids = nxt[:, 0].tolist()   # waits for the device, so the timing below is honest
                if k == 1:   # the prompt's forward, the first decode step and any compilation are behind us
                    t_first = time.perf_counter()
                for row, i in zip(rows, ids):
                    row.append(i)
                if live:
                    out.write(live.push(ids))
                    out.flush()
        except RuntimeError as e:   # a later token's logits overflowed: torch.multinomial's check, on the CPU
            if 'probability tensor' not in str(e):
                raise
            raise ModelError(f"{where}: the model's probabilities are not finite at token {len(rows[0]) + 1} "
                             f"(its weights overflow); sample from an earlier checkpoint") from None
    dt = time.perf_counter() - t0
    texts = [prompt_text + tok.decode(row) for row in rows]
    if live:
        out.write(live.finish() + '\n')
    else:
        out.write(f"\n{SEPARATOR}\n".join(texts) + '\n')
    out.flush()

    bs = model.config.block_size
    slid = max(0, len(prompt) + T - 1 - bs)   # steps whose input (prompt + tokens so far) exceeds the window
    window = f"; the last {slid} each recompute the full {bs}-token window (context full)" if slid else ""
    steady = B * (T - 2) / (t0 + dt - t_first) if T > 2 else None   # tokens after the first two
    warm = f"; steady {steady:.1f} tokens/s after {t_first - t0:.2f} s for the prompt and the first step" \
        f"{' (compilation included)' if cfg['compile'] else ''}" if steady else ""
    print(f"{B * T} tokens in {dt:.2f} s: {B * T / dt:.1f} tokens/s (kv_cache={cfg['kv_cache']}, {B} x {T} new "
          f"tokens{window}{warm})", file=sys.stderr)
    return texts


def main(argv):
    cli(lambda: sample(parse_config(argv, DEFAULTS, __doc__, NULLABLE)), (ConfigError, DataError, ModelError, CheckpointError))


if __name__ == '__main__':
    run_script(main, sys.argv[1:])
