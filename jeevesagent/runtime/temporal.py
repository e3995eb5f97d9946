"""``jeevesagent.runtime.temporal``: sessions whose journal and mailbox are a Temporal cluster
(extra ``[temporal]``; asyncio only).

``TemporalRuntime`` is also importable as ``jeevesagent.runtime.TemporalRuntime`` (loaded on first
use). Importing this module imports temporalio, or raises an ``ImportError`` naming the extra to
install. See docs/guides/integrations.md.
"""

try:
    import temporalio as _temporalio  # noqa: F401
except ImportError as _exc:
    raise ImportError(
        "TemporalRuntime needs the temporal extra: pip install 'jeevesagent[temporal]'"
    ) from _exc

from ._temporal.runtime import TemporalJournalStore as TemporalJournalStore
from ._temporal.runtime import TemporalRuntime as TemporalRuntime

__all__ = ("TemporalJournalStore", "TemporalRuntime")

for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
