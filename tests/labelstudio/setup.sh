#!/usr/bin/env bash
# The Label Studio server for tests/labelstudio: installed from the package index into its own virtual
# environment (it pins its own Django and friends, which must not meet alloop's), by default
# tests/labelstudio/.venv (git-ignored; ALLOOP_LABELSTUDIO_VENV to put it elsewhere). About 75 s on the
# 2-core development machine. Idempotent: an existing environment with the server is kept.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${ALLOOP_LABELSTUDIO_VENV:-$PWD/.venv}"
VERSION="1.23.2"
if [ -x "$VENV/bin/label-studio" ] && "$VENV/bin/python" -c "import label_studio, sys; sys.exit(label_studio.__version__ != '$VERSION')" 2>/dev/null; then
    echo "Label Studio $VERSION already in $VENV"
    exit 0
fi
python3 -m venv "$VENV"
# sentry-sdk 3 dropped an option Label Studio 1.23.2 passes at start ("Unknown option 'send_default_pii'")
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "label-studio==$VERSION" "sentry-sdk<3"
echo "Label Studio $VERSION installed in $VENV"
