"""controller_step: the Triton kernel of one controller step for every row (probe heads and state machine, fused).

Its torch reference, the statement of the semantics, is `adaptive_think.controller.step`; the entry point that
picks between the two (Triton on CUDA, the reference elsewhere) is `adaptive_think.controller.controller_step`,
and the host side that packs and checks the kernel's buffers is adaptive_think/controller/kernel_buffers.py.

This package imports nothing of adaptive_think (its layouts come in as constexpr tuples) and nothing of triton
until `triton_kernel` itself is imported.
"""
