"""Where a study's CPU time goes, measured from the operating system.

Over the study, every process on this machine is sampled (psutil; a process that ends keeps its
last sample) and the machine's own counters are read (/proc/stat). The trials report what they
spent in each phase (`caspar.tuning.trial`: set-up, training steps, checkpoints, worker start). The
parts: the trials' phases, the rest of the trial workers' time, the study's own tree fits (Ray
tasks in other workers), the driver (this process: Tune, Optuna, MLflow, the ensemble), Ray's
services, the rest of what the machine counted busy (other programs, and processes too
short-lived to be sampled), and idle; they add up to the wall time x the machine's CPUs. On a
cluster, the machine figures are those of the driver's node.
"""
from __future__ import annotations

import os
import threading
import time

import psutil

SAMPLE_SECONDS = 2.0
TRIAL_PHASES = ("training", "setup", "checkpoint", "worker_start")  # as the trials report them, cpu_<phase>
# Ray's own processes, by their command lines: its services, and its workers (which a task or an
# actor retitles ray::<function> while it runs; an idle one is ray::IDLE)
RAY_SERVICES = ("raylet", "gcs_server", "ray/dashboard", "ray/_private", "ray/autoscaler", "ray::DashboardAgent",
                "ray::RuntimeEnvAgent", "ray::JobSupervisor")
RAY_WORKERS = ("ray::", "default_worker.py")


def machine_seconds() -> tuple[float, float]:
    """(busy, idle) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]  # idle, iowait
    busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal
    return busy / ticks, idle / ticks


class CpuMeter:
    """Samples every process's CPU time in a background thread while the study runs."""

    def __init__(self):
        self.first: dict[int, float] = {}  # pid -> CPU seconds at its first sample
        self.last: dict[int, float] = {}  # pid -> CPU seconds at its last sample
        self.names: dict[int, str] = {}
        self.stopping = threading.Event()

    def __enter__(self) -> CpuMeter:
        self.started, self.machine_start = time.time(), machine_seconds()
        self.sample(first=True)
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.thread.join()
        self.sample()
        self.wall, self.machine_end = time.time() - self.started, machine_seconds()

    def run(self) -> None:
        """The sampling thread: a sample every SAMPLE_SECONDS until the study ends."""
        while not self.stopping.wait(SAMPLE_SECONDS):
            self.sample()

    def sample(self, first: bool = False) -> None:
        """Reads every process's CPU seconds.

        Args:
            first: the study's first sample (a process seen later started during the study: all its
                time counts).
        """
        for process in psutil.process_iter(["cmdline", "name", "cpu_times"]):
            times = process.info["cpu_times"]
            if times is None:
                continue
            pid, seconds = process.pid, times.user + times.system
            if pid not in self.first:
                self.first[pid] = seconds if first else 0.0  # started during the study: all its time counts
                self.names[pid] = " ".join(process.info["cmdline"] or [process.info["name"] or ""])
            self.last[pid] = seconds

    def spent(self, pid: int) -> float:
        """CPU seconds a process spent during the study.

        Args:
            pid: the process.

        Returns:
            Its last sample less its first (0 for a process never sampled).
        """
        return max(0.0, self.last.get(pid, 0.0) - self.first.get(pid, 0.0))

    def breakdown(self, trial_phases: dict[str, float], worker_pids: set[int]) -> dict[str, float]:
        """CPU seconds of the machine per part over the study.

        Args:
            trial_phases: what the trials reported, CPU seconds per phase summed over this session.
            worker_pids: the processes that ran trials.

        Returns:
            {part: CPU seconds}: trial_<phase>, trial_other, fit_tasks, driver, ray, other, idle
            (they add up to capacity), and capacity (wall x CPUs) and machine_busy.
        """
        driver = self.spent(os.getpid())
        workers = sum(self.spent(pid) for pid in worker_pids)
        others = {pid: name for pid, name in self.names.items() if pid not in worker_pids and pid != os.getpid()}
        ray = sum(self.spent(pid) for pid, name in others.items() if any(tag in name for tag in RAY_SERVICES))
        # the other Ray workers: the study's own tree fits and refits (Ray tasks), and idle workers
        fit_tasks = sum(self.spent(pid) for pid, name in others.items()
                        if not any(tag in name for tag in RAY_SERVICES) and any(tag in name for tag in RAY_WORKERS))
        busy = self.machine_end[0] - self.machine_start[0]
        parts = {f"trial_{phase}": trial_phases.get(phase, 0.0) for phase in TRIAL_PHASES}
        # A worker Ray started before the study (a pool kept from earlier work) reports its whole
        # start-up, but only what it spent after the first sample is this study's.
        before_study = max(0.0, sum(parts.values()) - workers)
        parts["trial_worker_start"] = max(0.0, parts["trial_worker_start"] - before_study)
        parts["trial_other"] = max(0.0, workers - sum(parts.values()))  # between reports, last checkpoints, Ray's worker code
        parts |= {"fit_tasks": fit_tasks, "driver": driver, "ray": ray}
        # the rest of what the machine counted busy: other programs, and processes too short-lived to be sampled
        parts["other"] = max(0.0, busy - sum(parts.values()))
        capacity = self.wall * (psutil.cpu_count() or 1)
        # The machine counts busy and idle by sampling at its clock ticks; the processes' own times
        # are exact. Under load they can disagree by a few percent (e.g. work that runs between two ticks
        # and sleeps before the next is counted idle), so where the processes measured more than the
        # machine counted busy, that much of its idle was in fact theirs.
        machine_idle = self.machine_end[1] - self.machine_start[1]
        parts["idle"] = max(0.0, min(machine_idle, capacity - sum(parts.values())))
        parts["capacity"] = capacity
        parts["machine_busy"] = busy
        return parts


def shares(parts: dict[str, float]) -> dict[str, float]:
    """Each part as a share of the capacity (wall time x CPUs).

    Args:
        parts: CpuMeter.breakdown's figures.

    Returns:
        {part: share}, capacity and machine_busy left out.
    """
    capacity = max(parts["capacity"], 1e-9)
    return {name: value / capacity for name, value in parts.items() if name not in ("capacity", "machine_busy")}


def line(parts: dict[str, float]) -> str:
    """Where the CPU went, in one line of the study's summary.

    Args:
        parts: CpuMeter.breakdown's figures.

    Returns:
        The line.
    """
    share = shares(parts)
    setup = share["trial_setup"] + share["trial_worker_start"]
    return (f"CPU of this machine ({parts['capacity']:.0f} CPU-s): training steps {share['trial_training']:.2f}, "
            f"trial set-up {setup:.2f}, checkpoints {share['trial_checkpoint']:.2f}, other trial-worker time "
            f"{share['trial_other']:.2f}, the study's tree fits (Ray tasks) {share['fit_tasks']:.2f}, driver "
            f"{share['driver']:.2f}, Ray's services {share['ray']:.2f}, other "
            f"{share['other']:.2f}, idle {share['idle']:.2f}")


def serial_share(intervals: list[tuple[float, float]], capacity: int, started: float, ended: float) -> float:
    """The share of a study's wall time in which fewer fits ran at once than the cluster holds: the
    driver fitting, selecting, refitting or logging alone, or a search with too few trials left.

    Args:
        intervals: each fit's (start, end) in time.time() seconds, a trial's or a Ray task's.
        capacity: the trials or fit tasks the cluster runs at a time.
        started: the study's start (time.time()).
        ended: its end.

    Returns:
        The share of [started, ended], 0 … 1.
    """
    if ended <= started:
        return 0.0
    events = sorted([(max(s, started), 1) for s, e in intervals if e > s] + [(min(e, ended), -1) for s, e in intervals if e > s])
    running, last, short = 0, started, 0.0
    for moment, change in events:
        moment = min(max(moment, started), ended)
        if running < capacity:
            short += moment - last
        running, last = running + change, moment
    return (short + (ended - last)) / (ended - started)
