"""The bundled tiny reasoners and their probes, loadable by name wherever a model or probe folder goes.

    bundled      the embedded default: the demo's, the tests' and `--model bundled`'s. Three task families
                 (last_digit, walk, long_chain) with median thoughts of about 70, 120 and 700 tokens; its probe
                 is trained on last_digit and long_chain, with walk held out (docs/reasoner.md)
    bundled-v1   the one-family reasoner: last_digit only, thoughts of about 86 tokens (docs/results.md)

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from adaptive_think.bundled import reasoner_path
    model = AutoModelForCausalLM.from_pretrained(reasoner_path())
    tok = AutoTokenizer.from_pretrained(reasoner_path("bundled-v1"))

Rebuild them with `python scripts/train_reasoner.py` (its docstring gives both recipes),
`bash scripts/train_bundled_probe.sh` and `bash scripts/train_bundled_v1_probe.sh`; check a reasoner with
`python scripts/measure_families.py`.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["BUNDLED", "is_bundled", "probe_path", "reasoner_path"]

_ROOT = Path(__file__).resolve().parent
# name -> (folder holding reasoner/ and probe/, how to rebuild it)
BUNDLED = {
    "bundled": (_ROOT, "python scripts/train_reasoner.py --out adaptive_think/bundled/reasoner (about three hours on "
                       "2 CPU cores; docs/reasoner.md)", "bash scripts/train_bundled_probe.sh"),
    "bundled-v1": (_ROOT / "v1", "python scripts/train_reasoner.py --recipe v1 (about half an hour on 2 CPU cores)",
                   "bash scripts/train_bundled_v1_probe.sh"),
}


def is_bundled(name) -> bool:
    """Whether `name` (a CLI argument) names a bundled reasoner rather than a folder."""
    return isinstance(name, str) and name in BUNDLED


def _folder(name: str, sub: str, files: tuple[str, ...], how: int) -> Path:
    """A bundle's `sub` folder, checked to hold `files`; a missing one names the command that builds it."""
    if name not in BUNDLED:
        raise ValueError(f"{name!r} is not a bundled reasoner; the bundled ones are {', '.join(BUNDLED)}.")
    folder = BUNDLED[name][0] / sub
    if not all((folder / f).is_file() for f in files):
        raise FileNotFoundError(f"the {name} {sub} is missing from {folder}; build it with `{BUNDLED[name][how]}`")
    return folder


def reasoner_path(name: str = "bundled") -> Path:
    """Folder holding a bundled model and its tokenizer (loadable by AutoModelForCausalLM/AutoTokenizer)."""
    return _folder(name, "reasoner", ("config.json", "model.safetensors"), 1)


def probe_path(name: str = "bundled") -> Path:
    """Folder holding the probe shipped for a bundled reasoner (probe.safetensors + probe.json)."""
    return _folder(name, "probe", ("probe.json", "probe.safetensors"), 2)
