"""The shared bus: the hook log on NATS JetStream, for several processes and machines.

Imported only when a bus URL is configured (``--bus`` / ``COMFYVN_BUS_URL``); the embedded
SQLite bus needs none of it. ``nats-py`` is the ``bus`` extra.
"""

from .bus import BusUnavailableError, JetStreamBus
from .event_log import JetStreamEventLog, check_namespace
from .link import BusUnreachableError, NatsLink, display_url

__all__ = [
    "BusUnavailableError",
    "BusUnreachableError",
    "JetStreamBus",
    "JetStreamEventLog",
    "NatsLink",
    "check_namespace",
    "display_url",
    "open_bus",
]


def open_bus(
    url: str,
    namespace: str,
    *,
    name: str = "comfyvn",
    **bus_options: object,
) -> JetStreamBus:
    """Connect, make sure the stream exists with this node's retention, start the bus."""
    from ..event_log import RetentionPolicy

    retention = bus_options.get("retention") or RetentionPolicy()
    link = NatsLink(url, name=name)
    link.start()
    try:
        store = JetStreamEventLog(link, namespace, retention)  # type: ignore[arg-type]
        store.ensure_stream()
        return JetStreamBus(link, store, **bus_options)  # type: ignore[arg-type]
    except BaseException:
        link.close()
        raise
