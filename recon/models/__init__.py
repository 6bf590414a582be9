"""Frozen models and their files: the model bundle manifest, the GAN loader (StyleGAN2 and
registered checkpoint kinds), LPIPS, and the checks of weight files before anything is built.
"""
