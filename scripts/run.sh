#!/usr/bin/env bash
# Install sessiond into ./.venv and run it in the foreground on the shipped config:
# `bash scripts/run.sh [sessiond run args]` (default: --config config/sessiond.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh

ensure_packages "python3 -c 'import ensurepip, venv':python3-venv"
ensure_venv
.venv/bin/pip install -q -e .
if [ $# -eq 0 ]; then
  # The shipped config keeps its store in var/: sessiond never creates a
  # store's directory itself (a missing one may have been removed), so the
  # first run from a fresh clone makes it here.
  mkdir -p var
  set -- --config config/sessiond.yaml
fi
exec .venv/bin/sessiond run "$@"
