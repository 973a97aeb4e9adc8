# Llama 3 70B's shape (Llama Team 2024, "The Llama 3 Herd of Models", Table 3): 80 layers, d 8192, 64 heads with
# 8 key/value heads (GQA), SwiGLU hidden 28672, RMSNorm, RoPE theta 500000, no biases, untied embeddings, 8192-token
# context; GPT-2's vocabulary padded to 50304 (Llama 3's is 128,256: `--vocab_size=128256` for bench.py's estimate).
exec(open('config/llama3-405b.py').read())
out_dir = 'out-llama3-70b'
n_layer = 80
n_head = 64
n_embd = 8192
mlp_hidden = 28672
