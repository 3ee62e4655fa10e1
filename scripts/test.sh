#!/usr/bin/env bash
# Install what the test suite needs, then run it: `bash scripts/test.sh [pytest args]`.
# System packages (Debian): python3-venv, redis-tools (redis-cli), nodejs + npm (the
# node-redis test), ruby-actionpack + ruby-redis (the Rails test); Python packages go
# into ./.venv from the project's `test` extra.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh

ensure_packages "python3 -c 'import ensurepip, venv':python3-venv" \
  "command -v redis-cli:redis-tools" "command -v node:nodejs" "command -v npm:npm" \
  "ruby -e 'require \"action_dispatch\"':ruby-actionpack" "ruby -e 'require \"redis\"':ruby-redis"
ensure_venv
.venv/bin/pip install -q -e '.[test]'
exec .venv/bin/python -m pytest "$@"
