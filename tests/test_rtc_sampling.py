"""RTC guided sampling in the native runtime: weights, guidance weight, the VJP, conventions, adherence,
batching and compilation (the properties of the RTC spec §7, on real pi0 / pi0.5 models)."""

from __future__ import annotations

import math
import pathlib
import statistics
import time
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax._src import monitoring

from openpi_triton.domain import rtc
from openpi_triton.native import pi0
from openpi_triton.native import rtc as guided
from openpi_triton.native.policy import NativePolicy, PolicyOptions, load_policy
from openpi_triton.native.tiny import EmbeddedDefault


def weights(delay: int, horizon: int, chunk: int, schedule: str = "exp") -> np.ndarray:
    return np.asarray(guided.prefix_weights(delay, horizon, rtc.SCHEDULES.index(schedule), chunk))


# ----- weights W (§3) -----------------------------------------------------------------------------------------


def test_weights_of_the_worked_example_h50_s25_d5() -> None:
    w = weights(5, 25, 50)
    decay = [.8823, .7747, .6766, .5874, .5065, .4335, .3677, .3088, .2563, .2099,
             .1690, .1335, .1028, .0767, .0550, .0373, .0233, .0128, .0055, .0014]  # fmt: skip
    np.testing.assert_array_equal(w[:5], 1.0)
    np.testing.assert_allclose(w[5:25], decay, atol=6e-4)
    np.testing.assert_array_equal(w[25:], 0.0)


def test_weights_of_the_kinetix_default_h8_s4_d2() -> None:
    np.testing.assert_allclose(weights(2, 4, 8), [1, 1, 0.3677, 0.0767, 0, 0, 0, 0], atol=1e-4)


def test_weights_edge_cases() -> None:
    w = weights(0, 25, 50)  # no frozen part
    assert w[0] < 1.0 and w[0] == pytest.approx(0.9041, abs=1e-4)
    np.testing.assert_array_equal(weights(7, 5, 10), [1, 1, 1, 1, 1, 0, 0, 0, 0, 0])  # d >= ℓ: no decay band
    np.testing.assert_array_equal(weights(5, 5, 10), [1, 1, 1, 1, 1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(weights(3, 0, 10), 0.0)  # ℓ = 0: plain sampling
    full = weights(2, 10, 10)
    assert full[-1] > 0.0  # ℓ = H: no zero tail


def test_weights_other_schedules() -> None:
    np.testing.assert_array_equal(weights(2, 6, 8, "ones"), [1, 1, 1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(weights(2, 6, 8, "zeros"), [1, 1, 0, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(weights(2, 6, 8, "linear"), [1, 1, 4 / 5, 3 / 5, 2 / 5, 1 / 5, 0, 0], atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    chunk=st.sampled_from([1, 8, 15, 50]),
    data=st.data(),
    schedule=st.sampled_from(rtc.SCHEDULES),
)
def test_weights_lie_in_0_1_and_never_increase(chunk: int, data: st.DataObject, schedule: str) -> None:
    horizon = data.draw(st.integers(0, chunk))
    delay = data.draw(st.integers(0, chunk))
    w = weights(delay, horizon, chunk, schedule)
    assert np.all((w >= 0) & (w <= 1))
    assert np.all(np.diff(w) <= 1e-7)
    np.testing.assert_array_equal(w[: min(delay, horizon)], 1.0)
    np.testing.assert_array_equal(w[horizon:], 0.0)


def test_weights_are_computed_per_row_in_one_call() -> None:
    batch = np.asarray(guided.prefix_weights(np.array([5, 2]), np.array([25, 4]), np.array([0, 0]), 50))
    np.testing.assert_array_equal(batch[0], weights(5, 25, 50))
    np.testing.assert_array_equal(batch[1], weights(2, 4, 50))


# ----- guidance weight g (§4) ---------------------------------------------------------------------------------


def openpi_times(num_steps: int) -> list[float]:
    """The t values openpi's loop evaluates (float32 arithmetic, as the sampler)."""
    t, dt, out = np.float32(1.0), np.float32(-1.0 / num_steps), []
    while t >= -dt / 2:
        out.append(float(t))
        t = np.float32(t + dt)
    return out


def test_guidance_weight_table_n10() -> None:
    times = openpi_times(10)
    g5 = np.asarray([guided.guidance_weight(t, 5.0) for t in times])
    np.testing.assert_allclose(g5, [5, 5, 4.25, 2.76, 2.17, 2.00, 2.17, 2.76, 4.25, 5], atol=6e-3)
    g10 = np.asarray([guided.guidance_weight(t, 10.0) for t in times])
    assert g10[0] == 10.0
    assert g10[1] == pytest.approx(9.11, abs=5e-3) and g10[9] == pytest.approx(9.11, abs=5e-3)


@pytest.mark.parametrize("beta", [0.0, 1.0, 5.0, 10.0, 100.0])
def test_guidance_weight_is_beta_at_t1_finite_and_symmetric(beta: float) -> None:
    assert float(guided.guidance_weight(1.0, beta)) == beta
    ts = np.linspace(0.0, 1.0, 101, dtype=np.float32)
    g = np.asarray(guided.guidance_weight(ts, beta))
    assert np.all(np.isfinite(g)) and np.all(g <= beta + 1e-6)
    np.testing.assert_allclose(g, g[::-1], rtol=1e-5)


# ----- convention equivalence on a toy field (§4) ---------------------------------------------------------------


def test_openpi_convention_step_equals_the_kinetix_step_on_a_linear_field() -> None:
    rng = np.random.default_rng(0)
    horizon, dim, num_steps = 6, 4, 10
    matrix = jnp.asarray(rng.standard_normal((horizon * dim, horizon * dim)) * 0.1, jnp.float32)
    bias = jnp.asarray(rng.standard_normal(horizon * dim), jnp.float32)

    def v_openpi(x: jax.Array, t: jax.Array) -> jax.Array:  # v_o ≈ noise - actions
        return ((x.reshape(1, -1) @ matrix.T + bias) * (1.0 + t)).reshape(x.shape)

    target = jnp.asarray(rng.standard_normal((1, horizon, dim)), jnp.float32)
    w = guided.prefix_weights(jnp.array([2]), jnp.array([4]), jnp.array([0]), horizon)
    mask = w[:, :, None] * jnp.ones((1, 1, dim))
    guidance = guided.Guidance(
        target=target,
        delay=jnp.array([2]),
        horizon=jnp.array([4]),
        schedule=jnp.array([0]),
        max_weight=jnp.array([5.0]),
        identity=jnp.array([False]),
        dims=jnp.ones(dim),
    )
    x = jnp.asarray(rng.standard_normal((1, horizon, dim)), jnp.float32)
    a = x  # Kinetix: A^τ with τ = 1 - t, v_paper = -v_o
    dt = -1.0 / num_steps
    for t in openpi_times(num_steps):
        x = guided.guided_step(lambda y, t=t: v_openpi(y, jnp.float32(t)), x, jnp.float32(t), dt, mask, guidance)
        tau = 1.0 - t

        def predict(y: jax.Array, tau: float = tau) -> jax.Array:
            return y + (1.0 - tau) * -v_openpi(y, jnp.float32(1.0 - tau))

        a_hat, pullback = jax.vjp(predict, a)
        (c,) = pullback(mask * (target - a_hat))
        g = 5.0 if tau == 0 else min(5.0, (1 - tau) / (tau * (1 - tau) ** 2 / (tau**2 + (1 - tau) ** 2)))
        a = a + (-v_openpi(a, jnp.float32(1.0 - tau)) + g * c) / num_steps
        np.testing.assert_allclose(np.asarray(x), np.asarray(a), rtol=1e-6, atol=1e-6)


# ----- the VJP against finite differences on the real action expert (§4, §7.4) -------------------------------


@pytest.fixture(scope="module")
def golden_policies(golden_dir: pathlib.Path) -> dict[str, NativePolicy]:
    options = PolicyOptions(tokenizer_path=str(golden_dir / "tokenizer.model"), batch_buckets=(1, 2, 4))
    return {
        case: load_policy(case, golden_dir / case / "checkpoint", options)
        for case in ("pi0_aloha", "pi05_aloha", "pi05_droid")
    }


def model_inputs(policy: NativePolicy, seed: int) -> pi0.ModelInputs:
    p = policy.prepare(policy.config.embodiment.example(np.random.default_rng(seed), "pick up the cube"))
    return pi0.ModelInputs(
        images=pi0.uint8_images_to_float(jnp.asarray(p.images[None])),
        image_masks=jnp.asarray(p.image_masks[None]),
        state=jnp.asarray(p.state[None]),
        tokens=jnp.asarray(p.tokens[None]),
        token_mask=jnp.asarray(p.token_mask[None]),
    )


@pytest.mark.parametrize("case", ["pi0_aloha", "pi05_aloha"])
def test_vjp_of_the_denoiser_matches_central_finite_differences(
    golden_policies: dict[str, NativePolicy], case: str
) -> None:
    policy = golden_policies[case]
    inputs = model_inputs(policy, 1)
    params, spec = policy.params, policy.spec
    _, prefix_mask, _, kv_cache = pi0.prefix_pass(params, spec, inputs, jnp.float32)
    shape = (1, policy.config.action_horizon, policy.config.action_dim)
    rng = np.random.default_rng(2)
    x, e, u = (jnp.asarray(rng.standard_normal(shape), jnp.float32) for _ in range(3))
    time = jnp.float32(0.6)

    @jax.jit
    def denoise(y: jax.Array) -> jax.Array:
        return y - time * pi0.suffix_velocity(params, spec, inputs, prefix_mask, kv_cache, y, time, jnp.float32)

    _, pullback = jax.vjp(denoise, x)
    (jt_e,) = pullback(e)
    analytic = float(jnp.sum(jt_e * u))
    h = 3e-3  # float32: rounding dominates the difference quotient below about 1e-3
    numeric = float(jnp.sum(e * (denoise(x + h * u) - denoise(x - h * u)))) / (2 * h)
    assert abs(analytic - numeric) < 1e-3 * abs(analytic), (analytic, numeric)
    assert abs(analytic - float(jnp.sum(e * u))) > 1e-2 * abs(analytic)  # the Jacobian is not the identity


# ----- whole policies: zero weights, adherence, batching, compilation ------------------------------------------


def chunk_pair(policy: NativePolicy, seed: int) -> tuple[dict[str, Any], np.ndarray, dict[str, Any], np.ndarray]:
    """An earlier observation's answer and a new observation with its noise."""
    rng = np.random.default_rng(seed)
    shape = (policy.config.action_horizon, policy.config.action_dim)
    first = policy.config.embodiment.example(rng, "pick up the cube")
    earlier = policy.infer(first, rng.standard_normal(shape).astype(np.float32))["actions"]
    second = policy.config.embodiment.example(rng, "pick up the cube")
    return first, earlier, second, rng.standard_normal(shape).astype(np.float32)


def with_rtc(obs: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {**obs, "rtc": fields}


def test_zero_weights_are_plain_sampling(tiny_policy: NativePolicy) -> None:
    _, earlier, obs, noise = chunk_pair(tiny_policy, 0)
    plain = tiny_policy.infer(obs, noise)["actions"]
    empty = tiny_policy.infer(with_rtc(obs, prev_actions=earlier[:0], inference_delay=0), noise)
    np.testing.assert_array_equal(empty["actions"], plain)  # nothing to guide: the plain program itself
    assert empty["rtc"]["applied"] is False
    beta0 = tiny_policy.infer(with_rtc(obs, prev_actions=earlier[20:], inference_delay=4, max_guidance_weight=0), noise)
    assert beta0["rtc"]["applied"] is True
    np.testing.assert_allclose(beta0["actions"], plain, atol=1e-5)
    # A plain row batched with a guided one: the RTC program with zero weights for that row.
    rows = tiny_policy.infer_batch([obs, with_rtc(obs, prev_actions=earlier[20:], inference_delay=4)], [noise, noise])
    np.testing.assert_allclose(rows[0]["actions"], plain, atol=1e-5)
    assert "rtc" not in rows[0] and rows[1]["rtc"]["applied"] is True


def frozen_errors(
    policy: NativePolicy, seed: int, delay: int, start: int, choices: list[dict[str, Any]]
) -> list[float]:
    """‖A[:d] − Y[:d]‖ for each RTC setting, one earlier chunk and one new observation."""
    _, earlier, obs, noise = chunk_pair(policy, seed)
    prev = earlier[start:]
    errors = []
    for extra in choices:
        actions = policy.infer(with_rtc(obs, prev_actions=prev, inference_delay=delay, **extra), noise)["actions"]
        errors.append(float(np.linalg.norm(actions[:delay] - prev[:delay])))
    return errors


@pytest.mark.parametrize("case", ["pi0_aloha", "pi05_aloha", "pi05_droid"])
def test_adherence_on_the_frozen_rows_grows_with_beta(golden_policies: dict[str, NativePolicy], case: str) -> None:
    policy = golden_policies[case]
    horizon = policy.config.action_horizon
    start, delay = horizon // 2, max(2, horizon // 10)
    choices = [{"max_guidance_weight": b} for b in (0.0, 1.0, 2.5, 5.0, 10.0)]
    choices.append({"max_guidance_weight": 5.0, "mode": "identity"})
    errors = np.mean([frozen_errors(policy, seed, delay, start, choices) for seed in range(3)], axis=0)
    vjp, identity = errors[:5], errors[5]
    assert np.all(np.diff(vjp) < 0), errors
    assert vjp[3] < 0.3 * vjp[0], errors  # β = 5 pins the frozen rows far better than no guidance
    assert identity < 0.5 * vjp[0], errors


def test_rows_after_the_guided_horizon_still_follow_the_new_observation(tiny_policy: NativePolicy) -> None:
    _, earlier, obs, noise = chunk_pair(tiny_policy, 3)
    other = tiny_policy.config.embodiment.example(np.random.default_rng(99), "fold the towel")
    request = {"prev_actions": earlier[25:], "inference_delay": 5, "max_guidance_weight": 5.0}
    guided_new = tiny_policy.infer(with_rtc(obs, **request), noise)["actions"]
    guided_other = tiny_policy.infer(with_rtc(other, **request), noise)["actions"]
    plain_new = tiny_policy.infer(obs, noise)["actions"]
    plain_other = tiny_policy.infer(other, noise)["actions"]
    tail = slice(25, None)
    observation_effect = np.abs(plain_new[tail] - plain_other[tail]).mean()
    # The observation still changes the unguided tail about as much as without RTC.
    assert np.abs(guided_new[tail] - guided_other[tail]).mean() > 0.5 * observation_effect
    # And RTC changes that tail far less than a different observation does.
    assert np.abs(guided_new[tail] - plain_new[tail]).mean() < 0.5 * observation_effect


def test_each_row_of_a_batch_is_independent_of_the_others(tiny_policy: NativePolicy) -> None:
    _, earlier, obs, noise = chunk_pair(tiny_policy, 4)
    other = tiny_policy.config.embodiment.example(np.random.default_rng(7), "fold the towel")
    mine = with_rtc(obs, prev_actions=earlier[30:], inference_delay=3, max_guidance_weight=4.0)
    variants = [
        [obs, with_rtc(other, prev_actions=earlier[10:], inference_delay=6), other, obs],
        [other, obs, with_rtc(obs, prev_actions=earlier[40:] * 2, inference_delay=1, schedule="ones"), other],
        [with_rtc(other, prev_actions=earlier[20:], inference_delay=2, mode="identity", max_guidance_weight=9.0)] * 4,
    ]
    alone = tiny_policy.infer(mine, noise)["actions"]
    for neighbours in variants:
        batch = [mine, *neighbours[1:]]
        result = tiny_policy.infer_batch(batch, [noise] * len(batch))[0]["actions"]
        np.testing.assert_allclose(result, alone, atol=1e-5)


@pytest.fixture()
def compilations() -> Iterator[list[str]]:
    events: list[str] = []

    def listener(event: str, duration: float, **kwargs: Any) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            events.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield events
    finally:
        monitoring._unregister_event_duration_listener_by_callback(listener)  # jax 0.5.3 has no public one


def test_no_compilation_after_warm_up_whatever_the_rtc_values(
    embedded_default: EmbeddedDefault, compilations: list[str]
) -> None:
    options = PolicyOptions(tokenizer_path=str(embedded_default.tokenizer_path), batch_buckets=(1, 2))
    policy = load_policy(embedded_default.config_name, embedded_default.checkpoint_dir, options)
    policy.warmup()
    assert compilations, "the listener saw no compilation during warm-up"
    compilations.clear()
    rng = np.random.default_rng(5)
    prev = rng.uniform(-1, 1, size=(50, 14))
    example = policy.config.embodiment.example
    requests = [
        with_rtc(example(rng), prev_actions=prev[start:], inference_delay=delay, max_guidance_weight=beta, **more)
        for start, delay, beta, more in [
            (25, 5, 5.0, {}),
            (10, 0, 1.5, {"guided_horizon": 12, "schedule": "linear", "mode": "identity"}),
            (49, 1, 10.0, {"guided_horizon": 1, "schedule": "ones"}),
            (0, 17, 0.0, {"schedule": "zeros", "mode": "identity"}),
        ]
    ]
    plain = example(rng)
    for batch in ([requests[0]], [plain], requests[:2], [plain, requests[1]], [requests[2], requests[3]], [plain]):
        results = policy.infer_batch(batch)
        assert all(np.all(np.isfinite(r["actions"])) for r in results)
    assert compilations == []
    assert policy.compiled_programs == {("plain", 1), ("plain", 2), ("rtc", 1), ("rtc", 2)}


def test_the_echo_reports_effective_values_and_the_prefix_error(tiny_policy: NativePolicy) -> None:
    _, earlier, obs, noise = chunk_pair(tiny_policy, 6)
    echo = tiny_policy.infer(with_rtc(obs, prev_actions=earlier[40:], inference_delay=4), noise)
    report = echo["rtc"]
    assert report["applied"] is True and report["inference_delay"] == 4
    assert report["guided_horizon"] == 10 and report["schedule"] == "exp" and report["mode"] == "vjp"
    assert report["max_guidance_weight"] == rtc.DEFAULT_MAX_GUIDANCE_WEIGHT
    expected = np.max(np.abs(echo["actions"][:4] - earlier[40:44]))
    assert report["prefix_max_abs_err"] == pytest.approx(expected)
    assert math.isfinite(report["prefix_max_abs_err"])


def test_a_batch_without_vjp_rows_skips_the_backward_pass(tiny_policy: NativePolicy) -> None:
    """Same program, the branch chosen at run time: identity rows cost about a plain call, vjp rows about twice
    that (median of interleaved calls, so both see the same machine load)."""
    _, earlier, obs, noise = chunk_pair(tiny_policy, 5)
    calls = {
        mode: [with_rtc(obs, prev_actions=earlier[20:], inference_delay=4, mode=mode)] for mode in ("vjp", "identity")
    }
    times: dict[str, list[float]] = {mode: [] for mode in calls}
    for _ in range(7):
        for mode, batch in calls.items():
            start = time.perf_counter()
            tiny_policy.infer_batch(batch, [noise])
            times[mode].append(time.perf_counter() - start)
    vjp, identity = (statistics.median(times[m]) for m in ("vjp", "identity"))
    assert identity < 0.75 * vjp, (identity, vjp)
