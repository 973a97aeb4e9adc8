# CPU quick start: a 0.83M-parameter byte-level GPT (4 layers, d=128, 8 heads, RoPE, 512-byte context) on Shakespeare.
#   python prepare.py shakespeare --tokenizer=bytes && python train.py config/shakespeare.py
# The model, data and schedule are train.py's defaults; this file only names the output directory.
# Budget: 1000 steps x 2048 tokens (2 x 512 x 2 micro-steps, or 1 each on 2 processes) = 2.0M tokens (0.45 epoch).
# PaLM FLOPs per token: 6N = 4.96M plus attention 12*L*d*T = 12*4*128*512 = 3.15M, so 8.10M, and 8.10M * 2.05M =
# 1.7e13 FLOPs for the run.
# Why these settings (1000-step runs, float32, val loss in nats/byte, 2026-11-22):
#   learned positions, 128 bytes (16 x 128 per step): 1.80 | RoPE, 128 bytes: 1.64 | RoPE, 512 bytes: 1.67
#   learned positions, 512 bytes (4 x 512):          still 2.52 at step 400, where RoPE/512 is at 1.96
# Learned positions at 512 bytes see each position only 4 times a step and stall; RoPE learns one rule for every
# offset. The 512-byte window costs 1.6x the time per token of 128 bytes but holds sample.py's 500 new tokens, so
# its KV cache never has to slide (past block_size every token is a full-window forward: see pretrain/generate.py).
# Learning rate: 6e-3 (1.67) beats 3e-3 (1.69) and 1.5e-3, and 1.2e-2 trailed at step 200 (2.29 vs 2.18).
out_dir = 'out-shakespeare'
