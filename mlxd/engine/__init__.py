"""Behind the WorkQueue: what turns a job into tokens.

`local` is the engine thread that owns an MLX model; the other modules here are its parts (model loading,
batching, conversations' caches, the embedded default model, the BLAS). Importing this package loads no MLX.
"""
