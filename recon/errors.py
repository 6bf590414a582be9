"""Errors a caller of the method can tell apart."""


class DivergenceError(RuntimeError):
    """An instance's optimisation produced a non-finite loss (NaN or inf)."""


class InputError(ValueError):
    """An instance's image, latent or mask cannot be used (wrong shape, NaN, ...)."""
