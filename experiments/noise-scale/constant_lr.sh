#!/usr/bin/env bash
# The noise scale at a constant LR (after warm-up), two sizes of the IsoFLOP study at once (one thread each), then
# B_crit(L) fitted to both runs' records together. Rerun to continue (--init_from=auto).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
common="--data_dir=data/shakespeare_bytes --block_size=128 --batch_size=16 --total_batch_size=8192 --pos_emb=learned
  --dtype=bfloat16 --device=cpu --schedule=wsd --cooldown_iters=0 --warmup_iters=30 --max_iters=500
  --eval_interval=100 --eval_iters=50 --log_interval=10 --checkpoint_interval=100 --noise_scale=True --init_from=auto"
OMP_NUM_THREADS=1 python train.py --out_dir="$here/const_N25k" --n_layer=1 --n_embd=32 --n_head=4 \
  --learning_rate=0.01117 --min_lr=0.001117 $common > "$here/const_N25k.console" 2>&1 &
OMP_NUM_THREADS=1 python train.py --out_dir="$here/const_N98k" --n_layer=2 --n_embd=56 --n_head=7 \
  --learning_rate=0.008841 --min_lr=0.0008841 $common > "$here/const_N98k.console" 2>&1 &
wait
python scaling.py bcrit "$here/const_N25k" "$here/const_N98k" --bootstrap 200 --seed 0 --min_step 50 \
  --json "$here/bcrit_constant_lr.json" --plots "$here/figures_constant_lr" | tee "$here/bcrit_constant_lr.txt"
