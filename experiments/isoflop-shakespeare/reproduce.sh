#!/usr/bin/env bash
# Everything, from nothing: data, learning-rate sweep, IsoFLOP sweep, logs into this folder, fits, figures.
# About 80 minutes on 2 CPU cores. Each step skips work already done, so rerun it after an interruption.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
bash "$here/lr_sweep.sh"
bash "$here/sweep.sh"
bash "$here/extra_sizes.sh"
# the committed evidence: every run's log.jsonl, named as the run
for d in out-sweep/*/ out-lr/*/; do
  dest="$here/$( [ "${d#out-lr}" != "$d" ] && echo lr_sweep || echo runs )/$(basename "$d")"
  mkdir -p "$dest" && cp "$d/log.jsonl" "$dest/log.jsonl"
done
bash "$here/fit.sh"
