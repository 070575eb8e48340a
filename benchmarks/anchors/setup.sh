#!/usr/bin/env bash
# Create the separate benchmark environment for the anchors (bmdal-reg, scikit-activeml).
# Idempotent: re-running only checks the installed versions.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
VPY="$VENV/bin/python"

have() { "$VPY" - "$1" "$2" <<'PYEOF'
import sys
from importlib.metadata import version, PackageNotFoundError
try:
    v = version(sys.argv[1])
except PackageNotFoundError:
    sys.exit(1)
sys.exit(0 if (sys.argv[2] == "any" or v.split("+")[0] == sys.argv[2]) else 1)
PYEOF
}

# torch first (the CPU wheel on disk), so that nothing below pulls another torch.
if ! have torch 2.13.0; then
  "$VPY" -m pip install torch==2.13.0
fi
need=0
for spec in "bmdal-reg 3.0.2" "scikit-activeml 1.0.1" "scikit-learn any" "pandas any" "pyarrow any" "numpy any"; do
  set -- $spec
  have "$1" "$2" || need=1
done
if [ "$need" = 1 ]; then
  # constrain torch so pip keeps the installed CPU wheel
  echo "torch==2.13.0" > "$HERE/.venv/constraints.txt"
  "$VPY" -m pip install -c "$HERE/.venv/constraints.txt" \
    bmdal-reg==3.0.2 scikit-activeml==1.0.1 scikit-learn pandas pyarrow numpy
fi
"$VPY" - <<'PYEOF'
import numpy as np
if not hasattr(np, "Inf"):
    np.Inf = np.inf
import torch, sklearn, skactiveml, pandas, pyarrow, bmdal_reg
from importlib.metadata import version
print("anchors venv ok:", {p: version(p) for p in
      ["torch", "bmdal-reg", "scikit-activeml", "scikit-learn", "numpy", "pandas", "pyarrow"]})
PYEOF
