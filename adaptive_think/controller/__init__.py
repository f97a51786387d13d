"""The thinking controller: per-row state machine and policies (DESIGN.md section 4)."""

from adaptive_think.controller.controller import ThinkController, ThinkReport, boundary_mask

__all__ = ["ThinkController", "ThinkReport", "boundary_mask"]
