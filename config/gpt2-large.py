# GPT-2 large (774M) on FineWeb-10B, about 2 epochs (Muennighoff et al. 2023: up to ~4 epochs cost little).
#   torchrun --nproc_per_node=8 train.py config/gpt2-large.py
# Learning rate 2.5e-4: GPT-3 paper Table 2.1 for 760M. Budget: 2**19 * 30,000 = 15.7B tokens = 20 tokens/param
# (Chinchilla-optimal). FLOPs: 6 * 774M * 15.7e9 + attention ~ 7.9e19; on 8 x H100 at 40% MFU ~ 7 h.
exec(open('config/gpt2.py').read())
out_dir = 'out-gpt2-large'
n_layer = 36
n_head = 20
n_embd = 1280
batch_size = 16
learning_rate = 2.5e-4
max_iters = 30000
warmup_iters = 1000
