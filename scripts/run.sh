#!/usr/bin/env bash
# Install sessiond into ./.venv and run it in the foreground: `bash scripts/run.sh [run args]`.
# Without arguments it runs on config/local.yaml, an untracked copy of the shipped
# config/sessiond.yaml made on the first run: edit the copy, not the tracked file, and the
# daemon reloads it when you save. Arguments replace `--config config/local.yaml`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh

need "python3 -c 'import ensurepip, venv'" python3-venv "to create .venv"
need "command -v redis-cli" redis-tools "redis-cli, to talk to the daemon as the README shows"
install_needed
ensure_venv
install_sessiond

if [ $# -eq 0 ]; then
  # The shipped config keeps its socket and its store in var/: sessiond creates
  # neither directory itself (a mistyped socket path must fail, not grow
  # directories; a missing store directory may have been removed with the
  # sessions in it), so the first run from a fresh clone makes it here.
  mkdir -p var
  if [ ! -e config/local.yaml ]; then
    cp config/sessiond.yaml config/local.yaml
    say "copied config/sessiond.yaml to config/local.yaml (untracked): edit the copy," \
      "the daemon reloads it on save"
  elif [ config/sessiond.yaml -nt config/local.yaml ]; then
    say "config/sessiond.yaml changed after config/local.yaml was copied from it:" \
      "compare them (diff config/sessiond.yaml config/local.yaml), or delete" \
      "config/local.yaml to start again from the new one"
  fi
  set -- --config config/local.yaml
fi
say "starting: sessiond run $* (Ctrl-C stops it)"
exec .venv/bin/sessiond run "$@"
