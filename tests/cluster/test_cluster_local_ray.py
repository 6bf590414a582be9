"""The job's own local Ray (issue 21, finding 4): loopback only, and gone with the driver.

One real driver (`python jobs/reconstruct_dataset.py`, test double, no RAY_ADDRESS, so the job
starts its own Ray, in a subprocess and apart from the tests' session Ray) runs until rows are
committed. Then every listening socket of its process tree is read from /proc, and the driver
alone is SIGKILLed (not its process group: what is left then is what the driver leaves behind).
"""
from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from cluster_helpers import (
    DOUBLE,
    REPO,
    good_rows,
    ids_of,
    ray_env_pythonpath,
    read_output,
    write_bundle,
    write_dataset,
)

pytestmark = [pytest.mark.timeout(300), pytest.mark.skipif(not Path("/proc/net/tcp").exists(),
                                                            reason="reads sockets and processes from /proc")]
ROWS = 8


def _tree(pid: int) -> dict[int, str]:
    """{pid: command line} of ``pid`` and everything below it."""
    out, stack = {}, [pid]
    while stack:
        p = stack.pop()
        try:
            out[p] = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                stack += [int(k) for k in Path(f"/proc/{p}/task/{t}/children").read_text().split()]
            except OSError:
                pass
    return out


def _address(hex_addr: str) -> str:
    raw = bytes.fromhex(hex_addr)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    # /proc/net/*6: four 32-bit words, each in host (little-endian) order
    return str(ipaddress.IPv6Address(b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))))


def _bound_sockets() -> dict[str, tuple[str, str, int]]:
    """{socket inode: (protocol, local address, port)} of listening TCP and bound UDP sockets."""
    out = {}
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        for line in Path(f"/proc/net/{proto}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if (proto.startswith("tcp") and state != "0A") or inode == "0":  # 0A: LISTEN
                continue
            host, port = local.rsplit(":", 1)
            out[inode] = (proto, _address(host), int(port, 16))
    return out


def _listening(pids) -> list[tuple[int, str, str, str, int]]:
    sockets = _bound_sockets()
    found = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            inode = target[len("socket:["):-1] if target.startswith("socket:[") else None
            if inode in sockets:
                name = Path(f"/proc/{pid}/comm").read_text().strip() if Path(f"/proc/{pid}").exists() else "?"
                found.append((pid, name, *sockets[inode]))
    return found


def _loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)  # [::ffff:127.0.0.1]: a dual-stack socket bound to loopback
    return (mapped or ip).is_loopback


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _command(root: Path) -> list[str]:
    return [sys.executable, str(REPO / "jobs" / "reconstruct_dataset.py"), "--input", str(root / "in"),
            "--output", str(root / "out"), "--bundle", str(root / "bundle.yaml"), "--preset", "celeba",
            "--device", "cpu", "--num-actors", "2", "--cpus-per-actor", "0.5", "--rows-per-shard", "2",
            "--metrics-port", "0", "--reconstructor", DOUBLE, "--set", "sleep_s=0.5"]


def _committed(out: Path) -> int:
    return len(list(out.glob("_staging/items/*/*.parquet"))) + sum(
        pq.read_metadata(p).num_rows for p in out.glob("part-*.parquet"))


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("local_ray")
    write_dataset(str(root / "in"), good_rows(ROWS))
    write_bundle(str(root / "bundle.yaml"))
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "PYTHONPATH": ray_env_pythonpath()}
    log_path = root / "run1.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(_command(root), cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 150
            while _committed(root / "out") < 2:  # the actors are up and working
                assert proc.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, "the run committed nothing in time"
                time.sleep(0.1)
            tree = _tree(proc.pid)
            sockets = _listening(tree)
            ray_pids = set(tree) - {proc.pid}  # the reaper too: it must be gone as well
            os.kill(proc.pid, signal.SIGKILL)  # the driver alone
            proc.wait()
            t0 = time.monotonic()
            while any(_alive(p) for p in ray_pids) and time.monotonic() - t0 < 15:  # Ray alone: 60-120 s
                time.sleep(0.2)
            left = {p: tree[p] for p in ray_pids if _alive(p)}
            gone_after = time.monotonic() - t0
        finally:
            for p in _tree(proc.pid) if proc.poll() is None else ():
                os.kill(p, signal.SIGKILL)
    yield {"root": root, "env": env, "driver": proc.pid, "tree": tree, "sockets": sockets, "ray_pids": ray_pids,
           "left": left, "gone_after": gone_after}
    for p in left:  # never leave them to the next test
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass


def test_the_jobs_local_ray_listens_on_loopback_only(killed_run):
    sockets = killed_run["sockets"]
    names = {name for _, name, *_ in sockets}
    # Not vacuous: the GCS, the raylet and the workers were all found listening.
    assert {"gcs_server", "raylet"} <= names and len(sockets) >= 4, sockets
    outside = [s for s in sockets if not _loopback(s[3])]
    assert not outside, f"Ray processes listening beyond loopback: {outside}"


def test_a_sigkilled_driver_leaves_no_ray_process_and_a_rerun_finishes(killed_run):
    assert len(killed_run["ray_pids"]) >= 5, killed_run["tree"]  # gcs, raylet, agents, workers, ...
    assert not killed_run["left"], f"left {killed_run['gone_after']:.0f} s after the kill: {killed_run['left']}"

    root = killed_run["root"]
    before = _committed(root / "out")
    assert 2 <= before < ROWS
    rerun = subprocess.run(_command(root), cwd=root, env=killed_run["env"], capture_output=True, text=True,
                           timeout=180)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert f"{before} already committed; {ROWS - before} to do" in rerun.stdout
    ids = ids_of(read_output(str(root / "out")))
    assert sorted(ids) == sorted(r["image_id"] for r in good_rows(ROWS))  # every row once
