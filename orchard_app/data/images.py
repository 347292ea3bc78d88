"""One image file in, one uint8 array at the dataset's side out: the folder loader and
`predict` both go through `read_image` and `fit`, so a new image is brought to the model's
input exactly as the training images were."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from orchard_app.errors import DataError

SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm"})
RESIZE = ("pad", "crop", "stretch")


class UnreadableImage(DataError):
    """A file with an image suffix that cannot be decoded (truncated, corrupt, not an image)."""


def read_image(path: str | Path) -> np.ndarray:
    """uint8 H x W (grey) or H x W x 3 (colour). Alpha is dropped, palettes expanded, wider
    integers (16-bit PNG/TIFF) scaled by their full range (x / 257), floats and DICOM by
    their own min..max."""
    path = Path(path)
    if path.suffix.lower() == ".dcm":
        return _read_dicom(path)
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode in ("1", "L", "LA", "P", "PA") and not _palette_colour(im):
                im = im.convert("L")
            elif im.mode not in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
                im = im.convert("RGB")
            a = np.asarray(im)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise UnreadableImage(f"{path} cannot be read as an image ({e})") from None
    return _to_uint8(a)


def _palette_colour(im) -> bool:
    if im.mode not in ("P", "PA"):
        return False
    rgb = np.asarray(im.convert("RGB"))
    return not (
        np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])
    )


def _read_dicom(path: Path) -> np.ndarray:
    try:
        import pydicom
    except ImportError:
        raise DataError(
            f"{path} is a DICOM file; reading DICOM needs pydicom: pip install orchard_app[dicom]"
        ) from None
    try:
        a = pydicom.dcmread(path).pixel_array
    except Exception as e:  # pydicom raises many kinds for a damaged file
        raise UnreadableImage(f"{path} cannot be read as DICOM ({e})") from None
    if a.ndim == 3 and a.shape[-1] not in (3, 4):  # a multi-frame series: its first frame
        a = a[0]
    return _to_uint8(a[..., :3] if a.ndim == 3 else a, minmax=True)


def _to_uint8(a: np.ndarray, minmax: bool = False) -> np.ndarray:
    if a.dtype == np.uint8 and not minmax:
        return np.ascontiguousarray(a)
    if minmax or np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)
        lo, hi = float(a.min()), float(a.max())
        return np.round((a - lo) * (255.0 / (hi - lo) if hi > lo else 0.0)).astype(np.uint8)
    return np.round(np.clip(a, 0, 65535) / 257.0).astype(np.uint8)


def fit(image: np.ndarray, side: int, mode: str = "pad") -> np.ndarray:
    """Bring a uint8 H x W or H x W x 3 image to side x side. pad: the whole image, centred on
    black, aspect kept; crop: the centred square, aspect kept; stretch: both sides scaled.
    Resampling is Pillow's antialiased bilinear; an image already side x side is unchanged."""
    if mode not in RESIZE:
        raise ValueError(f"resize mode {mode!r}; expected one of {RESIZE}")
    h, w = image.shape[:2]
    if mode == "pad" and h != w:
        n = max(h, w)
        square = np.zeros((n, n, *image.shape[2:]), dtype=np.uint8)
        top, left = (n - h) // 2, (n - w) // 2
        square[top : top + h, left : left + w] = image
        image = square
    elif mode == "crop" and h != w:
        n = min(h, w)
        top, left = (h - n) // 2, (w - n) // 2
        image = image[top : top + n, left : left + n]
    if image.shape[:2] == (side, side):
        return np.ascontiguousarray(image)
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((side, side), Image.Resampling.BILINEAR))


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """Grey H x W to H x W x 3 (replicated) or colour to grey (ITU-R 601 luma, as Pillow)."""
    if channels == 3 and image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    if channels == 1 and image.ndim == 3:
        from PIL import Image

        return np.asarray(Image.fromarray(image).convert("L"))
    return image
