"""desertseg: semantic segmentation of off-road desert terrain."""

__version__ = "0.1.0"
