"""
Export a checkpoint as a Hugging Face model directory: transformers, lm-evaluation-harness and the model hub load it.

    python export.py --out_dir=out --hf_dir=hf/my-model          # the run's ckpt.pt
    python export.py --out_dir=out/ckpt_001000.pt --hf_dir=hf/my-model --force=True
    python export.py --out_dir=out --pt_path=out/whole.pt        # a sharded checkpoint -> one single-file .pt

GPT-2-style models (learned positions, LayerNorm, GELU) become GPT2LMHeadModel, Llama-style models (RoPE, RMSNorm,
SwiGLU, any number of kv heads) LlamaForCausalLM; a knob neither computes (qk_norm, relu2, logit_softcap, a mixed
block) is refused. hf_dir gets config.json, model.safetensors, generation_config.json and the tokenizer's files,
written whole or not at all (pretrain/hf_export.py says how, and why the logits agree). --pt_path instead writes
one single-file checkpoint (what a DDP run writes: weights, optimizer, step, data position), a sharded one
(train.py --parallel=fsdp) gathered whole in this process; every script reads sharded checkpoints directly, so
this is for copying a run elsewhere (docs/parallel.md). Then:

    python -c "from transformers import AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained('hf/my-model')"
    lm_eval --model hf --model_args pretrained=hf/my-model --tasks hellaswag      # docs/export.md
"""
from pretrain.cli import cli, run_script  # first: Ctrl-C from here on, the import of torch included, is one line and exit 130
import os
import sys

from pretrain.checkpoint import CheckpointError, consolidate, load_model_and_tokenizer
from pretrain.configurator import ConfigError, knobs, parse_config
from pretrain.data import DataError, tokenizer_id
from pretrain.hf_export import ExportError, export
from model import ModelError

# -----------------------------------------------------------------------------
# defaults (same --key=value / config-file style as train.py)
out_dir = 'out'            # the run to export (its ckpt.pt), or the path of a .pt file
hf_dir = ''                # the Hugging Face directory to write
pt_path = ''               # or: the single-file checkpoint (.pt) to write, e.g. of a sharded checkpoint
force = False              # replace hf_dir if it exists and is not empty
# -----------------------------------------------------------------------------
DEFAULTS = knobs(globals())


def run(cfg):
    """Export cfg['out_dir']'s checkpoint into hf_dir -> (class name, files) or pt_path -> ('pt', [pt_path])."""
    if not cfg['hf_dir'] and not cfg['pt_path']:
        raise ConfigError("hf_dir must name the directory to write, e.g. --hf_dir=hf/my-model (or pt_path a "
                          "single-file checkpoint to write, e.g. --pt_path=out/whole.pt)")
    if cfg['hf_dir'] and cfg['pt_path']:
        raise ConfigError("give hf_dir or pt_path, not both")
    if cfg['pt_path']:
        if not cfg['pt_path'].endswith('.pt') or os.path.isdir(cfg['pt_path']):
            raise ConfigError(f"pt_path={cfg['pt_path']!r} must name a .pt file")
        if os.path.exists(cfg['pt_path']) and not cfg['force']:
            raise ConfigError(f"{cfg['pt_path']} exists; use --force=True to replace it")
        step = consolidate(cfg['out_dir'], cfg['pt_path'])
        print(f"{cfg['out_dir']} (step {step}) -> {cfg['pt_path']}: a single-file checkpoint")
        return 'pt', [cfg['pt_path']]
    model, tokenizer, where, ckpt = load_model_and_tokenizer('resume', cfg['out_dir'])
    cls, files = export(model, tokenizer, cfg['hf_dir'], cfg['force'])
    print(f"{where} -> {cfg['hf_dir']}: {cls} ({', '.join(files)})")
    what = {'bytes': "byte-level (ids 0..255 are the UTF-8 bytes, <|endoftext|> = 256)",
            'bpe': f"the run's byte-level BPE, {tokenizer_id(ckpt)}, <|endoftext|> = {tokenizer.eot}"}
    if tokenizer.name in what:
        print(f"tokenizer: {what[tokenizer.name]}, in tokenizer.json; AutoTokenizer.from_pretrained loads it "
              f"(the `tokenizers` package)")
    return cls, files


def main(argv):
    cli(lambda: run(parse_config(argv, DEFAULTS, __doc__)),
        (ConfigError, CheckpointError, ModelError, DataError, ExportError))


if __name__ == '__main__':
    run_script(main, sys.argv[1:])
