# CPU quick start: a 0.8M-parameter byte-level GPT on Shakespeare's complete works (5.1M bytes).
#   python prepare.py shakespeare --tokenizer=bytes && python train.py config/shakespeare.py
# The model, data and schedule are train.py's defaults; this file only names the output directory.
# Budget: 1500 steps x 8192 tokens = 12.3M tokens (~2.4 epochs); 6 * 0.8M * 12.3M ~ 6e13 FLOPs.
out_dir = 'out-shakespeare'
