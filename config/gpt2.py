# GPT-2 (124M) on FineWeb-10B with llm.c's recipe (llm.c discussion #481, "Reproducing GPT-2 (124M) in llm.c").
#   python prepare.py fineweb10B --train_shards=103
#   torchrun --nproc_per_node=8 train.py config/gpt2.py
# Budget: 524,288 tokens/step * 18,865 steps = 9.89B tokens (~1 epoch of FineWeb-10B).
# PaLM FLOPs per token: 875,062,886,400 / 1024 = 854.6M (6N + 12LHQT, N = 123.6M without wpe),
# so the run is 9.89e9 * 854.6e6 = 8.45e18 FLOPs: at 40% MFU on 8 x H100 SXM (989 TFLOP/s bf16 dense)
# that is 8.45e18 / (8 * 989e12 * 0.40) = 2,670 s ~ 45 min; on 8 x A100 (312) at 50%, ~1.9 h.
out_dir = 'out-gpt2'
data_dir = 'data/fineweb10B'
# model: GPT-2 small exactly (biases, tied embeddings), vocabulary padded 50257 -> 50304 for tensor cores
n_layer = 12
n_head = 12
n_embd = 768
block_size = 1024
bias = True
pos_emb = 'learned'  # GPT-2's learned absolute positions (train.py's default is RoPE, for the quick start)
pad_vocab_multiple = 64
# batch: 2**19 tokens per step; 64 x 1024 per GPU per micro-step, so 8 GPUs need no accumulation
total_batch_size = 524288
batch_size = 64
# optimizer and schedule: GPT-3 paper Table 2.1's 6e-4 for 125M; warm-up 700 steps, cosine to 0
learning_rate = 6e-4
min_lr = 0.0
warmup_iters = 700
max_iters = 18865
weight_decay = 0.1
grad_clip = 1.0
# eval on 20 x 64 x 1024 = 1.3M val tokens every 250 steps; checkpoint every 1000 steps (~2.5 min of work)
eval_interval = 250
eval_iters = 20
log_interval = 10
checkpoint_interval = 1000
compile = True
