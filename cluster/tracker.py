"""A tiny actor that knows which rows are running and which workers are alive.

Ray Data does not tell the driver which rows are in an actor right now, so the
workers report "started"/"finished" and a heartbeat here, and the driver reads a
snapshot for the ``recon_instances_in_flight`` and ``recon_active_actors``
gauges. It holds only ids and timestamps, uses no CPU reservation, and is
pinned (softly) to the driver's node, which is the on-demand head on a cluster.
Losing it only blanks two gauges; the job does not depend on it.
"""
from __future__ import annotations

import time

import ray

__all__ = ["ProgressTracker", "start_tracker"]


class ProgressTracker:
    def __init__(self) -> None:
        self._running: dict[str, str] = {}  # image id -> worker id
        self._beats: dict[str, float] = {}  # worker id -> last heartbeat (monotonic)

    def heartbeat(self, worker: str) -> None:
        self._beats[worker] = time.monotonic()

    def started(self, worker: str, ids: list[str]) -> None:
        self._beats[worker] = time.monotonic()
        for i in ids:
            self._running[i] = worker

    def finished(self, worker: str, ids: list[str]) -> None:
        self._beats[worker] = time.monotonic()
        for i in ids:
            self._running.pop(i, None)

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
