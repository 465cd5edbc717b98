"""How many CPU threads this process should use: the one answer the model runtime and the decoders share.

The cores this process may run on (its affinity), capped by ``OMP_NUM_THREADS`` when that is
set: Ray sets it to the CPUs a task was given, so a 1-CPU extraction task runs one model thread
and one decoder instead of filling the machine beside its neighbours.
"""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """At least 1: the affinity's cores, or fewer when OMP_NUM_THREADS asks for fewer."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        asked = int(os.environ.get("OMP_NUM_THREADS", "0"))
    except ValueError:
        asked = 0
    return max(1, min(cores, asked) if asked > 0 else cores)
