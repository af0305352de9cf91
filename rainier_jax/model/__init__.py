"""The model as math: the built-in Llama-style decoder and the numerics of its matmuls."""
