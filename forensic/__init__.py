"""forensic: find faces in images and videos and judge them with an exported detector bundle."""

__version__ = "0.1.0"
