"""The CPU heap setting: large freed blocks are reused instead of mapped and zeroed again."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="mallopt is a glibc setting")

# Allocate and free a 256 MiB tensor 24 times; count the minor page faults of those loops.
_PROBE = """
import json, resource, sys, torch
from recon.method.cpu_memory import retain_freed_cpu_memory
applied = retain_freed_cpu_memory() if sys.argv[1] == "on" else False
torch.ones(64 << 20).sum()  # first touch of the memory, not counted
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(24):
    torch.ones(64 << 20).sum()
print(json.dumps({"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _probe(mode: str, env_off: bool = False) -> dict:
    env = dict(os.environ)
    env.pop("RECON_RETAIN_CPU_HEAP", None)
    if env_off:
        env["RECON_RETAIN_CPU_HEAP"] = "0"
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_freed_blocks_are_reused_without_page_faults():
    default = _probe("off")
    retained = _probe("on")
    assert retained["applied"] is True
    pages = (256 << 20) // 4096
    # glibc's default maps each 256 MiB block afresh: every page faults on every loop
    assert default["faults"] > 20 * pages
    # with the setting the heap block is reused once the heap has settled (a few loops here)
    assert retained["faults"] < default["faults"] / 3


def test_opt_out_keeps_glibc_defaults():
    assert _probe("on", env_off=True)["applied"] is False
