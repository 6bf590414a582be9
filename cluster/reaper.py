"""Ends the processes of the job's own local Ray when the driver ends, however it ends (issue 21, finding 4).

Ray ties most of a local instance to the driver that started it (GCS, raylet and the workers go
when it goes), but not the raylet's two agents (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``):
once the raylet is gone they report its death to the GCS, which is gone as well, and that call
waits out a GCS timeout (60 to 120 s measured with Ray 2.60) before they exit. After a SIGKILLed
driver they are the processes left behind.

The driver starts this file as a small separate process (stdlib only, its own session, so a
process-group kill of the driver does not take it along) and keeps the write end of a pipe to its
stdin. The reaper notes the processes of that Ray session (children of the driver whose command
line names the session folder, and everything below them) twice a second, so it still knows them
after the driver is gone. When the pipe closes:

* after ``done`` (the driver called ``ray.shutdown()``): processes still there after a grace
  period are ended;
* without it (the driver was killed or crashed): the noted processes are killed at once.

A process is only killed if it is the same one that was noted (same pid and start time), so a pid
reused by an unrelated process is never hit. Linux only (it reads ``/proc``); elsewhere
:func:`start` returns None and nothing changes.
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Optional

GRACE_S = 5.0  # after a clean ray.shutdown(): how long stragglers get to exit by themselves
POLL_S = 0.5


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time) from /proc, or None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            rest = fh.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(rest[1]), rest[0].decode(), int(rest[19])


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                kids.extend(int(k) for k in fh.read().split())
        except OSError:
            pass
    return kids


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read()
    except OSError:
        return b""


def _below(roots: list[int]) -> set[int]:
    seen, stack = set(roots), list(roots)
    while stack:
        for kid in _children(stack.pop()):
            if kid not in seen:
                seen.add(kid)
                stack.append(kid)
    return seen


def session_processes(driver: int, session_dir: str) -> dict[int, int]:
    """``{pid: start time}`` of the Ray processes of ``session_dir`` below ``driver``."""
    mark = session_dir.encode()
    me = os.getpid()  # named by its own command line too, and must not kill itself before the others
    roots = [k for k in _children(driver) if k != me and mark in _cmdline(k)]
    out = {}
    for pid in _below(roots):
        stat = _stat(pid)
        if stat is not None:
            out[pid] = stat[2]
    return out


def _same_and_alive(pid: int, started: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[2] == started and stat[1] != "Z"


def _kill(known: dict[int, int], sig: int) -> None:
    for pid, started in known.items():
        if _same_and_alive(pid, started):
            try:
                os.kill(pid, sig)
            except OSError:
                pass


def _watch(driver: int, session_dir: str) -> None:
    known: dict[int, int] = {}
    done = False
    stdin = sys.stdin.buffer
    while True:
        known.update(session_processes(driver, session_dir))
        ready, _, _ = select.select([stdin], [], [], POLL_S)
        if ready:
            data = os.read(stdin.fileno(), 64)
            if data:
                done = done or b"done" in data
                continue
            break  # EOF: the driver closed the pipe or died
    # Processes that appeared below a known one since the last look (e.g. a worker just started).
    for pid in list(known):
        if _same_and_alive(pid, known[pid]):
            for kid in _below([pid]):
                stat = _stat(kid)
                if stat is not None:
                    known.setdefault(kid, stat[2])
    if done:
        deadline = time.monotonic() + GRACE_S
        while time.monotonic() < deadline and any(_same_and_alive(p, s) for p, s in known.items()):
            time.sleep(0.1)
    _kill(known, signal.SIGKILL)


class Reaper:
    """The driver's end: :meth:`release` after ``ray.shutdown()``."""

    def __init__(self, proc: subprocess.Popen, pipe: IO[bytes]):
        self.proc = proc
        self._pipe: Optional[IO[bytes]] = pipe

    def release(self, wait_s: float = GRACE_S + 5) -> None:
        """Tell the reaper Ray was shut down; it ends what is still left after its grace period."""
        if self._pipe is None:
            return
        try:
            self._pipe.write(b"done")
            self._pipe.flush()
        except OSError:
            pass
        finally:
            self._pipe.close()
            self._pipe = None
        try:
            self.proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            pass  # it goes on by itself; the driver need not wait for it


def start(session_dir: str) -> Reaper | None:
    """Start the reaper for this driver's local Ray session; None where /proc is missing."""
    if not Path("/proc/self/task").is_dir():
        return None
    read_end, write_end = os.pipe()
    logs = Path(session_dir) / "logs"
    try:
        # Its errors, if any, go beside Ray's own logs of the session.
        with open(logs / "recon_reaper.err" if logs.is_dir() else os.devnull, "ab") as err:
            proc = subprocess.Popen(
                [sys.executable, "-S", "-I", str(Path(__file__).resolve()), str(os.getpid()), session_dir],
                stdin=read_end, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True, close_fds=True,
            )
    finally:
        os.close(read_end)
    # Not inherited by anything the driver starts later, so only the driver's own end keeps it open.
    os.set_inheritable(write_end, False)
    return Reaper(proc, os.fdopen(write_end, "wb", buffering=0))


if __name__ == "__main__":
    _watch(int(sys.argv[1]), sys.argv[2])
