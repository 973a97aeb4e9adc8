# GPT-2 XL (1558M) on FineWeb-10B, about 3 epochs (Muennighoff et al. 2023: up to ~4 epochs cost little).
#   torchrun --nproc_per_node=8 train.py config/gpt2-xl.py
# Learning rate 2e-4: GPT-3 paper Table 2.1 for 1.3B. Budget: 2**19 * 60,000 = 31.5B tokens = 20 tokens/param
# (Chinchilla-optimal). FLOPs: 6 * 1.56B * 31.5e9 + attention ~ 3.1e20; on 8 x H100 at 40% MFU ~ 27 h.
exec(open('config/gpt2.py').read())
out_dir = 'out-gpt2-xl'
n_layer = 48
n_head = 25
n_embd = 1600
batch_size = 8
learning_rate = 2e-4
max_iters = 60000
warmup_iters = 2000
