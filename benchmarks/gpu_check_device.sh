#!/usr/bin/env bash
# The GPU check on a bare lent machine (docs/training.md, "Checking a GPU"), as one command:
#   bash benchmarks/gpu_check_device.sh [BUDGET_S] [extra gpu_check.py arguments]
# It installs the wheels carried in .whl/ (the packages the machine's image lacks: SimpleITK, nibabel, monai,
# edt) into /tmp/site, runs benchmarks/gpu_check.py with the machine's own python3 (which holds a CUDA torch),
# and packs what must come back into $OUT (default ./gpu_check_out): the summary, the log, a tarball of the
# runs' logs, metrics and montages, and the exported models split into parts of 15 MiB (at most 8 files come
# back from a lent machine, 16 MiB each).
set -u
HERE="$(cd "$(dirname "$0")" && pwd)"
WHEELS="${GPU_CHECK_WHEELS:-$HERE/../.whl}"   # wheels the image lacks (docs/training.md)
BUDGET_S="${1:-420}"
shift || true
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
t0=$(date +%s)
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl \
    || { echo "gpu_check_device: installing the carried wheels failed" >&2; exit 2; }
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
setup="set-up (carried wheels installed) took $(( $(date +%s) - t0 )) s"
echo "$setup"
PYTHONUNBUFFERED=1 python3 "$HERE/gpu_check.py" --out gpu_check --budget-s "$BUDGET_S" "$@"
rc=$?
echo "gpu_check_device: $setup; total $(( $(date +%s) - t0 )) s; gpu_check exit $rc" | tee -a gpu_check/gpu_check.log
cp gpu_check/summary.md gpu_check/summary.json gpu_check/gpu_check.log "$OUT/" 2>/dev/null
if [ -d gpu_check/runs ]; then
  tar czf "$OUT/runs.tgz" -C gpu_check --exclude='*.vgan' --exclude='cache' runs 2>/dev/null
fi
if [ -d gpu_check/models ]; then
  tar czf gpu_check/models.tgz -C gpu_check models && split -b 15M gpu_check/models.tgz "$OUT/models.tgz.part-"
fi
exit $rc
