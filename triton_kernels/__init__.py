"""Fused Triton kernels, installed as `sparsekit.triton_kernels` (Triton ships its own top-level
`triton_kernels`). Reach them through `sparsekit.ops`, which picks the backend; each file holds a
kernel, its launcher and the math it computes."""
