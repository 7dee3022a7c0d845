"""Reading the user's image files, with one clear error for any file that is not a readable image."""

from __future__ import annotations

import os

import numpy as np
from detectron2.data import detection_utils
from PIL import UnidentifiedImageError

__all__ = ["UnreadableImageError", "bgr_image", "read_image"]


class UnreadableImageError(ValueError):
    """An image file that is missing or cannot be decoded; the message names the file and why."""


def read_image(path: str | os.PathLike, format: str = "RGB") -> np.ndarray:
    """The image at ``path`` as an (H, W, C) uint8 array in ``format``, rotated by its EXIF orientation.

    Args:
        path: an image file PIL can decode (PNG, JPEG, TIFF, BMP, WebP, ...).
        format: "RGB" or "BGR" (H, W, 3), "L" (H, W, 1), or another PIL mode (Detectron2's
            ``read_image``, which this wraps).

    Raises:
        UnreadableImageError: the file is missing, not an image, or truncated.
    """
    if not os.path.isfile(path):
        reason = "is a folder" if os.path.isdir(path) else "does not exist"
        raise UnreadableImageError(f"cannot read image {os.fspath(path)}: it {reason}")
    try:
        # Decoding happens inside (PIL opens lazily), so a truncated file fails here too.
        return detection_utils.read_image(os.fspath(path), format=format)
    except UnidentifiedImageError:  # PIL's message names a file object, not the file
        raise UnreadableImageError(
            f"cannot read image {os.fspath(path)}: not an image format PIL knows"
        ) from None
    except Exception as e:  # PIL's errors for broken files vary (OSError, SyntaxError, ValueError, ...)
        reason = " ".join(str(e).split()) or type(e).__name__
        raise UnreadableImageError(f"cannot read image {os.fspath(path)}: {reason}") from None


def bgr_image(image: str | os.PathLike | np.ndarray, input_format: str) -> np.ndarray:
    """One image for a predictor, as a contiguous (H, W, 3) uint8 BGR array.

    Args:
        image: an image file path, or an (H, W, 3) uint8 array in ``input_format``'s channel order.
        input_format: "BGR" or "RGB" (the model's ``INPUT.FORMAT``).

    Raises:
        UnreadableImageError: the file is missing or not a readable image.
        ValueError: an array of another shape or dtype.
    """
    if isinstance(image, (str, os.PathLike)):
        return read_image(image, format="BGR")
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(
            f"expected an (H, W, 3) uint8 image in {input_format} order, got an array of "
            f"shape {array.shape} and dtype {array.dtype}"
        )
    return np.ascontiguousarray(array[:, :, ::-1] if input_format == "RGB" else array)
