#!/usr/bin/env bash
# Fit the branched study's runs (runs/: every branch's log.jsonl, the stable runs' too; fit leaves the stable runs
# out) with the original study's commands (experiments/isoflop-shakespeare/fit.sh), so the exponents compare.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
budgets=2e11,4e11,8e11,1.6e12,3.2e12,6.4e12,1e13,1e14,1e15
python scaling.py fit "$here/runs" --method all --bootstrap 100 --seed 0 --budgets $budgets \
  --json "$here/fit.json" --plots "$here/figures" | tee "$here/fit.txt"
python scaling.py fit "$here/runs" --method approach2 --minimum spline --bootstrap 100 --seed 0 \
  --budgets $budgets --json "$here/fit_spline.json" | tee "$here/fit_spline.txt"
