#!/usr/bin/env bash
# Install what the test suite needs, then run it: `bash scripts/test.sh [pytest args]`.
# System packages (Debian): python3-venv, redis-tools (redis-cli), nodejs + npm (the
# node-redis test), ruby-actionpack + ruby-redis (the Rails test); Python packages go
# into ./.venv from the project's `test` extra.
#
# The suite runs twice: against the pure-Python package (an editable install in
# ./.venv) and against the mypyc-compiled build (a wheel in ./.venv-mypyc).
# SESSIOND_TEST_BUILDS=pure (or compiled) runs one of them.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh

ensure_packages "python3 -c 'import ensurepip, venv':python3-venv" \
  "command -v redis-cli:redis-tools" "command -v node:nodejs" "command -v npm:npm" \
  "ruby -e 'require \"action_dispatch\"':ruby-actionpack" "ruby -e 'require \"redis\"':ruby-redis"
builds=${SESSIOND_TEST_BUILDS:-pure compiled}
for build in $builds; do
  case $build in
    pure)
      ensure_venv
      .venv/bin/pip install -q -e '.[test]'
      echo "== tests against the pure-Python build" >&2
      SESSIOND_EXPECT_BUILD=pure .venv/bin/python -m pytest "$@"
      ;;
    compiled)
      [ -x .venv-mypyc/bin/python ] || python3 -m venv .venv-mypyc
      echo "== building sessiond with mypyc (about 2 minutes)" >&2
      rm -rf build
      SESSIOND_MYPYC=1 .venv-mypyc/bin/pip install -q '.[test]'
      rm -rf build
      echo "== tests against the mypyc-compiled build" >&2
      SESSIOND_EXPECT_BUILD=compiled .venv-mypyc/bin/python -m pytest "$@"
      ;;
    *) echo "SESSIOND_TEST_BUILDS: unknown build '$build' (pure, compiled)" >&2; exit 2 ;;
  esac
done
