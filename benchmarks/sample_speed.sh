#!/usr/bin/env bash
# sample.py's tokens/s with the KV cache against kv_cache=False, interleaved A/B/A/B in one run, one thread each so
# the ratio survives a shared machine; greedy, so both paths must print the same text (checked).
#   bash benchmarks/sample_speed.sh [out_dir] [max_new_tokens] [rounds]    (defaults: out 500 3: the quick start)
cd "$(dirname "$0")/.."
out_dir=${1:-out}; new=${2:-500}; rounds=${3:-3}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
for round in $(seq "$rounds"); do
  for kv in True False; do
    OMP_NUM_THREADS=1 python sample.py --out_dir="$out_dir" --start='ROMEO:' --temperature=0 --max_new_tokens="$new" \
      --kv_cache=$kv > "$tmp/text_$kv" 2> "$tmp/err" || { cat "$tmp/err"; exit 1; }
    rate=$(grep -o '[0-9.]* tokens/s' "$tmp/err" | cut -d' ' -f1)
    echo "round $round kv_cache=$kv: $rate tokens/s"
    echo "$rate" >> "$tmp/rates_$kv"
  done
  cmp -s "$tmp/text_True" "$tmp/text_False" || { echo "round $round: the two paths wrote different text"; exit 1; }
done
python - "$tmp/rates_True" "$tmp/rates_False" <<'EOF'
import statistics, sys
cached, uncached = ([float(x) for x in open(p)] for p in sys.argv[1:])
print(f"median {statistics.median(cached):.1f} vs {statistics.median(uncached):.1f} tokens/s: "
      f"KV cache {statistics.median(cached) / statistics.median(uncached):.1f}x "
      f"(per round {', '.join(f'{a / b:.1f}x' for a, b in zip(cached, uncached))}); same text every round")
EOF
