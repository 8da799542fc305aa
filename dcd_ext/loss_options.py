"""Names of the distillation kinds and dynamic weighting modes, shared by the ops, the losses and the CLI."""

KINDS = ("kl", "mse")
WEIGHTINGS = ("none", "entropy", "wsl", "dcd")
