"""The probe at run time: its heads, its file format (safetensors + JSON) and its effort ladder.

Training, collection and calibration live in `adaptive_think.training`, which a running model never imports.
"""

from adaptive_think.probe.probe import Probe, model_fingerprint

__all__ = ["Probe", "model_fingerprint"]
