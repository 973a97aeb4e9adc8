#!/usr/bin/env bash
# The IsoFLOP study of experiments/isoflop-shakespeare redone with cooldown branching (issue 17): per model size
# one WSD stable run, and a 20% cooldown branch (1-sqrt) from it for every budget the size serves. Same data, model
# rules (head_dim 8, n_embd/n_layer ~ 32), batch, context, per-size learning rates and pinned train.py settings as
# the original; 6 budgets 2x apart over 32x of compute (2e11..6.4e12) instead of 4 budgets over 33x, 4 sizes each
# over a factor 8 of a shared ladder. Rerun to continue after an interruption (finished runs are skipped).
set -euo pipefail
cd "$(dirname "$0")/../.."
python prepare.py shakespeare --tokenizer bytes
python scaling.py plan --budgets 2e11,4e11,8e11,1.6e12,3.2e12,6.4e12 --sizes 4 --span 8 --tokens_per_param 60 \
  --head_dim 8 --data_dir data/shakespeare_bytes --block_size 128 --batch_size 16 --total_batch_size 2048 \
  --lr_points 16.5e3:0.012,948e3:0.006 --evals 8 --eval_iters 50 --out_root out-isoflop-branched \
  --branch --cooldown_frac 0.2 --json experiments/isoflop-branched/plan.json --run --jobs 2 \
  --train_args "--pos_emb=learned --dtype=bfloat16" "$@"
