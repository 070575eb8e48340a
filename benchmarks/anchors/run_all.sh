#!/usr/bin/env bash
# Run every anchor method (seed 0, 10 initial, batches of 10, BUDGET labels: env, default 200) on the given datasets (directories holding pool.parquet, test.parquet,
# meta.json). Usage: run_all.sh OUTDIR REPS DATASET_DIR...   (one CSV per dataset in OUTDIR;
# resumable: rerun the same command after an interruption)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="$HERE/.venv/bin/python"
OUT="$1"; REPS="$2"; shift 2
REG="bmdal-lcmd-tp bmdal-kmeanspp-p bmdal-maxdiag bmdal-bait bmdal-random skal-gsx skal-gsy skal-igs skal-qbc skal-emcm skal-emvr skal-random"
CLF="skal-margin skal-entropy skal-badge skal-typiclust skal-random"
mkdir -p "$OUT"
for D in "$@"; do
  name="$(basename "$D")"
  task="$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['task'])" "$D/meta.json")"
  methods="$REG"; [ "$task" = classification ] && methods="$CLF"
  for m in $methods; do
    "$PY" "$HERE/run_anchor.py" --pool "$D/pool.parquet" --test "$D/test.parquet" --meta "$D/meta.json" \
      --method "$m" --reps "$REPS" --seed 0 --initial 10 --batch 10 --budget "${BUDGET:-200}" \
      --out "$OUT/$name.csv" 2> >(grep -v "UserWarning: Full backward hook\|y.backward(torch.ones_like" >&2)
  done
done
