#!/usr/bin/env bash
# Gate a model's robustness in any CI system (GitLab, Jenkins, Buildkite, a git hook): scan, check the
# thresholds, write the JSON result, the HTML report and a JUnit file, and exit non-zero on failure.
#
#   CHECKPOINT=models/model.safetensors DATASET=cifar10 EPS=8/255 examples/ci_gate.sh
#
# Exit codes are robaudit's: 0 all gates pass · 1 a gate failed · 2 usage · 3 input · 4 runtime.
# With no settings it scans robaudit's embedded Fashion-MNIST model on its embedded test images
# (offline, ~10 s on CPU). The GitHub Actions version is github-actions-robustness.yml; both use the
# same thresholds format (robaudit.toml here via GATE_FILE, or REQUIRE expressions).
set -euo pipefail

ROBAUDIT=${ROBAUDIT:-robaudit}
CHECKPOINT=${CHECKPOINT:-$(python3 -c 'import robaudit.cli.demo as d; print(d.DEMO_MODEL)' 2>/dev/null || true)}
DATASET=${DATASET:-demo}
N=${N:-200}
EPS=${EPS:-0.1}
ATTACKS=${ATTACKS:-quick}
CHECKS=${CHECKS:-clean,sanity,attacks,margins}
OUT=${OUT:-robaudit-ci}
# Thresholds, ';'-separated (metric names: docs/results.md). Ignored when GATE_FILE is set. The
# defaults are floors the embedded natural model clears (clean 0.92, worst case ~0.03 at ε = 0.1);
# set your own for a real model.
REQUIRE=${REQUIRE:-clean.accuracy >= 0.80;robust_acc.ensemble.linf@${EPS} >= 0.01}
GATE_FILE=${GATE_FILE:-}

if [ -z "$CHECKPOINT" ]; then
  echo "ci_gate.sh: set CHECKPOINT=path/to/model" >&2
  exit 2
fi
mkdir -p "$OUT"

gate_args=()
if [ -n "$GATE_FILE" ]; then
  gate_args+=(--gate "$GATE_FILE")
else
  IFS=';' read -r -a exprs <<< "$REQUIRE"
  for e in "${exprs[@]}"; do
    [ -n "$e" ] && gate_args+=(--require "$e")
  done
fi

set +e
"$ROBAUDIT" scan "$CHECKPOINT" --dataset "$DATASET" --n "$N" --eps "$EPS" --attacks "$ATTACKS" --checks "$CHECKS" \
  --device "${DEVICE:-cpu}" --seed 0 --quiet \
  --json "$OUT/results.json" --html "$OUT/report.html" --junit "$OUT/junit.xml" "${gate_args[@]}"
rc=$?
set -e

case $rc in
  0) echo "robustness gates passed (report: $OUT/report.html)" ;;
  1) echo "robustness gates FAILED (see $OUT/junit.xml and $OUT/report.html)" >&2 ;;
  *) echo "robaudit could not complete the scan (exit $rc)" >&2 ;;
esac
exit $rc
