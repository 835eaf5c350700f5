"""How many threads torch uses: the free cores, not all of them, when the machine is shared.

torch's CPU build parallelises with OpenMP, one thread per core by default.
Two such processes on the same cores oversubscribe them, and OpenMP's
threads spin while they wait for each other: on this project's 2-core
machine a quick benchmark ran 5.4 times slower beside another one. So the
command line picks the thread count from the cores no one else is using
(the number of usable cores minus the 1-minute load), and asks OpenMP to
sleep rather than spin while waiting when it shares the machine. An explicit
``--threads`` or ``OMP_NUM_THREADS`` always wins.
"""

from __future__ import annotations

import os

#: Set before torch is imported: OpenMP reads it once, when it starts.
WAIT_POLICY = "OMP_WAIT_POLICY"


def usable_cores() -> int:
    """Cores this process may run on (its affinity), or the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def free_cores(cores: int | None = None, load: float | None = None) -> int:
    """The usable cores the 1-minute load average leaves free, at least one."""
    cores = usable_cores() if cores is None else cores
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:
            load = 0.0
    return max(1, min(cores, int(cores - load + 0.5)))


def prepare_threads(environ: dict | None = None) -> None:
    """Before torch is imported: ask OpenMP to sleep, not spin, when other work shares the cores."""
    environ = os.environ if environ is None else environ
    if "OMP_NUM_THREADS" not in environ and free_cores() < usable_cores():
        environ.setdefault(WAIT_POLICY, "PASSIVE")


def choose_threads(requested: int | None = None) -> int:
    """Set torch's intra-op threads: ``requested``, else ``OMP_NUM_THREADS``, else the free cores."""
    import torch

    if requested is not None:
        threads = requested
    elif os.environ.get("OMP_NUM_THREADS", "").isdigit():
        threads = int(os.environ["OMP_NUM_THREADS"])
    else:
        threads = free_cores()
    torch.set_num_threads(max(1, threads))
    return torch.get_num_threads()
