#!/usr/bin/env bash
# The IsoFLOP sweep: 4 budgets (3e11..1e13 FLOPs, 33x), 5 sizes each, byte-level Shakespeare, per-size learning
# rates from lr_sweep.sh's two measured optima. The runs used learned positions and bf16 autocast, train.py's
# defaults then; --train_args pins them. Rerun to continue after an interruption (finished runs are skipped).
set -euo pipefail
cd "$(dirname "$0")/../.."
python prepare.py shakespeare --tokenizer bytes
# runs finished in an earlier session are committed under runs/: put their logs back so --run skips them
for log in experiments/isoflop-shakespeare/runs/*/log.jsonl; do
  [ -f "$log" ] || continue
  dest="out-sweep/$(basename "$(dirname "$log")")"
  [ -f "$dest/log.jsonl" ] || { mkdir -p "$dest" && cp "$log" "$dest/log.jsonl"; }
done
python scaling.py plan --budgets 3e11,1e12,3e12,1e13 --sizes 5 --span 10 --head_dim 8 \
  --data_dir data/shakespeare_bytes --block_size 128 --batch_size 16 --total_batch_size 2048 \
  --lr_points 16.5e3:0.012,948e3:0.006 --evals 8 --eval_iters 50 --out_root out-sweep \
  --json experiments/isoflop-shakespeare/plan.json --run --jobs 2 \
  --train_args "--pos_emb=learned --dtype=bfloat16" "$@"
