"""Every package folder installs, kernels/ maps to adaptive_think.kernels, and nothing in the repository root
shadows Hugging Face's `kernels` package (which transformers imports)."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")


def _setuptools_table():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_folder_is_listed():
    listed = set(_setuptools_table()["packages"])
    found = {".".join(("adaptive_think",) + i.parent.relative_to(ROOT / "adaptive_think").parts)
             for i in (ROOT / "adaptive_think").rglob("__init__.py")}
    for init in (ROOT / "kernels").rglob("__init__.py"):
        found.add(".".join(("adaptive_think", "kernels") + init.parent.relative_to(ROOT / "kernels").parts))
    assert found == listed, f"add to / remove from pyproject [tool.setuptools].packages: {found ^ listed}"


def test_root_kernels_folder_is_not_a_regular_package():
    # a kernels/__init__.py would make the folder a regular package that beats the installed `kernels`
    assert not (ROOT / "kernels" / "__init__.py").exists(), "kernels/ must stay a namespace portion"
    mapped = _setuptools_table()["package-dir"]
    for op in (p.parent.name for p in (ROOT / "kernels").glob("*/__init__.py")):
        assert mapped.get(f"adaptive_think.kernels.{op}") == f"kernels/{op}"


def test_kernels_install_under_the_package_namespace():
    import adaptive_think.kernels.controller_step as ps

    assert Path(ps.__file__).resolve().parent == ROOT / "kernels" / "controller_step"


def test_repository_root_does_not_shadow_hf_kernels():
    """Started in the repository root (as `python3 -m pytest` is), transformers' hub-kernels integration
    imports the installed `kernels` package and the bundled reasoner loads."""
    pytest.importorskip("kernels", reason="Hugging Face's kernels package is not installed (the test extra has it)")
    code = (
        "import kernels, pathlib, sys\n"
        "from transformers.integrations import hub_kernels  # imports names from the installed kernels\n"
        "from transformers import AutoModelForCausalLM\n"
        "from adaptive_think import bundled\n"
        "AutoModelForCausalLM.from_pretrained(bundled.reasoner_path())\n"
        "print(pathlib.Path(kernels.__file__).resolve())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    where = Path(out.stdout.strip().splitlines()[-1])
    assert ROOT not in where.parents, f"`kernels` resolved inside the repository: {where}"


@pytest.mark.slow
def test_wheel_lays_kernels_under_the_package(tmp_path):
    import shutil

    src = tmp_path / "src"  # build a copy: setuptools writes its build/ folder beside the sources
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("adaptive_think", "kernels"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path), str(src)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    names = zipfile.ZipFile(next(tmp_path.glob("*.whl"))).namelist()
    assert "adaptive_think/kernels/__init__.py" in names
    assert "adaptive_think/kernels/controller_step/triton_kernel.py" in names
    assert "adaptive_think/kernels/logit_stats/naive.py" in names
    assert not any(n.startswith("kernels/") for n in names), "a top-level kernels package would shadow HF's"
    from adaptive_think.bundled import BUNDLED, probe_path, reasoner_path

    for name in BUNDLED:  # every bundled reasoner ships whole, with its probe
        for folder in (reasoner_path(name), probe_path(name)):
            for f in folder.iterdir():
                assert f.relative_to(ROOT).as_posix() in names, f"{f} is missing from the wheel"
