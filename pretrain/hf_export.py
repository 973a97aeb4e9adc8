"""
A checkpoint as a Hugging Face model directory, so that `transformers`, lm-evaluation-harness and the model hub can
use it (export.py is the command line; docs/export.md lists what exports). Two classes cover what model.py builds:
    GPT2LMHeadModel   pos_emb='learned', norm='layernorm', mlp='gelu' (tanh GELU, "gelu_new"); no biases are written
                      as zero biases; GQA as multi-head attention, each key/value head repeated for the query heads
                      that read it (the same function: Ainslie et al. 2023, sec. 2).
    LlamaForCausalLM  pos_emb='rope', norm='rmsnorm', mlp='swiglu', any n_kv_head; biases as attention_bias, mlp_bias.
Any other knob is refused, naming it, rather than exported into a model that computes something else: qk_norm
(neither class normalizes q and k per head without a gain), mlp='relu2', logit_softcap, and the mixed blocks.
zero_init_proj and dropout change training only. Why the logits agree, detail by detail:
  - vocabulary: the pad_vocab_multiple rows of wte and lm_head are cut off; vocab_size is the tokenizer's.
  - RoPE: model.apply_rope pairs dimension i with i + d/2 (rotate-half), as Llama's rotate_half, with the same
    angles theta^(-2i/d) * position (model.py's tables are float64, transformers' float32: ~1e-7 apart, relative,
    far below the 1e-5 the tests hold the logits to).
  - norms: LayerNorm eps -> layer_norm_epsilon, RMSNorm eps -> rms_norm_eps; both normalize in float32.
  - GPT-2's Conv1D layers store weights (in, out): gpt2_weights.TRANSPOSED, the names GPT.from_pretrained reads.
  - model.py's q, k, v (and SwiGLU's gate and up) are separate matrices, as Llama's; GPT-2 stacks q, k, v in c_attn.
  - tied weights: only the embedding is stored (transformers ties lm_head to it from tie_word_embeddings).
  - parametrization='mup' or 'completep' (model.py): its multipliers are folded into the weights they follow (_folded):
    the attention scale sqrt(base_head_dim)/head_dim into the query projection (both classes scale by 1/sqrt(head_dim);
    RoPE is linear), the output multiplier 1/m_N into ln_f's gain and bias, the residual branches' 1/m_L into both
    output projections. The exported model is the plain class, computing the same function.
Tokenizer: GPT-2 BPE runs get vocab.json and merges.txt (byte for byte the encoder.json and vocab.bpe the repo's
tokenizer is built from) and a tokenizer_config.json for AutoTokenizer; byte-level runs and trained BPEs get a
tokenizer.json (the `tokenizers` format) that encodes to the same ids (tokenizer_json says how).
"""
import json
import math
import os
import shutil

import torch

from pretrain.cli import first_line
from pretrain.data import CACHE_DIR, EOT_TEXT, _gpt2_files, read_ranks
from pretrain.gpt2_weights import TRANSPOSED

# pos_emb -> (class, norm, its name, mlp, its name)
FAMILIES = {'learned': ('GPT2LMHeadModel', 'layernorm', 'LayerNorm', 'gelu', 'GELU'),
            'rope': ('LlamaForCausalLM', 'rmsnorm', 'RMSNorm', 'swiglu', 'SwiGLU')}


class ExportError(Exception):
    """A model that cannot be exported, or a directory that cannot be written: one line."""


# -----------------------------------------------------------------------------
# which class

def hf_class(config):
    """'GPT2LMHeadModel' or 'LlamaForCausalLM' for a GPTConfig, or ExportError naming the knob neither expresses."""
    def refuse(knob, why):
        raise ExportError(f"cannot export {knob}: {why}; neither GPT2LMHeadModel nor LlamaForCausalLM "
                          f"computes it")
    if config.qk_norm:
        refuse('qk_norm=True', "per-head RMS normalization of queries and keys without a gain")
    if config.logit_softcap is not None:
        refuse(f'logit_softcap={config.logit_softcap}', "cap * tanh(logits / cap) on the output")
    if config.mlp == 'relu2':
        refuse("mlp='relu2'", "squared ReLU")
    # the GPT-2 family (learned positions) or the Llama family (RoPE): the rest of the block must be the family's
    cls, norm, norm_name, mlp, mlp_name = FAMILIES[config.pos_emb]
    if config.norm != norm:
        refuse(f"norm={config.norm!r} with pos_emb={config.pos_emb!r}", f"{cls} has {norm_name} only")
    if config.mlp != mlp:
        refuse(f"mlp={config.mlp!r} with pos_emb={config.pos_emb!r}", f"{cls} has the {mlp_name} MLP only")
    return cls


# -----------------------------------------------------------------------------
# config.json

def hf_config(config, eot, dtype):
    """config.json's contents for the class hf_class picks. eot: the end-of-text id (bos = eos, as GPT-2)."""
    common = dict(vocab_size=config.vocab_size, bos_token_id=eot, eos_token_id=eot,
                  tie_word_embeddings=config.tie_weights, torch_dtype=dtype, dtype=dtype, use_cache=True)
    if hf_class(config) == 'GPT2LMHeadModel':
        # n_inner None means 4 * n_embd there, as mlp_hidden None does here
        return dict(architectures=['GPT2LMHeadModel'], model_type='gpt2', n_positions=config.block_size,
                    n_ctx=config.block_size, n_embd=config.n_embd, n_layer=config.n_layer, n_head=config.n_head,
                    n_inner=config.mlp_hidden, activation_function='gelu_new', layer_norm_epsilon=config.norm_eps,
                    resid_pdrop=config.dropout, embd_pdrop=config.dropout, attn_pdrop=config.dropout,
                    scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False,
                    initializer_range=0.02, **common)
    # rope_theta at the top level is how transformers 4.x reads it, rope_parameters how 5.x does
    return dict(architectures=['LlamaForCausalLM'], model_type='llama', max_position_embeddings=config.block_size,
                hidden_size=config.n_embd, intermediate_size=config.hidden_dim, num_hidden_layers=config.n_layer,
                num_attention_heads=config.n_head, num_key_value_heads=config.kv_heads, head_dim=config.head_dim,
                hidden_act='silu', rms_norm_eps=config.norm_eps, rope_theta=config.rope_theta,
                rope_parameters=dict(rope_type='default', rope_theta=config.rope_theta), rope_scaling=None,
                attention_bias=config.bias, mlp_bias=config.bias, attention_dropout=config.dropout,
                pretraining_tp=1, initializer_range=0.02, **common)


# -----------------------------------------------------------------------------
# the weights

def _folded(model):
    """model.state_dict() with the parametrization's multipliers (GPTConfig's width_mult, depth_mult, attn_scale)
    folded into the weights and biases before them; 'sp', or a model at its base shape, is returned as it is."""
    c, sd = model.config, model.state_dict()
    into = {'.attn.c_q.': 1.0 if c.attn_scale is None else c.attn_scale * math.sqrt(c.head_dim),
            'transformer.ln_f.': 1 / c.width_mult, '.attn.c_proj.': 1 / c.depth_mult, '.mlp.c_proj.': 1 / c.depth_mult}
    for name in sd:
        f = next((f for part, f in into.items() if part in name), 1.0)
        sd[name] = sd[name] if f == 1 else sd[name] * f
    return sd


def _gpt2_weights(model):
    """{GPT2LMHeadModel name: tensor}. model.py's names are GPT-2's but for q, k and v, which GPT-2 stacks in one
    c_attn (gpt2_weights.unfuse undoes it); Conv1D weights are stored (in, out)."""
    c, V = model.config, model.config.vocab_size
    sd = _folded(model)
    H, Hkv, C = c.n_head, c.kv_heads, c.n_embd
    out = {}
    for name, w in sd.items():
        if name == 'lm_head.weight' and c.tie_weights or '.attn.c_k.' in name or '.attn.c_v.' in name:
            continue   # the same tensor as wte; k and v join q below
        if name in ('transformer.wte.weight', 'lm_head.weight'):
            w = w[:V]
        if '.attn.c_q.' in name:
            # GQA -> multi-head: query head h reads kv head h // (H / Hkv) (model.py's enable_gqa, Llama's repeat_kv)
            k, v = (sd[name.replace('.c_q.', x)].reshape(Hkv, -1, *w.shape[1:]).repeat_interleave(H // Hkv, 0)
                    .reshape(w.shape) for x in ('.c_k.', '.c_v.'))
            name, w = name.replace('.c_q.', '.c_attn.'), torch.cat((w, k, v))
        out[name] = w.t() if name.endswith(TRANSPOSED) else w
    if not c.bias:   # GPT-2 always has biases: zeros compute what no bias computes
        for i in range(c.n_layer):
            p = f'transformer.h.{i}.'
            for name, n in (('ln_1.bias', C), ('ln_2.bias', C), ('attn.c_attn.bias', 3 * C), ('attn.c_proj.bias', C),
                            ('mlp.c_fc.bias', c.hidden_dim), ('mlp.c_proj.bias', C)):
                out[p + name] = torch.zeros(n, dtype=out[p + 'ln_1.weight'].dtype)
        out['transformer.ln_f.bias'] = torch.zeros(C, dtype=out['transformer.ln_f.weight'].dtype)
    return out


def _llama_weights(model):
    """{LlamaForCausalLM name: tensor}: the same matrices under Llama's names."""
    c, V = model.config, model.config.vocab_size
    sd = _folded(model)
    out = {'model.embed_tokens.weight': sd['transformer.wte.weight'][:V],
           'model.norm.weight': sd['transformer.ln_f.weight']}
    if not c.tie_weights:
        out['lm_head.weight'] = sd['lm_head.weight'][:V]
    names = {'ln_1.weight': 'input_layernorm.weight', 'ln_2.weight': 'post_attention_layernorm.weight',
             'attn.c_q': 'self_attn.q_proj', 'attn.c_k': 'self_attn.k_proj', 'attn.c_v': 'self_attn.v_proj',
             'attn.c_proj': 'self_attn.o_proj', 'mlp.c_gate': 'mlp.gate_proj', 'mlp.c_fc': 'mlp.up_proj',
             'mlp.c_proj': 'mlp.down_proj'}
    for name, w in sd.items():
        if name.startswith('transformer.h.'):
            i, rest = name.removeprefix('transformer.h.').split('.', 1)
            ours, kind = (rest, '') if rest in names else rest.rsplit('.', 1)
            out[f'model.layers.{i}.{names[ours]}' + (f'.{kind}' if kind else '')] = w
    return out


# -----------------------------------------------------------------------------
# the tokenizer

def byte_to_unicode():
    """GPT-2's byte-level alphabet (Radford et al. 2019, sec. 2.2; Hugging Face's ByteLevel pre-tokenizer uses the
    same): the printable bytes stand for themselves, the other 68 for the characters 256, 257, ... in byte order."""
    printable = [*range(ord('!'), ord('~') + 1), *range(ord('¡'), ord('¬') + 1), *range(ord('®'), ord('ÿ') + 1)]
    rest = [b for b in range(256) if b not in printable]
    table = {b: chr(b) for b in printable}
    table.update({b: chr(256 + n) for n, b in enumerate(rest)})
    return table


def tokenizer_json(ranks, pattern=None):
    """tokenizer.json of a byte-level BPE given as tiktoken's ranks ({token bytes: id}), <|endoftext|> after them,
    encoding to the ids tiktoken gives (transformers' TikTokenConverter builds Llama 3's the same way): tokens
    spelled in GPT-2's byte alphabet; each merge recovered as the two parts that BPE over the token's own bytes,
    with only lower ranks, ends in; the split pattern before a ByteLevel step without a regex of its own or a
    prefix space; ignore_merges, as tiktoken takes a piece that is a token whole. The bytes tokenizer is the case
    of no merges and no pattern: text encodes to its UTF-8 bytes."""
    alphabet = byte_to_unicode()

    def spell(token):
        return ''.join(alphabet[b] for b in token)
    merges = []
    for token in sorted((t for t in ranks if len(t) > 1), key=ranks.get):
        parts = [token[i:i + 1] for i in range(len(token))]
        while len(parts) > 2:   # tiktoken's byte_pair_merge: the lowest-ranked adjacent pair first
            i = min(range(len(parts) - 1), key=lambda i: ranks.get(parts[i] + parts[i + 1], len(ranks)))
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        merges.append(f'{spell(parts[0])} {spell(parts[1])}')
    level = dict(type='ByteLevel', add_prefix_space=False, trim_offsets=False, use_regex=False)
    split = [dict(type='Split', pattern=dict(Regex=pattern), behavior='Isolated', invert=False)] if pattern else []
    return dict(version='1.0', truncation=None, padding=None, normalizer=None,
                pre_tokenizer=dict(type='Sequence', pretokenizers=[*split, level]), post_processor=None, decoder=level,
                added_tokens=[dict(id=len(ranks), content=EOT_TEXT, single_word=False, lstrip=False, rstrip=False,
                                   normalized=False, special=True)],
                model=dict(type='BPE', dropout=None, unk_token=None, continuing_subword_prefix=None,
                           end_of_word_suffix=None, fuse_unk=False, byte_fallback=False, ignore_merges=True,
                           vocab={spell(t): i for t, i in ranks.items()}, merges=merges))


def tokenizer_files(tok, block_size):
    """{file name: bytes} of a run's tokenizer (data.get_tokenizer's)."""
    special = dict(bos_token=EOT_TEXT, eos_token=EOT_TEXT, unk_token=EOT_TEXT, pad_token=EOT_TEXT)
    if tok.name == 'gpt2':
        paths = _gpt2_files(os.path.abspath(CACHE_DIR))   # the files get_tokenizer built it from
        files = {}
        for ours, theirs in (('encoder.json', 'vocab.json'), ('vocab.bpe', 'merges.txt')):
            with open(paths[ours], 'rb') as f:
                files[theirs] = f.read()
        config = dict(tokenizer_class='GPT2Tokenizer', add_prefix_space=False, add_bos_token=False, **special)
    else:
        ranks, pattern = ((read_ranks(tok.bpe['tokenizer_ranks']), tok.bpe['tokenizer_pattern']) if tok.name == 'bpe'
                          else ({bytes([b]): b for b in range(256)}, None))
        files = {'tokenizer.json': _json_bytes(tokenizer_json(ranks, pattern))}
        config = dict(tokenizer_class='PreTrainedTokenizerFast', **special)
    files['tokenizer_config.json'] = _json_bytes(dict(config, model_max_length=block_size))
    files['special_tokens_map.json'] = _json_bytes(special)
    return files


def _json_bytes(obj):
    return (json.dumps(obj, indent=2, ensure_ascii=False) + '\n').encode('utf-8')


# -----------------------------------------------------------------------------
# the directory

def _fsync(path):
    """fsync a file, or a directory (which makes the renames in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def export(model, tok, hf_dir, force=False):
    """Write model (a GPT) and its tokenizer (checkpoint.load_model_and_tokenizer's: the model's vocabulary) as a
    Hugging Face directory hf_dir -> (class name, [file names]).
    Everything goes into a temporary directory beside hf_dir first, each file fsynced, then renamed into place
    (a directory replaced with force is moved aside first and deleted last): a failure at any point (a refused
    knob, a full disk) leaves hf_dir as it was and no temporary directory."""
    from safetensors.torch import save_file
    if os.path.lexists(hf_dir) and not os.path.isdir(hf_dir):   # absent, an empty directory, or (force) any directory
        raise ExportError(f"{hf_dir} exists and is not a directory")
    if os.path.isdir(hf_dir) and os.listdir(hf_dir) and not force:
        raise ExportError(f"{hf_dir} exists and is not empty (pass --force=True to replace it)")
    cls = hf_class(model.config)
    weights = _gpt2_weights(model) if cls == 'GPT2LMHeadModel' else _llama_weights(model)
    # each tensor contiguous and its own storage: the safetensors format stores no shared or strided tensors
    weights = {k: w.detach().to('cpu').contiguous().clone() for k, w in weights.items()}
    dtype = str(model.lm_head.weight.dtype).removeprefix('torch.')   # the checkpoint's: float32 from train.py
    eot = tok.eot
    files = {'config.json': _json_bytes(hf_config(model.config, eot, dtype)),
             'generation_config.json': _json_bytes(dict(bos_token_id=eot, eos_token_id=eot, pad_token_id=eot)),
             **tokenizer_files(tok, model.config.block_size)}
    hf_dir = os.path.abspath(hf_dir)
    parent = os.path.dirname(hf_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = f'{hf_dir}.tmp-{os.getpid()}'
    old = f'{hf_dir}.old-{os.getpid()}'
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        os.mkdir(tmp)
        save_file(weights, os.path.join(tmp, 'model.safetensors'), metadata={'format': 'pt'})
        for name, data in files.items():
            with open(os.path.join(tmp, name), 'wb') as f:
                f.write(data)
        # safetensors creates its file owner-only; the weights are as shareable as the rest (umask's mode)
        os.chmod(os.path.join(tmp, 'model.safetensors'), os.stat(os.path.join(tmp, 'config.json')).st_mode & 0o777)
        for path in [os.path.join(tmp, name) for name in ('model.safetensors', *files)] + [tmp]:
            _fsync(path)
        if os.path.isdir(hf_dir):
            os.rename(hf_dir, old)   # empty, or force: replaced
        os.rename(tmp, hf_dir)
        _fsync(parent)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if os.path.isdir(old) and not os.path.exists(hf_dir):
            os.rename(old, hf_dir)   # put the replaced directory back
        if isinstance(e, OSError) or 'No space left' in str(e):   # safetensors raises its own error type
            why = getattr(e, 'strerror', None) or first_line(e)
            raise ExportError(f"cannot write {hf_dir}: {why}; nothing was changed") from None
        raise
    shutil.rmtree(old, ignore_errors=True)
    return cls, sorted(['model.safetensors', *files])
