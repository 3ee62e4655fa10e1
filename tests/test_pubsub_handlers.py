"""Pub/sub and keyspace events without a socket: the dispatcher over a real
keyspace and cache with an injected clock (tests/test_handlers.py's harness),
and subscribers whose messages land in a list.

These pin the rules fast and deterministically: what each command publishes
and in which order, subscribed mode, the zero-cost switch (nothing listens:
no listener on the core, ``notifying`` false), ``expired`` from memory and
from the store, ``evicted`` only without a store, ``new`` knowing the store.
tests/test_pubsub.py holds the same through real clients, and against
redis-server.
"""

from __future__ import annotations

from typing import Any

import pytest
from sessiond.commands import Client
from sessiond.commands.channels import PubSub
from sessiond.keyevents import format_events, parse_events
from sessiond.protocol import OK, Error, Push, Replies, encode
from test_handlers import Daemon, timed_engine


def decode(data: bytes) -> list[Any]:
    """Every RESP value in ``data`` (arrays, pushes, bulk strings, integers, nulls)."""
    values: list[Any] = []
    pos = 0

    def one() -> Any:
        nonlocal pos
        end = data.index(b"\r\n", pos)
        kind, body = data[pos : pos + 1], data[pos + 1 : end]
        pos = end + 2
        if kind in (b"*", b">"):
            return [one() for _ in range(int(body))]
        if kind == b"$":
            if body == b"-1":
                return None
            value = data[pos : pos + int(body)]
            pos += int(body) + 2
            return value
        if kind == b":":
            return int(body)
        if kind == b"_":
            return None
        raise AssertionError(f"unexpected RESP type {kind!r}")

    while pos < len(data):
        values.append(one())
    return values


class Listener:
    """A subscribed client whose messages are kept, decoded."""

    def __init__(self, d: Daemon, *, resp3: bool = False) -> None:
        self.client = d.new_client()
        self.client.resp3 = resp3
        self.raw: list[bytes] = []
        self.client.push = self.raw.append
        self.d = d

    def __call__(self, *words: str) -> Any:
        return self.d(*words, client=self.client)

    def take(self) -> list[list[Any]]:
        out = [m for chunk in self.raw for m in decode(chunk)]
        self.raw.clear()
        return out

    def events(self) -> list[tuple[bytes, bytes]]:
        """(channel, payload) of every pmessage received since the last call."""
        return [(m[2], m[3]) for m in self.take() if m[0] == b"pmessage"]


def wired(flags: str = "", **kwargs: Any) -> Daemon:
    d = Daemon(**kwargs)
    d.state.pubsub.attach(d.keyspace)
    d.state.pubsub.configure(flags)
    return d


def events_of(d: Daemon, flags: str = "KEA") -> Listener:
    d.state.pubsub.configure(flags)
    listener = Listener(d)
    listener("PSUBSCRIBE", "__key*__:*")
    return listener


def ks(event: str, key: str) -> list[tuple[bytes, bytes]]:
    """The two messages of one event, keyspace channel first (K and E on)."""
    return [
        (f"__keyspace@0__:{key}".encode(), event.encode()),
        (f"__keyevent@0__:{event}".encode(), key.encode()),
    ]


# --------------------------------------------------------------- flags


@pytest.mark.parametrize(
    ("given", "shown"),
    [("", ""), ("KEA", "AKE"), ("Egx", "gxE"), ("KEg$", "g$KE"), ("AKEmn", "AnKEm"), ("$", "$")],
)
def test_flags_read_and_written_back_as_redis_does(given: str, shown: str) -> None:
    flags = parse_events(given)
    assert flags is not None
    assert format_events(flags) == shown


def test_an_unknown_letter_is_refused() -> None:
    assert parse_events("KEQ") is None
    assert parse_events("K E") is None


# --------------------------------------------------------- subscriptions


def test_subscribe_confirms_each_channel_with_the_running_count() -> None:
    d = Daemon(store=False)
    reply = d("SUBSCRIBE", "a", "b", "a")
    assert isinstance(reply, Replies)
    assert reply == [[b"subscribe", b"a", 1], [b"subscribe", b"b", 2], [b"subscribe", b"a", 2]]
    assert all(isinstance(r, Push) for r in reply)
    assert d("PSUBSCRIBE", "n*") == [b"psubscribe", b"n*", 3]
    assert d("UNSUBSCRIBE", "b", "zzz") == [[b"unsubscribe", b"b", 2], [b"unsubscribe", b"zzz", 2]]
    assert d("PUNSUBSCRIBE") == [b"punsubscribe", b"n*", 1]
    assert d("PUNSUBSCRIBE") == [b"punsubscribe", None, 1]  # none left: a null pattern
    assert d("UNSUBSCRIBE") == [b"unsubscribe", b"a", 0]
    assert d("UNSUBSCRIBE") == [b"unsubscribe", None, 0]
    assert d.client.subscriptions == 0
    assert not d.state.pubsub.channels and not d.state.pubsub.patterns


def test_confirmations_are_arrays_in_resp2_and_pushes_in_resp3() -> None:
    reply = Push([b"unsubscribe", None, 0])
    assert encode(reply, False) == b"*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n"
    assert encode(reply, True) == b">3\r\n$11\r\nunsubscribe\r\n_\r\n:0\r\n"
    two = Replies([Push([b"subscribe", b"a", 1]), Push([b"subscribe", b"b", 2])])
    assert encode(two, True) == (
        b">3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n>3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n"
    )


def test_publish_reaches_channel_then_pattern_subscribers_and_counts_them() -> None:
    d = Daemon(store=False)
    two, three = Listener(d), Listener(d, resp3=True)
    two("SUBSCRIBE", "news")
    two("PSUBSCRIBE", "n*")
    three("PSUBSCRIBE", "n?ws")
    assert d("PUBLISH", "news", "hi") == 3  # a client subscribed twice counts twice
    assert two.raw == [
        b"*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$2\r\nhi\r\n",
        b"*4\r\n$8\r\npmessage\r\n$2\r\nn*\r\n$4\r\nnews\r\n$2\r\nhi\r\n",
    ]
    assert three.raw == [b">4\r\n$8\r\npmessage\r\n$4\r\nn?ws\r\n$4\r\nnews\r\n$2\r\nhi\r\n"]
    assert d("PUBLISH", "other", "x") == 0
    assert d("PUBSUB", "NUMSUB", "news", "none") == [b"news", 1, b"none", 0]
    assert d("PUBSUB", "NUMPAT") == 2
    assert d("PUBSUB", "CHANNELS") == [b"news"]
    assert d("PUBSUB", "CHANNELS", "x*") == []
    assert d("PUBSUB", "channels", "n[aeiou]ws") == [b"news"]


def test_patterns_match_as_redis_globs() -> None:
    d = Daemon(store=False)
    listener = Listener(d)
    listener("PSUBSCRIBE", r"a\*[^x]?")
    assert d("PUBLISH", "a*bc", "m") == 1
    assert d("PUBLISH", "a*xc", "m") == 0
    assert d("PUBLISH", "abbc", "m") == 0


def test_pubsub_help_and_errors() -> None:
    d = Daemon(store=False)
    help_lines = d("PUBSUB", "HELP")
    assert help_lines[0] == "PUBSUB <subcommand> [<arg> [value] [opt] ...]. Subcommands are:"
    assert help_lines[-2:] == ["HELP", "    Print this help."]
    reply = d("PUBSUB", "nope")
    assert isinstance(reply, Error)
    assert reply.message == "ERR unknown subcommand 'nope'. Try PUBSUB HELP."
    reply = d("PUBSUB", "NUMPAT", "x")
    assert isinstance(reply, Error)
    assert reply.message == "ERR wrong number of arguments for 'pubsub|numpat' command"


# ------------------------------------------------------- subscribed mode


def test_a_subscribed_resp2_client_may_only_subscribe_ping_quit_reset() -> None:
    d = Daemon(store=False)
    d("SUBSCRIBE", "c")
    reply = d("GET", "k")
    assert isinstance(reply, Error)
    assert reply.message == (
        "ERR Can't execute 'get': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET "
        "are allowed in this context"
    )
    refused = d("CONFIG", "GET", "maxclients")
    assert "'config|get'" in refused.message
    arity = d("GET")
    assert "wrong number of arguments for 'get'" in arity.message  # arity first, as Redis
    assert d("PING") == [b"pong", b""]
    assert d("PING", "hello") == [b"pong", b"hello"]
    get = d.state.stats.commands["GET"]
    assert (get.errors, get.rejected) == (2, 2)  # refused before it ran: rejected, as Redis
    d("UNSUBSCRIBE")
    assert d("PING") == "PONG"
    assert d("GET", "k") is None


def test_resp3_lifts_subscribed_mode_and_reset_ends_it() -> None:
    d = Daemon(store=False)
    d.client.resp3 = True
    d("SUBSCRIBE", "c")
    assert d("SET", "k", "v") is OK
    assert d("PING") == "PONG"
    d.client.resp3 = False  # HELLO 2
    assert isinstance(d("GET", "k"), Error)
    assert d("RESET") == "RESET"
    assert d.client.subscriptions == 0
    assert not d.state.pubsub.channels
    assert d("GET", "k") == b"v"


def test_a_closed_connection_leaves_no_subscription_behind() -> None:
    d = Daemon(store=False)
    listener = Listener(d)
    listener("SUBSCRIBE", "a", "b")
    listener("PSUBSCRIBE", "x*")
    d.state.pubsub.drop(listener.client)
    assert not d.state.pubsub.channels and not d.state.pubsub.patterns
    assert d("PUBLISH", "a", "m") == 0


# ------------------------------------------------- keyspace events: cost


def test_nothing_listens_until_flags_and_a_subscriber_both_say_so() -> None:
    d = wired("")
    ks_ = d.keyspace
    assert not ks_.notifying and d.cache.listener is None
    listener = Listener(d)
    listener("SUBSCRIBE", "plain-channel")
    d.state.pubsub.configure("KEA")
    assert not ks_.notifying  # nobody listens to an event channel
    listener("SUBSCRIBE", "__keyevent@0__:expired")
    assert ks_.notifying and d.cache.listener is not None
    assert not ks_.notifying_new
    d.state.pubsub.configure("KEAn")
    assert ks_.notifying_new
    d.state.pubsub.configure("A")  # classes but no channel kind: sends nothing
    assert not ks_.notifying and d.cache.listener is None
    d.state.pubsub.configure("Egx")
    assert ks_.notifying
    listener("UNSUBSCRIBE")
    assert not ks_.notifying and d.cache.listener is None
    listener("PSUBSCRIBE", "*")
    assert ks_.notifying


def test_a_config_set_value_survives_reloads_until_the_file_changes_it() -> None:
    hub = PubSub()
    assert hub.configure("")
    hub.set_events(parse_events("Egx") or 0)  # CONFIG SET
    assert not hub.configure("")  # a reload that left the key alone
    assert hub.events_text == "gxE"
    assert hub.configure("KEA")  # the file changed it: the file wins
    assert hub.events_text == "AKE"


# ------------------------------------------------ keyspace events: names


def test_string_commands_send_redis_events_in_redis_order() -> None:
    d = wired(store=False)
    listener = events_of(d)
    d("SET", "a", "1")
    d("SET", "a", "2", "EX", "100")
    d("SET", "a", "three", "KEEPTTL")
    d("SET", "a", "4", "NX")  # exists: no change, no event
    d("SET", "zz", "1", "XX")  # absent: no change, no event
    d("SETEX", "b", "10", "v")
    d("SETNX", "b", "w")  # exists: nothing
    d("MSET", "c", "1", "d", "2")
    d("INCR", "n")
    d("DECRBY", "n", "3")
    d("INCR", "a")  # not an integer: an error, no event
    d("GETDEL", "c")
    d("GETEX", "b", "PERSIST")
    d("GETEX", "b", "PERSIST")  # had no TTL left: nothing
    d("GETEX", "b", "EX", "50")
    assert listener.events() == [
        *ks("set", "a"),
        *ks("set", "a"),
        *ks("expire", "a"),
        *ks("set", "a"),
        *ks("set", "b"),
        *ks("expire", "b"),
        *ks("set", "c"),
        *ks("set", "d"),
        *ks("incrby", "n"),
        *ks("incrby", "n"),
        *ks("del", "c"),
        *ks("persist", "b"),
        *ks("expire", "b"),
    ]


def test_expiry_and_keyspace_commands_send_redis_events() -> None:
    d = wired(store=False)
    listener = events_of(d)
    d("SET", "a", "1")
    d("SET", "b", "1")
    listener.take()
    d("EXPIRE", "a", "100")
    d("EXPIRE", "a", "100", "NX")  # has a TTL: nothing
    d("PERSIST", "a")
    d("PERSIST", "a")  # none left: nothing
    d("PEXPIREAT", "a", str(int(d.clock.now * 1000) - 1))  # in the past: deleted
    d("GETEX", "b", "EXAT", str(int(d.clock.now) - 5))  # in the past: deleted
    d("SET", "c", "1")
    d("SET", "e", "1")
    d("DEL", "c", "nope", "e")
    d("FLUSHDB")  # Redis tells nothing of a flush
    assert listener.events() == [
        *ks("expire", "a"),
        *ks("persist", "a"),
        *ks("del", "a"),
        *ks("del", "b"),
        *ks("set", "c"),
        *ks("set", "e"),
        *ks("del", "c"),
        *ks("del", "e"),
    ]


def test_a_write_already_past_its_deadline_is_told_as_redis_tells_it() -> None:
    d = wired(store=False)
    listener = events_of(d, "KEAn")
    d("SET", "old", "1")
    listener.take()
    past = str(int(d.clock.now) - 5)
    assert d("SET", "old", "2", "EXAT", past, "GET") == b"1"
    assert d("SET", "fresh", "2", "EXAT", past) is OK
    assert d("EXISTS", "old", "fresh") == 0
    assert listener.events() == [
        *ks("set", "old"),
        *ks("expire", "old"),
        *ks("expired", "old"),
        *ks("new", "fresh"),
        *ks("set", "fresh"),
        *ks("expire", "fresh"),
        *ks("expired", "fresh"),
    ]
    assert d.cache.expirations == 2


def test_expired_from_lazy_and_active_expiry() -> None:
    d = wired(store=False, sliding=False)
    listener = events_of(d, "Ex")
    d("SET", "lazy", "1", "EX", "5")
    d("SET", "active", "1", "EX", "5")
    d.clock.now += 6
    assert d("GET", "lazy") is None
    assert listener.events() == [(b"__keyevent@0__:expired", b"lazy")]
    d.cache.sweep()
    assert listener.events() == [(b"__keyevent@0__:expired", b"active")]


def test_a_transaction_that_watched_leaves_expiry_events_on() -> None:
    """The last WATCH ending (EXEC, DISCARD, UNWATCH, RESET, a closed
    connection) once unhooked the core's listener that expiry events need."""
    d = wired(store=False, sliding=False)
    listener = events_of(d, "Ex")
    d("WATCH", "x")
    d("UNWATCH")
    d("SET", "k", "1", "EX", "5")
    d.clock.now += 6
    d.cache.sweep()
    assert listener.events() == [(b"__keyevent@0__:expired", b"k")]


def test_a_script_stopped_by_the_time_limit_tells_nothing() -> None:
    """Its writes are rolled back: the events of those writes, and what it
    published, are dropped with them. A script that ends sends them all."""
    d = wired(scripts=timed_engine())
    d("SET", "sess", "data")
    listener = events_of(d, "KEA")
    listener("SUBSCRIBE", "plain")
    listener.take()
    stopped = "redis.call('DEL', KEYS[1]) redis.call('PUBLISH', 'plain', 'x') while true do end"
    assert str(d("EVAL", stopped, "1", "sess")).startswith("ERR Script killed")
    assert d("GET", "sess") == b"data"
    assert listener.take() == []
    ended = "redis.call('DEL', KEYS[1]) return redis.call('PUBLISH', 'plain', 'x')"
    assert d("EVAL", ended, "1", "sess") == 1
    assert listener.take() == [
        [b"pmessage", b"__key*__:*", b"__keyspace@0__:sess", b"del"],
        [b"pmessage", b"__key*__:*", b"__keyevent@0__:del", b"sess"],
        [b"message", b"plain", b"x"],
    ]


def test_expired_from_the_store_for_sessions_only_there() -> None:
    d = wired()
    listener = events_of(d, "Egx")
    d("SET", "s", "v", "EX", "5")
    assert d("SESSION.INVALIDATE", "s") == 1  # memory lets go; the store keeps it
    assert listener.events() == [(b"__keyevent@0__:expire", b"s")]  # not "evicted"
    d.clock.now += 6
    assert d.keyspace.expire_store(100) == 1
    assert listener.events() == [(b"__keyevent@0__:expired", b"s")]
    assert d.keyspace.expire_store(100) == 0  # once


def test_eviction_is_an_event_only_without_a_store() -> None:
    with_store = wired(max_sessions=1)
    heard = events_of(with_store, "Ee")
    with_store("SET", "a", "1")
    with_store("SET", "b", "1")  # evicts a to the store: a still exists
    assert heard.events() == []
    assert with_store("GET", "a") == b"1"
    memory_only = wired(store=False, max_sessions=1)
    heard = events_of(memory_only, "Ee")
    memory_only("SET", "a", "1")
    memory_only("SET", "b", "1")  # a is gone
    assert heard.events() == [(b"__keyevent@0__:evicted", b"a")]
    assert memory_only("GET", "a") is None


def test_keymiss_for_reads_that_miss() -> None:
    d = wired(store=False)
    listener = events_of(d, "Em")
    d("SET", "here", "1")
    for words in (
        ("GET", "gone"),
        ("MGET", "here", "gone"),
        ("STRLEN", "gone"),
        ("EXISTS", "gone", "here"),
        ("TTL", "gone"),
        ("TYPE", "gone"),
        ("TOUCH", "gone"),
        ("GETDEL", "gone"),
        ("SET", "gone", "v", "GET"),
        ("INCR", "other"),  # a write's lookup: no keymiss
        ("EXPIRE", "absent", "5"),  # likewise
    ):
        d(*words)
    assert [p for _, p in listener.events()] == [b"gone"] * 9


def test_new_is_told_before_the_write_and_knows_the_store() -> None:
    d = wired()
    listener = events_of(d, "KEA$n")
    d("SET", "fresh", "1")
    d("SET", "fresh", "2")
    d("SESSION.INVALIDATE", "fresh")  # only in the store now
    d("SET", "fresh", "3")  # a plain SET: it is read through to know it is not new
    d("INCR", "counter")
    assert listener.events() == [
        *ks("new", "fresh"),
        *ks("set", "fresh"),
        *ks("set", "fresh"),
        *ks("set", "fresh"),
        *ks("new", "counter"),
        *ks("incrby", "counter"),
    ]


def test_new_knows_the_store_inside_a_transaction_too() -> None:
    d = wired()
    listener = events_of(d, "E$n")
    d("SET", "k", "1")
    d("SESSION.INVALIDATE", "k")
    d("MULTI")
    d("SET", "k", "2")
    d("MSET", "k", "3", "other", "1")
    assert d("EXEC") == [OK, OK]
    assert listener.events() == [
        (b"__keyevent@0__:new", b"k"),
        (b"__keyevent@0__:set", b"k"),
        (b"__keyevent@0__:set", b"k"),
        (b"__keyevent@0__:set", b"k"),
        (b"__keyevent@0__:new", b"other"),
        (b"__keyevent@0__:set", b"other"),
    ]


def test_hash_and_set_commands_send_redis_events() -> None:
    d = wired(store=False)
    listener = events_of(d, "KEAn")
    d("HSET", "h", "f", "v", "g", "w")
    d("HSETNX", "h", "f", "x")  # exists: nothing
    d("HINCRBY", "h", "n", "2")
    d("HDEL", "h", "f")
    d("HDEL", "h", "g", "n")
    d("SADD", "s", "a")
    d("SMOVE", "s", "t", "a")
    d("SPOP", "t")
    assert listener.events() == [
        *ks("new", "h"),
        *ks("hset", "h"),
        *ks("hincrby", "h"),
        *ks("hdel", "h"),
        *ks("hdel", "h"),
        *ks("del", "h"),
        *ks("new", "s"),
        *ks("sadd", "s"),
        *ks("srem", "s"),
        *ks("del", "s"),
        *ks("new", "t"),
        *ks("sadd", "t"),
        *ks("spop", "t"),
        *ks("del", "t"),
    ]


def test_session_commands_tell_what_they_do() -> None:
    d = wired(store=False)
    listener = events_of(d, "E$g")
    session_id = d("SESSION.CREATE", "TTL", "60")
    plain = d("SESSION.CREATE")
    assert listener.events() == [
        (b"__keyevent@0__:set", session_id),
        (b"__keyevent@0__:expire", session_id),
        (b"__keyevent@0__:set", plain),
    ]


def test_a_subscriber_that_writes_gets_its_own_events_before_the_reply() -> None:
    d = wired(store=False)
    d.state.pubsub.configure("E$")
    self_listener = Listener(d, resp3=True)
    self_listener("SUBSCRIBE", "__keyevent@0__:set")
    assert self_listener("SET", "k", "v") is OK
    assert self_listener.take() == [[b"message", b"__keyevent@0__:set", b"k"]]


def test_events_only_of_the_classes_asked_for() -> None:
    d = wired(store=False)
    listener = events_of(d, "Kg")  # generic only, keyspace channel only
    d("SET", "a", "1")
    d("DEL", "a")
    assert listener.events() == [(b"__keyspace@0__:a", b"del")]


def test_client_list_shows_subscriptions() -> None:
    d = Daemon(store=False)
    listener = Listener(d)
    listener("SUBSCRIBE", "a", "b")
    listener("PSUBSCRIBE", "c*")
    line = listener.client.info_line()  # CLIENT LIST's line
    assert " flags=PU " in line and " sub=2 psub=1 " in line


def test_subscribing_client_objects_hold_no_shared_state() -> None:
    first, second = Client(1, authenticated=True), Client(2, authenticated=True)
    first.channels[b"a"] = None
    assert not second.channels
