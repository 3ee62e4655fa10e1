#!/usr/bin/env bash
# Install what the test suite needs, then run it: `bash scripts/test.sh [pytest args]`.
# System packages come from Debian (each with the reason below); Python packages go into
# ./.venv from the project's `test` extra, reinstalled only when pyproject.toml changes.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh

need "python3 -c 'import ensurepip, venv'" python3-venv "to create .venv"
need "command -v redis-cli" redis-tools "redis-cli, run against the daemon by the tests"
need "command -v node" nodejs "the Express session store test"
need "command -v npm" npm "the Express session store test"
need "ruby -e 'require \"action_dispatch\"'" ruby-actionpack "the Rails session store test"
need "ruby -e 'require \"redis\"'" ruby-redis "the Rails session store test"
need "command -v man" man-db "man, which renders the man pages in the tests"
need "command -v nroff" groff-base "nroff, which man renders with"
need "command -v zsh" zsh "the zsh completion test"
install_needed
ensure_venv
install_sessiond test
exec .venv/bin/python -m pytest "$@"
