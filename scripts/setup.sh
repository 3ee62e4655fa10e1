# Sourced by run.sh and test.sh: install missing Debian packages (through sudo
# unless root) and create ./.venv. Usage: ensure_packages CMD:PACKAGE...; ensure_venv
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Each argument is "test:package": the package is installed when the test fails.
ensure_packages() {
  local missing=() pair
  for pair in "$@"; do
    bash -c "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair##*:}")
  done
  if ((${#missing[@]})); then
    as_root apt-get update -qq
    as_root apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

ensure_venv() {
  [ -x .venv/bin/python ] || python3 -m venv .venv
}
