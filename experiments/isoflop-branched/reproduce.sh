#!/usr/bin/env bash
# Everything, from nothing: data, the branched sweep, logs into this folder, fits, figures. About 45 minutes on 2
# CPU cores. The sweep skips finished runs and resumes interrupted ones, so rerun it after an interruption.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
bash "$here/sweep.sh"
for d in out-isoflop-branched/*/; do            # the committed evidence: every run's log.jsonl, named as the run
  mkdir -p "$here/runs/$(basename "$d")" && cp "$d/log.jsonl" "$here/runs/$(basename "$d")/log.jsonl"
done
bash "$here/fit.sh"
