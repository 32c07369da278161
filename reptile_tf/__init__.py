"""reptile-tf: benchmark and reproducibility suite for Reptile, FOMAML and MAML (TensorFlow 2)."""

__version__ = "0.1.0"
