"""Triton kernels of adaptive-think and their torch references."""
