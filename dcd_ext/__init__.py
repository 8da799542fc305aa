"""dcd_ext: dynamic contrastive distillation kernels and training for image-text retrieval.

Importing the package is cheap and never initialises CUDA; the compiled operators load on first use
of :mod:`dcd_ext.ops` (``import dcd_ext.ops``).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
