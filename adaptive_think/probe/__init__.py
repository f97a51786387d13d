"""The probe: model, file format, and (in submodules) collection, training and calibration."""

from adaptive_think.probe.probe import Probe, model_fingerprint

__all__ = ["Probe", "model_fingerprint"]
