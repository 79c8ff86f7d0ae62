"""The bridge stands on the contract package and the protocols only: no runtime, no JAX, no PIL."""

from __future__ import annotations

import subprocess
import sys

RUNTIME_MODULES = ("openpi_triton.native", "openpi_triton.openpi_runtime", "jax", "PIL")


def _modules_loaded_by(imports: str, prefixes: tuple[str, ...]) -> str:
    code = f"import sys, {imports}\nprint(sorted(m for m in sys.modules if m.startswith({prefixes!r})))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_importing_the_bridge_loads_no_runtime() -> None:
    loaded = _modules_loaded_by("openpi_bridge.app, openpi_bridge.__main__", RUNTIME_MODULES)
    assert loaded == "[]", f"the bridge imports runtime modules: {loaded}"


def test_the_contract_imports_no_runtime() -> None:
    loaded = _modules_loaded_by(
        "openpi_triton.contract.io_names, openpi_triton.contract.images, openpi_triton.contract.robot_metadata",
        RUNTIME_MODULES,
    )
    assert loaded == "[]", f"the contract imports runtime modules: {loaded}"


def test_the_domain_imports_no_runtime() -> None:
    loaded = _modules_loaded_by(
        "openpi_triton.domain.configs, openpi_triton.domain.embodiments, openpi_triton.domain.batching, "
        "openpi_triton.domain.normalize",
        (*RUNTIME_MODULES, "openpi."),
    )
    assert loaded == "[]", f"the domain imports runtime modules: {loaded}"


def test_the_openpi_adapter_does_not_import_the_native_runtime() -> None:
    loaded = _modules_loaded_by(
        "openpi_triton.openpi_runtime.policy, openpi_triton.openpi_runtime.train_config, "
        "openpi_triton.openpi_runtime.environment",
        ("openpi_triton.native",),
    )
    assert loaded == "[]", f"the openpi runtime imports the native runtime: {loaded}"


def test_the_native_config_table_takes_policy_metadata_from_the_contract() -> None:
    from openpi_triton.contract.robot_metadata import POLICY_METADATA
    from openpi_triton.domain.configs import POLICY_CONFIGS

    for name, config in POLICY_CONFIGS.items():
        assert config.metadata == POLICY_METADATA.get(name, {}), name


def test_policy_metadata_the_config_does_not_carry_is_found_and_the_fix_line_publishes_it() -> None:
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    from openpi_triton.contract.robot_metadata import publish_instruction, robot_metadata, unpublished_metadata

    policy_metadata = {"reset_pose": [0.0, -1.5, 1.5], "gripper": 'open "wide"'}
    base = 'name: "action" parameters { key: "model_config_name" value: { string_value: "my_openpi_config" } }'

    def as_served(pbtxt: str) -> dict:
        config = text_format.Parse(pbtxt, model_config_pb2.ModelConfig())
        return json_format.MessageToDict(config, preserving_proto_field_name=True)

    missing = unpublished_metadata(policy_metadata, as_served(base))
    assert missing == policy_metadata
    fixed = as_served(f"{base} {publish_instruction(missing)}")
    assert unpublished_metadata(policy_metadata, fixed) == {}
    assert {k: robot_metadata(fixed)[k] for k in policy_metadata} == policy_metadata
    # A config of the table publishes its own metadata without any parameter.
    known = as_served('parameters { key: "model_config_name" value: { string_value: "pi05_aloha" } }')
    assert unpublished_metadata({"reset_pose": [0, -1.5, 1.5, 0, 0, 0]}, known) == {}


def test_nothing_outside_the_bridge_imports_it() -> None:
    # The orchestrator reads the bridge's configuration (openpi_triton.bridge_config) and runs the bridge as a
    # process: the dependency runs one way.
    loaded = _modules_loaded_by(
        "openpi_triton.stack, openpi_triton.orchestrator, perf.fleet_services", ("openpi_bridge",)
    )
    assert loaded == "[]", f"imported from outside the bridge: {loaded}"
