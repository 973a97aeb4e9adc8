# Llama 3 405B's shape (Llama Team 2024, "The Llama 3 Herd of Models", Table 3): 126 layers, d 16384, 128 heads with
# 8 key/value heads (GQA), SwiGLU hidden 53248, RMSNorm, RoPE theta 500000, no biases, untied embeddings, 8192-token
# context; GPT-2's vocabulary padded to 50304 (Llama 3's is 128,256: `--vocab_size=128256` for bench.py's estimate).
# Its layout in the paper (sec. 3.3.2, Table 4): 16,384 H100s = TP 8 (a node) x PP 16 x DP 128 (FSDP), micro-batch 1,
# 16M tokens a step (2,048 sequences, 16 micro-batches per pipeline). A plan, not a run: nothing here has trained it.
#   torchrun --nnodes=2048 --nproc_per_node=8 --node_rank=<node> --master_addr=... train.py config/llama3-405b.py
#
# Memory per GPU (accounting.train_memory, bf16, AdamW; `python bench.py config/llama3-405b.py --memory
# --world_size=16384 --vocab_size=128256`), pipeline stages of 7 or 8 blocks, the first holding 16 micro-batches in
# flight under 1F1B:
#   without activation checkpointing: weights 12.45 + grads 24.88 + AdamW 0.18 + activations 272.76 = 310.27 GiB
#   with it: weights 12.45 + grads 24.88 + AdamW 0.18 + activations 16.17 = 53.68 GiB: fits 72 GiB (90% of 80 GiB)
# (grads: the stage's unsharded float32 gradients, accumulated over the micro-batches before their reduce-scatter).
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
