"""Plain-torch implementations of every op: the CPU path and the reference the kernels are tested against."""
