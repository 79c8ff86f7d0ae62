"""The bridge stands on the contract package and the protocols only: no runtime, no JAX, no PIL."""

from __future__ import annotations

import subprocess
import sys

RUNTIME_MODULES = ("openpi_triton.native", "openpi_triton.openpi_runtime", "jax", "PIL")


def test_importing_the_bridge_loads_no_runtime() -> None:
    code = (
        "import sys, openpi_bridge.app, openpi_bridge.__main__\n"
        f"print(sorted(m for m in sys.modules if m.startswith({RUNTIME_MODULES!r})))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]", f"the bridge imports runtime modules: {loaded}"


def test_the_contract_imports_no_runtime() -> None:
    code = (
        "import sys, openpi_triton.contract.io_names, openpi_triton.contract.images, "
        "openpi_triton.contract.robot_metadata\n"
        f"print(sorted(m for m in sys.modules if m.startswith({RUNTIME_MODULES!r})))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]", f"the contract imports runtime modules: {loaded}"


def test_the_native_config_table_takes_policy_metadata_from_the_contract() -> None:
    from openpi_triton.contract.robot_metadata import POLICY_METADATA
    from openpi_triton.native.configs import POLICY_CONFIGS

    for name, config in POLICY_CONFIGS.items():
        assert config.metadata == POLICY_METADATA.get(name, {}), name
