"""crd-bench: a benchmark for efficient 3D deformable registration by cross-resolution distillation."""

__version__ = "0.1.0"
