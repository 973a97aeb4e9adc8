# A Llama-style 7B (Touvron et al. 2023, "LLaMA", Table 2; Llama 2 7B's shape): 32 layers, d 4096, 32 heads (MHA),
# SwiGLU with Llama's hidden 11008, RMSNorm, RoPE (theta 1e4), no biases, untied embeddings; GPT-2's vocabulary
# padded to 50304 (Llama's is 32000), 4096-token context (Llama 2's). 6,887,976,960 parameters.
#   python prepare.py fineweb10B --train_shards=103
#   torchrun --nproc_per_node=8 train.py config/llama-7b.py
# Budget: 2**20 tokens/step x 9,537 steps = 10.0B tokens (~1 epoch of FineWeb-10B; Chinchilla would want ~140B).
# PaLM FLOPs per token 46.54G (6N + 12LHQT), so 4.65e20 FLOPs: on 8 x H100 (989 TFLOP/s) at 40% MFU ~ 41 h.
#
# Memory per GPU on 8 GPUs, bf16, AdamW (accounting.train_memory; the table: `python bench.py config/llama-7b.py
# --memory --world_size=8`; it leaves out the CUDA context, allocator caching and NCCL buffers, so a choice must
# fit 90% of 80 GiB = 72 GiB, scaling.py budget's headroom):
#   DDP holds 16 bytes per parameter before any activation: weights 25.67 + grads 25.66 + AdamW 51.32 = 102.65 GiB,
#     plus activations 42.67 GiB at micro-batch 1 = 145.32 GiB (118.02 GiB with activation checkpointing): no fit.
#   FSDP shards that 8 ways, plus the gathered root (both embedding tables) and two blocks in bf16:
#     weights 4.73 + grads 4.74 + AdamW 6.42 = 15.89 GiB. Without checkpointing a 4096-token sequence keeps 30.22
#     GiB of activations: micro-batch 1 fits (46.11 GiB), 2 does not (76.34 GiB), so a step would be 32 micro-steps,
#     each gathering all 6.9B weights again. With activation checkpointing each block keeps only its input:
#     micro-batch 8 = 15.89 + 35.66 GiB of activations = 51.55 GiB fits (16: 87.20 GiB does not), for ~1/3 more
#     compute (every block's forward runs twice).
# So: FSDP, activation checkpointing, micro-batch 8 x 4096 tokens; 8 GPUs x 8 x 4096 = 262,144 tokens per micro-step,
# 4 micro-steps per 2**20-token step.
exec(open('config/gpt2.py').read())
out_dir = 'out-llama-7b'
n_layer = 32
n_head = 32
n_embd = 4096
mlp = 'swiglu'
mlp_hidden = 11008
norm = 'rmsnorm'
pos_emb = 'rope'
rope_theta = 10000.0
bias = False
tie_weights = False
block_size = 4096
parallel = 'fsdp'
activation_checkpointing = True
batch_size = 8
total_batch_size = 1048576
# LLaMA's optimizer (sec. 2.3): AdamW (0.9, 0.95; train.py's defaults), weight decay 0.1 and clipping 1.0
# (config/gpt2.py's), 2,000 warm-up steps, peak 3e-4, cosine to 10%
learning_rate = 3e-4
min_lr = 3e-5
warmup_iters = 2000
max_iters = 9537
