"""The code version: the package's release plus, in a git checkout, the commit it runs.

A version left at a constant would not change when the code does, yet it is the
provenance column of every output row and part of the run fingerprint. So the
release number comes from the package metadata (pyproject.toml, one place) and,
when the package is imported from a git checkout, the commit is appended as a
PEP 440 local label: ``0.1.0+g1a2b3c4`` or ``0.1.0+g1a2b3c4.dirty`` when tracked
files differ from that commit. An installed wheel (no checkout) reports the
release alone.
"""
from __future__ import annotations

import functools
import importlib.metadata
import re
import subprocess
from pathlib import Path

__all__ = ["code_version", "release_version"]

_PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def release_version() -> str:
    """The release from the installed metadata, or pyproject.toml when the package is not installed."""
    try:
        return importlib.metadata.version("recon")
    except importlib.metadata.PackageNotFoundError:
        pyproject = _PACKAGE_ROOT / "pyproject.toml"
        found = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(), re.MULTILINE) \
            if pyproject.is_file() else None
        return found.group(1) if found else "0+unknown"


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(_PACKAGE_ROOT), *args], capture_output=True, text=True,
                              timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def _git_label() -> str | None:
    """``g<sha>`` (``.dirty`` appended when tracked files changed) for a checkout; None elsewhere."""
    if not (_PACKAGE_ROOT / ".git").exists():  # a worktree's .git is a file, a clone's a folder
        return None
    sha = _git("rev-parse", "--short=10", "HEAD")
    if not sha:
        return None
    changed = _git("status", "--porcelain", "--untracked-files=no")
    return f"g{sha}" + (".dirty" if changed else "")


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """``release[+g<sha>[.dirty]]``; computed once per process."""
    release = release_version()
    label = _git_label()
    if not label:
        return release
    return f"{release}.{label}" if "+" in release else f"{release}+{label}"
