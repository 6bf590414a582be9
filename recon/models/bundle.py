"""The model bundle: one small manifest naming every weight file a run needs.

Example (YAML or JSON; relative paths are resolved against the manifest's own
location, so a bundle folder can be copied to object storage as a whole)::

    stylegan2: stylegan2-celeba-config-e.pt        # rosinality checkpoint (g_ema, d)
    lpips:                                          # LPIPS-VGG v0.1 perceptual loss
      vgg16: vgg16-397923af.pth                     #   torchvision VGG16 state dict
      heads: lpips_vgg_v0.1.pth                     #   LPIPS linear heads (lin0..lin4)
    view_mvn: celeba_view_mvn.pth                   # {mean: (6,), cov: (6, 6)}
    light_mvn: celeba_light_mvn.pth                 # {mean: (4,), cov: (4, 4)}
    pretrained: celeba_pretrain.pth                 # optional D/A/V/L/E start weights

``view_mvn`` and ``light_mvn`` may also be given inline as ``{mean: [...], cov: [[...]]}``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
import yaml

from recon.errors import ReconError, describe
from recon.io.storage import StorageError, fetch, resolve_url

from .state_dicts import state_dict_problem

KNOWN_KEYS = {"stylegan2", "lpips", "view_mvn", "light_mvn", "pretrained", "description", "name"}
NETWORK_KEYS = ("netD", "netA", "netV", "netL", "netEnc")


class BundleError(ReconError, ValueError):
    """The manifest or one of the files it names is missing or malformed."""


def _jittered(cov: torch.Tensor) -> torch.Tensor:
    """The covariance in float64 with 1e-12 on the diagonal, the matrix sampling factorises."""
    return cov.double() + 1e-12 * torch.eye(cov.shape[0], dtype=torch.float64)


@dataclass
class Gaussian:
    """A multivariate normal (the view and light priors of docs/method.md#pseudo-samples)."""

    mean: torch.Tensor
    cov: torch.Tensor
    _factors: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` float32 samples on ``generator``'s device.

        A CPU generator gives the same draws on every machine (the default); a CUDA generator
        keeps the draw on the GPU, so no copy to the device waits on the host (``rng_device``).
        """
        mean, chol = self._factor(generator.device)
        eps = torch.randn(n, len(self.mean), generator=generator, dtype=torch.float64, device=generator.device)
        return (mean + eps @ chol.T).float()

    def _factor(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The float64 mean and Cholesky factor on ``device``, made once per device (a copy to a GPU
        from host memory would otherwise wait for the GPU at every draw)."""
        key = str(device)
        if key not in self._factors:
            chol = torch.linalg.cholesky(_jittered(self.cov))
            self._factors[key] = (self.mean.double().to(device), chol.to(device))
        return self._factors[key]


@dataclass
class ModelBundle:
    uri: str
    stylegan2: str
    view_mvn: Gaussian
    light_mvn: Gaussian
    lpips_vgg16: str | None = None
    lpips_heads: str | None = None
    pretrained: str | None = None
    description: str = ""
    raw: dict = field(default_factory=dict)

    def identity(self) -> dict:
        """What names the weights of this bundle (part of every run's config hash)."""
        return {"bundle": self.uri, "stylegan2": self.stylegan2, "lpips": [self.lpips_vgg16, self.lpips_heads],
                "pretrained": self.pretrained, "view_mean": self.view_mvn.mean.tolist(),
                "light_mean": self.light_mvn.mean.tolist()}


def _load_tensor_file(uri: str, storage_options: Mapping[str, Any] | None) -> Any:
    path = fetch(uri, storage_options=storage_options)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BundleError(f"{uri}: unreadable weights file ({describe(exc)})") from exc


def _gaussian(spec: Any, dim: int, what: str, base: str, storage_options) -> Gaussian:
    if isinstance(spec, str):
        spec = _load_tensor_file(resolve_url(base, spec), storage_options)
    if not isinstance(spec, Mapping) or "mean" not in spec or "cov" not in spec:
        raise BundleError(f"{what} must hold 'mean' and 'cov' (a file or an inline mapping)")
    mean = torch.as_tensor(spec["mean"], dtype=torch.float32).reshape(-1).cpu()
    cov = torch.as_tensor(spec["cov"], dtype=torch.float32).cpu()
    if mean.shape != (dim,) or cov.shape != (dim, dim):
        raise BundleError(f"{what} must have mean ({dim},) and cov ({dim}, {dim}), got {tuple(mean.shape)} and {tuple(cov.shape)}")
    if not (torch.isfinite(mean).all() and torch.isfinite(cov).all()):
        raise BundleError(f"{what} holds non-finite values")
    # Checked here rather than at the first pseudo-sample, which comes after the prior fit and step 1:
    # minutes into a run, and with a linear-algebra error that does not name the bundle.
    if not torch.allclose(cov, cov.T, rtol=1e-5, atol=1e-8):
        raise BundleError(f"{what}: cov is not symmetric")
    if torch.linalg.cholesky_ex(_jittered(cov)).info != 0:
        raise BundleError(f"{what}: cov is not positive definite, so views/lights cannot be sampled from it")
    return Gaussian(mean=mean, cov=cov)


def load_bundle(uri: str | Path, storage_options: Mapping[str, Any] | None = None) -> ModelBundle:
    """Read a bundle manifest from a path or any fsspec URL and resolve the files it names."""
    uri = str(uri)
    try:
        text = fetch(uri, storage_options=storage_options, use_cache=False).read_text()
    except StorageError as exc:
        raise BundleError(f"cannot read model bundle: {exc}") from exc
    except UnicodeDecodeError as exc:  # e.g. the checkpoint passed where its manifest belongs
        raise BundleError(f"{uri} is not a bundle manifest (YAML or JSON text) but a binary file; pass the "
                          "manifest that names the weights, not a weights file") from exc
    try:
        raw = json.loads(text) if uri.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise BundleError(f"{uri}: not valid YAML/JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise BundleError(f"{uri}: a bundle manifest is a mapping with at least 'stylegan2', 'view_mvn', 'light_mvn'")
    unknown = set(raw) - KNOWN_KEYS
    if unknown:
        raise BundleError(f"{uri}: unknown keys {sorted(unknown)}; known: {sorted(KNOWN_KEYS)}")
    for key in ("stylegan2", "view_mvn", "light_mvn"):
        if key not in raw:
            raise BundleError(f"{uri}: missing '{key}'")
    lpips = raw.get("lpips") or {}
    if not isinstance(lpips, Mapping) or set(lpips) - {"vgg16", "heads"}:
        raise BundleError(f"{uri}: 'lpips' must be a mapping with 'vgg16' and 'heads'")
    resolve = lambda v: resolve_url(uri, str(v)) if v else None  # noqa: E731
    return ModelBundle(
        uri=uri,
        stylegan2=resolve(raw["stylegan2"]),
        view_mvn=_gaussian(raw["view_mvn"], 6, "view_mvn", uri, storage_options),
        light_mvn=_gaussian(raw["light_mvn"], 4, "light_mvn", uri, storage_options),
        lpips_vgg16=resolve(lpips.get("vgg16")),
        lpips_heads=resolve(lpips.get("heads")),
        pretrained=resolve(raw.get("pretrained")),
        description=str(raw.get("description", "")),
        raw=raw,
    )


def load_pretrained_networks(uri: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, dict]:
    """State dicts of D, A, V, L, E from a checkpoint dict keyed ``netD`` ... ``netEnc``."""
    ckpt = _load_tensor_file(uri, storage_options)
    if not isinstance(ckpt, Mapping):
        raise BundleError(f"{uri}: expected a dict with keys {list(NETWORK_KEYS)}")
    missing = [k for k in NETWORK_KEYS if k not in ckpt]
    if missing:
        raise BundleError(f"{uri}: pretrained checkpoint lacks {missing}; has {sorted(map(str, ckpt))}")
    for key in NETWORK_KEYS:
        problem = state_dict_problem(ckpt[key])
        if problem:
            raise BundleError(f"{uri}: pretrained {key}: {problem}")
    return {k: ckpt[k] for k in NETWORK_KEYS}


def write_bundle(path: str | Path, manifest: Mapping[str, Any]) -> Path:
    """Write a manifest (YAML) after checking its keys; returns the path."""
    unknown = set(manifest) - KNOWN_KEYS
    if unknown:
        raise BundleError(f"unknown bundle keys {sorted(unknown)}")
    path = Path(path)
    path.write_text(yaml.safe_dump(dict(manifest), sort_keys=False))
    return path
