"""The deployment's model repository (Helm's configure-models init container): values written into the copies."""

from __future__ import annotations

import pathlib

import pytest

from openpi_triton.triton.configure_repository import main
from tests.triton_helpers import MODEL_REPOSITORY


def test_served_model_instances_and_gpus_are_written(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "models"
    args = ["--source", str(MODEL_REPOSITORY), "--target", str(target), "--config-name", "pi05_droid"]
    served = ["--checkpoint-dir", "/ckpt/droid", "--dtype", "bfloat16", "--instances", "2", "--gpus", "2"]
    assert main([*args, *served]) == 0
    action = (target / "action" / "config.pbtxt").read_text()
    for key, value in (("model_config_name", "pi05_droid"), ("checkpoint_dir", "/ckpt/droid"), ("dtype", "bfloat16")):
        assert f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}' in action
    for model in ("action", "planner"):
        text = (target / model / "config.pbtxt").read_text()
        assert "instance_group [ { kind: KIND_GPU, count: 2, gpus: [ 0, 1 ] } ]" in text
    # The planner inherits the served model from the action model: its own file still names none.
    assert 'key: "model_config_name" value: { string_value: "" }' in (target / "planner" / "config.pbtxt").read_text()
    assert main([*args, "--no-planner"]) == 0  # the target is replaced, not merged
    assert sorted(p.name for p in target.iterdir()) == ["action"]
    assert "instance_group [ { kind: KIND_CPU, count: 1 } ]" in (target / "action" / "config.pbtxt").read_text()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--dtype", "fp16"], "--dtype: expected one of ['bfloat16', 'float32'], got 'fp16'"),
        (["--instances", "0"], "--instances: expected at least 1 instance per model, got 0"),
    ],
)
def test_bad_values_name_the_flag(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    args = ["--source", str(MODEL_REPOSITORY), "--target", str(tmp_path / "m"), "--config-name", "pi05_aloha", *extra]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
