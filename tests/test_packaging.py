"""What `pip install .` ships (the Docker image installs the package that way, not editable): every Python
package of the source tree, and the data files the code reads at run time."""

from __future__ import annotations

import pathlib
import tomllib

REPO = pathlib.Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_every_python_package_is_listed() -> None:
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(REPO).parts) for init in (REPO / "openpi_triton").rglob("__init__.py")}
    assert found - listed == set(), f"pyproject.toml [tool.setuptools] packages lacks {sorted(found - listed)}"


def test_the_simulated_runtimes_cost_curves_ship_as_package_data() -> None:
    from openpi_triton import cost_curve

    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]["openpi_triton"]
    shipped = {
        p.relative_to(REPO / "openpi_triton") for pattern in patterns for p in (REPO / "openpi_triton").glob(pattern)
    }
    curves = {p.relative_to(REPO / "openpi_triton") for p in cost_curve.CURVES_DIR.glob("*.json")}
    assert curves and curves <= shipped
    assert cost_curve.CURVES_DIR.is_relative_to(REPO / "openpi_triton")
