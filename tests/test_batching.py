"""Batched calls give per-item results: the policy's bucketed ``infer_batch`` and the planner's batched decoding."""

from __future__ import annotations

import copy
from typing import Any

import jax
import numpy as np
import pytest

from openpi_triton.domain.batching import pad_rows, parse_buckets, split_into_buckets
from openpi_triton.native.planner import PlannerInput, SubtaskPlanner, build_vocab_mask, clean_task
from openpi_triton.native.policy import NativePolicy

MAX_ROWS = 11  # more than the largest bucket (8): split into 8 + 3 (padded to 4)
TOLERANCE = 1e-4
PROMPTS = ("fold the towel", "pick up the red cube", "open the drawer", "uncap the pen")


def make_observations(policy: NativePolicy, count: int, seed: int = 0) -> list[dict[str, Any]]:
    """``count`` distinct valid observations (different images, states and prompts) from a seeded RNG."""
    rng = np.random.default_rng(seed)
    return [policy.config.embodiment.example(rng, PROMPTS[i % len(PROMPTS)]) for i in range(count)]


def make_noise(count: int, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((50, 32)).astype(np.float32) for _ in range(count)]


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


@pytest.fixture(scope="module")
def observations(tiny_policy: NativePolicy) -> list[dict[str, Any]]:
    return make_observations(tiny_policy, MAX_ROWS)


@pytest.fixture(scope="module")
def noises() -> list[np.ndarray]:
    return make_noise(MAX_ROWS)


@pytest.fixture(scope="module")
def single_actions(
    tiny_policy: NativePolicy, observations: list[dict[str, Any]], noises: list[np.ndarray]
) -> list[np.ndarray]:
    """Each observation inferred alone (batch bucket 1)."""
    return [tiny_policy.infer(obs, noise)["actions"] for obs, noise in zip(observations, noises, strict=True)]


# ----- policy: batched == per item -------------------------------------------------------------------------------


def test_rows_are_distinct(single_actions: list[np.ndarray]) -> None:
    """Otherwise a batch that mixed up its rows would still match."""
    for i in range(1, len(single_actions)):
        assert max_abs_diff(single_actions[0], single_actions[i]) > 1e-3


@pytest.mark.parametrize("batch_size", [*range(1, 9), MAX_ROWS])
def test_infer_batch_matches_per_item_infer(
    tiny_policy: NativePolicy,
    observations: list[dict[str, Any]],
    noises: list[np.ndarray],
    single_actions: list[np.ndarray],
    batch_size: int,
) -> None:
    results = tiny_policy.infer_batch(observations[:batch_size], noises[:batch_size])
    assert len(results) == batch_size
    for i, result in enumerate(results):
        assert result["actions"].shape == (50, 14)
        assert max_abs_diff(result["actions"], single_actions[i]) <= TOLERANCE, f"row {i} of {batch_size}"


def test_same_noise_gives_identical_actions(
    tiny_policy: NativePolicy, observations: list[dict[str, Any]], noises: list[np.ndarray]
) -> None:
    first = tiny_policy.infer(observations[0], noises[0])["actions"]
    second = tiny_policy.infer(observations[0], noises[0])["actions"]
    np.testing.assert_array_equal(first, second)


def test_different_noise_gives_different_actions(
    tiny_policy: NativePolicy, observations: list[dict[str, Any]], noises: list[np.ndarray]
) -> None:
    first = tiny_policy.infer(observations[0], noises[0])["actions"]
    other = tiny_policy.infer(observations[0], noises[1])["actions"]
    assert max_abs_diff(first, other) > 1e-3


def test_mixed_batch_with_and_without_noise(
    tiny_policy: NativePolicy,
    observations: list[dict[str, Any]],
    noises: list[np.ndarray],
    single_actions: list[np.ndarray],
) -> None:
    mixed: list[np.ndarray | None] = [noises[0], None, noises[2], None]
    results = tiny_policy.infer_batch(observations[:4], mixed)
    for i in (0, 2):
        assert max_abs_diff(results[i]["actions"], single_actions[i]) <= TOLERANCE
    for i in (1, 3):
        assert results[i]["actions"].shape == (50, 14)
        assert np.all(np.isfinite(results[i]["actions"]))
    assert max_abs_diff(results[1]["actions"], results[3]["actions"]) > 1e-3  # each row draws its own noise


def test_noise_list_of_wrong_length_is_rejected(
    tiny_policy: NativePolicy, observations: list[dict[str, Any]], noises: list[np.ndarray]
) -> None:
    with pytest.raises(ValueError, match="'noise': got 1 entries for 2 observations"):
        tiny_policy.infer_batch(observations[:2], noises[:1])


def test_one_bad_observation_fails_the_batch(tiny_policy: NativePolicy, observations: list[dict[str, Any]]) -> None:
    bad = dict(observations[1], state=np.zeros(13))
    with pytest.raises(ValueError, match="'state'"):
        tiny_policy.infer_batch([observations[0], bad])


def test_empty_batch_gives_no_results(tiny_policy: NativePolicy) -> None:
    assert tiny_policy.infer_batch([]) == []


# ----- batching helpers ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "expected"),
    [
        (11, [(0, 8, 8), (8, 11, 4)]),
        (3, [(0, 3, 4)]),
        (1, [(0, 1, 1)]),
        (8, [(0, 8, 8)]),
        (9, [(0, 8, 8), (8, 9, 1)]),
        (16, [(0, 8, 8), (8, 16, 8)]),
        (0, []),
    ],
)
def test_split_into_buckets(count: int, expected: list[tuple[int, int, int]]) -> None:
    assert split_into_buckets(count, (1, 2, 4, 8)) == expected


def test_pad_rows_repeats_the_first_row() -> None:
    array = np.arange(6).reshape(3, 2)
    padded = pad_rows(array, 5)
    assert padded.shape == (5, 2)
    np.testing.assert_array_equal(padded[:3], array)
    np.testing.assert_array_equal(padded[3:], [array[0], array[0]])


def test_pad_rows_returns_a_full_array_unchanged() -> None:
    array = np.ones((4, 3))
    assert pad_rows(array, 4) is array


@pytest.mark.parametrize(
    ("value", "expected"),
    [("4,1,2,2", (1, 2, 4)), (" 8 , 1 ", (1, 8)), ([2, 1], (1, 2)), ((1, 2, 4, 8), (1, 2, 4, 8))],
)
def test_parse_buckets(value: Any, expected: tuple[int, ...]) -> None:
    assert parse_buckets(value) == expected


@pytest.mark.parametrize("value", ["", ",", "1,x", "0,1", "-2", "1.5", [0, 4], []])
def test_parse_buckets_rejects_bad_values(value: Any) -> None:
    with pytest.raises(ValueError, match="batch buckets: expected comma-separated positive integers"):
        parse_buckets(value)


# ----- planner --------------------------------------------------------------------------------------------------

PLANNER_TASKS = ("Pick up the cup.", "fold_the_towel", "open the drawer\n")


def random_aloha_images(rng: np.random.Generator) -> dict[str, np.ndarray]:
    names = ("cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist")
    return {name: rng.integers(0, 256, (3, 224, 224), dtype=np.uint8) for name in names}


@pytest.fixture(scope="module")
def planner_inputs(tiny_planner: SubtaskPlanner) -> list[PlannerInput]:
    rng = np.random.default_rng(7)
    return [tiny_planner.prepare(task, random_aloha_images(rng)) for task in PLANNER_TASKS]


def test_planner_batch_matches_single_generation(
    tiny_planner: SubtaskPlanner, planner_inputs: list[PlannerInput]
) -> None:
    batched = tiny_planner.generate_batch(planner_inputs)
    singles = [tiny_planner.generate_batch([p])[0] for p in planner_inputs]
    assert [s.token_ids for s in batched] == [s.token_ids for s in singles]
    assert [s.text for s in batched] == [s.text for s in singles]
    assert all(len(s.token_ids) == tiny_planner.options.max_generation_tokens for s in batched)


def test_planner_early_exit_matches_full_trace(
    tiny_planner: SubtaskPlanner, planner_inputs: list[PlannerInput]
) -> None:
    batched = tiny_planner.generate_batch(planner_inputs)
    full = tiny_planner.run(planner_inputs, full_trace=True)
    max_tokens = tiny_planner.options.max_generation_tokens
    assert int(full["steps"]) == max_tokens
    assert full["logits"].shape[:2] == (len(planner_inputs), max_tokens)
    assert full["buffer"].tolist() == [s.token_ids for s in batched]
    assert [tiny_planner.detokenize(row) for row in full["buffer"]] == [s.text for s in batched]


def first_eos_steps(buffer: np.ndarray) -> list[int]:
    """Per row, the step of the first EOS (id 1), or -1."""
    return [int(np.argmax(row == 1)) if (row == 1).any() else -1 for row in buffer]


def test_planner_early_exit_with_rows_ending_at_different_steps(
    tiny_planner: SubtaskPlanner, planner_inputs: list[PlannerInput]
) -> None:
    """Random weights rarely pick EOS, so the vocabulary is narrowed to {EOS, one token} until rows stop at
    different steps before the limit; then the early-exit loop stops early and must give the full run's tokens."""
    planner = copy.copy(tiny_planner)  # shares the compiled functions; only the (argument) vocab mask differs
    max_tokens = planner.options.max_generation_tokens
    for candidate in range(2, planner.spec.vocab_size):
        mask = np.zeros(planner.spec.vocab_size, dtype=bool)
        mask[[1, candidate]] = True
        planner._vocab_mask = jax.device_put(mask, planner.device)
        full = planner.run(planner_inputs, full_trace=True)
        steps = first_eos_steps(full["buffer"])
        if min(steps) >= 0 and len(set(steps)) > 1 and max(steps) < max_tokens - 1:
            break
    else:
        pytest.fail("no vocabulary narrowing made the rows stop at different steps")
    early = planner.run(planner_inputs)
    assert int(early["steps"]) == max(steps) + 1 < max_tokens
    np.testing.assert_array_equal(early["buffer"], full["buffer"])
    assert early["done"].all()
    for row, step in zip(early["buffer"], steps, strict=True):
        assert not row[step + 1 :].any()  # 0 after EOS


def test_prompt_format_without_placeholder_is_rejected(tiny_planner: SubtaskPlanner) -> None:
    with pytest.raises(ValueError, match=r"must contain '\{task\}'") as info:
        tiny_planner.prepare("pick up the cup", None, prompt_format="no placeholder")
    assert "'no placeholder'" in str(info.value)


def test_prompt_format_with_other_fields_is_rejected(tiny_planner: SubtaskPlanner) -> None:
    with pytest.raises(ValueError, match=r"only the bare field '\{task\}' is allowed") as info:
        tiny_planner.prepare("pick up the cup", None, prompt_format="{task} {other}")
    assert "{task} {other}" in str(info.value)


def test_per_call_prompt_format_changes_the_prefix(tiny_planner: SubtaskPlanner) -> None:
    default = tiny_planner.prepare("Pick up the cup.", None)
    custom = tiny_planner.prepare("Pick up the cup.", None, prompt_format="Goal: {task}. Next step:")
    assert default.prefix_text == "Task: pick up the cup. Subtask: "
    assert custom.prefix_text == "Goal: pick up the cup. Next step:"
    assert not np.array_equal(default.tokens, custom.tokens)
    # The per-call format does not stick.
    assert tiny_planner.prepare("Pick up the cup.", None).prefix_text == default.prefix_text


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        ("  Pick_up the CUP!\n", "pick up the cup"),
        ("open the drawer", "open the drawer"),
        ("stack\ncubes", "stack cubes"),
        ("done..", "done."),
        ("?", ""),
        ("", ""),
    ],
)
def test_clean_task(task: str, expected: str) -> None:
    assert clean_task(task) == expected


def test_vocab_mask_allows_pad_and_eos(tiny_planner: SubtaskPlanner) -> None:
    mask = tiny_planner.vocab_mask
    assert mask.dtype == np.bool_
    assert mask.shape == (tiny_planner.sp.vocab_size(),)
    assert mask[0] and mask[1]


class FakePieces:
    """A SentencePiece stand-in: ids 0/1 are control pieces, then pieces with and without printable ASCII."""

    pieces = ("<pad>", "</s>", "\u2581cup", "caf\u00e9", "\x16", "\u2581", "\u676f")

    def vocab_size(self) -> int:
        return len(self.pieces)

    def id_to_piece(self, token_id: int) -> str:
        return self.pieces[token_id]


def test_vocab_mask_keeps_only_printable_ascii_pieces() -> None:
    assert build_vocab_mask(FakePieces()).tolist() == [True, True, True, False, False, True, False]
