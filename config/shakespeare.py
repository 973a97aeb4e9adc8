# CPU quick start: a 0.83M-parameter byte-level GPT (4 layers, d=128, 8 heads, RoPE, 512-byte context) on Shakespeare.
#   python prepare.py shakespeare --tokenizer=bytes && python train.py config/shakespeare.py
# The model, data and schedule are train.py's defaults; this file only names the output directory.
# Budget: 1000 steps x 2048 tokens (2 x 512 x 2 micro-steps, or 1 each on 2 processes) = 2.0M tokens (0.45 epoch).
# PaLM FLOPs per token: 6N = 4.96M plus attention 12*L*d*T = 12*4*128*512 = 3.15M, so 8.10M, and 8.10M * 2.05M =
# 1.7e13 FLOPs for the run.
# Why these settings (1000-step float32 runs compared by val loss; the figures, dated, are in README.md's
# quick-start table):
#   RoPE rather than learned positions: learned positions at 512 bytes see each position only 4 times a step and
#   stall; RoPE learns one rule for every offset, and at 512 bytes ends close to its 128-byte loss.
#   512 bytes: the window costs more time per token than 128 bytes but holds sample.py's 500 new tokens, so its
#   KV cache never has to slide (past block_size every token is a full-window forward: see pretrain/generate.py).
#   Learning rate 6e-3: it beats 3e-3 and 1.5e-3, and 1.2e-2 trails early.
out_dir = 'out-shakespeare'
