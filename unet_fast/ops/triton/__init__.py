"""Triton kernels, one module per op; importing one needs triton."""
