"""recon: GAN2Shape 3D reconstruction (depth, albedo, normals, light, view) in pure torch."""
__version__ = "0.1.0"
