"""Errors a caller of the method can tell apart."""


class DivergenceError(RuntimeError):
    """An instance's optimisation produced a non-finite loss (NaN or inf)."""


class InputError(ValueError):
    """An instance's image, latent or mask cannot be used (wrong shape, NaN, ...)."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type name when the message is empty
    (``torch.load`` of an empty file raises a bare ``EOFError()``)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def describe(exc: BaseException) -> str:
    """``Type: first line of the message``, or just the type when the message is empty."""
    name = type(exc).__name__
    return f"{name}: {first_line(exc)}" if str(exc).strip() else name
