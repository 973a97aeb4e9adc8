# GPT-2 XL (1558M) on FineWeb-10B, about 3 epochs (Muennighoff et al. 2023: up to ~4 epochs cost little).
#   torchrun --nproc_per_node=8 train.py config/gpt2-xl.py
# Learning rate 2e-4: GPT-3 paper Table 2.1 for 1.3B. Budget: 2**19 * 60,000 = 31.5B tokens = 20 tokens/param
# (Chinchilla-optimal). FLOPs: 6 * 1.56B * 31.5e9 + attention ~ 3.1e20; on 8 x H100 at 40% MFU ~ 27 h.
# Memory per GPU on 8 GPUs, bf16, AdamW (accounting.train_memory; the table: `python bench.py config/gpt2-xl.py
# --memory --world_size=8`; it leaves out the CUDA context, allocator caching and NCCL buffers, so a choice must fit
# 90% of 80 GiB = 72 GiB, scaling.py budget's headroom): DDP at micro-batch 8 x 1024 tokens holds weights 5.80 +
# grads 5.80 + AdamW 11.61 (16 bytes per parameter) + activations 31.05 = 54.26 GiB: it fits; micro-batch 16 would
# need 82.42 GiB. Sharding (FSDP: 31.63 GiB) or activation checkpointing (30.38 GiB) would only cost time here.
exec(open('config/gpt2.py').read())
out_dir = 'out-gpt2-xl'
n_layer = 48
n_head = 25
n_embd = 1600
batch_size = 8
parallel = 'ddp'
activation_checkpointing = False
learning_rate = 2e-4
max_iters = 60000
warmup_iters = 2000
