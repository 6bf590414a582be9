"""Differentiable depth-map renderer of GAN2Shape / Unsup3D (docs/method.md#renderer-camera to docs/method.md#normals-and-lambertian-shading; design in docs/renderer.md).

``DepthRenderer`` renders a canonical depth map as a grid mesh into a viewpoint
and builds the grids that warp textures between the canonical frame and the view.
Backends: "torch" (pure torch, CPU and CUDA, default) and "neural_renderer"
(optional, CUDA only; see scripts/install_neural_renderer.sh).
"""
from .camera import PinholeCamera, focal_length
from .mesh import grid_faces
from .neural_renderer_backend import NeuralRendererUnavailable
from .rasterize import CENTRED_SAMPLES, NR_SAMPLES, RasterStats, SampleGrid, rasterize_depth
from .renderer import BACKGROUND_DEPTH, DepthRenderer, WarpResult
from .shading import (
    Light,
    compose_shaded_image,
    lambertian_diffuse,
    light_from_network,
    normals_from_points,
    relighting_lights,
    shading_map,
)
from .transforms import RigidTransform, rotation_matrix, view_from_network

__all__ = [
    "BACKGROUND_DEPTH",
    "CENTRED_SAMPLES",
    "DepthRenderer",
    "Light",
    "NR_SAMPLES",
    "NeuralRendererUnavailable",
    "PinholeCamera",
    "RasterStats",
    "RigidTransform",
    "SampleGrid",
    "WarpResult",
    "compose_shaded_image",
    "focal_length",
    "grid_faces",
    "lambertian_diffuse",
    "light_from_network",
    "normals_from_points",
    "rasterize_depth",
    "relighting_lights",
    "rotation_matrix",
    "shading_map",
    "view_from_network",
]
