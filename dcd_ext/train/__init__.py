"""Training package of ``python -m dcd_ext.train``: flags (params), the loop, checkpoints, the run folder,
the report and the built-in demo. ``main(argv)`` is the entry point."""

from .cli import main

__all__ = ["main"]
