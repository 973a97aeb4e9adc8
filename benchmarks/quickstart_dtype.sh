#!/usr/bin/env bash
# Training tokens/s of the quick-start model (train.py's defaults), bf16 autocast vs float32 eager, interleaved
# A/B/A/B, one thread each so the ratio survives a shared machine. Prints the last logged tokens/s of each run.
cd "$(dirname "$0")/.."
steps=${1:-100}
for rep in 1 2; do for dtype in float32 bfloat16; do
  OMP_NUM_THREADS=1 python train.py --out_dir=/tmp/qs_dtype_$dtype --max_iters=$steps --eval_interval=100000 \
    --checkpoint_interval=0 --log_interval=$((steps / 2)) --dtype=$dtype 2>&1 | grep "^step $steps/" | \
    sed "s/^/$dtype (round $rep): /; s/| loss.*lr [0-9.e-]* |//"
  rm -rf /tmp/qs_dtype_$dtype
done; done
