"""A tiny actor that knows which rows are running and which workers are alive.

Ray Data does not tell the driver which rows are in an actor right now, so the
workers report "started"/"finished" and a heartbeat here, and the driver reads a
snapshot for the ``recon_instances_in_flight`` and ``recon_active_actors``
gauges. It holds only ids and timestamps, uses no CPU reservation, and is
pinned (softly) to the driver's node, which is the on-demand head on a cluster.
Losing it only blanks two gauges; the job does not depend on it.

It also keeps the attempt marker of each running row, so a driver that stops
(Ctrl-C, SIGTERM) can remove the markers of the rows it interrupts: those
attempts were cut short by the stop, not by the row (see
``cluster.driver._forget_interrupted_attempts``). Losing it only means they
count, as after a killed driver.

Workers announce a row (with the marker path they are about to create) and
wait for the answer before they create the marker, so there is no moment when a
marker exists that the tracker has not heard of. Once the driver has called
:meth:`ProgressTracker.stop`, announcements are refused: no new attempt starts
behind a stopping driver's back.
"""
from __future__ import annotations

import time

import ray

__all__ = ["ProgressTracker", "start_tracker"]


class ProgressTracker:
    def __init__(self) -> None:
        self._running: dict[str, str] = {}  # image id -> worker id
        self._beats: dict[str, float] = {}  # worker id -> last heartbeat (monotonic)
        self._markers: dict[str, str] = {}  # image id -> attempt marker path of the running attempt
        self._stopping = False

    def heartbeat(self, worker: str) -> None:
        self._beats[worker] = time.monotonic()

    def started(self, worker: str, ids: list[str], markers: list[str] | None = None) -> bool:
        """Record rows a worker starts; False (start nothing) once the driver is stopping."""
        self._beats[worker] = time.monotonic()
        if self._stopping:
            return False
        for i, marker in zip(ids, markers or [None] * len(ids)):
            self._running[i] = worker
            if marker:
                self._markers[i] = marker
            else:
                self._markers.pop(i, None)
        return True

    def finished(self, worker: str, ids: list[str]) -> None:
        self._beats[worker] = time.monotonic()
        for i in ids:
            self._running.pop(i, None)
            self._markers.pop(i, None)

    def interrupted_markers(self, stale_after_s: float) -> list[str]:
        """Markers of the rows running now on workers that still beat: what stopping the job cuts short.

        A row whose worker stopped beating more than ``stale_after_s`` ago
        is left out: that worker died on it, and the death must count.
        """
        now = time.monotonic()
        alive = {w for w, t in self._beats.items() if now - t <= stale_after_s}
        return [self._markers[i] for i, w in self._running.items() if w in alive and i in self._markers]

    def stop(self, stale_after_s: float) -> list[str]:
        """Refuse further starts; return the markers of the rows cut short (see interrupted_markers)."""
        self._stopping = True
        return self.interrupted_markers(stale_after_s)

    def snapshot(self, stale_after_s: float) -> dict[str, int]:
        now = time.monotonic()
        alive = {w for w, t in self._beats.items() if now - t <= stale_after_s}
        # A row whose worker stopped beating died with it; Ray will retry it
        # elsewhere and that worker reports it again.
        in_flight = sum(1 for w in self._running.values() if w in alive)
        return {"in_flight": in_flight, "active_workers": len(alive)}


def start_tracker() -> "ray.actor.ActorHandle":
    """Start the tracker next to the driver (soft affinity: never blocks the job)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    actor_cls = ray.remote(num_cpus=0, max_restarts=-1)(ProgressTracker)
    return actor_cls.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=True)
    ).remote()
