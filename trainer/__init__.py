"""trainer: train robust face-forgery detectors and export them as forensic bundles."""

from forensic import __version__

__all__ = ["__version__"]
