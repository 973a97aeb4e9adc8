# A Llama-3-style block at GPT-2 small's size, for architecture comparisons on the same data and budget:
# RMSNorm, rotary positions, SwiGLU MLP, grouped-query attention (4 KV heads for 12 query heads), no biases.
#   torchrun --nproc_per_node=8 train.py config/llama-124m.py
# Same data, batch and schedule as config/gpt2.py, so the two val-loss curves compare step for step.
# Embeddings stay tied and RoPE theta stays 1e4, so only the block differs from GPT-2 (model.PRESETS['llama-small']
# is the Llama 3 variant: untied, theta 5e5).
exec(open('config/gpt2.py').read())
out_dir = 'out-llama-124m'
norm = 'rmsnorm'
pos_emb = 'rope'
mlp = 'swiglu'
n_kv_head = 4
bias = False
