"""Is a process of this machine still there? For the leases and temporary files a killed run leaves."""

from __future__ import annotations

import os
import socket


def this_host() -> str:
    return socket.gethostname()


def process_gone(pid: int) -> bool:
    """True when no process of this host has `pid` (a reused pid reads as alive: the caller then waits)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process
        return False
    return False
