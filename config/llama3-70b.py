# Llama 3 70B's shape (Llama Team 2024, "The Llama 3 Herd of Models", Table 3): 80 layers, d 8192, 64 heads with
# 8 key/value heads (GQA), SwiGLU hidden 28672, RMSNorm, RoPE theta 500000, no biases, untied embeddings, 8192-token
# context; GPT-2's vocabulary padded to 50304 (Llama 3's is 128,256: `--vocab_size=128256` for bench.py's estimate).
# On 1,024 H100s, 16M tokens a step: 1,024 x 8,192 = 8.4M tokens a micro-step, so data parallelism alone can run it,
# 2 micro-steps a step. A plan, not a run: nothing here has trained it.
#   torchrun --nnodes=128 --nproc_per_node=8 --node_rank=<node> --master_addr=... train.py config/llama3-70b.py
#
# Memory per GPU (accounting.train_memory, bf16, AdamW; `python bench.py config/llama3-70b.py --memory
# --world_size=1024 --vocab_size=128256`; it leaves out the CUDA context and allocator caching, so a choice must fit
# 90% of 80 GiB = 72 GiB, scaling.py budget's headroom), micro-batch 1:
#   DDP: 262.84 GiB of weights alone. FSDP over 1,024 ranks: weights 7.37 + grads 8.08 + AdamW 0.51 GiB, but a
#   sequence's activations are 305.03 GiB without activation checkpointing; with it 32.37: 48.33 GiB in all. This is
#   what `scaling.py budget --params 70e9 --tokens 15e12 --gpu H100 --gpus 1024 --block_size 8192 --head_dim 128
#   --aspect 107 --vocab_size 128256 --base config/llama3-70b.py` picks too (at its own batch, 42M tokens).
#   With --tensor_parallel=8 (DP 128): 28.26 GiB with checkpointing, 106.09 without (the loss's float32 logits of a
#   128K vocabulary, 12.6 GB a sequence, are not split): TP buys memory for activations, at two all-gathers and two
#   reduce-scatters per block.
exec(open('config/llama3-405b.py').read())
out_dir = 'out-llama3-70b'
n_layer = 80
n_head = 64
n_embd = 8192
mlp_hidden = 28672
tensor_parallel = 1
pipeline_parallel = 1
