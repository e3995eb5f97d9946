"""``jeevesagent.runtime.dbos``: sessions kept by DBOS Transact (extra ``[dbos]``).

``DBOSRuntime`` is also importable as ``jeevesagent.runtime.DBOSRuntime`` (loaded on first use).
Importing this module does not import ``dbos``; making a ``DBOSRuntime`` does, or raises an
``ImportError`` naming the extra to install. See docs/guides/integrations.md.
"""

from ._dbos.runtime import DBOSRuntime as DBOSRuntime
from ._dbos.runtime import DBOSSession as DBOSSession

__all__ = ("DBOSRuntime", "DBOSSession")

for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
