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


def _jpeg_with_orientation(arr: np.ndarray, orientation: int) -> bytes:
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = orientation  # Orientation
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def test_the_exif_orientation_of_a_photo_is_applied_to_image_and_mask():
    """Phones store photos sideways with orientation 6 ("rotate 90 clockwise to view"); the method must see
    the photo upright, as a viewer shows it."""
    upright = np.zeros((48, 64, 3), np.uint8)
    upright[:8] = 255  # a white band along the top edge
    stored = np.ascontiguousarray(np.rot90(upright, k=1))  # what the camera wrote: rotated 90 anticlockwise
    image = decode_image(_jpeg_with_orientation(stored, 6))
    assert image.shape == (48, 64, 3)
    assert image[:8].mean() > 240 and image[16:].mean() < 15
    mask = decode_mask(_jpeg_with_orientation(stored[..., 0].copy(), 6), image_shape=(48, 64))
    assert mask[:8].mean() > 240 and mask[16:].mean() < 15


@pytest.mark.parametrize("mode", ["RGBA", "P"])
def test_transparent_pixels_are_composited_onto_black_not_their_stored_colour(mode):
    rgb = np.full((16, 16, 3), 200, np.uint8)
    if mode == "RGBA":
        rgba = np.dstack([np.full((16, 16, 3), (255, 0, 255), np.uint8), np.zeros((16, 16), np.uint8)])
        rgba[:8, :, :3], rgba[:8, :, 3] = rgb[:8], 255  # top half opaque grey, bottom half transparent magenta
        img = Image.fromarray(rgba, mode="RGBA")
    else:
        pal = Image.new("P", (16, 16), 1)
        pal.putpalette([200, 200, 200, 255, 0, 255] + [0] * 762)
        pal.paste(0, (0, 0, 16, 8))  # top half: grey index 0; bottom: magenta index 1, the transparent one
        pal.info["transparency"] = 1
        img = pal
    buf = io.BytesIO()
    img.save(buf, format="PNG", **({"transparency": 1} if mode == "P" else {}))
    image = decode_image(buf.getvalue())
    assert (image[:8] == 200).all() and (image[8:] == 0).all()
