# CPU quick start: a 0.84M-parameter byte-level GPT (4 layers, d=128, 8 heads, 128-byte context) on Shakespeare.
#   python prepare.py shakespeare --tokenizer=bytes && python train.py config/shakespeare.py
# The model, data and schedule are train.py's defaults; this file only names the output directory.
# Budget: 1000 steps x 2048 tokens = 2.0M tokens (0.45 epoch); 6 * 0.84M * 2.0M ~ 1.0e13 FLOPs plus attention
# (12*L*d*T = 0.8M FLOPs per token, 0.16x the 6N term). Why these settings: at this size 2048-token steps and a
# 128-byte context learn far faster per token than 8192-token steps and 512 bytes (which sat near 2.45 nats/byte
# for millions of tokens), and 6e-3 is the best learning rate measured for this size (experiments/isoflop-shakespeare).
out_dir = 'out-shakespeare'
