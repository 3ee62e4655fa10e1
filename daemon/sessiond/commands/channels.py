"""The daemon's pub/sub hub: who listens to which channel or pattern, PUBLISH,
and the keyspace events (``notify_keyspace_events``) sent through it.

One :class:`PubSub` per daemon: the app makes it, wires it to the keyspace
(:meth:`PubSub.attach`) and hands it to the :class:`~.state.ServerState`. A
message reaches a subscriber through the ``push`` its connection gave its
:class:`~.state.Client`; the connection queues it behind what it already owes
that client and drops a client whose unread output passes
``limits.max_output_buffer``. Nothing here waits or buffers: a publish costs
the message's encoding (once per protocol) and one call per subscriber.

The keyspace is told whether a keyspace event could reach anyone
(:meth:`~sessiond.keyspace.Keyspace.announce`): only when the flags send
events and someone listens to a keyspace-event channel or to a pattern.
Otherwise an event costs its handler one boolean test.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ..keyevents import (
    NOTIFY_KEYEVENT,
    NOTIFY_KEYSPACE,
    NOTIFY_NEW,
    format_events,
    parse_events,
    sends_events,
)
from .util import glob_to_regex

if TYPE_CHECKING:
    from ..keyspace import Keyspace
    from .state import Client

# The channels keyspace events are published on (database 0 only).
KEYSPACE_PREFIX = b"__keyspace@0__:"
KEYEVENT_PREFIX = b"__keyevent@0__:"
_EVENT_CHANNELS = (b"__keyspace@", b"__keyevent@")


class _Pattern:
    """One pattern's matcher and the clients subscribed to it."""

    __slots__ = ("clients", "regex")

    def __init__(self, pattern: bytes) -> None:
        self.regex: re.Pattern[bytes] = glob_to_regex(pattern)
        self.clients: dict[int, Client] = {}


def _deliver(
    clients: dict[int, Client], body: bytes, held: list[tuple[Client, bytes]] | None
) -> int:
    """Send a message (``body``: its encoding after the type byte) to each of
    ``clients``, as an array in RESP2 and a push in RESP3, or keep it in
    ``held`` for later (see :meth:`PubSub.hold`); how many clients there are."""
    resp2 = resp3 = b""
    for client in clients.values():
        push = client.push
        if push is None:
            continue
        if client.resp3:
            if not resp3:
                resp3 = b">" + body
            data = resp3
        else:
            if not resp2:
                resp2 = b"*" + body
            data = resp2
        if held is None:
            push(data)
        else:
            held.append((client, data))
    return len(clients)


class PubSub:
    """Channels and patterns with their subscribers, and the keyspace events
    in force (``events``, :mod:`sessiond.keyevents` bits)."""

    __slots__ = (
        "channels",
        "configured",
        "event_channels",
        "events",
        "held",
        "keyspace",
        "patterns",
    )

    def __init__(self) -> None:
        # Channel -> its subscribers by client id; only channels with some.
        self.channels: dict[bytes, dict[int, Client]] = {}
        self.patterns: dict[bytes, _Pattern] = {}
        self.event_channels = 0  # channels above that keyspace events go to
        self.events = 0
        # notify_keyspace_events as the config file last said (None: not yet).
        self.configured: str | None = None
        self.keyspace: Keyspace | None = None
        # Messages kept while a script runs (hold/release); None otherwise.
        self.held: list[tuple[Client, bytes]] | None = None

    # ------------------------------------------------------------ wiring

    def attach(self, keyspace: Keyspace) -> None:
        """Send ``keyspace``'s events through these channels from now on."""
        self.keyspace = keyspace
        self._update()

    def configure(self, events: str) -> bool:
        """The config file's ``notify_keyspace_events`` (start-up and each
        reload). It is put in force when it differs from what the file said
        before; otherwise a value set since with CONFIG SET stays, so that a
        reload of some other key does not silently turn off the events an
        application asked for. Whether it was put in force."""
        if events == self.configured:
            return False
        flags = parse_events(events)
        if flags is None:  # the config validated it
            raise ValueError(f"invalid notify_keyspace_events {events!r}")
        self.configured = events
        self.set_events(flags)
        return True

    def set_events(self, flags: int) -> None:
        """Put keyspace event flags in force (config, CONFIG SET)."""
        self.events = flags
        self._update()

    @property
    def events_text(self) -> str:
        """The flags in force as CONFIG GET shows them (``AKE``, ``Egx``)."""
        return format_events(self.events)

    def _update(self) -> None:
        """Tell the keyspace whether an event could reach a subscriber."""
        keyspace = self.keyspace
        if keyspace is None:
            return
        on = sends_events(self.events) and (self.event_channels > 0 or bool(self.patterns))
        new = on and bool(self.events & NOTIFY_NEW)
        if on != keyspace.notifying or new != keyspace.notifying_new:
            keyspace.announce(self.keyspace_event if on else None, new=new)

    # ------------------------------------------------------ subscriptions

    def subscribe(self, client: Client, channel: bytes) -> None:
        if channel in client.channels:
            return
        client.channels[channel] = None
        client.subscriptions += 1
        subscribers = self.channels.get(channel)
        if subscribers is None:
            subscribers = self.channels[channel] = {}
            if channel.startswith(_EVENT_CHANNELS):
                self.event_channels += 1
                self._update()
        subscribers[client.id] = client

    def unsubscribe(self, client: Client, channel: bytes) -> bool:
        """Whether ``client`` was subscribed to ``channel``."""
        if channel not in client.channels:
            return False
        del client.channels[channel]
        client.subscriptions -= 1
        subscribers = self.channels[channel]
        del subscribers[client.id]
        if not subscribers:
            del self.channels[channel]
            if channel.startswith(_EVENT_CHANNELS):
                self.event_channels -= 1
                self._update()
        return True

    def psubscribe(self, client: Client, pattern: bytes) -> None:
        if pattern in client.patterns:
            return
        client.patterns[pattern] = None
        client.subscriptions += 1
        matcher = self.patterns.get(pattern)
        if matcher is None:
            matcher = self.patterns[pattern] = _Pattern(pattern)
            if len(self.patterns) == 1:
                self._update()
        matcher.clients[client.id] = client

    def punsubscribe(self, client: Client, pattern: bytes) -> bool:
        """Whether ``client`` was subscribed to ``pattern``."""
        if pattern not in client.patterns:
            return False
        del client.patterns[pattern]
        client.subscriptions -= 1
        matcher = self.patterns[pattern]
        del matcher.clients[client.id]
        if not matcher.clients:
            del self.patterns[pattern]
            if not self.patterns:
                self._update()
        return True

    def drop(self, client: Client) -> None:
        """Unsubscribe ``client`` from everything, without a word to it (its
        connection closed, or RESET)."""
        for channel in list(client.channels):
            self.unsubscribe(client, channel)
        for pattern in list(client.patterns):
            self.punsubscribe(client, pattern)

    # ---------------------------------------------------------- messages

    def publish(self, channel: bytes, message: bytes) -> int:
        """Send ``message`` to the subscribers of ``channel`` and of every
        pattern it matches (Redis' order: channel first, then patterns);
        how many clients it went to (one subscribed twice counts twice)."""
        subscribers = self.channels.get(channel)
        patterns = self.patterns
        if subscribers is None and not patterns:
            return 0
        tail = b"$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(channel), channel, len(message), message)
        receivers = 0
        held = self.held
        if subscribers is not None:
            receivers = _deliver(subscribers, b"3\r\n$7\r\nmessage\r\n" + tail, held)
        for pattern, matcher in patterns.items():
            if matcher.regex.match(channel) is not None:
                head = b"4\r\n$8\r\npmessage\r\n$%d\r\n%b\r\n" % (len(pattern), pattern)
                receivers += _deliver(matcher.clients, head + tail, held)
        return receivers

    def hold(self) -> None:
        """Keep every message from now on until :meth:`release` (a script
        runs: what it publishes, and the keyspace events of its writes, go out
        only if it is not rolled back)."""
        self.held = []

    def release(self, *, deliver: bool) -> None:
        """Send the messages kept since :meth:`hold`, in their order, to the
        subscribers still there; or, with ``deliver`` false, drop them."""
        held = self.held
        self.held = None
        if held and deliver:
            for client, data in held:
                push = client.push
                if push is not None:
                    push(data)

    def keyspace_event(self, cls: int, event: bytes, key: bytes) -> None:
        """Publish keyspace event ``event`` of class ``cls`` about ``key``, as
        Redis' notifyKeyspaceEvent does: on ``__keyspace@0__:<key>`` (K) and
        ``__keyevent@0__:<event>`` (E), if the flags in force name ``cls``."""
        events = self.events
        if not events & cls:
            return
        if events & NOTIFY_KEYSPACE:
            self.publish(KEYSPACE_PREFIX + key, event)
        if events & NOTIFY_KEYEVENT:
            self.publish(KEYEVENT_PREFIX + event, key)

    # ------------------------------------------------------ introspection

    def active(self, pattern: re.Pattern[bytes] | None) -> list[bytes]:
        """Channels with a subscriber, matching ``pattern`` (None: all)."""
        if pattern is None:
            return list(self.channels)
        return [c for c in self.channels if pattern.match(c) is not None]

    def subscribers(self, channel: bytes) -> int:
        found = self.channels.get(channel)
        return 0 if found is None else len(found)
