"""Exporting results: the textured grid mesh of a canonical depth map, and pictures of a stored row.

Pure numpy/torch; the file formats (glTF, OBJ) are encoded in ``cluster.meshes``.
"""
from .mesh import CameraIntrinsics, DepthMesh, depth_mesh
from .views import depth_picture, normal_picture, relit_pictures, rotated_pictures, shaded_picture, shading

__all__ = ["CameraIntrinsics", "DepthMesh", "depth_mesh", "depth_picture", "normal_picture", "relit_pictures",
           "rotated_pictures", "shaded_picture", "shading"]
