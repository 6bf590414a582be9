"""Step 3's pool of projected samples and its per-instance reading order (docs/method.md#collection).

The collection fills, per instance, ``P = collect x batchsize`` projected samples and their
masks (and, with ``lam_pseudo_view``, the views their pseudo-samples were rendered with); step 3
reads them ``batchsize`` at a time in a random order that is reshuffled when fewer than a batch
remain (the leftover samples come first, as in the reference's loader).

Where the pool lives is one decision, :func:`pool_on_device`: on the group's device when it
fits, so a step-3 batch is a gather on the device; otherwise in host memory. The order is drawn
from each instance's own generator, on that generator's device, so with ``rng_device: device``
reading a batch never waits for the GPU.
"""
from __future__ import annotations

import torch

#: A CUDA pool may take at most this share of the memory the device can still give (free memory
#: plus what torch's allocator holds unused), measured when the pool is made. Step 3 then needs
#: about what step 2 needed (its activations are of the same batch), which is already allocated
#: or cached at that point, so half of the rest leaves room for fragmentation and LPIPS.
DEVICE_POOL_SHARE = 0.5


def pool_bytes(k: int, samples: int, size: int, dtype: torch.dtype) -> int:
    """Bytes of a pool of ``samples`` images (3 channels) and masks (1) per instance at ``size`` px."""
    return k * samples * 4 * size * size * torch.finfo(dtype).bits // 8


def pool_on_device(device: torch.device, nbytes: int, placement: str = "auto") -> bool:
    """Whether a pool of ``nbytes`` goes on ``device`` (``pool_device``: auto, device, host)."""
    if placement not in ("auto", "device", "host"):
        raise ValueError(f"pool placement must be auto, device or host, got {placement!r}")
    if device.type != "cuda" or placement == "device":
        return True  # on the CPU "the device" is host memory
    if placement == "host":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    unused_cache = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return nbytes <= DEVICE_POOL_SHARE * (free + unused_cache)


class ProjectedPool:
    """K instances' projected samples (K, P, 3, S, S) and masks (K, P, 1, S, S), read batch by batch.

    With ``with_views`` it also keeps each sample's pseudo-sample view (K, P, 6), in V's output
    space, read in the same order (the ``lam_pseudo_view`` term's targets).
    """

    def __init__(self, k: int, samples: int, size: int, dtype: torch.dtype, device: torch.device,
                 generators: list[torch.Generator], placement: str = "auto", with_views: bool = False):
        self.k, self.samples, self.device = k, samples, device
        where = device if pool_on_device(device, pool_bytes(k, samples, size, dtype), placement) else torch.device("cpu")
        pin = where.type == "cpu" and device.type == "cuda"
        self.images = torch.empty(k, samples, 3, size, size, dtype=dtype, device=where, pin_memory=pin)
        self.masks = torch.empty(k, samples, 1, size, size, dtype=dtype, device=where, pin_memory=pin)
        self.views = torch.empty(k, samples, 6, dtype=dtype, device=where, pin_memory=pin) if with_views else None
        self.generators = generators
        self._filled = 0
        # All instances read the same number of samples per batch, so the length of the pending
        # order is the same for all and known on the host: (K, pending) indices on the generators' device.
        self._order = torch.empty(k, 0, dtype=torch.long, device=generators[0].device)

    @property
    def on_device(self) -> bool:
        return self.images.device.type == self.device.type

    def add(self, images: torch.Tensor, masks: torch.Tensor, views: torch.Tensor | None = None) -> None:
        """Append one collection batch: images (K, n, 3, S, S), masks (K, n, 1, S, S), views (K, n, 6)."""
        n = images.shape[1]
        if self._filled + n > self.samples:
            raise ValueError(f"the pool holds {self.samples} samples per instance; {self._filled + n} were added")
        if (views is None) != (self.views is None):
            raise ValueError("views must be added exactly when the pool was made with_views")
        span = slice(self._filled, self._filled + n)
        self.images[:, span].copy_(images, non_blocking=True)
        self.masks[:, span].copy_(masks, non_blocking=True)
        if views is not None:
            self.views[:, span].copy_(views, non_blocking=True)
        self._filled += n

    def next_batch(self, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The next ``min(batch, P)`` samples of each instance's order, on the group's device:
        images, masks and views (None unless the pool keeps them)."""
        if self._filled != self.samples:
            raise RuntimeError(f"the pool is read before it is full ({self._filled} of {self.samples} samples)")
        b = min(batch, self.samples)
        if self._order.shape[1] < b:  # reshuffle: a fresh permutation behind the leftover samples
            fresh = torch.stack([torch.randperm(self.samples, generator=g, device=g.device) for g in self.generators])
            self._order = torch.cat([self._order, fresh], dim=1)
        picks, self._order = self._order[:, :b], self._order[:, b:]
        if not self.on_device:
            picks = picks.cpu()  # a host-memory pool is gathered on the host (one read per batch)
        elif picks.device != self.images.device:
            picks = picks.to(self.images.device)
        rows = torch.arange(self.k, device=picks.device)[:, None]
        images, masks = self.images[rows, picks], self.masks[rows, picks]
        views = None if self.views is None else self.views[rows, picks].to(self.device, non_blocking=True)
        return images.to(self.device, non_blocking=True), masks.to(self.device, non_blocking=True), views
