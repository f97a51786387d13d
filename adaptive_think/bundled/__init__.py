"""The bundled tiny reasoner: a ~2M-parameter Qwen3ForCausalLM trained on the arithmetic task traces.

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from adaptive_think.bundled import reasoner_path
    model = AutoModelForCausalLM.from_pretrained(reasoner_path())
    tok = AutoTokenizer.from_pretrained(reasoner_path())

Rebuild it with `python scripts/train_reasoner.py --out adaptive_think/bundled/reasoner`; check it with
`python scripts/measure_reasoner.py`.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["probe_path", "reasoner_path"]

_REASONER = Path(__file__).resolve().parent / "reasoner"
_PROBE = Path(__file__).resolve().parent / "probe"


def reasoner_path() -> Path:
    """Folder holding the bundled model and tokenizer (loadable by AutoModelForCausalLM/AutoTokenizer)."""
    if not (_REASONER / "config.json").is_file() or not (_REASONER / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"the bundled reasoner is missing from {_REASONER}; build it with "
            f"`python scripts/train_reasoner.py --out {_REASONER}` (about half an hour on 2 CPU cores)"
        )
    return _REASONER


def probe_path() -> Path:
    """Folder holding the shipped probe for the bundled reasoner (probe.safetensors + probe.json)."""
    if not (_PROBE / "probe.json").is_file() or not (_PROBE / "probe.safetensors").is_file():
        raise FileNotFoundError(
            f"the bundled probe is missing from {_PROBE}; build it with `bash scripts/train_bundled_probe.sh` "
            "(collect + train-probe on the bundled reasoner, minutes on 2 CPU cores)"
        )
    return _PROBE
