"""Mesh files of a result row: glTF 2.0 binary in the ``mesh_glb`` column, OBJ/PLY on export.

Encoding goes through trimesh (a maintained library that writes and reads glTF, OBJ with its
MTL and texture, and PLY); the geometry itself comes from :func:`recon.export.depth_mesh`.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image

from recon.export import CameraIntrinsics, DepthMesh, depth_mesh

__all__ = ["MESH_FORMATS", "glb_from_arrays", "glb_from_mesh", "load_glb", "write_mesh_file"]

#: Formats ``jobs/export_meshes.py`` writes.
MESH_FORMATS = ("glb", "obj", "ply")


def _trimesh(mesh: DepthMesh, albedo: Image.Image) -> trimesh.Trimesh:
    # trimesh keeps UVs in OpenGL's convention (v up) and flips v when it writes glTF, so
    # the image-convention v of DepthMesh is turned around here.
    uv = np.stack([mesh.uv[:, 0], 1.0 - mesh.uv[:, 1]], axis=-1)
    material = trimesh.visual.material.PBRMaterial(
        name="albedo", baseColorTexture=albedo.convert("RGB"), metallicFactor=0.0, roughnessFactor=1.0,
        doubleSided=True)
    # process=False: merging or reordering vertices would break the one-vertex-per-pixel layout.
    return trimesh.Trimesh(vertices=mesh.vertices, faces=mesh.faces, vertex_normals=mesh.normals,
                           visual=trimesh.visual.TextureVisuals(uv=uv, material=material), process=False)


def glb_from_mesh(mesh: DepthMesh, albedo: Image.Image) -> bytes:
    """glTF 2.0 binary of ``mesh`` with ``albedo`` embedded as its base-colour texture (PNG)."""
    return _trimesh(mesh, albedo).export(file_type="glb", include_normals=True)


def glb_from_arrays(canonical_depth: np.ndarray, albedo_png: bytes, intrinsics: CameraIntrinsics) -> bytes:
    """The ``mesh_glb`` value of a row: its canonical depth as a mesh, textured with its albedo PNG."""
    albedo = Image.open(io.BytesIO(albedo_png))
    albedo.load()
    return glb_from_mesh(depth_mesh(canonical_depth, intrinsics), albedo)


def load_glb(data: bytes) -> trimesh.Trimesh:
    """The single mesh of a ``mesh_glb`` value."""
    scene = trimesh.load(io.BytesIO(data), file_type="glb", process=False)
    meshes = list(scene.geometry.values()) if isinstance(scene, trimesh.Scene) else [scene]
    if len(meshes) != 1:
        raise ValueError(f"a row's mesh holds one geometry, this glb holds {len(meshes)}")
    return meshes[0]


def write_mesh_file(glb: bytes, folder: Path, stem: str, fmt: str) -> list[Path]:
    """Write one row's mesh as ``folder/stem.<fmt>``; OBJ also writes its MTL and texture PNG.

    Returns every path written.
    """
    if fmt not in MESH_FORMATS:
        raise ValueError(f"format must be one of {', '.join(MESH_FORMATS)}, got {fmt!r}")
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{stem}.{fmt}"
    if fmt == "glb":
        target.write_bytes(glb)
        return [target]
    mesh = load_glb(glb)
    if fmt == "ply":
        # PLY has no texture reference: the albedo goes in as per-vertex colours.
        colours = mesh.visual.to_color()
        mesh = trimesh.Trimesh(mesh.vertices, mesh.faces, vertex_normals=mesh.vertex_normals,
                               visual=colours, process=False)
        target.write_bytes(mesh.export(file_type="ply"))
        return [target]
    # MTL viewers multiply map_Kd by Kd, and trimesh's conversion of the glTF material writes its
    # default Kd of 0.4, which would show the albedo at 40% brightness: a white Kd/Ka and no
    # specular keep the texture as stored. The name also names the texture file, so rows sharing
    # a folder do not collide.
    mesh.visual.material = trimesh.visual.material.SimpleMaterial(
        image=mesh.visual.material.baseColorTexture, diffuse=(255, 255, 255, 255), ambient=(255, 255, 255, 255),
        specular=(0, 0, 0, 255), name=stem)
    text, extras = trimesh.exchange.obj.export_obj(mesh, include_normals=True, include_texture=True,
                                                   mtl_name=f"{stem}.mtl", return_texture=True)
    target.write_text(text)
    written = [target]
    for name, data in extras.items():
        path = folder / name
        path.write_bytes(data)
        written.append(path)
    return written
