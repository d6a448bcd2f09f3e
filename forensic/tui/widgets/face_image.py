"""A face crop or heatmap as an image: real pixels where the terminal shows graphics (Sixel or
the Kitty graphics protocol, detected by textual-image when it is imported, before the app
takes the terminal), coloured half blocks elsewhere."""

from __future__ import annotations

import logging

import numpy as np
from PIL import Image
from textual.widget import Widget

# textual-image logs a warning with a traceback when the terminal does not answer its cell-size
# query, and then assumes a usual size: nothing for the user to act on, so it is not printed.
logging.getLogger("textual_image").addHandler(logging.NullHandler())

from textual_image import renderable  # noqa: E402 (after the logger is quieted: importing queries the terminal)
from textual_image.widget import HalfcellImage  # noqa: E402
from textual_image.widget import Image as GraphicsImage  # noqa: E402

SHOWS_GRAPHICS = renderable.Image in (renderable.SixelImage, renderable.TGPImage)


def face_image(pixels: np.ndarray, classes: str = "") -> Widget:
    """An image widget for an (H, W, 3) RGB uint8 array; size it with CSS."""
    image = Image.fromarray(pixels)
    return GraphicsImage(image, classes=classes) if SHOWS_GRAPHICS else HalfcellImage(image, classes=classes)
