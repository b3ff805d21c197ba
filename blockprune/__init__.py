"""blockprune: find which transformer blocks can be removed with the least loss, and ship the result."""

__version__ = "0.1.0"
