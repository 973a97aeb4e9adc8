# CPU quick start: a 0.89M-parameter byte-level GPT on Shakespeare's complete works (5.1M bytes).
#   python prepare.py shakespeare --tokenizer=bytes && python train.py config/shakespeare.py
# The model, data and schedule are train.py's defaults; this file only names the output directory.
# Budget: 500 steps x 8192 tokens = 4.1M tokens (0.9 epoch); 6 * 0.89M * 4.1M ~ 2.2e13 FLOPs, plus attention
# (12*L*d*T = 3.1M FLOPs per token at T=512, 0.6x the 6N term): ~3.5e13 FLOPs, ~4 min at ~16k tokens/s.
out_dir = 'out-shakespeare'
