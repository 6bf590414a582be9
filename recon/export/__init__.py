"""Geometry for exporting results: the textured grid mesh of a canonical depth map.

Pure numpy/torch; the file formats (glTF, OBJ) are encoded in ``cluster.meshes``.
"""
from .mesh import CameraIntrinsics, DepthMesh, depth_mesh

__all__ = ["CameraIntrinsics", "DepthMesh", "depth_mesh"]
