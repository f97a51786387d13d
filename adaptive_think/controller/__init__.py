"""The thinking controller: per-row state machine and policies (docs/design.md, "The controller")."""

from adaptive_think.controller.controller import ThinkController, ThinkReport, boundary_mask
from adaptive_think.controller.dispatch import controller_step

__all__ = ["ThinkController", "ThinkReport", "boundary_mask", "controller_step"]
