"""Accounting from /proc: where the machine's CPU went during a run (the server, the
database, the load generator, or unrelated processes, which make a run noisy), and how
the client's connections were spread over the gunicorn workers. Linux only; elsewhere
the figures are None."""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PROC = Path("/proc")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces; fields follow the last ")".
    return text[text.rindex(")") + 2 :].split()


def process_cpu(pid: int) -> float | None:
    """User + system seconds a process has used."""
    fields = _stat_fields(pid)
    return None if fields is None else (int(fields[11]) + int(fields[12])) / _TICK


def parent_of(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[1])


def children(parent: int) -> list[int]:
    return [
        int(entry.name)
        for entry in PROC.iterdir()
        if entry.name.isdigit() and parent_of(int(entry.name)) == parent
    ]


def tree(root: int) -> dict[int, float]:
    """CPU seconds of a process and its direct children (gunicorn's workers, the
    postmaster's backends)."""
    found = {}
    for pid in [root, *children(root)]:
        cpu = process_cpu(pid)
        if cpu is not None:
            found[pid] = cpu
    return found


def machine_busy() -> float | None:
    """Busy CPU seconds of the whole machine, all CPUs, since boot."""
    try:
        first = (PROC / "stat").read_text().splitlines()[0].split()
    except OSError:
        return None
    ticks = [int(x) for x in first[1:9]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / _TICK


def own_cpu() -> float:
    """This process and its waited-for children (the load generator)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@dataclass
class Usage:
    """CPU seconds used during one interval."""

    wall: float
    server: float | None
    database: float | None
    client: float
    machine: float | None

    @property
    def others(self) -> float | None:
        """CPU that went to processes outside the benchmark."""
        if None in (self.machine, self.server, self.database):
            return None
        return max(0.0, self.machine - self.server - self.database - self.client)

    def others_share(self) -> float | None:
        """Other processes' CPU as a fraction of the machine's capacity."""
        others = self.others
        return None if others is None else others / (self.wall * (os.cpu_count() or 1))


class Meter:
    def __init__(self, server_pid: int | None, database_pid: int | None) -> None:
        self.server_pid = server_pid
        self.database_pid = database_pid

    def snapshot(self) -> tuple:
        return (
            time.perf_counter(),
            tree(self.server_pid) if self.server_pid else None,
            tree(self.database_pid) if self.database_pid else None,
            own_cpu(),
            machine_busy(),
        )

    @staticmethod
    def usage(before: tuple, after: tuple) -> Usage:
        def spent(a: dict | None, b: dict | None) -> float | None:
            if a is None or b is None:
                return None
            # A process that started during the interval counts from zero; one that
            # ended during it is lost (connections are persistent, so that is rare).
            return sum(cpu - a.get(pid, 0.0) for pid, cpu in b.items())

        machine = None if None in (before[4], after[4]) else after[4] - before[4]
        return Usage(
            wall=after[0] - before[0],
            server=spent(before[1], after[1]),
            database=spent(before[2], after[2]),
            client=after[3] - before[3],
            machine=machine,
        )


def connections_by_process(port: int, pids: list[int]) -> list[int] | None:
    """How many established TCP connections to ``port`` each process holds, largest
    first: shows whether the kernel spread keep-alive connections over the workers."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01":  # 01: ESTABLISHED
                inodes.add(fields[9])
    if not inodes:
        return None
    counts = []
    for pid in pids:
        held = 0
        try:
            for fd in (PROC / str(pid) / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    held += 1
        except OSError:
            pass
        counts.append(held)
    return sorted(counts, reverse=True)
