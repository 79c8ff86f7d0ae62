"""runtime 'openpi': the adapter over an installed openpi.

openpi is not on PyPI, so CI has no openpi: there the tests below that need it skip with the reason, and
the tests of what a team sees without it (a clear load error on a real tritonserver, parameter checks, the
compile-mode rule) run. Where openpi is installed (an image built with ``--build-arg OPENPI=...`` or a
local install), the parity tests run: openpi's own policy, batched by this adapter, against the golden
outputs openpi produced, against the native runtime with the same noise, and batched against per-item.
"""

from __future__ import annotations

import copy
import importlib.util
import pathlib
import shutil
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from openpi_triton.golden.tree import load_tree
from openpi_triton.openpi_runtime import environment
from openpi_triton.triton.launcher import ServerOptions, TritonServer, free_ports
from openpi_triton.triton.model_params import ActionParams, ParameterError
from tests.triton_helpers import batch_counts, copy_model, counted_since, counts_once_counted, infer_inputs

OPENPI_INSTALLED = importlib.util.find_spec("openpi") is not None
needs_openpi = pytest.mark.skipif(
    not OPENPI_INSTALLED,
    reason="openpi is not installed (it is not on PyPI): docker/install_openpi.sh --python .venv/bin/python "
    "--ref main installs it here (or build the image with --build-arg OPENPI=main) to run the openpi-runtime "
    "parity tests (docs/runtime.md, 'openpi runtime')",
)
GOLDEN_SETUP = pathlib.Path(__file__).with_name("openpi_golden_setup.py")
CASES = ("pi05_aloha", "pi05_droid", "pi0_aloha")


def _openpi_action_repository(tmp_path: pathlib.Path, golden_dir: pathlib.Path, extra: dict[str, str]) -> pathlib.Path:
    """A model repository with the shipped action model as ``openpi_action``, runtime openpi on golden pi05_aloha."""
    repo = tmp_path / "repository"
    checkpoint = str(golden_dir / "pi05_aloha" / "checkpoint")
    copy_model(repo, "action", "openpi_action", {"runtime": "openpi", "checkpoint_dir": checkpoint, **extra})
    return repo


# ----- without openpi too ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", environment.COMPILE_MODES)
def test_every_openpi_compile_mode_is_accepted(mode: str) -> None:
    assert environment.pytorch_compile_mode({environment.COMPILE_MODE_ENV: mode}) == mode


def test_an_unknown_compile_mode_is_rejected_at_load_naming_the_choices() -> None:
    assert environment.pytorch_compile_mode({}) is None
    with pytest.raises(ValueError, match=r"OPENPI_PYTORCH_COMPILE_MODE.*max-autotune-no-cudagraphs.*'fast'"):
        environment.pytorch_compile_mode({environment.COMPILE_MODE_ENV: "fast"})


def test_openpi_parameters_are_checked_before_anything_loads() -> None:
    base = {"runtime": "openpi", "model_config_name": "pi0_fast_droid", "checkpoint_dir": "/ckpt"}
    params = ActionParams.parse(base)
    assert params.config is None and params.dtype == "bfloat16"  # openpi's own weight dtype by default
    with pytest.raises(ParameterError, match=r"'checkpoint_dir'.*runtime 'openpi' needs a checkpoint"):
        ActionParams.parse({**base, "checkpoint_dir": ""})
    with pytest.raises(ParameterError, match="'tokenizer_path': not used by runtime 'openpi'"):
        ActionParams.parse({**base, "tokenizer_path": "/tok.model"})
    with pytest.raises(ParameterError, match="'embodiment': only used by runtime 'openpi'"):
        ActionParams.parse({"model_config_name": "pi05_aloha", "embodiment": "aloha"})


def test_each_instance_sees_only_its_own_device() -> None:
    environ: dict[str, str] = {}
    assert environment.pin_device("GPU", 1, environ) == "cuda:0" and environ["CUDA_VISIBLE_DEVICES"] == "1"
    # Triton numbers GPUs within the server's own CUDA_VISIBLE_DEVICES.
    environ = {"CUDA_VISIBLE_DEVICES": "2,3"}
    environment.pin_device("GPU", 1, environ)
    assert environ["CUDA_VISIBLE_DEVICES"] == "3"
    with pytest.raises(ValueError, match=r"instance GPU 2 is not among CUDA_VISIBLE_DEVICES='2,3'"):
        environment.pin_device("GPU", 2, {"CUDA_VISIBLE_DEVICES": "2,3"})
    environ = {"CUDA_VISIBLE_DEVICES": "0"}
    assert environment.pin_device("CPU", 0, environ) == "cpu"
    assert environ == {"CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu"}


@pytest.mark.skipif(OPENPI_INSTALLED, reason="checks the error seen where openpi is absent; openpi is installed here")
def test_without_openpi_the_load_fails_saying_which_image_provides_it(
    golden_dir: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    repo = _openpi_action_repository(tmp_path, golden_dir, {})
    http, grpc, metrics = free_ports(3)
    options = ServerOptions(repo, http, grpc, metrics, model_control_mode="explicit", load_models=())
    with TritonServer(options, log_stream=open(tmp_path / "triton.log", "w")) as server:
        server.wait_ready([], timeout=120)
        client = grpcclient.InferenceServerClient(server.grpc_url)
        with pytest.raises(InferenceServerException) as failure:
            client.load_model("openpi_action")
        message = str(failure.value)
        assert "runtime 'openpi' needs the openpi package" in message, message
        assert "--build-arg OPENPI=" in message, message
        assert not client.is_model_ready("openpi_action")


# ----- with openpi -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def openpi_data_home(golden_dir: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[pathlib.Path]:
    """openpi reads the tokenizer from $OPENPI_DATA_HOME/big_vision: the golden one stands in for PaliGemma's."""
    home = tmp_path_factory.mktemp("openpi-data")
    (home / "big_vision").mkdir()
    (home / "big_vision" / "paligemma_tokenizer.model").write_bytes((golden_dir / "tokenizer.model").read_bytes())
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OPENPI_DATA_HOME", str(home))
        yield home


def _golden_case(golden_dir: pathlib.Path, case: str) -> tuple[list[dict], list[np.ndarray], list[np.ndarray]]:
    folders = sorted((golden_dir / case).glob("obs_*"))
    observations = [load_tree(f, "input") for f in folders]
    noises = [np.load(f / "noise.npy") for f in folders]
    expected = [np.asarray(load_tree(f, "output")["actions"]) for f in folders]
    return observations, noises, expected


def _openpi_policy(golden_dir: pathlib.Path, case: str) -> Any:
    from openpi_triton.openpi_runtime.loader import load_openpi_policy
    from openpi_triton.openpi_runtime.policy import OpenpiOptions

    options = OpenpiOptions(weight_dtype="float32", setup_script=str(GOLDEN_SETUP), batch_buckets=(1, 2, 4, 8))
    return load_openpi_policy(case, golden_dir / case / "checkpoint", options)


@needs_openpi
@pytest.mark.parametrize("case", CASES)
def test_openpi_runtime_matches_golden_native_and_itself_batched(
    case: str, golden_dir: pathlib.Path, openpi_data_home: pathlib.Path
) -> None:
    from openpi_triton.native.policy import PolicyOptions, load_policy

    observations, noises, expected = _golden_case(golden_dir, case)
    adapter = _openpi_policy(golden_dir, case)
    native = load_policy(
        case, golden_dir / case / "checkpoint", PolicyOptions(tokenizer_path=str(golden_dir / "tokenizer.model"))
    )
    batched = [r["actions"] for r in adapter.infer_batch(observations, noises)]
    single = [adapter.infer_batch([o], [n])[0]["actions"] for o, n in zip(observations, noises, strict=True)]
    reference = [r["actions"] for r in native.infer_batch(observations, noises)]
    for i, want in enumerate(expected):
        assert np.abs(batched[i] - want).max() < 1e-4, f"obs_{i}: batched openpi runtime vs golden"
        assert np.abs(single[i] - batched[i]).max() < 1e-4, f"obs_{i}: batched vs per-item"
        assert np.abs(reference[i] - batched[i]).max() < 1e-4, f"obs_{i}: openpi runtime vs native runtime"


@needs_openpi
def test_openpi_runtime_random_batches_equal_per_item(golden_dir: pathlib.Path, openpi_data_home: pathlib.Path) -> None:
    adapter = _openpi_policy(golden_dir, "pi05_droid")
    rng = np.random.default_rng(7)
    embodiment = adapter.config.embodiment
    for size in (1, 3, 5, 8, 11):  # 11 spans two buckets
        observations = [embodiment.example(rng, f"task {k}") for k in range(size)]
        noises = [rng.standard_normal((15, 32)).astype(np.float32) for _ in range(size)]
        batched = adapter.infer_batch(observations, noises)
        for k in range(size):
            single = adapter.infer_batch([observations[k]], [noises[k]])[0]["actions"]
            assert np.abs(single - batched[k]["actions"]).max() < 1e-4, f"batch {size}, row {k}"


@needs_openpi
def test_openpi_runtime_pytorch_checkpoint_batched_equals_openpis_own_infer(
    golden_dir: pathlib.Path, openpi_data_home: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """A PyTorch checkpoint (``model.safetensors``): the adapter's batched call against openpi's ``Policy.infer``.

    There is no PyTorch golden checkpoint, so this one is openpi's own PI0Pytorch for the golden pi05_aloha
    config (shrunk by the golden setup script), seeded random weights, saved as openpi's converter saves it.
    """
    import safetensors.torch
    import torch
    from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
    from openpi.policies import policy_config
    from openpi.training import config as openpi_config

    from openpi_triton.openpi_runtime.environment import run_setup_script
    from openpi_triton.openpi_runtime.loader import load_openpi_policy
    from openpi_triton.openpi_runtime.policy import OpenpiOptions

    run_setup_script(str(GOLDEN_SETUP))
    train = openpi_config.get_config("pi05_aloha")
    checkpoint = tmp_path / "pi05_aloha_pytorch"
    checkpoint.mkdir()
    torch.manual_seed(0)
    safetensors.torch.save_model(PI0Pytorch(train.model), str(checkpoint / "model.safetensors"))
    shutil.copytree(golden_dir / "pi05_aloha" / "checkpoint" / "assets", checkpoint / "assets")

    observations, noises, _ = _golden_case(golden_dir, "pi05_aloha")
    observations, noises = observations[:2], noises[:2]

    def adapter_for(dtype: str) -> Any:
        options = OpenpiOptions(weight_dtype=dtype, setup_script=str(GOLDEN_SETUP), batch_buckets=(1, 2))
        return load_openpi_policy("pi05_aloha", checkpoint, options)

    # bfloat16: what openpi's own factory loads, so its Policy.infer is the reference.
    adapter = adapter_for("bfloat16")
    assert adapter.is_pytorch and "PyTorch" in adapter.describe()
    batched = [r["actions"] for r in adapter.infer_batch(observations, noises)]
    reference = policy_config.create_trained_policy(train, str(checkpoint), pytorch_device="cpu")
    for i, (observation, noise) in enumerate(zip(observations, noises, strict=True)):
        want = reference.infer(copy.deepcopy(observation), noise=noise)["actions"]
        assert batched[i].shape == want.shape == (50, 14)
        assert np.abs(batched[i] - want).max() < 1e-4, f"obs_{i}: batched adapter vs openpi's Policy.infer"
    assert np.abs(batched[0] - batched[1]).max() > 1e-3, "different observations gave the same actions"

    # float32: every weight stays float32 (openpi's factory would cast to bfloat16), batched = per-item.
    adapter = adapter_for("float32")
    assert {p.dtype for p in adapter._model.parameters()} == {torch.float32}
    batched = [r["actions"] for r in adapter.infer_batch(observations, noises)]
    for i, (observation, noise) in enumerate(zip(observations, noises, strict=True)):
        single = adapter.infer_batch([observation], [noise])[0]["actions"]
        assert np.abs(single - batched[i]).max() < 1e-4, f"obs_{i}: float32 batched vs per-item"


@needs_openpi
def test_openpi_runtime_rejects_bad_observations_naming_the_field(
    golden_dir: pathlib.Path, openpi_data_home: pathlib.Path
) -> None:
    adapter = _openpi_policy(golden_dir, "pi05_aloha")
    observation = load_tree(golden_dir / "pi05_aloha" / "obs_0", "input")
    with pytest.raises(ValueError, match="state"):
        adapter.prepare({**observation, "state": np.zeros(5)})
    with pytest.raises(ValueError, match="'noise': expected float32 \\[50, 32\\]"):
        adapter.prepare(observation, np.zeros((10, 32), np.float32))


@needs_openpi
def test_openpi_runtime_rejects_a_row_whose_transformed_arrays_differ(
    golden_dir: pathlib.Path, openpi_data_home: pathlib.Path
) -> None:
    adapter = _openpi_policy(golden_dir, "pi05_aloha")
    inputs = adapter.prepare(load_tree(golden_dir / "pi05_aloha" / "obs_0", "input")).inputs
    inputs["tokenized_prompt"] = np.asarray(inputs["tokenized_prompt"])[:10]
    with pytest.raises(ValueError, match=r"'tokenized_prompt' is int64 \[10\], expected int64 \[200\]"):
        adapter._check_layout(inputs)


@needs_openpi
def test_requests_without_noise_compile_nothing_after_warm_up(
    golden_dir: pathlib.Path, openpi_data_home: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    import jax

    adapter = _openpi_policy(golden_dir, "pi05_aloha")
    adapter.warmup()
    observations, _, _ = _golden_case(golden_dir, "pi05_aloha")
    with jax.log_compiles(True), caplog.at_level("WARNING"):
        caplog.clear()
        for size in (1, 2, 4):
            results = adapter.infer_batch(observations[:2] * 2 if size == 4 else observations[:size])
            assert all(np.all(np.isfinite(r["actions"])) for r in results)
    compiles = [r.getMessage() for r in caplog.records if "Compiling" in r.getMessage()]
    assert not compiles, compiles


@needs_openpi
def test_openpi_runtime_through_triton_matches_golden_and_batches(
    golden_dir: pathlib.Path, openpi_data_home: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    import concurrent.futures

    extra = {"dtype": "float32", "batch_buckets": "1,2,4", "openpi_setup_script": str(GOLDEN_SETUP)}
    repo = _openpi_action_repository(tmp_path, golden_dir, extra)
    config = repo / "openpi_action" / "config.pbtxt"
    config.write_text(
        config.read_text().replace("max_queue_delay_microseconds: 0", "max_queue_delay_microseconds: 200000")
    )
    observations, noises, expected = _golden_case(golden_dir, "pi05_aloha")
    http, grpc, metrics = free_ports(3)
    options = ServerOptions(repo, http, grpc, metrics, env={"OPENPI_DATA_HOME": str(openpi_data_home)})
    with TritonServer(options, log_stream=open(tmp_path / "triton.log", "w")) as server:
        server.wait_ready(["openpi_action"], timeout=600)
        client = grpcclient.InferenceServerClient(server.grpc_url)
        start = batch_counts(client, "openpi_action")
        # Every golden case, one at a time: obs_2 lacks two cameras, obs_3 has 240x320 images.
        for i, want in enumerate(expected):
            answer = client.infer("openpi_action", infer_inputs(observations[i], {"noise": noises[i]}))
            assert np.abs(answer.as_numpy("actions")[0] - want).max() < 1e-4, f"obs_{i} through Triton"

        # Triton batches only requests with the same tensors and shapes: obs_0 and obs_1 (four cameras at
        # 224x224) from four robots at once, each robot with its own client.
        robots, rounds = (0, 1, 0, 1), 3

        def robot(i: int) -> list[np.ndarray]:
            own = grpcclient.InferenceServerClient(server.grpc_url)
            try:
                inputs = infer_inputs(observations[i], {"noise": noises[i]})
                return [own.infer("openpi_action", inputs).as_numpy("actions")[0] for _ in range(rounds)]
            finally:
                own.close()

        before = counts_once_counted(client, "openpi_action", start, len(expected))  # the last case counted too
        with concurrent.futures.ThreadPoolExecutor(len(robots)) as pool:
            answers = list(pool.map(robot, robots))
        for i, robot_answers in zip(robots, answers, strict=True):
            for answer in robot_answers:
                assert np.abs(answer - expected[i]).max() < 1e-4, f"obs_{i} from concurrent robots"
        inferences, executions = counted_since(client, "openpi_action", before, rounds * len(robots))
        assert inferences == rounds * len(robots)
        assert executions < inferences, f"requests were not batched: {executions} executions for {inferences}"
