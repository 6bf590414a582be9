"""What the batch job needs from a reconstructor: the interface ``cluster/`` codes against.

:class:`recon.Reconstructor` (the method) implements it, and so can any other class named by the
job's ``--reconstructor package.module:Class`` (the test doubles in ``tests/cluster_doubles.py``, an
alternative method). The job never imports a reconstructor's internals; it calls exactly this
(docs/batch_job.md#custom-reconstructors):

* in the driver, once: :meth:`~ReconstructorProtocol.resolve_settings` turns ``--preset`` and
  ``--set`` into the resolved settings (a plain, JSON-ready dict), and
  :meth:`~ReconstructorProtocol.check_settings` checks them against the bundle before Ray starts;
  the resolved dict is fingerprinted and shipped to the actors;
* in each actor: :meth:`~ReconstructorProtocol.from_settings` builds the reconstructor from that dict
  (no preset is read again), then the attributes below and ``reconstruct``, ``reconstruct_many``
  and ``invert`` run the rows.

Errors a reconstructor raises for one row: :class:`recon.errors.InputError` (or any ValueError) for
an unusable input, :class:`recon.errors.DivergenceError` for a non-finite loss; anything else is an
internal error. The job's row messages tell these apart by class.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:  # type names only: importing them would load torch
    from recon.method.result import ReconstructionResult

    from .export import CameraIntrinsics

__all__ = ["Inversion", "ReconstructorProtocol", "CLASS_MEMBERS", "INSTANCE_MEMBERS", "missing_members"]


class Inversion(Protocol):
    """What :meth:`ReconstructorProtocol.invert` returns (e.g. :class:`recon.method.inversion.InversionResult`)."""

    latents: Any  # (N, latent_dim) tensor or array
    distance: Any  # (N,) final distance of each image to its GAN rendering
    metric: str  # what ``distance`` measures, for the row's warning


@runtime_checkable
class ReconstructorProtocol(Protocol):
    """The reconstructor interface of the batch job (docs/batch_job.md#custom-reconstructors)."""

    # -- sizes
    #: Side of the square maps a result holds (depth, albedo, ...).
    image_size: int
    #: Length of the W latent a row must carry.
    latent_dim: int
    # -- requirements
    #: Every row needs an object mask (the job refuses to start without a mask source).
    requires_mask: bool
    #: :meth:`invert` works: rows without a latent are inverted first, else they become error rows.
    can_invert: bool
    # -- identity (the provenance columns of every row)
    preset_name: str
    #: Short hash of everything that defines the results (settings and model), per row.
    config_hash: str
    device: Any  # str() of it is stored
    #: The resolved settings, as :meth:`resolve_settings` returned them (stored in each file's metadata).
    settings: Mapping[str, Any]
    #: The camera the results are rendered with, so readers can unproject the depth maps.
    intrinsics: "CameraIntrinsics"
    #: Inversion distance above which a row gets a warning.
    invert_warn_distance: float

    # -- settings: class-level, called by the driver before any actor starts
    @classmethod
    def resolve_settings(cls, preset: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``--preset`` plus ``--set`` -> the complete resolved settings, JSON-ready and picklable.

        Raises :class:`recon.errors.ConfigError` for an unknown preset, key or bad value.
        """
        ...

    @classmethod
    def check_settings(cls, settings: Mapping[str, Any], *, bundle: str,
                       storage_options: Mapping[str, Any] | None = None, has_masks: bool = False) -> None:
        """Everything an actor would refuse at start that can be checked without loading the models.

        Raises :class:`recon.errors.MaskRequiredError` when the settings need masks and
        ``has_masks`` is False, :class:`recon.errors.ConfigError` for settings, ValueError or
        OSError for the bundle and the files it names.
        """
        ...

    @classmethod
    def from_settings(cls, bundle: str, settings: Mapping[str, Any], *, device: str,
                      storage_options: Mapping[str, Any] | None = None) -> "ReconstructorProtocol":
        """Load the models once and return a reconstructor that runs exactly ``settings``."""
        ...

    # -- running
    def reconstruct(self, image: Any, latent: Any, mask: Any = None, seed: int = 0) -> "ReconstructionResult":
        """One row: uint8 (H, W, 3) image, ``latent_dim`` floats, optional (H, W) mask in [0, 1]."""
        ...

    def reconstruct_many(self, instances: Sequence[Mapping[str, Any]]
                         ) -> "list[ReconstructionResult | Exception]":
        """Several rows (dicts of ``reconstruct``'s arguments); a failed row gets its exception in its slot."""
        ...

    def invert(self, images: Sequence[Any], seed: int = 0) -> Inversion:
        """W latents for images that come without one (only called when :attr:`can_invert`)."""
        ...


def _members(proto: type) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(methods, attributes) the Protocol declares."""
    methods = tuple(n for n, v in vars(proto).items()
                    if not n.startswith("_") and (callable(v) or isinstance(v, classmethod)))
    return methods, tuple(n for n in proto.__annotations__ if not n.startswith("_"))


_METHODS, _ATTRIBUTES = _members(ReconstructorProtocol)
#: What a class must define before any instance exists (checked by the driver).
CLASS_MEMBERS: tuple[str, ...] = _METHODS
#: What a constructed reconstructor must have (checked by each actor after loading).
INSTANCE_MEMBERS: tuple[str, ...] = _METHODS + _ATTRIBUTES


def missing_members(obj: Any) -> list[str]:
    """The Protocol members ``obj`` lacks: of :data:`CLASS_MEMBERS` for a class, all for an instance."""
    names = CLASS_MEMBERS if isinstance(obj, type) else INSTANCE_MEMBERS
    return [n for n in names if not hasattr(obj, n)]
