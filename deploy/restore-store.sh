#!/bin/sh
# Restore a backup made by deploy/backup-store.sh, with sessiond stopped (deploy/README.md,
# "Backups of the store"):
#
#   restore-store.sh /var/backups/sessiond/2026-11-25 /var/lib/sessiond/sessions.db
#
# The store becomes exactly the backup's: every file of the store there now (the
# database, its -wal and -shm, and every log segment, which the next start would
# otherwise replay over the backup) is moved into a directory beside it,
# replaced-DATE.XXXXXX, and the backup's database and log segments take their place,
# mode 0600 with the owner and group of the database they replace (or, in a new
# directory, of the directory).
#
# It refuses while a sessiond (or its compactor) holds the store's lock, and holds that
# lock itself meanwhile: a sessiond started during the restore (by a client connecting
# to sessiond.socket) waits for it and then opens the restored store. The database is
# put in place last, by a rename: the store's path never leads to a half-restored store.
set -eu

die() {
  echo "restore-store.sh: $*" >&2
  exit 1
}

[ $# -eq 2 ] || die "usage: restore-store.sh BACKUP STORE (BACKUP: made by backup-store.sh; STORE: persistence.path)"
backup=$1
db=$2
name=$(basename -- "$db")
dir=$(dirname -- "$db")
[ -f "$backup/$name" ] || die "$backup/$name not found: BACKUP must be a directory made by backup-store.sh for a store named $name"
[ ! -e "$backup/$name-wal" ] || die "$backup/$name-wal: not a backup made by backup-store.sh (copy it with the daemon stopped, then use backup-store.sh on the copy)"
[ -d "$dir" ] || die "directory $dir does not exist (sessiond never creates it: make it, owned by the daemon's user)"
umask 077

owner=$dir
if [ -e "$db" ]; then
  exec 9<"$db"
  flock -n 9 || die "sessiond is running on $db: stop it first (systemctl stop sessiond.socket sessiond.service)"
  owner=$db
fi

# 1. The backup's files into a directory beside the store (the same file system, so that
#    step 3 is renames): a disk too full for them fails here, with nothing changed yet.
stage=$(mktemp -d "$dir/.restore.XXXXXX")
trap 'rm -rf -- "$stage"' EXIT
cp -- "$backup/$name" "$stage/"
for segment in "$backup/$name"-log.[0-9]*; do
  [ -e "$segment" ] || continue
  cp -- "$segment" "$stage/"
done
chmod 0600 -- "$stage"/*
chown --reference="$owner" -- "$stage"/*
sync -- "$stage"/* # on disk before the renames below make them the store

# 2. The store's files out of the way, kept as they were: the database stays at its path
#    (hard-linked here too) until step 3 replaces it.
replaced=$(mktemp -d "$dir/replaced-$(date +%Y%m%d-%H%M%S).XXXXXX")
trap 'rm -rf -- "$stage"
      echo "restore-store.sh: interrupted; the files it replaced are in $replaced" >&2' EXIT
for file in "$db"-log.[0-9]* "$db-wal" "$db-shm" "$db-journal"; do
  [ -e "$file" ] || continue
  mv -- "$file" "$replaced/"
done
[ ! -e "$db" ] || ln -- "$db" "$replaced/$name"

# 3. The backup's segments, then its database, in place.
for segment in "$stage/$name"-log.[0-9]*; do
  [ -e "$segment" ] || continue
  mv -- "$segment" "$dir/"
done
mv -T -- "$stage/$name" "$db"
sync -- "$dir"
trap - EXIT
rmdir -- "$stage"
if rmdir -- "$replaced" 2>/dev/null; then
  echo "restored $db from $backup"
else
  echo "restored $db from $backup; the files it replaced are in $replaced:" \
    "remove them once sessiond runs on the restored store"
fi
