"""Pub/sub commands: SUBSCRIBE PSUBSCRIBE UNSUBSCRIBE PUNSUBSCRIBE PUBLISH PUBSUB.

The channels live in the daemon's hub (:mod:`.channels`, ``cx.state.pubsub``).
A subscription is confirmed with a :class:`~sessiond.protocol.Push` per
channel (an array in RESP2, a push in RESP3), as Redis does; while a RESP2
client is subscribed, the dispatcher refuses the commands it may not send.
"""

from __future__ import annotations

from typing import Any

from ..protocol import Push, Replies, Status
from . import errors
from .registry import PUBSUB, Args, Call, Reply, command, subcommand
from .util import glob_to_regex, text


def _replies(replies: list[Push]) -> Reply:
    return replies[0] if len(replies) == 1 else Replies(replies)


@command(
    "SUBSCRIBE",
    -2,
    "pubsub noscript loading stale",
    group=PUBSUB,
    summary="Listen for messages published to channels",
    syntax="channel ...",
)
def cmd_subscribe(cx: Call, args: Args) -> Reply:
    client = cx.client
    hub = cx.state.pubsub
    replies = []
    for channel in args[1:]:
        hub.subscribe(client, channel)
        replies.append(Push([b"subscribe", channel, client.subscriptions]))
    return _replies(replies)


@command(
    "PSUBSCRIBE",
    -2,
    "pubsub noscript loading stale",
    group=PUBSUB,
    summary="Listen for messages published to channels matching patterns",
    syntax="pattern ...",
)
def cmd_psubscribe(cx: Call, args: Args) -> Reply:
    client = cx.client
    hub = cx.state.pubsub
    replies = []
    for pattern in args[1:]:
        hub.psubscribe(client, pattern)
        replies.append(Push([b"psubscribe", pattern, client.subscriptions]))
    return _replies(replies)


@command(
    "UNSUBSCRIBE",
    -1,
    "pubsub noscript loading stale",
    group=PUBSUB,
    summary="Stop listening to channels (all of them without arguments)",
    syntax="[channel ...]",
)
def cmd_unsubscribe(cx: Call, args: Args) -> Reply:
    client = cx.client
    hub = cx.state.pubsub
    channels = args[1:] or list(client.channels)
    replies = []
    for channel in channels:
        hub.unsubscribe(client, channel)
        replies.append(Push([b"unsubscribe", channel, client.subscriptions]))
    if not replies:  # subscribed to none: Redis still answers, with a null channel
        replies.append(Push([b"unsubscribe", None, client.subscriptions]))
    return _replies(replies)


@command(
    "PUNSUBSCRIBE",
    -1,
    "pubsub noscript loading stale",
    group=PUBSUB,
    summary="Stop listening to patterns (all of them without arguments)",
    syntax="[pattern ...]",
)
def cmd_punsubscribe(cx: Call, args: Args) -> Reply:
    client = cx.client
    hub = cx.state.pubsub
    patterns = args[1:] or list(client.patterns)
    replies = []
    for pattern in patterns:
        hub.punsubscribe(client, pattern)
        replies.append(Push([b"punsubscribe", pattern, client.subscriptions]))
    if not replies:
        replies.append(Push([b"punsubscribe", None, client.subscriptions]))
    return _replies(replies)


@command(
    "PUBLISH",
    3,
    "pubsub loading stale fast may_replicate",
    group=PUBSUB,
    summary="Post a message to a channel",
    syntax="channel message",
)
def cmd_publish(cx: Call, args: Args) -> Reply:
    return cx.state.pubsub.publish(args[1], args[2])


_HELP = (
    "PUBSUB <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "CHANNELS [<pattern>]",
    "    Return the currently active channels matching a <pattern> (default: '*').",
    "NUMPAT",
    "    Return number of subscriptions to patterns.",
    "NUMSUB [<channel> ...]",
    "    Return the number of subscribers for the specified channels, excluding",
    "    pattern subscriptions(default: no channels).",
    "HELP",
    "    Print this help.",
)


@command(
    "PUBSUB",
    -2,
    group=PUBSUB,
    summary="Pub/sub introspection",
    subcommands={
        "CHANNELS": (-2, "[pattern]", "The active channels, optionally matching a pattern"),
        "NUMSUB": (-2, "[channel ...]", "The subscriber count of channels"),
        "NUMPAT": (2, "", "The number of distinct patterns subscribed to"),
        "HELP": (2, "", "Show helpful text about the different subcommands"),
    },
)
def cmd_pubsub(cx: Call, args: Args) -> Reply:
    hub = cx.state.pubsub
    sub = subcommand(args, "PUBSUB")
    if sub == b"HELP":
        return [Status(line) for line in _HELP]
    if sub == b"CHANNELS":
        if len(args) > 3:  # Redis' handler's own check, in its words
            raise errors.unknown_subcommand(text(args[1]), "PUBSUB")
        return hub.active(glob_to_regex(args[2]) if len(args) == 3 else None)
    if sub == b"NUMSUB":
        out: list[Any] = []
        for channel in args[2:]:
            out.append(channel)
            out.append(hub.subscribers(channel))
        return out
    return len(hub.patterns)  # NUMPAT
