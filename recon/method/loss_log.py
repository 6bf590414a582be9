"""The loss record of a group's iterations, kept on the device and read back every few iterations.

Reading a loss back to the host after every iteration makes the CPU wait until the GPU has
finished that iteration, so the next one cannot be queued behind it. :class:`LossLog` keeps
each iteration's per-instance losses and divergence flags as device tensors and copies them
to the host once every ``every`` iterations (``sync_every``) and at the end of each step.

Divergence (docs/method.md#stages-and-schedule, "a diverged instance stops"): an instance
whose loss, or whose depth, stops being finite is flagged on the device at once, so its
gradients are zeroed from that iteration on without a host read (:attr:`alive`); the
message that names the iteration is made at the next read-back.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class _Flag:
    """Instances (K,) bool that failed a check at one iteration of one step."""

    step: str | None  # None: outside the optimisation steps (e.g. the last forward pass)
    iteration: int  # 1-based, counted over all stages of the step, like the loss history
    bad: torch.Tensor
    what: str


@dataclass
class _Losses:
    step: str
    total: torch.Tensor  # (K,)
    terms: dict[str, torch.Tensor]  # each (K,) or (1,)


class LossLog:
    """Per-instance loss history, last losses and divergence messages of a group of ``k`` instances."""

    def __init__(self, k: int, device: torch.device, every: int = 1):
        if every < 1:
            raise ValueError(f"the read-back interval must be >= 1 iteration, got {every}")
        self.k, self.every = k, every
        self.history: list[dict[str, list[float]]] = [dict() for _ in range(k)]
        self.final_losses: list[dict[str, float]] = [dict() for _ in range(k)]
        self.diverged: list[str | None] = [None] * k
        #: (K,) bool on the device: False from the iteration an instance diverged at.
        self.alive = torch.ones(k, dtype=torch.bool, device=device)
        self._events: list[_Flag | _Losses] = []
        self._counts: dict[str, int] = {}  # iterations recorded per step (host-side, no read-back)
        self._pending = 0  # iterations recorded since the last read-back

    def iteration(self, step: str) -> int:
        """The 1-based number of the iteration of ``step`` being recorded next."""
        return self._counts.get(step, 0) + 1

    def flag(self, step: str | None, bad: torch.Tensor, what: str) -> None:
        """Mark the instances where ``bad`` (K,) is true as diverged at the current iteration of ``step``
        (None: outside the steps): ``what`` went wrong."""
        bad = bad.detach().reshape(self.k)
        self.alive &= ~bad
        self._events.append(_Flag(step, self.iteration(step) if step else 0, bad, what))

    def record(self, step: str, total: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        """One iteration's per-instance total (K,) and loss terms; a non-finite total flags its instance."""
        total = total.detach()
        self.alive &= torch.isfinite(total)
        self._events.append(_Losses(step, total, {name: t.detach().reshape(-1) for name, t in terms.items()}))
        self._counts[step] = self._counts.get(step, 0) + 1
        self._pending += 1

    def due(self) -> bool:
        """Whether ``every`` iterations have been recorded since the last read-back."""
        return self._pending >= self.every

    def read_back(self) -> None:
        """Copy the pending records to the host in one transfer and update history, losses and messages."""
        if not self._events:
            return
        parts = []
        for e in self._events:
            if isinstance(e, _Flag):
                parts.append(e.bad.to(torch.float64))
            else:
                parts.append(e.total.to(torch.float64))
                parts.extend(t.to(torch.float64) for t in e.terms.values())
        values = torch.cat(parts).tolist()  # the one host read
        at = 0
        for e in self._events:
            if isinstance(e, _Flag):
                bad, at = values[at:at + self.k], at + self.k
                for i, b in enumerate(bad):
                    if b and self.diverged[i] is None:
                        self.diverged[i] = (f"{e.what} at {e.step} iteration {e.iteration}" if e.step
                                            else f"{e.what} outside the optimisation steps")
                continue
            totals, at = values[at:at + self.k], at + self.k
            terms = {}
            for name, t in e.terms.items():
                terms[name], at = values[at:at + t.numel()], at + t.numel()
            for i, v in enumerate(totals):
                hist = self.history[i].setdefault(e.step, [])
                hist.append(v)
                if self.diverged[i] is None and not (v == v and abs(v) != float("inf")):
                    self.diverged[i] = f"{e.step} loss became {v} at iteration {len(hist)}"
                self.final_losses[i][e.step] = v
                for name, tv in terms.items():
                    self.final_losses[i][f"{e.step}.{name}"] = tv[i] if len(tv) > 1 else tv[0]
        self._events.clear()
        self._pending = 0
