"""Perceptual hashes, vectorised over a batch, bit-identical to ``imagehash.phash``.

``imagehash.phash(img)`` is: ``img.convert("L").resize((32, 32), LANCZOS)``, a 2-D DCT-II
(``scipy.fftpack.dct`` along rows then columns, no normalisation), the top-left 8×8 coefficients,
and ``coefficient > median`` as 64 bits, the first (row-major) being the most significant bit of
``int(str(hash), 16)``. Here the resize is per image (PIL; none at all when the decoded image is
already 32×32, since Pillow's resize to the same size is a copy), and the DCT, median and bit packing
run once over a ``(B, 32, 32)`` stack, with the same scipy function so the floats are the same.
The views hashed besides the plain one are in :mod:`dedup.views`.
"""

from __future__ import annotations

import numpy as np
import scipy.fftpack
from PIL import Image

THUMB = 32
HASH_BITS = 8  # 8×8 = 64-bit hash, imagehash's default hash_size


def thumb(gray: Image.Image | np.ndarray) -> np.ndarray:
    """32×32 LANCZOS thumbnail (uint8) of a grayscale image, exactly as imagehash resizes."""
    if isinstance(gray, np.ndarray):
        if gray.shape == (THUMB, THUMB):
            return gray  # Pillow's resize to the same size is a copy
        gray = Image.fromarray(gray)
    return np.asarray(gray.resize((THUMB, THUMB), Image.LANCZOS), dtype=np.uint8)


def phash_thumbs(thumbs: np.ndarray) -> np.ndarray:
    """pHash (uint64) of each 32×32 thumbnail in ``thumbs`` (``(B, 32, 32)`` uint8), as imagehash computes it."""
    thumbs = np.asarray(thumbs)
    if thumbs.ndim != 3 or thumbs.shape[1:] != (THUMB, THUMB):
        raise ValueError(f"expected (B, 32, 32) thumbnails, got {thumbs.shape}")
    if len(thumbs) == 0:
        return np.zeros(0, dtype=np.uint64)
    # imagehash runs the DCT on the uint8 pixel array; scipy casts it to float64 the same way here.
    dct = scipy.fftpack.dct(scipy.fftpack.dct(thumbs, axis=1), axis=2)
    low = dct[:, :HASH_BITS, :HASH_BITS].reshape(len(thumbs), HASH_BITS * HASH_BITS)
    med = np.median(low, axis=1, keepdims=True)
    bits = low > med
    return np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64)


def phash_images(images: list[Image.Image]) -> np.ndarray:
    """pHash of PIL images (any mode); equals ``[int(str(imagehash.phash(im)), 16) for im in images]``."""
    return phash_thumbs(
        np.stack([thumb(im.convert("L")) for im in images]) if images else np.zeros((0, 32, 32))
    )


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise Hamming distance of uint64 hashes."""
    return np.bitwise_count(np.bitwise_xor(np.asarray(a, np.uint64), np.asarray(b, np.uint64))).astype(
        np.int16
    )
