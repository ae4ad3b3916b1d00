"""Per-process limits a load generator must lift: each stream holds a socket, and a soft limit of
1,024 open files would fail streams past it (as connection errors, counted, but a cap all the same)."""

from __future__ import annotations

import resource


def raise_open_files_limit() -> int:
    """Raises the soft RLIMIT_NOFILE to the hard limit; returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass                      # keep the soft limit; failures will show as connection errors
    return soft
