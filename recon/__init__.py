"""recon: GAN2Shape 3D reconstruction (depth, albedo, normals, light, view) in pure torch.

Main entry points: :class:`Reconstructor` (per-image method), :class:`ReconstructionResult`,
:func:`recon.stylegan2.load_stylegan2`, :func:`recon.method.config.load_config`;
:class:`ReconstructorProtocol` (recon.api) is what the batch job needs from a reconstructor, and
:class:`ReconError` the base of every error raised on purpose (recon.errors).
"""
from __future__ import annotations

_LAZY = {
    "Reconstructor": ("recon.method.reconstructor", "Reconstructor"),
    "ReconstructionResult": ("recon.method.result", "ReconstructionResult"),
    "ReconstructorProtocol": ("recon.api", "ReconstructorProtocol"),
    "ReconError": ("recon.errors", "ReconError"),
    "ConfigError": ("recon.errors", "ConfigError"),
    "DivergenceError": ("recon.errors", "DivergenceError"),
    "InputError": ("recon.errors", "InputError"),
    "load_config": ("recon.method.config", "load_config"),
    "load_bundle": ("recon.models.bundle", "load_bundle"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name == "__version__":  # release + git revision (recon.version); a git call, so only when asked
        from .version import code_version

        return code_version()
    # Lazy so that `import recon` stays cheap and submodules load only when used.
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'recon' has no attribute {name!r}")
