"""mlxd: a local, real-time multimodal inference daemon for MLX models."""

__version__ = "0.1.0"
