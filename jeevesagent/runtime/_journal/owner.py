"""Owner tokens: which runtime, in which process of which pid namespace on which host, holds a
session's claim -- and whether that process is provably gone.

A token reads ``host:pid@pidns:random``. ``pidns`` names the Linux pid namespace the pid belongs
to (the device and inode of ``/proc/self/ns/pid``): containers with host networking share a
hostname but not a pid space, so a pid means something only next to its namespace. Where there is
no ``/proc`` the token is ``host:pid:random`` (the form older versions wrote), and such a pid is
never looked up. Older versions read ``pid@pidns`` as no pid at all, so they wait for the lease
too rather than look a pid up in the wrong namespace.
"""

from __future__ import annotations

import os
import socket
import uuid

__all__ = ["new_owner_id", "owner_is_dead", "pid_namespace"]

_HOST = socket.gethostname()


def pid_namespace() -> str | None:
    """This process's pid namespace as ``dev.inode`` of ``/proc/self/ns/pid``; ``None`` where
    there is no such file (not Linux, or no ``/proc``)."""
    try:
        st = os.stat("/proc/self/ns/pid")
    except OSError:
        return None
    return f"{st.st_dev}.{st.st_ino}"


def new_owner_id() -> str:
    """``host:pid@pidns:random`` -- unique per runtime, and telling where it runs."""
    ns = pid_namespace()
    where = f"{os.getpid()}" if ns is None else f"{os.getpid()}@{ns}"
    return f"{_HOST}:{where}:{uuid.uuid4().hex[:12]}"


def owner_is_dead(owner: str) -> bool:
    """True only when ``owner`` ran on this host, in this pid namespace, in a process that no
    longer exists.

    Anything else counts as alive, and the claim then ends only when its lease expires: another
    host, another pid namespace (another container), a live process, a token without a
    namespace (from an older version, or a platform without ``/proc``), a token we cannot parse.
    A reused pid errs on the same safe side.
    """
    host, _, rest = owner.partition(":")
    where, _, _ = rest.partition(":")
    pid_text, _, ns = where.partition("@")
    if host != _HOST or not pid_text.isdigit() or not ns:
        return False
    mine = pid_namespace()
    if mine is None or ns != mine:
        return False  # not provably our pid space: the pid may name another process here
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
