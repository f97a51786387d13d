"""adaptive-think: make a Hugging Face reasoning model think only as much as each question needs.

    >>> from adaptive_think import AdaptiveThinker, ThinkConfig
    >>> thinker = AdaptiveThinker(model, tokenizer)
    >>> out = thinker.generate(input_ids, max_new_tokens=256, think=ThinkConfig(policy="budget", max_think_tokens=64))
"""

from adaptive_think.config import ThinkConfig
from adaptive_think.controller import ThinkReport
from adaptive_think.markers import ThinkMarkers, resolve_markers
from adaptive_think.patching import is_patched, patch, unpatch
from adaptive_think.thinker import AdaptiveThinker

__version__ = "0.1.0"

__all__ = [
    "AdaptiveThinker",
    "ThinkConfig",
    "ThinkMarkers",
    "ThinkReport",
    "is_patched",
    "patch",
    "resolve_markers",
    "unpatch",
]
