"""Owner tokens: which runtime, in which process on which host, holds a session's claim."""

from __future__ import annotations

import os
import socket
import uuid

__all__ = ["new_owner_id", "owner_is_dead"]

_HOST = socket.gethostname()


def new_owner_id() -> str:
    """``host:pid:random`` -- unique per runtime, and telling where it runs."""
    return f"{_HOST}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def owner_is_dead(owner: str) -> bool:
    """True only when ``owner`` ran on this host in a process that no longer exists.

    Anything else (another host, a live process, a token we cannot parse) counts as alive: the
    claim then ends only when its lease expires. A reused pid errs on the same safe side.
    """
    host, _, rest = owner.partition(":")
    pid_text, _, _ = rest.partition(":")
    if host != _HOST or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False  # another runtime of this very process: alive
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # exists, but not ours to signal
    return False
