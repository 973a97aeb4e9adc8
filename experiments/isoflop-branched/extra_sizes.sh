#!/usr/bin/env bash
# One size added after the first results: at 8e11 and 1.6e12 FLOPs the plan's smallest size (25k) had the lowest
# loss, and the ladder's next rung down (9k) serves only 2e11 and 4e11. The 17k shape of the original study
# (1 layer, d=24, 3 heads: the shape rule's size between them) gets a stable run and branches at 4e11, 8e11 and
# 1.6e12, laid out as sweep.branched lays out the others (branch points on one checkpoint grid, 20% cooldowns, the
# per-size LR law, warm-up 5% of the shortest branch). Finished runs (a committed log) are skipped.
set -euo pipefail
cd "$(dirname "$0")/../.."
here=experiments/isoflop-branched
out=out-isoflop-branched
common="--data_dir='data/shakespeare_bytes' --n_layer=1 --n_head=3 --n_embd=24 --block_size=128 --batch_size=16 \
--total_batch_size=2048 --schedule='wsd' --learning_rate=0.012 --min_lr=0.0012 --warmup_iters=99 --eval_iters=50 \
--seed=1337 --pos_emb=learned --dtype=bfloat16"
done_() { [ -f "$here/runs/$1/log.jsonl" ]; }
done_ C1.6e12_N17k || eval python train.py --out_dir="'$out/N17k_stable'" $common --max_iters=6308 --cooldown_iters=0 \
  --eval_interval=788 --checkpoint_interval=1577 --keep_checkpoints=0 --init_from="'auto'"
branch() {  # name, branch step, max_iters, cooldown_iters
  done_ "$1" || eval python train.py --out_dir="'$out/$1'" --init_from="'resume'" \
    --branch_from="'$out/N17k_stable/ckpt_$(printf %06d "$2").pt'" $common --max_iters="$3" --cooldown_iters="$4" \
    --eval_interval=$(( $3 / 8 )) --checkpoint_interval=$(( ($4 + 3) / 4 ))
}
branch C4e11_N17k 1577 1971 394 &
branch C8e11_N17k 3154 3943 789 &
wait
branch C1.6e12_N17k 6308 7885 1577

# Then 8e11 still had its lowest loss at its smallest size (17k 1.8781, 25k 1.8804): the 9k stable run is continued
# from its last branch point (2748) to 5498, and branched there for 8e11, as its plan would have done had it
# served that budget. 9k shape: 1 layer, d=16, 2 heads; its plan's LR and warm-up.
n9="--data_dir='data/shakespeare_bytes' --n_layer=1 --n_head=2 --n_embd=16 --block_size=128 --batch_size=16 \
--total_batch_size=2048 --schedule='wsd' --learning_rate=0.0132 --min_lr=0.00132 --warmup_iters=86 --eval_iters=50 \
--seed=1337 --pos_emb=learned --dtype=bfloat16"
if ! done_ C8e11_N9k; then
  [ -f "$out/N9k_stable/ckpt_005498.pt" ] || eval python train.py --out_dir="'$out/N9k_stable'" --init_from="'resume'" \
    $n9 --max_iters=5498 --cooldown_iters=0 --eval_interval=343 --checkpoint_interval=1374 --keep_checkpoints=0
  eval python train.py --out_dir="'$out/C8e11_N9k'" --init_from="'resume'" \
    --branch_from="'$out/N9k_stable/ckpt_005498.pt'" $n9 --max_iters=6873 --cooldown_iters=1375 --eval_interval=859 \
    --checkpoint_interval=344
fi
