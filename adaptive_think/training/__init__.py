"""The offline probe pipeline: collect forced-exit labels, train the heads, calibrate the effort ladder.

Nothing here is imported by a running model (`AdaptiveThinker`, `patch`, the vLLM integration): those load a
finished probe through `adaptive_think.probe`.
"""
