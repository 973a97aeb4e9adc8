#!/usr/bin/env bash
# A gradient-noise-scale trace and the critical batch size law fitted to it (issue 17, Kaplan et al. 2020 sec. 5.1).
# One run of the IsoFLOP study's N98k model (2 layers, d=56, 128-byte context, learned positions, bf16, its LR
# 8.841e-3) with 4 micro-batches of 16 x 128 per step (B_small = 2,048 tokens, B_big = 8,192), so train.py's
# noise_scale can compare the two gradient sizes at every step; 600 steps = 4.9M tokens; then scaling.py bcrit.
#   bash experiments/noise-scale/run.sh          (rerun to continue: --init_from=auto resumes the run)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
python prepare.py shakespeare --tokenizer bytes
OMP_NUM_THREADS=1 python train.py --out_dir="$here/run" --data_dir=data/shakespeare_bytes --n_layer=2 --n_embd=56 \
  --n_head=7 --block_size=128 --batch_size=16 --total_batch_size=8192 --pos_emb=learned --dtype=bfloat16 \
  --device=cpu --learning_rate=0.008841 --min_lr=0.0008841 --warmup_iters=30 --max_iters=600 --eval_interval=100 \
  --eval_iters=50 --log_interval=10 --checkpoint_interval=100 --noise_scale=True --init_from=auto
python scaling.py bcrit "$here/run" --bootstrap 200 --seed 0 --min_step 50 --json "$here/bcrit.json" \
  --plots "$here/figures" | tee "$here/bcrit.txt"
