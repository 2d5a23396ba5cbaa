"""featuremaps: capture every layer of a PyTorch model and draw truthful pictures of it."""

__version__ = "0.1.0"
