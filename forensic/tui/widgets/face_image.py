"""A face crop or heatmap as an image: real pixels where the terminal shows graphics (Sixel or
the Kitty graphics protocol, detected by textual-image when it is imported, before the app
takes the terminal), coloured half blocks elsewhere."""

from __future__ import annotations

import numpy as np
from PIL import Image
from textual.widget import Widget
from textual_image import renderable
from textual_image.widget import HalfcellImage
from textual_image.widget import Image as GraphicsImage

SHOWS_GRAPHICS = renderable.Image in (renderable.SixelImage, renderable.TGPImage)


def face_image(pixels: np.ndarray, classes: str = "") -> Widget:
    """An image widget for an (H, W, 3) RGB uint8 array; size it with CSS."""
    image = Image.fromarray(pixels)
    return GraphicsImage(image, classes=classes) if SHOWS_GRAPHICS else HalfcellImage(image, classes=classes)
