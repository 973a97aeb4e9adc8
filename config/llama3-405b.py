# Llama 3 405B's shape (Llama Team 2024, "The Llama 3 Herd of Models", Table 3): 126 layers, d 16384, 128 heads with
# 8 key/value heads (GQA), SwiGLU hidden 53248, RMSNorm, RoPE theta 500000, no biases, untied embeddings, 8192-token
# context; GPT-2's vocabulary padded to 50304 (Llama 3's is 128,256: `--vocab_size=128256` for bench.py's estimate).
# Its layout in the paper (sec. 3.3.2, Table 4): 16,384 H100s = TP 8 (a node) x PP 16 x DP 128 (FSDP), micro-batch 1,
# 16M tokens a step (2,048 sequences, 16 micro-batches per pipeline). A plan, not a run: nothing here has trained it.
#   torchrun --nnodes=2048 --nproc_per_node=8 --node_rank=<node> --master_addr=... train.py config/llama3-405b.py
# Data parallelism alone cannot run it: one 8,192-token sequence per GPU is 134M tokens a step, 8x the batch.
#
# Memory per GPU (accounting.train_memory, bf16, AdamW; `python bench.py config/llama3-405b.py --memory
# --world_size=16384 --vocab_size=128256`; a choice must fit 90% of 80 GiB = 72 GiB, scaling.py budget's headroom):
# the last pipeline stage, the largest: 8 blocks (126 in 16 stages: 7 or 8) split 8 ways, the lm_head, and the loss
# with its float32 logits of a 128K vocabulary (12.6 GB a sequence); the first holds 16 micro-batches of 7 blocks.
#   FSDP: weights 10.01 + grads 19.86 + AdamW 0.31 GiB (the stage's weights gathered in bf16 and its float32
#   gradients whole between micro-batches, the rest sharded 128 ways); activations 221.99 GiB without activation
#   checkpointing (249.90 in all), 15.45 with it: 45.63 GiB (the first stage: 37.88). Interleaved 1F1B: 49.38;
#   GPipe (all 16 micro-batches before any backward): 159.95. DDP's 16 bytes a parameter on 1/128 of the model,
#   with checkpointing: 98.19. So FSDP, activation checkpointing, 1F1B.
exec(open('config/llama-7b.py').read())
out_dir = 'out-llama3-405b'
n_layer = 126
n_head = 128
n_kv_head = 8
n_embd = 16384
mlp_hidden = 53248
rope_theta = 500000.0
block_size = 8192
parallel = 'fsdp'
tensor_parallel = 8
pipeline_parallel = 16
pipeline_schedule = '1f1b'
activation_checkpointing = True
batch_size = 1
total_batch_size = 16777216
