"""sessiond: a session-cache sidecar daemon speaking the Redis protocol."""

__version__ = "0.1.0"
REDIS_COMPAT_VERSION = "7.2.0"
