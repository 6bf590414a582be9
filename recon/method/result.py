"""What one per-image reconstruction returns (the contract between the method and the job).

Arrays are numpy, on the CPU, float32 unless noted, at the preset's
``image_size`` (H = W). Coordinates follow the renderer's camera: x right,
y down, z forward (away from the camera).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class ReconstructionResult:
    #: Canonical (frontal) depth after the border clamp, (H, W), values in (0.9, 1.1).
    canonical_depth: np.ndarray
    #: Canonical depth rendered into the input's predicted view, (H, W), clamped to
    #: [0.8, 1.2]; pixels at 1.2 are not covered by the surface (see ``valid_mask``).
    view_depth: np.ndarray
    #: Canonical albedo, (H, W, 3), in [0, 1].
    albedo: np.ndarray
    #: Canonical normal map, (H, W, 3), Unsup3D normalisation (length about 0.99).
    normal: np.ndarray
    #: Diffuse shading max(0, n . l) in the canonical frame, (H, W).
    shading: np.ndarray
    #: Light (4,): ambient k_a, diffuse k_d, direction x, direction y; the light
    #: direction is normalize(x, y, 1).
    light: np.ndarray
    #: View (6,): rotations about x, y, z in radians (pitch, yaw, roll), then translations x, y, z.
    view: np.ndarray
    #: Pixels of the input view covered by the rendered surface, (H, W) bool.
    valid_mask: np.ndarray
    #: The input as the method saw it (resized/cropped), (H, W, 3) in [0, 1].
    image: np.ndarray
    #: The final reconstruction of the input, (H, W, 3) in [0, 1].
    reconstruction: np.ndarray
    #: Loss per iteration for each step name ("prior", "step1", "step2", "step3").
    loss_history: dict[str, list[float]] = field(default_factory=dict)
    #: Last value of every loss term of the final iteration of each step.
    final_losses: dict[str, float] = field(default_factory=dict)
    #: Gradient iterations run per step name, summed over stages.
    iterations: dict[str, int] = field(default_factory=dict)
    #: Wall time per step name in seconds, summed over stages.
    step_seconds: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    device: str = "cpu"
    preset: str = ""
    config_hash: str = ""
    seed: int = 0
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def total_iterations(self) -> int:
        return int(sum(self.iterations.values()))
