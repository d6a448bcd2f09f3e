"""forensic: find faces in images and videos and judge them with an exported detector bundle."""

__version__ = "0.1.0"

# Frames sampled evenly per video, as DeepfakeBench and the DFDC winners do. Here, not in
# forensic.scan, so that the command line can show it without importing PyTorch.
DEFAULT_FRAMES = 32
# Video frames detected in full: every K-th analysed one; faces are followed in between
# (forensic.tracking). Chosen by the verdict tolerance measured on FF++ (BENCHMARKS.md).
DEFAULT_DETECT_EVERY = 8
