#!/usr/bin/env bash
# The prepared device check of issue 26 (bench/gpu_check.py says what it checks and measures):
#   bash bench/gpu_check.sh          # one CUDA GPU: (a) tiny GPU vs CPU, (b) paper-sized, < 9 min
#   bash bench/gpu_check.sh --cpu    # (a) with the CPU as the device (make test runs this)
# Needs no network and no install (the repo goes on PYTHONPATH; the stages run in-process).
# PYTHON picks the interpreter (default: python3); GPU_CHECK_DIR the work dir (default: a new
# temporary one); GPU_CHECK_STEPS scales (b)'s steps (default 1). With $OUT set, gpu_check.json
# (everything measured) and gpu_check.log (the stages' logs) are written there.
# Exit 0 and a summary on stdout, or non-zero and one line on stderr: at the first error, or at
# the end when a check of (a) did not hold (after (b) has measured).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
work=${GPU_CHECK_DIR:-$(mktemp -d -t gpu_check.XXXXXX)}
logs=${OUT:-$work}
mkdir -p "$work" "$logs"
log="$logs/gpu_check.log"
timeout 540 "${PYTHON:-python3}" bench/gpu_check.py --out "$work" \
    --steps-scale "${GPU_CHECK_STEPS:-1}" "$@" 2>"$log"
rc=$?
if [ -n "${OUT:-}" ] && [ -f "$work/gpu_check.json" ] && [ "$work" != "$OUT" ]; then
    cp "$work/gpu_check.json" "$OUT/gpu_check.json"
fi
if [ $rc -ne 0 ]; then
    why=$(grep -v '^\s*$' "$log" | tail -n 1)
    [ $rc -eq 124 ] && why="over 9 minutes (timeout 540 s); the log: $log"
    echo "gpu_check: FAILED (exit $rc): ${why:-no output}" >&2
    exit 1
fi
