"""Image and mask files in pixel formats that PIL's ``convert`` would clip rather than scale."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cluster.decode import RowInputError, decode_image, decode_mask


def _png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    (Image.fromarray(arr, mode=mode) if mode else Image.fromarray(arr)).save(buf, format="PNG" if mode != "F" else "TIFF")
    return buf.getvalue()


def test_a_16_bit_grayscale_png_is_scaled_to_8_bits_not_clipped_to_white():
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    data = _png(ramp)
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    image = decode_image(data)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    np.testing.assert_allclose(image[..., 0].astype(float), ramp / 257.0, atol=0.51)
    mask = decode_mask(data, image_shape=(64, 64))
    assert abs(float(mask.mean()) / 255 - 0.5) < 0.01


def test_a_32_bit_float_image_is_an_error_row_not_a_clipped_image():
    data = _png(np.full((8, 8), 0.5, np.float32), mode="F")
    with pytest.raises(RowInputError, match="32-bit float image"):
        decode_image(data)
