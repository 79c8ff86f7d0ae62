"""An openpi checkpoint loaded through openpi's public API into :class:`OpenpiParts`.

The pieces are the ones openpi's ``create_trained_policy`` assembles (the config's model loaded from the
checkpoint, the norm stats saved with it, the data config's transforms in openpi's order), built here
from openpi's public functions so that the weight dtype is a choice made at load (no patching of openpi)
and the model call can take a whole batch.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import pathlib
from typing import Any

import numpy as np

from openpi_triton.openpi_runtime import train_config
from openpi_triton.openpi_runtime.policy import OpenpiOptions, OpenpiParts, OpenpiPolicy


def load_openpi_policy(
    config_name: str, checkpoint_dir: str | pathlib.Path, options: OpenpiOptions | None = None
) -> OpenpiPolicy:
    """openpi's config ``config_name`` with the weights and norm stats of ``checkpoint_dir``, batched."""
    options = options or OpenpiOptions()
    train, serving = train_config.resolve(config_name, embodiment=options.embodiment, setup_script=options.setup_script)
    checkpoint = _local_checkpoint(checkpoint_dir)
    torch_weights = checkpoint / "model.safetensors"
    if torch_weights.is_file():
        model, sample = _pytorch_model(train, torch_weights, options)
        backend = "PyTorch"
    elif (checkpoint / "params").is_dir():
        model, sample = _jax_model(train, checkpoint / "params", options)
        backend = "JAX"
    else:
        raise ValueError(
            f"parameter 'checkpoint_dir': {str(checkpoint)!r} has neither params/ (JAX) nor model.safetensors (PyTorch)"
        )
    input_transform, output_transform = _transforms(train, checkpoint, options.default_prompt)
    parts = OpenpiParts(
        input_transform=input_transform,
        output_transform=output_transform,
        sample=sample,
        takes_noise=_takes(model, "noise"),
        description=f"{backend}, {type(model).__name__}",
    )
    return OpenpiPolicy(parts, serving, options)


def _local_checkpoint(checkpoint_dir: str | pathlib.Path) -> pathlib.Path:
    if str(checkpoint_dir).startswith("gs://"):
        from openpi.shared import download

        # openpi downloads it into $OPENPI_DATA_HOME itself (PyTorch checkpoints are local only).
        return pathlib.Path(download.maybe_download(str(checkpoint_dir)))
    checkpoint = pathlib.Path(checkpoint_dir)
    if not checkpoint.is_dir():
        raise ValueError(f"parameter 'checkpoint_dir': {str(checkpoint)!r} is not a directory")
    return checkpoint


def _transforms(train: Any, checkpoint: pathlib.Path, default_prompt: str | None) -> tuple[Any, Any]:
    """The input and output transforms of openpi's served policy, with the norm stats saved in the checkpoint
    (not the config's assets dir: they are the ones the weights were trained with)."""
    import openpi.transforms as openpi_transforms
    from openpi.training import checkpoints

    data_config = train_config.data_config_of(train)
    if data_config.asset_id is None:
        raise ValueError(f"openpi config {train.name!r} has no asset id, so its norm stats cannot be found")
    norm_stats = checkpoints.load_norm_stats(checkpoint / "assets", data_config.asset_id)
    quantiles = data_config.use_quantile_norm
    inputs = [
        openpi_transforms.InjectDefaultPrompt(default_prompt),
        *data_config.data_transforms.inputs,
        openpi_transforms.Normalize(norm_stats, use_quantiles=quantiles),
        *data_config.model_transforms.inputs,
    ]
    outputs = [
        *data_config.model_transforms.outputs,
        openpi_transforms.Unnormalize(norm_stats, use_quantiles=quantiles),
        *data_config.data_transforms.outputs,
    ]
    return openpi_transforms.compose(inputs), openpi_transforms.compose(outputs)


def _sample_kwargs(model: Any, options: OpenpiOptions) -> dict[str, Any]:
    if options.num_steps is not None and _takes(model, "num_steps"):
        return {"num_steps": options.num_steps}
    return {}


def _takes(model: Any, argument: str) -> bool:
    return argument in inspect.signature(model.sample_actions).parameters


def _jax_model(train: Any, params_dir: pathlib.Path, options: OpenpiOptions) -> tuple[Any, Any]:
    import jax
    import jax.numpy as jnp
    from openpi.models import model as openpi_model
    from openpi.shared import nnx_utils

    # bfloat16 as openpi serves; None keeps the checkpoint's own (float32) weights.
    dtype = jnp.bfloat16 if options.weight_dtype == "bfloat16" else None
    model = train.model.load(openpi_model.restore_params(params_dir, dtype=dtype))
    sample_actions = nnx_utils.module_jit(model.sample_actions)
    kwargs = _sample_kwargs(model, options)
    rng = [jax.random.key(0)]

    def sample(stacked: dict[str, Any], noise: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        inputs = jax.tree.map(jnp.asarray, stacked)
        rng[0], key = jax.random.split(rng[0])
        extra = {"noise": jnp.asarray(noise)} if noise is not None else {}
        actions = sample_actions(key, openpi_model.Observation.from_dict(inputs), **kwargs, **extra)
        return np.asarray(inputs["state"]), np.asarray(actions)

    return model, sample


def _pytorch_model(train: Any, weights: pathlib.Path, options: OpenpiOptions) -> tuple[Any, Any]:
    import jax
    import torch
    from openpi.models import model as openpi_model

    # The model is built in the config's dtype and the checkpoint copied into it: with float32 the build must
    # be float32 too, or the weights would be rounded to bfloat16 first.
    model_config = train.model
    if hasattr(model_config, "dtype"):
        model_config = dataclasses.replace(model_config, dtype=options.weight_dtype)
    train = dataclasses.replace(train, model=model_config)
    model = train.model.load_pytorch(train, os.fspath(weights))
    model.paligemma_with_expert.to_bfloat16_for_selected_params(options.weight_dtype)
    device = options.torch_device
    model = model.to(device)
    model.eval()
    kwargs = _sample_kwargs(model, options)

    def to_torch(x: Any) -> Any:
        return torch.from_numpy(np.asarray(x)).to(device)

    def sample(stacked: dict[str, Any], noise: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        inputs = jax.tree.map(to_torch, stacked)
        extra = {"noise": to_torch(noise)} if noise is not None else {}
        with torch.inference_mode():
            actions = model.sample_actions(device, openpi_model.Observation.from_dict(inputs), **kwargs, **extra)
        return inputs["state"].detach().cpu().numpy(), actions.detach().cpu().numpy()

    return model, sample
