"""vsr: video super-resolution with SRGAN."""

__version__ = "0.1.0"
