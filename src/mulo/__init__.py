"""mulo: meta-training learned optimizers under the Maximal Update Parametrization (muP)."""

__version__ = "0.1.0"
