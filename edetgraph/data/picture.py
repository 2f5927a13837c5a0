"""A picture's size from its header, and the pixel limit checked before anything decodes it.

A 1.1 MB PNG can declare 20000 x 20000 pixels: decoding it takes 1.2 GB, and everything
after (normalising to float32, resizing, drawing) several times that. The header says the
size for a few bytes of reading, so every reader of pictures asks here first. PIL reads
the header only (it decodes nothing until asked); no TensorFlow.
"""
from __future__ import annotations

import os
import threading

from PIL import Image, UnidentifiedImageError

from edetgraph.limits import limit

_PIL_LIMIT = threading.Lock()   # PIL's own bomb check is a module global


class PictureError(ValueError):
    """A picture that cannot be read or is past the pixel limit; the message names it."""


def picture_size(path) -> tuple[int, int]:
    """``(width, height)`` from the header of the picture at ``path``; PictureError when it
    is missing or not a picture PIL knows (JPEG, PNG, GIF, BMP, WebP, ...)."""
    path = os.fspath(path)
    with _PIL_LIMIT:
        # PIL refuses over 179 MP with its own message; ours applies (and may be raised).
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            with Image.open(path) as im:
                return im.size
        except FileNotFoundError:
            raise PictureError(f"{path}: no such image file") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise PictureError(f"{path}: not a readable image ({e})") from None
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def check_pixels(path, width: int, height: int, max_pixels: int | None = None) -> None:
    """PictureError naming ``path`` when ``width x height`` passes the pixel limit
    (``max_pixels``, else ``EDETGRAPH_MAX_IMAGE_PIXELS``)."""
    cap = max_pixels or limit("image_pixels")
    if width * height > cap:
        raise PictureError(f"{os.fspath(path)}: {width}x{height} pixels ({width * height / 1e6:.0f}"
                           f" MP), more than the {cap / 1e6:g} MP allowed (set "
                           "EDETGRAPH_MAX_IMAGE_PIXELS, or infer --max-pixels, to raise it)")


def check_picture(path, max_pixels: int | None = None) -> tuple[int, int]:
    """``(width, height)`` of the picture at ``path`` after checking it against the limit."""
    width, height = picture_size(path)
    check_pixels(path, width, height, max_pixels)
    return width, height
