"""Names of the distillation kinds and the dynamic weighting schemes (docs/design.md sections 3.2-3.3).

The one Python definition, shared by :mod:`dcd_ext.ops`, :mod:`dcd_ext.losses` and the training
command line; ``csrc/include/dcd/options.h`` lists the same names, in the same order, for the kernels.
"""

KINDS = ("kl", "mse")
WEIGHTINGS = ("none", "entropy", "wsl", "dcd")
