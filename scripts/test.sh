#!/usr/bin/env bash
# Install what the test suite needs, then run it: `bash scripts/test.sh [pytest args]`.
# System packages come from Debian (each with the reason below); Python packages go into
# ./.venv from the project's `test` extra, reinstalled only when pyproject.toml changes.
#
# The suite runs twice: against the pure-Python package (the editable install in ./.venv)
# and against the mypyc-compiled build (a wheel in ./.venv-mypyc, rebuilt each run while
# the first run goes on), each over SESSIOND_TEST_WORKERS (3) pytest-xdist workers.
# SESSIOND_TEST_BUILDS=pure (or compiled) runs one of them.
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
need "command -v prometheus-redis-exporter" prometheus-redis-exporter \
  "redis_exporter and its Grafana dashboard, run against the daemon by the tests"
need "command -v php" php-cli "the PHP session handler tests"
need "php -r 'exit(extension_loaded(\"redis\") ? 0 : 1);'" php-redis "phpredis' session handler, with and without locking"
need "test -e /usr/share/php/Predis/Autoloader.php" php-predis "predis' session handler"
need "command -v go" golang-go "to build the Go redistore session store test"
need "test -d /usr/share/gocode/src/github.com/boj/redistore" golang-github-boj-redistore-dev \
  "redistore with redigo and gorilla/sessions, the Go session store test's sources"
need "command -v gcc" gcc "to compile sessiond's hot modules with mypyc"
need "test -e /usr/include/python3.11/Python.h -o -e $(python3 -c 'import sysconfig; print(sysconfig.get_path("include"))')/Python.h" \
  python3-dev "Python's headers, to compile sessiond's hot modules with mypyc"
install_needed

# Debian's postgresql: the server programs the PostgreSQL tests start their own clusters
# with (tests/pg.py). A first install would also initdb a "main" cluster and, under
# systemd, start it on port 5432: a createcluster.d drop-in turns that off for this
# install only. Its recommends (cron, sysstat, a mail server) are not needed.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  say "installing postgresql (the server programs the PostgreSQL tests run their own" \
    "clusters with) with apt-get, without its recommends or a default cluster"
  no_main_cluster=/etc/postgresql-common/createcluster.d/sessiond-test.conf
  trap 'as_root rm -f "$no_main_cluster"' EXIT
  as_root mkdir -p "${no_main_cluster%/*}"
  echo "create_main_cluster = false" | as_root tee "$no_main_cluster" >/dev/null
  apt_update_once
  as_root apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  as_root rm -f "$no_main_cluster"
  trap - EXIT
fi
# Debian's redis-server: the pub/sub, scripting and client tests run their scenarios
# against a real Redis too, started by the test on a socket of its own. The package would also start and enable a
# system Redis on port 6379: a policy-rc.d keeps it from starting during this install,
# and the unit is disabled after it.
if ! command -v redis-server >/dev/null 2>&1; then
  say "installing redis-server (tests compare sessiond with a real Redis) with" \
    "apt-get, without starting or enabling its system service"
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then  # one is there already: it decides
    trap 'as_root rm -f "$policy"' EXIT
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
    as_root chmod 755 "$policy"
  fi
  apt_update_once
  as_root apt-get install -y -qq --no-install-recommends redis-server >/dev/null
  if command -v systemctl >/dev/null 2>&1; then
    as_root systemctl disable --quiet redis-server.service 2>/dev/null || true
  fi
  if [ -n "$(trap -p EXIT)" ]; then
    as_root rm -f "$policy"
    trap - EXIT
  fi
fi
# redis-actionpack, Rails' :redis_store: Debian's package depends on redis-server, so it
# comes after the install above, which keeps that system Redis from starting.
need "ruby -e 'exit(Gem::Specification.find_all_by_name(\"redis-actionpack\").any?)'" ruby-redis-actionpack "the Rails :redis_store session store test"
install_needed
pure=false compiled=false
for build in ${SESSIOND_TEST_BUILDS:-pure compiled}; do
  case $build in
    pure) pure=true ;;
    compiled) compiled=true ;;
    *)
      say "SESSIOND_TEST_BUILDS: unknown build '$build' (pure, compiled)"
      exit 2
      ;;
  esac
done
# Most tests wait on the daemons, PostgreSQL or Node they start, not on the CPU: each
# build's run spreads its tests over this many pytest-xdist workers (`-n 0` among the
# arguments runs them in this process).
workers=${SESSIOND_TEST_WORKERS:-3}

build_compiled() {
  if ! .venv-mypyc/bin/python -c '' 2>/dev/null; then
    python3 -m venv --clear .venv-mypyc
  fi
  rm -rf build
  SESSIOND_MYPYC=1 nice .venv-mypyc/bin/pip install -q '.[test]'
  rm -rf build
}

test_pure() {
  say "running the tests against the pure-Python build"
  SESSIOND_EXPECT_BUILD=pure .venv/bin/python -m pytest -n "$workers" "$@"
}

test_compiled() {
  say "running the tests against the mypyc-compiled build"
  SESSIOND_EXPECT_BUILD=compiled .venv-mypyc/bin/python -m pytest -n "$workers" "$@"
}

if $pure; then
  ensure_venv
  install_sessiond test
fi
if ! $compiled; then
  test_pure "$@"
elif ! $pure; then
  say "building sessiond with mypyc into .venv-mypyc (about 2 minutes)"
  build_compiled
  test_compiled "$@"
else
  # Both: the mypyc build (2 minutes of gcc, niced so that the tests keep the CPU they
  # wait for) goes on in the background while the pure-Python run goes on here; the
  # compiled run follows it. The runs themselves go one after the other: both at once
  # left too little CPU on 2 cores for tests that wait for a reply within seconds.
  # The pure install comes first: both installs write daemon/sessiond.egg-info.
  build_log=$(mktemp -t sessiond-mypyc-build.XXXXXX)
  say "building sessiond with mypyc into .venv-mypyc in the background (about 2 minutes)"
  (build_compiled) >"$build_log" 2>&1 </dev/null &
  build_pid=$!
  # Interrupted or failed before the build ends: it ends too (its pip and gcc with it).
  # (set -e holds in the trap too: a build already over is not an error.)
  trap 'pkill -TERM -P "$build_pid" 2>/dev/null || true
        kill "$build_pid" 2>/dev/null || true
        rm -f "$build_log"' EXIT
  pure_status=0
  test_pure "$@" || pure_status=$?
  build_status=0
  wait "$build_pid" || build_status=$?
  cat "$build_log" >&2
  if ((build_status)); then
    say "the mypyc build failed (exit $build_status); the pure-Python run exited $pure_status"
    exit "$build_status"
  fi
  compiled_status=0
  test_compiled "$@" || compiled_status=$?
  if ((pure_status || compiled_status)); then
    say "failed: the pure-Python run exited $pure_status, the mypyc-compiled run" \
      "$compiled_status"
    exit $((pure_status ? pure_status : compiled_status))  # pytest's own code, as one build gives
  fi
fi
