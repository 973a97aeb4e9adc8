#!/usr/bin/env bash
# Two smaller sizes added after the first results: at 3e11 and 1e12 FLOPs the plan's smallest size had the lowest
# loss, so each budget gets the next size down (same rules, from `scaling.py plan --tokens_per_param 300`),
# Finished runs (a checkpoint here, or a log committed under runs/) are skipped.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -f out-sweep/C3e11_N9k/ckpt.pt ] || [ -f experiments/isoflop-shakespeare/runs/C3e11_N9k/log.jsonl ] || python train.py --out_dir='out-sweep/C3e11_N9k' --data_dir='data/shakespeare_bytes' --n_layer=1 --n_head=2 --n_embd=16 --block_size=128 --batch_size=16 --total_batch_size=2048 --max_iters=2577 --warmup_iters=129 --lr_decay_iters=2577 --learning_rate=0.0132 --min_lr=0.00132 --schedule='cosine' --eval_interval=322 --eval_iters=50 --checkpoint_interval=645 --seed=1337 --pos_emb=learned --dtype=bfloat16
[ -f out-sweep/C1e12_N17k/ckpt.pt ] || [ -f experiments/isoflop-shakespeare/runs/C1e12_N17k/log.jsonl ] || python train.py --out_dir='out-sweep/C1e12_N17k' --data_dir='data/shakespeare_bytes' --n_layer=1 --n_head=3 --n_embd=24 --block_size=128 --batch_size=16 --total_batch_size=2048 --max_iters=4929 --warmup_iters=246 --lr_decay_iters=4929 --learning_rate=0.012 --min_lr=0.0012 --schedule='cosine' --eval_interval=616 --eval_iters=50 --checkpoint_interval=1233 --seed=1337 --pos_emb=learned --dtype=bfloat16
