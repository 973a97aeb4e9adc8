#!/usr/bin/env bash
# How often a multi-process run fails to end cleanly: N launches of a tiny 2-process FSDP run that saves DCP
# checkpoints (train), or of benchmarks/scaling.py's DDP + FSDP sweep (bench: 4 torchrun launches each), while busy loops
# keep every core loaded (the race needs a gloo worker thread that is not scheduled in time; docs/parallel.md,
# "Known issue"). A launch that exits non-zero (an abort at exit) or runs past 300 s (a hang) counts as a failure;
# each failure's stderr is kept.
#   bash benchmarks/exit_stress.sh [train|bench] [launches] [busy loops]    (defaults: train 40 <cores>)
cd "$(dirname "$0")/.."
mode=${1:-train}; runs=${2:-40}; busy=${3:-$(nproc)}
[ -d data/shakespeare_bytes ] || python prepare.py shakespeare --tokenizer=bytes > /dev/null || exit 1
tmp=$(mktemp -d); keep=$(mktemp -d); pids=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$tmp"' EXIT
for _ in $(seq "$busy"); do (while :; do :; done) & pids+=($!); done
fails=0
for i in $(seq "$runs"); do
  rm -rf "$tmp/out"
  if [ "$mode" = train ]; then
    OMP_NUM_THREADS=1 timeout 300 torchrun --standalone --nproc_per_node=2 train.py --parallel=fsdp \
      --data_dir=data/shakespeare_bytes --out_dir="$tmp/out" --n_layer=2 --n_head=2 --n_embd=32 --block_size=32 \
      --batch_size=4 --total_batch_size=256 --max_iters=6 --warmup_iters=2 --eval_interval=3 --eval_iters=2 \
      --checkpoint_interval=3 --keep_checkpoints=0 --log_interval=1 --dtype=float32 --device=cpu --compile=False \
      > /dev/null 2> "$tmp/err"
  else
    timeout 300 python -m benchmarks.scaling --n_layer=1 --n_head=2 --n_embd=32 --block_size=32 --batch_size=2 --warmup_steps=1 \
      --timed_steps=2 --repeats=2 --dtype=float32 --device=cpu --data=random --vocab_size=64 --peak_tflops=1 \
      --nprocs=1,2 --json=- > /dev/null 2> "$tmp/err"
  fi
  rc=$?
  if [ $rc -ne 0 ]; then
    fails=$((fails + 1)); cp "$tmp/err" "$keep/launch_$i.err"
    echo "launch $i: $([ $rc -eq 124 ] && echo "hung (killed after 300 s)" || echo "exit $rc")"
  fi
done
echo "$mode: $fails failed of $runs launches with $busy busy loops$([ $fails -gt 0 ] && echo " (stderr of each in $keep)")"
[ $fails -eq 0 ] && rmdir "$keep"
