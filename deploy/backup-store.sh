#!/bin/sh
# Back up a sessiond SQLite store, the daemon running or stopped (deploy/README.md,
# "Backups of the store"):
#
#   backup-store.sh /var/lib/sessiond/sessions.db /var/backups/sessiond/2026-11-25
#
# DEST (a new directory, made 0700) receives the database and the log segments the
# database does not hold yet; deploy/restore-store.sh puts them back. The backup holds
# every change (write, delete) acknowledged before this script started and none
# acknowledged after it ended; of those in between, some (a FLUSHDB among them may be
# there in part).
#
# Why in this order (docs/persistence.md): an acknowledged write is first in a log
# segment (DB-log.NNNNNNNNNNNN); the compactor writes a segment into the database,
# records it there as compacted (store_state.compacted_through), and only then deletes
# it. So the segments are copied first: one that is gone before it is copied was
# compacted, and the database, read after, holds it. The database is then read in one
# read transaction (Python's sqlite3 backup, all pages in one step): a consistent
# snapshot. sqlite3's .backup command copies 100 pages at a time and starts over
# whenever the daemon commits in between, so on a busy store it may never end. At the
# next start the daemon replays the segments after compacted_through (a frame cut short
# by the copy was not acknowledged when the copy began: it is dropped, with a warning).
#
# With the daemon stopped, the script holds the store's lock (the flock sessiond takes)
# while it copies, and copies the files as they are (the database, its -wal after a
# crash, the segments) without opening the store: a sessiond started meanwhile (by a
# client connecting to sessiond.socket) waits until the copy is done.
#
# PYTHON: the interpreter to use (python3 by default; its sqlite3 module is used).
set -eu

die() {
  echo "backup-store.sh: $*" >&2
  exit 1
}

[ $# -eq 2 ] || die "usage: backup-store.sh STORE DEST (STORE: persistence.path, e.g. /var/lib/sessiond/sessions.db)"
db=$1
dest=$2
python=${PYTHON:-python3}
name=$(basename -- "$db")
[ -f "$db" ] || die "$db: no such store (give persistence.path, the database file)"
[ ! -e "$dest" ] && [ ! -L "$dest" ] || die "$dest exists: give a new directory"
command -v "$python" >/dev/null || die "$python not found (set PYTHON to a Python 3 with sqlite3)"
umask 077 # the backup holds every user's session data
mkdir -p -- "$dest"
trap '[ $? -eq 0 ] || echo "backup-store.sh: no backup made; remove $dest" >&2' EXIT

# The store's lock, as sessiond takes it: free if no sessiond (nor its compactor) runs.
exec 9<"$db"
if flock -n 9; then
  running=false
  echo "sessiond is not running on $db: copying its files, the store locked meanwhile"
else
  running=true
  exec 9<&-
  echo "sessiond is running on $db: online backup"
fi

# 1. The log segments, oldest first. One compacted and deleted since the list was made is
#    in the database read below.
segments=0
gone=0
for segment in "$db"-log.[0-9]*; do
  [ -e "$segment" ] || continue # none at all
  if ! error=$(cp -- "$segment" "$dest/" 2>&1); then
    [ ! -e "$segment" ] || die "cannot copy $segment: $error"
    gone=$((gone + 1)) # compacted meanwhile
    continue
  fi
  segments=$((segments + 1))
done

# 2. The database.
if $running; then
  "$python" - "$db" "$dest/$name" <<'EOF'
import sqlite3, sys

try:
    source = sqlite3.connect(sys.argv[1], timeout=30)
    target = sqlite3.connect(sys.argv[2])
    source.backup(target)  # every page in one step: one read transaction, one snapshot
    target.close()
    source.close()
except sqlite3.Error as exc:
    sys.exit(f"backup-store.sh: cannot read {sys.argv[1]}: {exc}")
EOF
else
  cp -- "$db" "$dest/$name"
  if [ -e "$db-wal" ]; then # a crash left commits there: they go into the copy below
    cp -- "$db-wal" "$dest/$name-wal"
  fi
fi

# 3. Check the copy, and fold a copied -wal into it (leaving WAL mode does): the database
#    alone is the backup.
#    Segments the database holds wholly (at or below compacted_through) are left out.
checked=$("$python" - "$dest/$name" <<'EOF'
import sqlite3, sys

try:
    db = sqlite3.connect(sys.argv[1])
    check = db.execute("PRAGMA integrity_check").fetchone()[0]
    if check != "ok":
        sys.exit(f"backup-store.sh: the copy of the database fails its integrity check: {check}")
    if db.execute("PRAGMA application_id").fetchone()[0] != 0x53455353:
        sys.exit("backup-store.sh: the database is not a sessiond store")
    through = db.execute("SELECT compacted_through FROM store_state").fetchone()[0]
    count = db.execute("SELECT count(*) FROM sessions").fetchone()[0]
    # Out of WAL mode (the daemon puts it back at its start): reading the backup, even
    # read-only, then leaves no -wal or -shm file beside it.
    mode = db.execute("PRAGMA journal_mode=DELETE").fetchone()[0]
    db.close()
except sqlite3.Error as exc:
    sys.exit(f"backup-store.sh: the copy of the database cannot be read: {exc}")
if mode != "delete":
    sys.exit(f"backup-store.sh: the copy of the database stays in journal mode {mode}")
print(through, count)
EOF
)
through=${checked% *}
count=${checked#* }
[ ! -e "$dest/$name-wal" ] || die "$dest/$name-wal is still there: the copy is not complete"
for segment in "$dest/$name"-log.[0-9]*; do
  [ -e "$segment" ] || continue
  number=${segment##*-log.}
  number=$(echo "$number" | sed 's/^0*//')
  if [ "${number:-0}" -le "$through" ]; then
    rm -f -- "$segment"
    segments=$((segments - 1))
  fi
done
sync -- "$dest"/* "$dest"
echo "backup of $db in $dest: $count sessions in the database (log segments up to" \
  "$through compacted; $gone compacted while this copied the others) and $segments log" \
  "segment(s) to replay after it"
