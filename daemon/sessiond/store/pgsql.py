"""The PostgreSQL store's SQL, schema and notification payloads: text and pure
functions, no I/O (:mod:`.postgres` runs them).

The table holds one row per session, as :class:`~.api.Row` has it, plus
``scan_hash`` (SCAN order, shared with memory) and ``version`` (incremented by
every write). Every transaction that writes takes, before anything else, a
transaction-level advisory lock per key it writes, in ascending order of the
key's lock id: two hosts' transactions over the same keys then run one after
the other and never deadlock, and a key that does not exist yet is locked as
well as one that does (``SELECT ... FOR UPDATE`` alone locks no absent row:
bench/pg_probe.py lost increments that way). The lock id is the key's CRC-32
(its ``scan_hash``) as a signed 32-bit integer, under a class id of sessiond's
own (the two-integer form of the advisory lock functions, so no application
using the one-integer form can collide with it).

Changes are announced with ``pg_notify`` in the transaction that makes them,
so other hosts hear only of committed changes. A payload is
``<host> <unix time> <item> ...`` with each item a key in base64, ``#<hash>``
for a key too long to name (every key of that scan hash is meant), or ``*``
(every key: a flush). Payloads stay under PostgreSQL's 8000-byte limit: a
commit of many keys sends several.
"""

from __future__ import annotations

import binascii
import struct
import zlib
from collections.abc import Iterable, Mapping
from typing import Any, Final, NamedTuple

import psycopg

from .api import Renewal, scan_hash
from .pgarrays import dump

SCHEMA_VERSION = 2
TABLE = "sessiond_sessions"
VERSION_TABLE = "sessiond_schema"
CHANNEL = "sessiond_changes"
# The class id of sessiond's advisory locks ("SESS"); its session-level lock
# on (LOCK_CLASS, 0) serializes the hosts that create or migrate the schema.
LOCK_CLASS = 0x53455353
PAYLOAD_LIMIT = 7900  # bytes; PostgreSQL refuses 8000 and more
_HALF = 2**31
_FULL = 2**32

COLUMNS = "key, value, context, created_at, updated_at, accessed_at, ttl, deadline, kind"

# expire_at is when expiry should next look at a row, as in the SQLite store
# (files.py): never later than its deadline, so that no expired row is missed,
# but not moved when a write or a renewal only pushes the deadline later. An
# index on the deadline itself made every write of a session with a TTL (every
# SET, with the default TTL) a change of an indexed column: PostgreSQL then
# writes a new entry into every index of the table, not only the deadline's.
# PostgreSQL's CPU per durable SET at -c 50 went to 0.63x with it, and SETs/s
# 1.27x (bench/shared_vs_tcp_redis.py --against the build before; bench/RESULTS.md,
# "The sessions table files rows by expire_at").
# Expiry re-files a row whose expire_at comes due while its deadline lies
# further on (once per TTL at most). Schema 1 had the deadline's index
# (MIGRATE_TO_2). The table refuses a row that expiry would look at too late or
# never: a write by code that does not keep expire_at (a host of a version
# before schema 2 still running, or a call of its commit function that began
# before the migration replaced its body) fails, and is refused to its client,
# rather than leaving a session that never expires.
_FILED = (
    f"CONSTRAINT {TABLE}_filed "
    "CHECK (deadline IS NULL OR (expire_at IS NOT NULL AND expire_at <= deadline))"
)
CREATE = (
    f"""CREATE TABLE {TABLE} (
    key bytea PRIMARY KEY,
    scan_hash bigint NOT NULL,
    value bytea NOT NULL,
    context text,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL,
    accessed_at double precision NOT NULL,
    ttl double precision,
    deadline double precision,
    kind smallint NOT NULL DEFAULT 0,
    version bigint NOT NULL DEFAULT 1,
    expire_at double precision,
    {_FILED}
)""",
    f"CREATE INDEX {TABLE}_scan ON {TABLE} (scan_hash)",
    f"CREATE INDEX {TABLE}_expire_at ON {TABLE} (expire_at) WHERE expire_at IS NOT NULL",
    f"CREATE TABLE {VERSION_TABLE} (version integer NOT NULL)",
    f"INSERT INTO {VERSION_TABLE} VALUES ({SCHEMA_VERSION})",
)

# What exists: (the schema table, the sessions table), as regclass or NULL.
FIND_TABLES = f"SELECT to_regclass('{VERSION_TABLE}')::text, to_regclass('{TABLE}')::text"
READ_VERSION = f"SELECT max(version) FROM {VERSION_TABLE}"
SCHEMA_LOCK = f"SELECT pg_advisory_lock({LOCK_CLASS}, 0)"
SCHEMA_UNLOCK = f"SELECT pg_advisory_unlock({LOCK_CLASS}, 0)"
SCHEMA_TRY_LOCK = f"SELECT pg_try_advisory_lock({LOCK_CLASS}, 0)"
# Who holds the schema lock, for the log of a host waiting for it.
SCHEMA_HOLDER = (
    "SELECT a.pid, a.application_name, a.client_addr::text FROM pg_locks AS l "
    "JOIN pg_stat_activity AS a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
    f"AND l.classid = {LOCK_CLASS} AND l.objid = 0 AND l.objsubid = 2 AND l.granted"
)

# Arrays go in binary (``%b``): psycopg dumps a text array element by element,
# quoting each with regular expressions, at about five times the CPU of binary
# (3.8 against 0.7 us per row of a renewal's four arrays, psycopg 3.3 here, a timing;
# counted, a near-cache GET that renews went from 105k to 44k instructions with it:
# bench/instructions.py --shared).
# Each write statement is written once, with its arguments as ``{}``: the
# group commit's function (COMMIT_FUNCTION below) runs it on the function's
# own arguments, and where a statement is sent on its own its placeholders
# take their place (a decision's key locks, prepared: OPEN_PREPARED; a sweep's
# notifications, through psycopg: NOTIFY).
_LOCK_KEYS = "pg_advisory_xact_lock({}, h) FROM unnest({}) AS h"
_UPSERT = f"""INSERT INTO {TABLE} AS s (key, scan_hash, {COLUMNS.removeprefix("key, ")}, expire_at)
SELECT *, u.deadline FROM unnest({{}})
    AS u(key, scan_hash, {COLUMNS.removeprefix("key, ")})
ON CONFLICT (key) DO UPDATE SET
    value = excluded.value, context = excluded.context, created_at = excluded.created_at,
    updated_at = excluded.updated_at, accessed_at = excluded.accessed_at,
    ttl = excluded.ttl, deadline = excluded.deadline, kind = excluded.kind,
    version = s.version + 1,
    expire_at = CASE
        WHEN excluded.deadline IS NULL THEN NULL
        WHEN s.expire_at IS NULL OR excluded.deadline < s.expire_at THEN excluded.deadline
        ELSE s.expire_at
    END"""
_DELETE = f"DELETE FROM {TABLE} WHERE key = ANY({{}})"
_NOTIFY = "pg_notify({}, n) FROM unnest({}) AS n"
# Last before COMMIT: fails (division by zero) once the database's clock is
# past the given unix time, so that a commit that reaches the server after its
# client was told it failed (a link that went silent, then healed) rolls back
# instead of landing over what other hosts wrote meanwhile. clock_timestamp()
# is volatile: evaluated when the statement runs, never folded into the plan.
_FENCE = "1 / (clock_timestamp() <= to_timestamp({}))::int"
# The upsert's columns after key and scan_hash, in Row's order, by type: the
# commit function's parameters are made from it, and postgres.py picks the
# arrays' list classes by it.
# Of any length: see stats.Bounds (compiled, indexing a tuple of eight made one).
ROW_TYPES: Final[tuple[str, ...]] = (
    "bytea", "text", "float8", "float8", "float8", "float8", "float8", "int2",
)  # fmt: skip

_SELECT_KEYS = f"SELECT {COLUMNS}, version FROM {TABLE} WHERE key = ANY({{}}::bytea[])"
SELECT_ROWS = _SELECT_KEYS.format("%b")
NOTIFY = "SELECT " + _NOTIFY.format("%s", "%b::text[]")
DATABASE_CLOCK = "SELECT extract(epoch FROM clock_timestamp())::float8"

# Every commit that changes something inserts a token, a number new to each
# commit, under its connection's slot (a random number the connection takes
# when it opens), and deletes its connection's previous one: one row per
# connection. When a commit's answer is lost (the connection dropped, or no
# answer within the timeout), the host asks on another connection by inserting
# that same token itself (ASK_TOKEN), marked as the asker's (pid -1): the
# primary key makes the insert wait for a commit that has inserted it and not
# yet ended, then find it there if that commit landed, or else take its place,
# so that the commit, arriving later or still under way, fails on the key and
# never lands. The answer holds wherever it is asked: a crash recovery in
# place, a restart or a promoted standby keeps or loses the row with the commit
# itself. (A transaction id asked with pg_xact_status did not: a crash
# recovery in place gives the id of a commit that never reached the WAL to the
# next transaction.) Insert and delete, not an update of one row per
# connection: while any snapshot older than them is held (a long transaction
# anywhere in the cluster), each update of one row has to step over every
# version of it since, about 22 more buffers per 4,000 commits measured here,
# where an insert and a delete by key stay at 3.
# Rows outlive their connections for fifteen minutes once their backend is gone
# (SWEEP_SLOTS, at each writer's connect; an asker's row at once), well past
# any asking, which ends within twice persistence.timeout (at most 5
# minutes: config.MAX_STORE_TIMEOUT) of the failure.
TOKENS = "sessiond_commit_tokens"
# Owned by the sessions table's owner, whoever makes it: a host started once as
# another role, to create what its own may not, leaves a table the hosts' role
# can write (the function needs no such care: EXECUTE is granted to PUBLIC).
# One statement: made and given away together, or not at all.
CREATE_TOKENS = f"""DO $$ BEGIN
    CREATE TABLE IF NOT EXISTS {TOKENS} (
        slot bigint NOT NULL,
        token bigint NOT NULL,
        pid integer NOT NULL,
        gone_since timestamptz,
        PRIMARY KEY (slot, token)
    );
    EXECUTE 'ALTER TABLE {TOKENS} OWNER TO '
        || (SELECT relowner::regrole::text FROM pg_class WHERE oid = '{TABLE}'::regclass);
END $$"""
FIND_TOKENS = f"SELECT to_regclass('{TOKENS}')::text"
SWEEP_SLOTS = (
    f"UPDATE {TOKENS} AS t SET gone_since = now() WHERE gone_since IS NULL "
    "AND NOT EXISTS (SELECT FROM pg_stat_activity AS a WHERE a.pid = t.pid)",
    f"DELETE FROM {TOKENS} WHERE gone_since < now() - interval '15 minutes'",
)
ASKER = -1  # the pid of an asker's row
ASK_TOKEN = (
    f"INSERT INTO {TOKENS} (slot, token, pid, gone_since) VALUES (%s, %s, {ASKER}, now()) "
    "ON CONFLICT DO NOTHING"
)
# Whose the row is, once the asking's insert found one: the commit's, or an
# earlier try of the same asking's (its answer lost, tried again).
TOKEN_OWNER = f"SELECT pid FROM {TOKENS} WHERE slot = %s AND token = %s"

# A group commit is one call of this function: its statements in their order
# (the key locks, the flush, the upserts, the deletes, the renewals, the
# notifications, the token, the fence: the statements above), each on a snapshot of
# its own taken after the locks, as in a transaction of separate statements
# (READ COMMITTED), but one statement for the client to send and psycopg to
# prepare, bind and read back instead of seven (BEGIN and COMMIT included)
# (bench/RESULTS.md, "The PostgreSQL floor"). Called outside a transaction (the
# writer's connection is in autocommit), the call is the transaction.
# The function is named by its own version and only added where it is missing
# (FIND_FUNCTION: at start, and at the writer's reconnect after a failed
# commit, so that a table-only restore heals), so it leaves the tables' schema
# version alone: hosts of the version before, which do not call it, go on
# working beside it in a rolling upgrade, and a later version adds a function
# of another name instead of replacing this one under hosts that still call it.
# A renewal only moves a deadline later, and only while the row still slides by
# the TTL this host renewed: a row another host deleted stays deleted, and one
# it gave another TTL (EXPIRE, PERSIST, a new SET ... EX) keeps it.
# A statement whose arrays are empty (no deletes, no renewals: most commits)
# is skipped, not run on nothing: run, the delete and the renewals' update
# cost about 100 us of the server's CPU per commit between them (a loop of
# calls inside the server, 166 against 64 us a call; mostly planning: forcing
# generic plans took back three quarters of it), as much as the rest.
# Version 1 ran every statement every time; version 2 wrote no expire_at
# (schema 1): the migration to schema 2 gives it version 3's body, for the
# hosts of the version before that still call it (MIGRATE_TO_2).
# Version 4 adds the commit's token (TOKENS above): version 3 is what hosts of
# the version before call, and what the migration to schema 2 gives version 2.
FUNCTION = "sessiond_commit_v4"
# The function's parameters, written once: its signature and the call's
# placeholders (COMMIT_PREPARED) are both made from them.
_UPSERT_PARAMS = (
    ("p_keys", "bytea[]"),
    ("p_hashes", "int8[]"),
    *zip(
        ("p_values", "p_contexts", "p_created", "p_updated", "p_accessed", "p_ttls",
         "p_deadlines", "p_kinds"),
        (f"{kind}[]" for kind in ROW_TYPES),
        strict=True,
    ),
)  # fmt: skip
_COMMIT_PARAMS = (
    ("p_locks", "int4[]"),
    ("p_cleared", "boolean"),
    *_UPSERT_PARAMS,
    ("p_deletes", "bytea[]"),
    ("p_renew_keys", "bytea[]"),
    ("p_renew_ttls", "float8[]"),
    ("p_renew_deadlines", "float8[]"),
    ("p_renew_accessed", "float8[]"),
    ("p_notices", "text[]"),
    ("p_slot", "int8"),
    ("p_token", "int8"),
    ("p_previous", "int8"),
    ("p_fence", "float8"),
)
# Version 3's: the same but the token.
_V3_PARAMS = tuple(
    param for param in _COMMIT_PARAMS if param[0] not in ("p_slot", "p_token", "p_previous")
)
FIND_FUNCTION = f"SELECT to_regproc('{FUNCTION}')::text"


def _commit_function(name: str, how: str, *, token: bool = True) -> str:
    """``how`` (CREATE, or CREATE OR REPLACE) the commit function as ``name``;
    without ``token``, version 3's."""
    params = _COMMIT_PARAMS if token else _V3_PARAMS
    write_token = (
        f"INSERT INTO {TOKENS} (slot, token, pid) VALUES (p_slot, p_token, pg_backend_pid());\n"
        f"    DELETE FROM {TOKENS} WHERE slot = p_slot AND token = p_previous;\n    "
        if token
        else ""
    )
    return f"""{how} FUNCTION {name}(
    {", ".join(f"{param} {kind}" for param, kind in params)}
) RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM {_LOCK_KEYS.format(LOCK_CLASS, "p_locks")};
    IF p_cleared THEN
        DELETE FROM {TABLE};
    END IF;
    IF cardinality(p_keys) > 0 THEN
        {_UPSERT.format(", ".join(param for param, _ in _UPSERT_PARAMS))};
    END IF;
    IF cardinality(p_deletes) > 0 THEN
        {_DELETE.format("p_deletes")};
    END IF;
    IF cardinality(p_renew_keys) > 0 THEN
        UPDATE {TABLE} AS s
        SET deadline = greatest(s.deadline, r.deadline),
            accessed_at = greatest(s.accessed_at, r.accessed)
        FROM unnest(p_renew_keys, p_renew_ttls, p_renew_deadlines, p_renew_accessed)
            AS r(key, ttl, deadline, accessed)
        WHERE s.key = r.key AND s.ttl = r.ttl AND s.deadline IS NOT NULL;
    END IF;
    IF cardinality(p_notices) > 0 THEN
        PERFORM {_NOTIFY.format(f"'{CHANNEL}'", "p_notices")};
    END IF;
    {write_token}PERFORM {_FENCE.format("p_fence")};
END
$fn$"""


COMMIT_FUNCTION = _commit_function(FUNCTION, "CREATE")
# Schema 1 -> 2, in one transaction under the schema lock (postgres._migrate):
# the commit function of the version before (sessiond_commit_v2, same
# signature) given this version's body where it exists, so that hosts of that
# version, which go on running until they are restarted, write expire_at too
# (a call of theirs that began under the old body is refused by the table's
# check); then the column, filled from the deadlines, its index in place of
# the deadline's, and the check. Their expiry sweep finds rows by deadline,
# now without an index: each of their sweeps reads the whole table until they
# run this version. ALTER TABLE locks the table for the transaction: every
# host's reads and writes wait for it, up to their timeout (6.6-7.3 s for a
# million sessions here, bench/pg_migrate.py; 12 s in one run with the
# deadline's index dropped last, which the UPDATE then wrote into).
PREVIOUS_FUNCTION = "sessiond_commit_v2"
MIGRATE_TO_2 = (
    f"DROP INDEX IF EXISTS {TABLE}_deadline",
    f"ALTER TABLE {TABLE} ADD COLUMN expire_at double precision",
    f"UPDATE {TABLE} SET expire_at = deadline WHERE deadline IS NOT NULL",
    f"CREATE INDEX {TABLE}_expire_at ON {TABLE} (expire_at) WHERE expire_at IS NOT NULL",
    f"ALTER TABLE {TABLE} ADD {_FILED}",
    f"UPDATE {VERSION_TABLE} SET version = 2",
)
FIND_PREVIOUS_FUNCTION = f"SELECT to_regproc('{PREVIOUS_FUNCTION}')::text"
REPLACE_PREVIOUS_FUNCTION = _commit_function(PREVIOUS_FUNCTION, "CREATE OR REPLACE", token=False)
# The call, prepared once on the writer's connection under COMMIT_STATEMENT's
# name and sent through libpq directly (pgwire.py).
COMMIT_STATEMENT = "sessiond_commit"
_CALL = "{}({})".format(
    FUNCTION, ", ".join(f"${i}::{kind}" for i, (_, kind) in enumerate(_COMMIT_PARAMS, 1))
)
COMMIT_PREPARED = f"SELECT {_CALL}"
# A decision's commit (postgres._commit_decision), in its own transaction: its
# changes through the same function (commit_params' parameters, without the
# key locks, which the decision holds) and its barrier (a notification on this
# host's own channel), in one statement; or the barrier alone, for a decision
# that changed nothing. Prepared on each pooled connection by its first
# decision, sent through libpq in one pipeline with COMMIT.
DECIDED_STATEMENT = "sessiond_decided"
_AFTER = len(_COMMIT_PARAMS)
DECIDED_PREPARED = f"SELECT {_CALL}, pg_notify(${_AFTER + 1}::text, ${_AFTER + 2}::text)"
BARRIER_STATEMENT = "sessiond_barrier"
BARRIER_PREPARED = "SELECT pg_notify($1::text, $2::text)"
_COLUMNS: Final = len(ROW_TYPES)
_TRUE: Final = b"\x01"
_FALSE: Final = b"\x00"
_FLOAT8 = struct.Struct("!d").pack
_INT8 = struct.Struct("!q").pack


def commit_params(
    host_id: str,
    now: float,
    batch: Mapping[bytes, tuple[Any, ...] | None],
    cleared: bool,
    renewals: Mapping[bytes, Renewal],
    token: tuple[int, int, int],
    fence: float,
    *,
    lock: bool = True,
) -> tuple[list[bytes], int]:
    """The commit function's parameters (:data:`COMMIT_PREPARED`'s and
    :data:`DECIDED_PREPARED`'s first ones, in order, in PostgreSQL's binary format) for
    ``batch`` (each key's fields, in :class:`~.api.Row`'s order, or
    ``None``: deleted), a flush if ``cleared``, ``renewals``, ``token`` (the
    connection's slot, the commit's token and the slot's token before it: TOKENS) and ``fence``,
    announced as sent at ``now``, with the keys' locks unless ``lock`` is
    false (a decision holds them already); and how many notifications they
    send. A change it cannot carry raises :class:`psycopg.DataError`, which
    the store answers as a refused write: its writer and its decisions go
    on."""
    try:
        # Plain lists, dumped as they are: making a typed list (pgarrays) per
        # array cost more than the dumping at one SET a commit. Lists of Any:
        # compiled, a list[float] would unbox and box each value again.
        changed = list(batch)
        notices = payloads(host_id, now, changed, cleared)
        keys: list[bytes] = []
        hashes: list[Any] = []
        deletes: list[bytes] = []
        columns: list[list[Any]] = [[] for _ in range(_COLUMNS)]
        for key, fields in batch.items():
            if fields is None:
                deletes.append(key)
                continue
            keys.append(key)
            hashes.append(scan_hash(key))
            for i in range(_COLUMNS):
                columns[i].append(fields[i])
        renewed = list(renewals)
        ttls: list[Any] = []
        deadlines: list[Any] = []
        accessed: list[Any] = []
        for renewal in renewals.values():
            ttls.append(renewal.ttl)
            deadlines.append(renewal.deadline)
            accessed.append(renewal.accessed_at)
        locks = lock_ids(changed + renewed) if lock else []
        params = [dump("int4", locks), _TRUE if cleared else _FALSE]
        params.append(dump("bytea", keys))
        params.append(dump("int8", hashes))
        for i in range(_COLUMNS):
            params.append(dump(ROW_TYPES[i], columns[i]))
        params.append(dump("bytea", deletes))
        params.append(dump("bytea", renewed))
        params.append(dump("float8", ttls))
        params.append(dump("float8", deadlines))
        params.append(dump("float8", accessed))
        params.append(dump("text", notices))
        params.append(_INT8(token[0]))
        params.append(_INT8(token[1]))
        params.append(_INT8(token[2]))
        params.append(_FLOAT8(fence))
        return params, len(notices)
    except psycopg.Error:
        raise
    except Exception as exc:  # outside the dumpers: a key that is not bytes, say
        raise psycopg.DataError(f"cannot send the commit: {exc!r}") from None


# Rows whose expire_at has come (before a cutoff: now minus a grace the
# caller gives), a chunk at a time: those past their deadline are deleted and
# returned, the others (renewed since they were filed, or made persistent)
# re-filed at their deadline. Rows another transaction holds are skipped (SKIP
# LOCKED, and a try-lock of the key's advisory lock, which a decision or a
# commit holds), so sweeping never waits and two hosts sweeping at once delete
# each row once. The rows it locked and skipped stay locked until its
# transaction ends (after its notifications: a few round trips). Its one row:
# how many rows it took (fewer than the chunk: nothing more is due now) and
# the keys it deleted.
_LOCK_ID = f"(CASE WHEN scan_hash >= {_HALF} THEN scan_hash - {_FULL} ELSE scan_hash END)::int4"
EXPIRE = f"""WITH due AS MATERIALIZED (
    SELECT key, scan_hash, deadline FROM {TABLE} WHERE expire_at < %(cutoff)s
    ORDER BY expire_at LIMIT %(chunk)s FOR UPDATE SKIP LOCKED
), mine AS MATERIALIZED (
    SELECT key, deadline FROM due WHERE pg_try_advisory_xact_lock({LOCK_CLASS}, {_LOCK_ID})
), refiled AS (
    UPDATE {TABLE} AS s SET expire_at = mine.deadline FROM mine
    WHERE s.key = mine.key AND (mine.deadline IS NULL OR mine.deadline >= %(cutoff)s)
), gone AS (
    DELETE FROM {TABLE} WHERE key IN (SELECT key FROM mine WHERE deadline < %(cutoff)s)
    RETURNING key
)
SELECT (SELECT count(*) FROM mine), coalesce((SELECT array_agg(key) FROM gone), '{{}}')"""
# A batch of decisions (postgres._open_batch) never waits for a key's lock
# while it holds others: it tries each key's lock, and gets back the lock ids
# another transaction holds (their decisions then open a transaction of their
# own, which waits), which it also keeps for the rest of the transaction
# (set_config, local to it). Its rows are those of the keys whose lock it got:
# trying a lock again there could take one that was freed meanwhile, for a
# decision that has gone to a transaction of its own. A row lock it may still
# wait for: a sweep's (EXPIRE, which never waits) or a FLUSHDB's.
# The statements that open a decision's transaction, prepared on each pooled
# connection by its first decision (postgres._open_decision), each taking the
# lock ids ($1, int4[]) or the keys ($1, bytea[]); their rows come back in
# binary: the key, the Row's columns (COLUMNS), the version. LOCK_KEYS waits
# for every key's lock (a decision alone); TRY_LOCK_KEYS and SELECT_TRIED are
# a batch's.
_HELD_SETTING = "sessiond.held"
LOCK_KEYS = "sessiond_lock_keys"
SELECT_LOCKED = "sessiond_select_locked"
TRY_LOCK_KEYS = "sessiond_try_lock_keys"
SELECT_TRIED = "sessiond_select_tried"
OPEN_PREPARED = (
    (LOCK_KEYS, "SELECT " + _LOCK_KEYS.format(LOCK_CLASS, "$1::int4[]")),
    (SELECT_LOCKED, _SELECT_KEYS.format("$1") + " FOR UPDATE"),
    (
        TRY_LOCK_KEYS,
        f"SELECT held, set_config('{_HELD_SETTING}', held::text, true) FROM ("
        "SELECT coalesce(array_agg(h), '{}') AS held FROM unnest($1::int4[]) AS h "
        f"WHERE NOT pg_try_advisory_xact_lock({LOCK_CLASS}, h)) AS tried",
    ),
    (
        SELECT_TRIED,
        _SELECT_KEYS.format("$1")
        + f" AND {_LOCK_ID} <> ALL(current_setting('{_HELD_SETTING}')::int4[]) FOR UPDATE",
    ),
)
COUNT = f"SELECT count(*), count(deadline) FROM {TABLE}"
COUNT_KEYS = f"SELECT count(*), count(deadline) FROM {TABLE} WHERE key = ANY(%b::bytea[])"
SLICE = (
    f"SELECT scan_hash, key, deadline, kind FROM {TABLE} WHERE scan_hash >= %s ORDER BY scan_hash"
)
SLICE_AT = f"SELECT scan_hash, key, deadline, kind FROM {TABLE} WHERE scan_hash = %s"
RECENT = (
    f"SELECT {COLUMNS} FROM {TABLE} WHERE deadline IS NULL OR deadline > %s "
    "ORDER BY accessed_at DESC LIMIT %s"
)


def lock_id(key: bytes) -> int:
    """The key's advisory lock id: its CRC-32 as a signed 32-bit integer."""
    h = zlib.crc32(key)
    return h - _FULL if h >= _HALF else h


def lock_ids(keys: Iterable[bytes]) -> list[int]:
    """The lock ids of ``keys``, each once, in the order every transaction
    takes them."""
    return sorted({lock_id(key) for key in keys})


# ------------------------------------------------------------------ payloads


class Payload(NamedTuple):
    """A notification, parsed: who sent it, when (the sender's clock), and what
    changed (``everything``: a flush)."""

    host: str
    sent_at: float
    keys: list[bytes]
    hashes: list[int]
    everything: bool


def payloads(host: str, sent_at: float, keys: Iterable[bytes], everything: bool) -> list[str]:
    """The payloads announcing ``keys`` (or everything), each under the limit."""
    # Seconds to the microsecond, as ":.6f" writes them, from integers whose
    # str() is a compiled primitive (the six digits: a seventh, leading one
    # cut off), not the float's decimal formatting: this function 10,995 ->
    # 5,911 instructions a one-key commit (callgrind); round(), divmod() and
    # ":06d" instead were method calls and cost more than the float's.
    micros = int(sent_at * 1_000_000 + 0.5)
    seconds = micros // 1_000_000
    head = f"{host} {seconds}.{str(1_000_000 + micros - seconds * 1_000_000)[1:]}"
    if everything:
        return [f"{head} *"]
    out: list[str] = []
    parts = [head]
    size = len(head)
    budget = PAYLOAD_LIMIT
    for key in keys:
        item = binascii.b2a_base64(key, newline=False).decode("ascii")
        if len(item) + len(head) + 1 > budget:
            item = f"#{zlib.crc32(key)}"  # too long to name: its scan hash
        if size + 1 + len(item) > budget:
            out.append(" ".join(parts))
            parts = [head]
            size = len(head)
        parts.append(item)
        size += 1 + len(item)
    if len(parts) > 1:
        out.append(" ".join(parts))
    return out


def parse(payload: str) -> Payload | None:
    """A payload as :func:`payloads` makes it, or ``None`` if it is not one."""
    fields = payload.split(" ")
    if len(fields) < 3:
        return None
    try:
        sent_at = float(fields[1])
        keys: list[bytes] = []
        hashes: list[int] = []
        everything = False
        for item in fields[2:]:
            if item == "*":
                everything = True
            elif item.startswith("#"):
                hashes.append(int(item[1:]))
            else:
                keys.append(binascii.a2b_base64(item, strict_mode=True))
    except (ValueError, binascii.Error):
        return None
    return Payload(fields[0], sent_at, keys, hashes, everything)
