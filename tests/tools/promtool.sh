#!/usr/bin/env bash
# Fetch Debian's `prometheus` package (without installing it: we must not run a
# Prometheus server as a system service just to lint our rules) and unpack it into
# a cache directory. Prints the absolute path of the extracted promtool.
#
#   tests/tools/promtool.sh            -> /…/.cache/prometheus/root/usr/bin/promtool
#   tests/tools/promtool.sh prometheus -> /…/.cache/prometheus/root/usr/bin/prometheus
#
# The cache lives in <repo>/.cache/prometheus (gitignored) unless
# SESSIOND_PROMETHEUS_CACHE is set. The download happens once; later calls only
# print the path. Exit status 2 means "the package could not be downloaded"
# (e.g. no network): tests map that to a skip. Any other non-zero is a real error.
# Needs apt-get and dpkg (Debian/Ubuntu); works as root on a fresh Debian 12.
set -euo pipefail

what="${1:-promtool}"
case "$what" in
  promtool | prometheus) ;;
  *) echo "usage: $0 [promtool|prometheus]" >&2; exit 64 ;;
esac

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${SESSIOND_PROMETHEUS_CACHE:-$repo/.cache/prometheus}"
root="$cache/root"
bin="$root/usr/bin/$what"

if [[ -x "$root/usr/bin/promtool" && -x "$root/usr/bin/prometheus" ]]; then
  echo "$bin"
  exit 0
fi

for tool in apt-get dpkg; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "promtool.sh: $tool not found (needs a Debian-based machine)" >&2
    exit 2
  fi
done

mkdir -p "$cache"
# Serialise concurrent callers (e.g. parallel test workers) on one lock.
exec 9>"$cache/.lock"
flock 9
if [[ -x "$root/usr/bin/promtool" && -x "$root/usr/bin/prometheus" ]]; then
  echo "$bin"
  exit 0
fi

dl="$(mktemp -d "$cache/download.XXXXXX")"
trap 'rm -rf "$dl"' EXIT

apt_opts=(-q)
if [[ "$(id -u)" == 0 ]]; then
  # As root, apt drops to the _apt user to download, which can't write into our cache dir
  # (it only warns, but say so up front).
  apt_opts+=(-o APT::Sandbox::User=root)
fi

download() {
  # apt-get download writes into the current directory; stdout is reserved for the path.
  (cd "$dl" && apt-get download "${apt_opts[@]}" prometheus >&2)
}

if ! download; then
  echo "promtool.sh: apt-get download failed; running apt-get update and retrying" >&2
  if ! apt-get update "${apt_opts[@]}" >&2 || ! download; then
    echo "promtool.sh: could not download Debian's prometheus package" >&2
    exit 2
  fi
fi

deb="$(ls "$dl"/prometheus_*.deb)"
# Extract into a fresh directory, then swap it in, so a half-extracted tree is never used.
tmp_root="$(mktemp -d "$cache/root.XXXXXX")"
dpkg -x "$deb" "$tmp_root"
rm -rf "$root"
mv "$tmp_root" "$root"
chmod 755 "$root"

if [[ ! -x "$bin" ]]; then
  echo "promtool.sh: $bin missing from the package" >&2
  exit 1
fi
echo "$bin"
