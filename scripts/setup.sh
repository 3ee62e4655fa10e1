# Sourced by run.sh and test.sh. Installs only what is missing, and says what and why before
# it does (on stderr, prefixed with the script's name):
#   need TEST PACKAGE WHY   queue Debian PACKAGE when the shell command TEST fails
#   install_needed          apt-get install the queued packages (through sudo unless root)
#   apt_update_once         apt-get update, unless this run did already
#   ensure_venv             create ./.venv if it is missing or broken
#   install_sessiond [EXTRA]
#                           pip install -e ".[EXTRA]" into .venv, unless the stamp in .venv
#                           says this pyproject.toml is installed already. The install is
#                           editable, so edits to daemon/ need no reinstall; a changed
#                           pyproject.toml (dependencies, entry points) does.
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1

say() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# "a", "a and b", "a, b and c"
join_and() {
  local out=$1
  shift
  while (($# > 1)); do
    out+=", $1"
    shift
  done
  (($#)) && out+=" and $1"
  printf '%s' "$out"
}

_packages=()
_reasons=()
need() {
  if ! bash -c "$1" >/dev/null 2>&1; then
    _packages+=("$2")
    _reasons+=("$2 ($3)")
  fi
}

install_needed() {
  ((${#_packages[@]})) || return 0
  say "installing $(join_and "${_reasons[@]}") with apt-get"
  apt_update_once
  as_root apt-get install -y -qq "${_packages[@]}" >/dev/null
  _packages=() _reasons=()
}

apt_update_once() {
  [ -n "${_apt_updated:-}" ] && return 0
  as_root apt-get update -qq
  _apt_updated=1
}

ensure_venv() {
  .venv/bin/python -c '' 2>/dev/null && return 0
  say "creating .venv (a Python virtual environment for sessiond and its dependencies)"
  python3 -m venv --clear .venv
}

install_sessiond() {
  local extra=${1:-} spec=. took="~20 s"
  if [ -n "$extra" ]; then spec=".[$extra]" took="~1 min"; fi
  local stamp=".venv/.installed-${extra:-base}" hash
  hash=$(sha256sum pyproject.toml | cut -d' ' -f1)
  if [ -x .venv/bin/sessiond ] && [ "$(cat "$stamp" 2>/dev/null)" = "$hash" ]; then
    return 0
  fi
  local what="sessiond and its dependencies"
  [ -n "$extra" ] && what="sessiond with its $extra dependencies"
  if [ -e "$stamp" ]; then
    say "pyproject.toml changed: reinstalling $what into .venv with pip"
  else
    say "installing $what into .venv with pip (first run: $took)"
  fi
  .venv/bin/pip install -q -e "$spec"
  echo "$hash" >"$stamp"
  # Every extra includes the base install.
  echo "$hash" >.venv/.installed-base
}
