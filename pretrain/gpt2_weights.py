"""
OpenAI's GPT-2 weights in Hugging Face's format: where they come from and how their names map onto model.py's GPT
(GPT.from_pretrained passes load_gpt2 a builder of the model: this file does not import model.py).
Files: config.json and model.safetensors (or pytorch_model.bin, or shards listed in a *.index.json). By name they
come from the Hugging Face hub (or $HF_ENDPOINT) through data.download (timeouts, retries, resume, the hub's sha256
for the weights) into $XDG_CACHE_HOME/gpt-scaling/<name> (default ~/.cache). Safetensors files are read tensor by
tensor (gpt2-xl needs no second copy in memory), .bin files with torch.load(weights_only=True).
"""
import json
import os

import torch

from pretrain.cli import first_line
from pretrain.data import DataError, download


class WeightsError(Exception):
    """Unusable GPT-2 weights; model.py turns it into its ModelError."""


HF_REPOS = {'gpt2': 'openai-community/gpt2', 'gpt2-medium': 'openai-community/gpt2-medium',
            'gpt2-large': 'openai-community/gpt2-large', 'gpt2-xl': 'openai-community/gpt2-xl'}
# Hugging Face keeps OpenAI's Conv1D layout (in, out) for these; nn.Linear is (out, in)
TRANSPOSED = ('attn.c_attn.weight', 'attn.c_proj.weight', 'mlp.c_fc.weight', 'mlp.c_proj.weight')


def config_from_hf(path):
    """GPTConfig fields from a GPT-2 config.json; anything that is not GPT-2's architecture is refused."""
    try:
        with open(os.path.join(path, 'config.json')) as f:
            hf = json.load(f)
    except (OSError, ValueError) as e:
        raise WeightsError(f"{path}: cannot read config.json ({e})") from None
    if hf.get('model_type') != 'gpt2':
        raise WeightsError(f"{path}: model_type is {hf.get('model_type')!r}, only 'gpt2' checkpoints load")
    if hf.get('activation_function', 'gelu_new') not in ('gelu_new', 'gelu_pytorch_tanh'):
        raise WeightsError(f"{path}: activation {hf['activation_function']!r} is not GPT-2's tanh GELU")
    if hf.get('scale_attn_by_inverse_layer_idx') or not hf.get('scale_attn_weights', True):
        raise WeightsError(f"{path}: non-standard attention scaling is not supported")
    return dict(block_size=hf['n_positions'], vocab_size=hf['vocab_size'], n_layer=hf['n_layer'],
                n_head=hf['n_head'], n_embd=hf['n_embd'], bias=True, norm_eps=hf.get('layer_norm_epsilon', 1e-5),
                mlp_hidden=hf.get('n_inner'), tie_weights=hf.get('tie_word_embeddings', True))


def _read_safetensors(fname):
    from safetensors import safe_open
    with safe_open(fname, framework='pt', device='cpu') as f:
        for key in f.keys():
            yield key, f.get_tensor(key)


def _read_bin(fname):
    yield from torch.load(fname, map_location='cpu', weights_only=True).items()


def hf_tensors(path):
    """(name, tensor) of every tensor in path: model.safetensors or pytorch_model.bin, or the shards listed in
    their .index.json, one tensor at a time."""
    for fname, read in (('model.safetensors', _read_safetensors), ('pytorch_model.bin', _read_bin)):
        f = os.path.join(path, fname)
        try:
            if os.path.exists(f):
                yield from read(f)
                return
            if os.path.exists(f + '.index.json'):
                with open(f + '.index.json') as fi:
                    shards = sorted(set(json.load(fi)['weight_map'].values()))
                for s in shards:
                    yield from read(os.path.join(path, s))
                return
        except WeightsError:
            raise
        except Exception as e:   # truncated file, bad header or pickle, missing shard: say which file
            raise WeightsError(f"{f}: cannot read weights ({type(e).__name__}: {first_line(e)})") from None
    raise WeightsError(f"{path}: no model.safetensors or pytorch_model.bin")


def gpt_name(key):
    """A Hugging Face GPT2LMHeadModel key -> model.py's name (None for the causal-mask buffers)."""
    if key.endswith(('.attn.bias', '.attn.masked_bias')):
        return None
    return key if key.startswith('lm_head.') else 'transformer.' + key.removeprefix('transformer.')


def unfuse(name, tensor, config):
    """A tensor named as GPT-2's weights and older checkpoints of this model name it -> [(name, tensor)] of this
    model: q, k and v stacked in one matrix (attn.c_attn: q rows, then k, then v) become c_q, c_k, c_v; SwiGLU's
    gate and up stacked in one (mlp.c_fc with 2 x hidden_dim rows: gate, then up) become c_gate and c_fc. Anything
    else passes through. Works on optimizer state tensors of those weights too (same shapes)."""
    base, _, kind = name.rpartition('.')
    if base.endswith('attn.c_attn'):
        q, kv = config.n_head * config.head_dim, config.kv_heads * config.head_dim
        return [(f"{base[:-6]}c_{x}.{kind}", t) for x, t in zip('qkv', tensor.split([q, kv, kv]))]
    if config.mlp == 'swiglu' and base.endswith('mlp.c_fc') and tensor.size(0) == 2 * config.hidden_dim:
        gate, up = tensor.chunk(2)
        return [(f"{base[:-4]}c_gate.{kind}", gate), (name, up)]
    return [(name, tensor)]


def download_gpt2(name):
    """config.json and model.safetensors of OpenAI's GPT-2 `name` into the cache; returns the directory."""
    if name not in HF_REPOS:
        raise WeightsError(f"{name!r} is neither a local directory nor one of {', '.join(HF_REPOS)}")
    cache_root = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    out_dir = os.path.join(cache_root, 'gpt-scaling', name)
    endpoint = os.environ.get('HF_ENDPOINT', 'https://huggingface.co').rstrip('/')
    for fname in ('config.json', 'model.safetensors'):
        url = f"{endpoint}/{HF_REPOS[name]}/resolve/main/{fname}"
        try:
            download(url, os.path.join(out_dir, fname))   # the hub's X-Linked-Etag is the weights' sha256
        except DataError as e:
            raise WeightsError(f"cannot download {name} ({e}); if offline, download the model elsewhere and pass "
                               f"its directory (config.json + model.safetensors)") from None
    return out_dir


def load_gpt2(name_or_path, build):
    """build(GPTConfig fields) -> the model, its weights copied from name_or_path (a directory or a name)."""
    path = name_or_path if os.path.isdir(name_or_path) else download_gpt2(name_or_path)
    model = build(config_from_hf(path))
    V, tied = model.config.vocab_size, model.config.tie_weights
    ours = model.state_dict()   # tensors share storage with the parameters
    loaded = set()
    with torch.no_grad():
        for key, w in hf_tensors(path):
            fused = gpt_name(key)
            if fused is None or (fused == 'lm_head.weight' and tied):   # a mask buffer; the same tensor as wte
                continue
            w = w.t() if fused.endswith(TRANSPOSED) else w
            for name, w in unfuse(fused, w, model.config):   # c_attn -> c_q, c_k, c_v
                if name not in ours:
                    raise WeightsError(f"{path}: unexpected weight {fused!r} for a GPT-2 model")
                dst = ours[name]
                if name in ('transformer.wte.weight', 'lm_head.weight'):
                    dst[V:].zero_()   # padding rows, if any: unused
                    dst = dst[:V]
                if w.shape != dst.shape:
                    raise WeightsError(f"{path}: weight {fused!r} has shape {tuple(w.shape)}, expected "
                                       f"{tuple(dst.shape)}")
                dst.copy_(w)
                loaded.add(name)
    missing = set(ours) - loaded - ({'lm_head.weight'} if tied else set())
    if missing:
        raise WeightsError(f"{path}: {len(missing)} weights missing, e.g. {sorted(missing)[0]!r}")
    return model
