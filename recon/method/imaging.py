"""Bringing input images, masks and GAN outputs to the method's resolution (docs/method.md#inputs-and-preprocessing).

The reference resizes with bilinear interpolation when enlarging and area
averaging when shrinking; with ``crop`` set (cat, synface) it centre-crops
``crop`` pixels from the original first, and brings GAN outputs to the
original's size before the same crop.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize (B,C,H,W) to size x size: area when shrinking, bilinear when enlarging."""
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    if size < h or size < w:
        return F.interpolate(x, size=(size, size), mode="area")
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def center_crop(x: torch.Tensor, crop: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    if crop > h or crop > w:
        raise ValueError(f"crop {crop} is larger than the image ({h}x{w})")
    top, left = (h - crop) // 2, (w - crop) // 2
    return x[..., top : top + crop, left : left + crop]


def image_to_tensor(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (H,W,3) array, or uint8 0..255 / float [-1,1] tensor (3,H,W)/(1,3,H,W)/(H,W,3) -> float32 (1,3,H,W) in [-1,1]."""
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim != 3 or arr.shape[2] not in (3, 4):
            raise ValueError(f"image must be (H, W, 3) uint8, got shape {arr.shape}")
        if arr.dtype != np.uint8:
            raise ValueError(f"numpy images must be uint8 (H, W, 3), got dtype {arr.dtype}")
        t = torch.from_numpy(np.array(arr[..., :3], copy=True)).permute(2, 0, 1).float() / 255.0 * 2 - 1
        return t.unsqueeze(0)
    if isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8 and not image.is_floating_point():
            raise ValueError(f"image tensors must be uint8 (0..255) or float in [-1, 1], got {image.dtype}")
        # uint8 tensors are pixels like uint8 arrays; read as floats they would pass as [-1, 1] when dark
        t = image.detach().float() / 255.0 * 2 - 1 if image.dtype == torch.uint8 else image.detach().float()
        if t.ndim == 3 and t.shape[0] != 3 and t.shape[-1] == 3:
            t = t.permute(2, 0, 1)
        if t.ndim == 3:
            t = t.unsqueeze(0)
        if t.ndim != 4 or t.shape[:2] != (1, 3):
            raise ValueError(f"image tensor must be (3,H,W) or (1,3,H,W), got {tuple(image.shape)}")
        if not torch.isfinite(t).all():
            raise ValueError("image tensor holds NaN or inf")
        if t.min() < -1.0 - 1e-3 or t.max() > 1.0 + 1e-3:
            raise ValueError("float image tensors must lie in [-1, 1]")
        return t.clamp(-1, 1).cpu()
    raise ValueError(f"image must be a numpy uint8 array or a torch tensor, got {type(image).__name__}")


def mask_to_tensor(mask: np.ndarray | torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(H,W) mask: bool, float in [0,1] or uint8 0..255 -> float32 (1,1,H,W).

    Values outside those ranges are refused rather than clamped: a float mask in 0..255 (a forgotten
    division) would become all object, and a uint8 mask of 0/1 would become 1/255, all background.
    """
    # a copy: masks decoded from Arrow buffers are read-only, and torch warns about wrapping those
    m = torch.as_tensor(np.array(mask) if not isinstance(mask, torch.Tensor) else mask)
    if m.dtype == torch.uint8:
        if m.numel() and int(m.max()) == 1:
            raise ValueError("uint8 masks are read as 0..255, but this one holds only 0 and 1: "
                             "multiply it by 255 or pass it as bool")
        m = m.float() / 255.0
    elif m.dtype != torch.bool and not m.is_floating_point():
        raise ValueError(f"masks must be bool, float in [0, 1] or uint8 0..255, got {m.dtype}")
    m = m.float().squeeze()
    if m.shape != (height, width):
        raise ValueError(f"mask shape {tuple(m.shape)} does not match the image ({height}, {width})")
    if not torch.isfinite(m).all():
        raise ValueError("mask holds NaN or inf")
    if m.min() < -1e-3 or m.max() > 1.0 + 1e-3:
        raise ValueError(f"float masks must lie in [0, 1], got values in [{float(m.min()):g}, {float(m.max()):g}]")
    return m.clamp(0, 1)[None, None]


def prepare_input(image: torch.Tensor, crop: int | None, image_size: int) -> torch.Tensor:
    """Input image: optional centre crop from the original, then resize to ``image_size``."""
    if crop:
        image = center_crop(image, crop)
    return resize(image, image_size)


def prepare_gan_output(image: torch.Tensor, origin_size: int | None, crop: int | None, image_size: int) -> torch.Tensor:
    """GAN output: clamp to [-1,1]; with ``crop``, resize to the original's size and crop; then resize."""
    image = image.clamp(-1, 1)
    if crop:
        if origin_size:
            image = resize(image, origin_size)
        image = center_crop(image, crop)
    return resize(image, image_size)
