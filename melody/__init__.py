"""melody: an open-source PyTorch implementation of MeLoDy (Lam et al., 2023, arXiv 2305.15719)."""

__version__ = "0.1.0"
