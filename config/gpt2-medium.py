# GPT-2 medium (350M) on FineWeb-10B.
#   torchrun --nproc_per_node=8 train.py config/gpt2-medium.py
# Learning rate 3e-4: GPT-3 paper Table 2.1 for its 350M model (same shape: 24 layers, d_model 1024).
# Budget: 524,288 tokens/step * 18,865 steps = 9.89B tokens, ~28 tokens per parameter (Chinchilla-optimal is ~20).
# FLOPs: 6 * 354M * 9.89e9 + attention ~ 2.3e19; on 8 x H100 at 40% MFU ~ 2.0 h.
exec(open('config/gpt2.py').read())
out_dir = 'out-gpt2-medium'
n_layer = 24
n_head = 16
n_embd = 1024
batch_size = 32  # 8 GPUs x 32 x 1024 x 2 micro-steps = 2**19 tokens: fits 80 GB with room
learning_rate = 3e-4
