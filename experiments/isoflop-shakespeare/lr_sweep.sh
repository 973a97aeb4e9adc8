#!/usr/bin/env bash
# Learning-rate sweep for the IsoFLOP study: the smallest size of the sweep at its budget (C3e11_N17k) and the
# largest (C1e13_N948k) at its, each at 4 peak learning rates a factor 2 apart, min_lr = lr/10, cosine schedule.
# Shapes and run lengths are exactly those of plan.sh; only out_dir, learning_rate and min_lr change.
# 2.4e-2 was added for the small model after 1.2e-2 was still its best; the large model had turned at 6e-3.
# Finished runs (a checkpoint exists) are skipped, so the script can be rerun after an interruption.
set -euo pipefail
cd "$(dirname "$0")/../.."
common="--data_dir='data/shakespeare_bytes' --block_size=128 --batch_size=16 --total_batch_size=2048 --eval_iters=20 --seed=1337 --schedule='cosine' --pos_emb=learned --dtype=bfloat16"
run() {  # skip a run that finished here (checkpoint) or in an earlier session (log committed under lr_sweep/)
  [ -f "out-lr/$1/ckpt.pt" ] || [ -f "experiments/isoflop-shakespeare/lr_sweep/$1/log.jsonl" ] ||
    python train.py $common --out_dir="'out-lr/$1'" "${@:2}"
}
for lr in 0.0015 0.003 0.006 0.012 0.024; do
  min_lr=$(python -c "print($lr / 10)")
  run N17k_lr$lr --n_layer=1 --n_head=3 --n_embd=24 --max_iters=1479 \
    --warmup_iters=74 --lr_decay_iters=1479 --eval_interval=1479 --checkpoint_interval=0 --learning_rate=$lr --min_lr=$min_lr
  [ "$lr" = 0.024 ] && continue
  run N948k_lr$lr --n_layer=4 --n_head=17 --n_embd=136 --max_iters=859 \
    --warmup_iters=43 --lr_decay_iters=859 --eval_interval=859 --checkpoint_interval=0 --learning_rate=$lr --min_lr=$min_lr
done
