"""
Export a checkpoint as a Hugging Face model directory: transformers, lm-evaluation-harness and the model hub load it.

    python export.py --out_dir=out --hf_dir=hf/my-model          # the run's ckpt.pt
    python export.py --out_dir=out/ckpt_001000.pt --hf_dir=hf/my-model --force=True

GPT-2-style models (learned positions, LayerNorm, GELU) become GPT2LMHeadModel, Llama-style models (RoPE, RMSNorm,
SwiGLU, any number of kv heads) LlamaForCausalLM; a knob neither computes (qk_norm, relu2, logit_softcap, a mixed
block) is refused. hf_dir gets config.json, model.safetensors, generation_config.json and the tokenizer's files;
it is written whole or not at all (pretrain/hf_export.py says how and why the logits agree). Then:

    python -c "from transformers import AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained('hf/my-model')"
    lm_eval --model hf --model_args pretrained=hf/my-model --tasks hellaswag      # docs/export.md
"""
import sys

from pretrain.checkpoint import CheckpointError, load_model
from pretrain.configurator import ConfigError, cli, knobs, parse_config
from pretrain.data import DataError
from pretrain.hf_export import ExportError, export
from model import ModelError

# -----------------------------------------------------------------------------
# defaults (same --key=value / config-file style as train.py)
out_dir = 'out'            # the run to export (its ckpt.pt), or the path of a .pt file
hf_dir = ''                # the Hugging Face directory to write (required)
force = False              # replace hf_dir if it exists and is not empty
# -----------------------------------------------------------------------------
DEFAULTS = knobs(globals())


def run(cfg):
    """Export cfg['out_dir']'s checkpoint into cfg['hf_dir']; returns (class name, files written)."""
    if not cfg['hf_dir']:
        raise ConfigError("hf_dir must name the directory to write, e.g. --hf_dir=hf/my-model")
    model, tokenizer_name, where, _ = load_model('resume', cfg['out_dir'])
    cls, files = export(model, tokenizer_name, cfg['hf_dir'], cfg['force'])
    print(f"{where} -> {cfg['hf_dir']}: {cls} ({', '.join(files)})")
    if tokenizer_name == 'bytes':
        print("tokenizer: byte-level (ids 0..255 are the UTF-8 bytes, <|endoftext|> = 256), in tokenizer.json; "
              "AutoTokenizer.from_pretrained loads it (the `tokenizers` package)")
    return cls, files


def main(argv):
    cli(lambda: run(parse_config(argv, DEFAULTS, __doc__)),
        (ConfigError, CheckpointError, ModelError, DataError, ExportError))


if __name__ == '__main__':
    main(sys.argv[1:])
