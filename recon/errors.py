"""The project's exceptions: one tree under :class:`ReconError`.

A caller can catch every error the method or the batch job raises on purpose with
``except ReconError``, and one kind with its own class. Each class also keeps the builtin base
it had before (``ValueError`` for bad values, ``OSError`` for storage, ``RuntimeError`` for
failures while running), so code that catches those keeps working. The batch job's classes
(``cluster.config.SetupError`` and those below it, the worker's) subclass these; only
``cluster.stopping.JobStopped``, a stop signal rather than an error, stays outside the tree.
"""
from __future__ import annotations

__all__ = ["ReconError", "ConfigError", "MaskRequiredError", "InputError", "DivergenceError", "describe",
           "first_line"]


class ReconError(Exception):
    """Base of every error raised on purpose by ``recon`` and the batch job."""


class ConfigError(ReconError, ValueError):
    """An unknown preset, an unknown key, or a value of the wrong type or range."""


class MaskRequiredError(ConfigError):
    """The settings need an object mask per image and the job has no mask source.

    Raised by a reconstructor's settings check (:class:`recon.api.Reconstructor`) so the job can
    name the flags that add one (docs/batch_job.md#custom-reconstructors).
    """


class InputError(ReconError, ValueError):
    """An instance's image, latent or mask cannot be used (wrong shape, NaN, ...)."""


class DivergenceError(ReconError, RuntimeError):
    """An instance's optimisation produced a non-finite loss (NaN or inf)."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type name when the message is empty
    (``torch.load`` of an empty file raises a bare ``EOFError()``)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def describe(exc: BaseException) -> str:
    """``Type: first line of the message``, or just the type when the message is empty."""
    name = type(exc).__name__
    return f"{name}: {first_line(exc)}" if str(exc).strip() else name
