"""Optional neural_renderer backend for the depth rasterisation (CUDA only).

Reference: docs/method.md#rasterisation-semantics (how Unsup3D calls it, and its
semantics), docs/renderer.md "Verified about the install script" (building it on torch 2.x). The package is imported lazily, only
when this backend is asked for, because it has no CPU path at all: even
constructing ``nr.Renderer`` allocates CUDA tensors (README "Renderer backends").

The PyPI release 1.1.3 does not build on torch >= 2.6 without source edits;
``scripts/install_neural_renderer.sh`` applies them (docs/renderer.md "Verified about the install script").
"""
from __future__ import annotations

import torch

from ..errors import ReconError

__all__ = ["NeuralRendererUnavailable", "NeuralRendererDepth", "INSTALL_HINT"]

INSTALL_HINT = (
    "The 'neural_renderer' backend needs an NVIDIA GPU with CUDA and the neural_renderer "
    "package (PyPI neural-renderer-pytorch 1.1.3, patched for torch 2.x). Install it on a GPU "
    "node with: bash scripts/install_neural_renderer.sh  (needs torch with CUDA, nvcc/CUDA_HOME; "
    "see the script's header). Or use backend='torch', which runs on CPU and GPU."
)


class NeuralRendererUnavailable(ReconError, RuntimeError):
    """Raised when backend='neural_renderer' is asked for but cannot run here."""


class NeuralRendererDepth:
    """Depth rasterisation through ``neural_renderer.Renderer.render_depth`` (docs/method.md#rasterisation-semantics).

    Configured exactly like Unsup3D: projection mode, K of the renderer, R = I,
    t = 0, ``image_size = orig_size = N``, ``fill_back=True``, anti-aliasing on. The
    depth path ignores near/far and uses the library defaults 0.1 / 100 (README "Renderer backends"),
    so the background is 100 like the torch backend's.
    """

    def __init__(self, image_size: int, K: torch.Tensor, device: torch.device | str) -> None:
        device = torch.device(device)
        if device.type != "cuda":
            raise NeuralRendererUnavailable(
                f"backend='neural_renderer' runs only on CUDA devices, got device={device}. " + INSTALL_HINT
            )
        if not torch.cuda.is_available():
            raise NeuralRendererUnavailable("CUDA is not available on this machine. " + INSTALL_HINT)
        try:
            import neural_renderer as nr  # noqa: PLC0415 - lazy on purpose: CUDA-only optional dependency
        except ImportError as exc:
            raise NeuralRendererUnavailable(f"'import neural_renderer' failed ({exc}). " + INSTALL_HINT) from exc
        self.image_size = int(image_size)
        self.device = device
        with torch.cuda.device(device):
            K32 = K.to(device=device, dtype=torch.float32)[None]
            self._renderer = nr.Renderer(
                camera_mode="projection",
                image_size=self.image_size,
                orig_size=self.image_size,
                K=K32,
                R=torch.eye(3, device=device)[None],
                t=torch.zeros(1, 1, 3, device=device),
                near=0.1,
                far=100.0,
                fill_back=True,
                anti_aliasing=True,
                light_intensity_ambient=1.0,
                light_intensity_directional=0.0,
                background_color=[1, 1, 1],
            )

    def __call__(self, verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
        """verts (B, V, 3) view space, faces (F, 3) -> depth (B, N, N), background 100.

        neural_renderer allocates float32 buffers, so the computation runs in float32
        and the result is cast back to the input dtype.
        """
        if verts.device != self.device:
            raise ValueError(f"verts are on {verts.device}, the neural_renderer backend on {self.device}")
        batch = verts.shape[0]
        faces_b = faces.to(device=self.device, dtype=torch.int32)[None].expand(batch, -1, -1).contiguous()
        depth = self._renderer.render_depth(verts.float().contiguous(), faces_b)
        return depth.to(verts.dtype)
