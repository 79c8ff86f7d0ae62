"""``golden-check``: runs every case of a golden-format folder against the native runtime.

For each case it rebuilds the policy from the case's openpi config name and checkpoint, feeds every
observation with its recorded noise, and compares what openpi recorded: model inputs (images, tokens,
normalised state), prefix embeddings, raw and final actions, the batched call, the default-RNG call and,
for pi0.5 cases, the planner's logits, argmax ids and text. One line per case; exit status 1 if any
quantity is outside the folder's stated tolerances (``manifest.json`` -> ``tolerances``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import pathlib
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from openpi_triton.domain.configs import ALOHA_DELTA_MASK, LIBERO_DELTA_MASK, POLICY_CONFIGS, PolicyConfig
from openpi_triton.golden.tree import load_tree
from openpi_triton.native import checkpoint, pi0, tokenizer
from openpi_triton.native.planner import PlannerOptions, SubtaskPlanner
from openpi_triton.native.policy import NativePolicy, PolicyOptions

DEFAULT_TOLERANCES = {
    "actions": 1e-4,
    "raw_actions": 1e-4,
    "batched_raw_actions": 1e-4,
    "model_inputs_state": 1e-5,
    "model_inputs_images": 0,
    "tokenized_prompt": 0,
    "prefix_embeddings": 1e-4,
    "planner_argmax_ids": 0,
    "planner_logits": 1e-3,
}


@dataclasses.dataclass
class CaseResult:
    """Worst error per quantity over a case (mismatch counts for exact quantities)."""

    name: str
    errors: dict[str, float] = dataclasses.field(default_factory=dict)
    failures: list[str] = dataclasses.field(default_factory=list)

    def record(self, quantity: str, error: float) -> None:
        self.errors[quantity] = max(self.errors.get(quantity, 0.0), float(error))

    def fail(self, message: str) -> None:
        self.failures.append(message)


def config_for_case(case: dict[str, Any]) -> PolicyConfig:
    """The registered openpi config, cross-checked against the case; unknown names are built from case.json."""
    arch = case.get("architecture", {})
    derived = PolicyConfig(
        name=case["config_name"],
        pi05=case["model_type"] == "pi05",
        embodiment_name=case["embodiment"],
        asset_id=case["asset_id"],
        action_horizon=int(arch.get("action_horizon", case.get("action_horizon", 50))),
        max_token_len=int(arch.get("max_token_len", case.get("max_token_len", 48))),
        action_dim=int(arch.get("action_dim", 32)),
        discrete_state_input=arch.get("discrete_state_input"),
        delta_action_mask=(
            (ALOHA_DELTA_MASK if case["embodiment"] == "aloha" else LIBERO_DELTA_MASK)
            if any(t.endswith("DeltaActions") for t in case.get("input_transforms", []))
            else None
        ),
        metadata=case.get("policy_metadata") or {},
    )
    registered = POLICY_CONFIGS.get(case["config_name"])
    if registered is None:
        return derived
    for field in ("pi05", "embodiment_name", "asset_id", "action_horizon", "max_token_len", "delta_action_mask"):
        if getattr(registered, field) != getattr(derived, field):
            raise ValueError(
                f"case {case['case']}: registered config {registered.name} has {field}="
                f"{getattr(registered, field)!r} but the case says {getattr(derived, field)!r}"
            )
    return registered


def _max_abs(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return float("inf")
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def _mismatches(a: Any, b: Any) -> int:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return max(a.size, b.size, 1)
    return int(np.sum(a != b))


def _check_observation(policy: NativePolicy, folder: pathlib.Path, result: CaseResult) -> tuple[Any, np.ndarray]:
    obs = load_tree(folder, "input")
    expected_inputs = load_tree(folder, "model_inputs")
    inter = load_tree(folder, "intermediates")
    noise = np.load(folder / "noise.npy")
    prepared = policy.prepare(obs, noise)

    images_err = max(_mismatches(prepared.images[i], expected_inputs["image"][k]) for i, k in enumerate(pi0.IMAGE_KEYS))
    result.record("model_inputs_images", images_err)
    result.record(
        "image_masks", _mismatches(prepared.image_masks, [expected_inputs["image_mask"][k] for k in pi0.IMAGE_KEYS])
    )
    result.record(
        "tokenized_prompt",
        _mismatches(prepared.tokens, expected_inputs["tokenized_prompt"])
        + _mismatches(prepared.token_mask, expected_inputs["tokenized_prompt_mask"]),
    )
    padded = np.zeros(policy.config.action_dim)
    padded[: prepared.normalized_state.shape[-1]] = prepared.normalized_state
    result.record("model_inputs_state", _max_abs(padded, expected_inputs["state"]))
    result.record("model_inputs_state", _max_abs(prepared.frame.state, inter["state_after_robot_inputs"]))
    result.record("model_inputs_state", _max_abs(prepared.normalized_state, inter["state_after_normalize"]))

    raw = policy.sample([prepared])[0]
    result.record("raw_actions", _max_abs(raw, inter["raw_actions"]))
    actions = policy.finish(prepared, raw)
    result.record("actions", _max_abs(actions, load_tree(folder, "output")["actions"]))

    if "prefix" in inter:
        inputs = _model_inputs(prepared)
        tokens, mask, out, _ = jax.jit(lambda p, i: pi0.prefix_pass(p, policy.spec, i, jnp.float32))(
            policy.params, inputs
        )
        result.record("prefix_embeddings", _max_abs(np.asarray(tokens[0]), inter["prefix"]["embeddings"]))
        result.record("prefix_embeddings", _max_abs(np.asarray(out[0]), inter["prefix"]["llm_output"]))
        result.record("prefix_mask", _mismatches(np.asarray(mask[0]), inter["prefix"]["input_mask"]))
    if "raw_actions_num_steps_1" in inter:
        one_step = jax.jit(lambda p, i, n: pi0.sample_actions(p, policy.spec, i, n, num_steps=1))
        raw1 = one_step(policy.params, _model_inputs(prepared), noise[None])
        result.record("raw_actions", _max_abs(np.asarray(raw1[0]), inter["raw_actions_num_steps_1"]))
    return prepared, noise


def _model_inputs(prepared: Any) -> pi0.ModelInputs:
    return pi0.ModelInputs(
        images=pi0.uint8_images_to_float(jnp.asarray(prepared.images)[None]),
        image_masks=jnp.asarray(prepared.image_masks)[None],
        state=jnp.asarray(prepared.state)[None],
        tokens=jnp.asarray(prepared.tokens)[None],
        token_mask=jnp.asarray(prepared.token_mask)[None],
    )


def _check_planner(params: Any, sp: Any, folder: pathlib.Path, result: CaseResult) -> None:
    planner = SubtaskPlanner(params, sp, PlannerOptions())
    mask_file = folder / "vocab_mask.npy"
    if mask_file.exists():
        result.record("planner_vocab_mask", _mismatches(planner.vocab_mask, np.load(mask_file)))
    examples = sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("example_"))
    prepared = []
    for example in examples:
        trace = load_tree(example, "trace")
        item = planner.prepare_observation(load_tree(example, "input"))
        prepared.append(item)
        result.record("planner_prefix_ids", _mismatches(item.tokens, trace["prefix_token_ids"]))
        out = planner.run([item], full_trace=True)
        result.record("planner_logits", _max_abs(out["logits"][0], trace["logits"]))
        masked = np.where(planner.vocab_mask, out["logits"][0], -1e9)
        result.record("planner_argmax_ids", _mismatches(np.argmax(masked, axis=-1), trace["argmax_ids"]))
        result.record("planner_argmax_ids", _mismatches(out["buffer"][0], trace["token_buffer"]))
        if planner.detokenize(out["buffer"][0]) != trace["text"]:
            result.fail(
                f"planner text of {example.name}: {planner.detokenize(out['buffer'][0])!r} != {trace['text']!r}"
            )
    # Batched with early exit must give the same text as the full-length single runs.
    for example, subtask in zip(examples, planner.generate_batch(prepared), strict=True):
        if subtask.text != load_tree(example, "trace")["text"]:
            result.fail(f"batched planner text of {example.name} differs: {subtask.text!r}")


def check_case(root: pathlib.Path, case: dict[str, Any], sp_path: pathlib.Path) -> CaseResult:
    folder = root / case["case"]
    details = json.loads((folder / "case.json").read_text())
    result = CaseResult(case["case"])
    config = config_for_case({**case, **details})
    ckpt = checkpoint.resolve_checkpoint_dir(folder / "checkpoint")
    params = checkpoint.load_params(ckpt, "float32")
    norm_stats = checkpoint.load_norm_stats(ckpt, config.asset_id)
    sp = tokenizer.load_sentencepiece(sp_path)
    options = PolicyOptions(dtype="float32", batch_buckets=(1, 2, 4))

    policy = NativePolicy(config, params, norm_stats, sp, options)
    observation_dirs = [o["dir"] for o in details.get("observations", [])] or sorted(
        p.name for p in folder.iterdir() if p.name.startswith("obs_")
    )
    prepared = {name: _check_observation(policy, folder / name, result) for name in observation_dirs}

    batched_dir = folder / "batched"
    if batched_dir.exists():
        members = json.loads((batched_dir / "batched.json").read_text())["members"]
        items = [dataclasses.replace(prepared[m][0], noise=prepared[m][1]) for m in members]
        result.record("batched_raw_actions", _max_abs(policy.sample(items), np.load(batched_dir / "raw_actions.npy")))

    for name in observation_dirs:
        if (folder / name / "default_rng.json").exists():
            fresh = NativePolicy(config, params, norm_stats, sp, options)
            expected = load_tree(folder / name, "default_rng")
            got = fresh.infer(load_tree(folder / name, "input"))
            result.record("actions", _max_abs(got["actions"], expected["actions"]))

    if (folder / "planner").is_dir():
        _check_planner(params, sp, folder / "planner", result)
    return result


def _tolerance_failures(result: CaseResult, tolerances: dict[str, Any]) -> list[str]:
    failures = list(result.failures)
    exact = {"image_masks", "prefix_mask", "planner_prefix_ids", "planner_vocab_mask"}
    for quantity, error in result.errors.items():
        limit = 0.0 if quantity in exact else tolerances.get(quantity, DEFAULT_TOLERANCES.get(quantity))
        if limit is None or isinstance(limit, str):
            limit = 0.0
        if not error <= float(limit):
            failures.append(f"{quantity} {error:.3g} > {float(limit):.3g}")
    return failures


def run(root: pathlib.Path, only: list[str] | None = None) -> int:
    manifest = json.loads((root / "manifest.json").read_text())
    tolerances = {
        **DEFAULT_TOLERANCES,
        **{k: v for k, v in manifest.get("tolerances", {}).items() if k != "description"},
    }
    sp_path = root / manifest.get("tokenizer", {}).get("file", "tokenizer.model")
    cases = [c for c in manifest["cases"] if not only or c["case"] in only]
    if not cases:
        print(f"golden-check: no cases in {root}", file=sys.stderr)
        return 2
    failed = 0
    for case in cases:
        start = time.perf_counter()
        try:
            result = check_case(root, case, sp_path)
            failures = _tolerance_failures(result, tolerances)
        except Exception as exc:  # a case that cannot run is a failed case, reported, not a crash
            result, failures = CaseResult(case["case"]), [f"error: {type(exc).__name__}: {exc}"]
        failed += bool(failures)
        errors = "  ".join(f"{k}={v:.2e}" for k, v in sorted(result.errors.items()))
        status = "FAIL" if failures else "ok"
        print(f"{case['case']:<16} {status:<4} {time.perf_counter() - start:5.1f}s  {errors}", flush=True)
        for message in failures:
            print(f"    {message}", flush=True)
    print(f"golden-check: {len(cases) - failed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("golden_dir", type=pathlib.Path, help="folder with manifest.json and one folder per case")
    parser.add_argument("--case", action="append", help="only this case (repeatable)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    return run(args.golden_dir, args.case)


if __name__ == "__main__":
    sys.exit(main())
