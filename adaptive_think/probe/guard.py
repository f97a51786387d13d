"""`Guard`: how unlike the probe's training data a prompt is, and the threshold past which the probe is not trusted.

The guard reads the probe's own features of the prompt-end hidden state, x = (h - mean) * inv_std at the
probe's layer, and scores it with a low-rank Mahalanobis distance fitted on in-distribution prompts:

    y = x - guard mean,  p = U y  (U: the top R principal directions, [R, D])
    score = sum_j p_j^2 / var_j + |y - U^T p|^2 / res_var

(var_j: the variance along direction j; res_var: the mean variance of the remaining D - R directions, so a
state that moves along directions the training prompts never moved in scores high). `threshold` is a
conformal quantile of in-distribution calibration scores (training/guard.py), so that at most `alpha` of
fresh in-distribution rows score above it. The controller computes the score in the same step as the skip
head (controller/step.py `guard_scores`, the kernel's reference) and a row above the threshold falls back.

In a probe file the guard is four tensors in probe.safetensors (`guard_mean` [D], `guard_dirs` [R, D],
`guard_var` [R], `guard_res_var` [1]) and a `guard` section in probe.json (threshold, alpha, counts).

    >>> guard = probe.guard; guard.score(x) > guard.threshold   # x [B, D] normalised features -> [B] flags
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import torch

WEIGHT_NAMES = ("guard_mean", "guard_dirs", "guard_var", "guard_res_var")


@dataclass
class Guard:
    """A fitted guard: mean [D], dirs [R, D] (orthonormal rows), var [R], res_var, and its calibrated threshold."""

    mean: torch.Tensor
    dirs: torch.Tensor
    var: torch.Tensor
    res_var: float
    threshold: float
    alpha: float
    n_fit: int
    n_calibration: int
    provenance: dict = field(default_factory=dict)

    def __post_init__(self):
        d = self.mean.shape[0]
        r = self.dirs.shape[0]
        if self.mean.dim() != 1 or tuple(self.dirs.shape) != (r, d) or tuple(self.var.shape) != (r,):
            raise ValueError(f"Guard shapes: mean [D], dirs [R, D], var [R]; got {tuple(self.mean.shape)}, "
                             f"{tuple(self.dirs.shape)}, {tuple(self.var.shape)}.")
        if not (bool((self.var > 0).all()) and self.res_var > 0):
            raise ValueError("Guard variances must be positive (var and res_var); refit the guard.")
        if not 0 < self.alpha < 1:
            raise ValueError(f"Guard.alpha={self.alpha} must lie in (0, 1).")

    @property
    def rank(self) -> int:
        return int(self.dirs.shape[0])

    def coef(self) -> torch.Tensor:
        """[R + 1]: the weights of p_j^2 (1/var_j - 1/res_var) and of |y|^2 (1/res_var) in the score."""
        inv_res = 1.0 / self.res_var
        return torch.cat([1.0 / self.var.float() - inv_res, torch.tensor([inv_res])]).float()

    def tensors(self) -> dict[str, torch.Tensor]:
        """The `ProbeTensors` fields of the guard (fp32, CPU)."""
        return {"guard_mean": self.mean.float().contiguous(), "guard_dirs": self.dirs.float().contiguous(),
                "guard_coef": self.coef()}

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, D] normalised features -> [B] guard scores (the controller's formula)."""
        from adaptive_think.controller.step import guard_scores

        t = SimpleNamespace(**{k: v.to(x.device) for k, v in self.tensors().items()})
        return guard_scores(x.float(), t)

    # -- file --------------------------------------------------------------------------------------

    def weights(self) -> dict[str, torch.Tensor]:
        return {"guard_mean": self.mean.float(), "guard_dirs": self.dirs.float(), "guard_var": self.var.float(),
                "guard_res_var": torch.tensor([float(self.res_var)])}

    def config(self) -> dict:
        return {"rank": self.rank, "threshold": self.threshold, "alpha": self.alpha, "n_fit": self.n_fit,
                "n_calibration": self.n_calibration, "provenance": self.provenance,
                "score": "sum_j (U y)_j^2 / var_j + |y - U^T U y|^2 / res_var, y = (h - mean) * inv_std - guard_mean",
                "rule": "a row whose prompt-end score exceeds threshold falls back (conformal, at most alpha of "
                        "in-distribution rows)"}

    @classmethod
    def from_file(cls, weights: dict[str, torch.Tensor], cfg: dict, where: str) -> "Guard":
        """The guard of a probe file (its tensors and probe.json's `guard` section); ValueError naming what is wrong."""
        missing = [n for n in WEIGHT_NAMES if n not in weights]
        if missing or not isinstance(cfg, dict) or "threshold" not in cfg:
            raise ValueError(f"{where}: the probe's guard is incomplete (missing tensors {missing} or probe.json's "
                             "guard.threshold). Refit it with `adaptive-think fit-guard`.")
        return cls(mean=weights["guard_mean"], dirs=weights["guard_dirs"], var=weights["guard_var"],
                   res_var=float(weights["guard_res_var"].reshape(-1)[0]), threshold=float(cfg["threshold"]),
                   alpha=float(cfg.get("alpha", 0.05)), n_fit=int(cfg.get("n_fit", 0)),
                   n_calibration=int(cfg.get("n_calibration", 0)), provenance=cfg.get("provenance", {}))
