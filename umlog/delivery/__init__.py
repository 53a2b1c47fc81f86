"""Share groups: queues as cursors over the log (``Broker.share_group``).

Engine-level, like ``umlog.groups``: above ``umlog.log``, no protocol, no
asyncio. ``state`` owns the window and its bytes in ``__share_group_state``,
``store`` the internal topic, ``group`` the handles (acquire, ack, release,
reject, dead letters), ``describe`` what the CLI shows.
"""

from .group import DLT_HEADERS, TTL_HEADER, InvalidRecordStateError, ShareGroup, ShareRecord
from .store import STATE_TOPIC

__all__ = ["ShareGroup", "ShareRecord", "InvalidRecordStateError", "STATE_TOPIC", "TTL_HEADER", "DLT_HEADERS"]
