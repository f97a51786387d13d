"""Every package folder installs: pyproject lists them all, and kernels/ maps to adaptive_think.kernels."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")


def test_every_package_folder_is_listed():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set()
    for top, name in (("adaptive_think", "adaptive_think"), ("kernels", "adaptive_think.kernels")):
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top).parts
            found.add(".".join((name,) + rel))
    assert found == listed, f"add to / remove from pyproject [tool.setuptools].packages: {found ^ listed}"


def test_kernels_install_under_the_package_namespace():
    import adaptive_think.kernels.probe_step as ps

    assert Path(ps.__file__).resolve().parent == ROOT / "kernels" / "probe_step"
