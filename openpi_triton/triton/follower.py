"""Reloads the models that follow an action model (the planner, ``combined_ensemble``) when it changes.

They read the action model's parameters when they load (:mod:`openpi_triton.triton.inherit`), so after an
edit of the action model's ``config.pbtxt`` they must load again. Triton does not know that they depend on
it; this does, from the repository: a model whose ``action_model`` parameter names the edited model and
that leaves an inherited parameter empty follows it.

- poll mode: the edit of the action model's file is seen here within a check and the followers' version
  folders are touched at once, so Triton's next poll reloads all of them together (the switch window is
  one load, not two in a row);
- explicit mode: a file edit means nothing until an operator loads the action model; once Triton serves
  the action model with other parameters, the followers are loaded too.

A follower's reload that fails leaves it on its old config: the bridge's health and the models' own check
then report the mismatch, as for any half-done swap.
"""

from __future__ import annotations

import logging
import os
import pathlib
from typing import TYPE_CHECKING

from openpi_triton.triton.inherit import ENSEMBLE_INHERITS, PLANNER_INHERITS, action_model_name, read_config_parameters
from openpi_triton.triton.model_params import ParameterError

if TYPE_CHECKING:
    import tritonclient.grpc as grpcclient

logger = logging.getLogger("openpi_triton.watchdog")

INHERITED = tuple(dict.fromkeys((*PLANNER_INHERITS, *ENSEMBLE_INHERITS)))
LOAD_TIMEOUT_S = 1800.0
QUERY_TIMEOUT_S = 10.0


def followers(repository: pathlib.Path) -> dict[str, list[str]]:
    """``{action model: [models that inherit from it]}`` as the repository's config files say now."""
    found: dict[str, list[str]] = {}
    for config_file in sorted(repository.glob("*/config.pbtxt")):
        try:
            params = read_config_parameters(config_file)
        except (OSError, ParameterError):
            continue  # a file being written or broken: its own load reports it
        if "action_model" not in params:
            continue
        if any(not params.get(k, "") for k in (*PLANNER_INHERITS, *ENSEMBLE_INHERITS) if k in params):
            found.setdefault(action_model_name(params), []).append(config_file.parent.name)
    return found


def _fingerprint(params: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, params.get(k, "")) for k in INHERITED))


class DependentFollower:
    def __init__(self, repository: pathlib.Path, model_control_mode: str) -> None:
        self.repository = repository
        self.mode = model_control_mode
        self.reloads: list[str] = []  # followers reloaded, in order (for logs and tests)
        self._seen: dict[str, tuple[tuple[str, str], ...]] = {}  # action model -> parameters last followed
        if model_control_mode == "poll":
            # The files as Triton is about to load them: an edit made before the first check still counts.
            for action in followers(repository):
                current = self._current(None, action)
                if current is not None:
                    self._seen[action] = current

    def check_once(self, client: grpcclient.InferenceServerClient) -> None:
        if self.mode not in ("poll", "explicit"):
            return  # mode none: nothing loads after start
        for action, dependents in followers(self.repository).items():
            current = self._current(client, action)
            if current is None:
                continue
            previous = self._seen.setdefault(action, current)
            if current == previous:
                continue
            self._seen[action] = current
            changed = sorted(k for (k, v), (_, w) in zip(current, previous, strict=True) if v != w)
            logger.info("model '%s' changed %s: reloading %s, which follow it", action, changed, dependents)
            for name in dependents:
                self._reload(client, name)

    def _current(
        self, client: grpcclient.InferenceServerClient | None, action: str
    ) -> tuple[tuple[str, str], ...] | None:
        """Poll mode: the action model's file (edits are picked up together); explicit: what Triton serves."""
        if self.mode == "poll":
            try:
                return _fingerprint(read_config_parameters(self.repository / action / "config.pbtxt"))
            except (OSError, ParameterError):
                return None
        assert client is not None
        try:
            config = client.get_model_config(action, as_json=True, client_timeout=QUERY_TIMEOUT_S)["config"]
        except Exception:  # not loaded (yet): nothing to follow
            return None
        served = {k: str(v.get("string_value", "")) for k, v in (config.get("parameters") or {}).items()}
        return _fingerprint(served)

    def _reload(self, client: grpcclient.InferenceServerClient, name: str) -> None:
        # A touched version folder makes Triton load the model afresh (an unchanged one would be kept as is).
        try:
            for version in (self.repository / name).iterdir():
                if version.is_dir() and version.name.isdigit():
                    os.utime(version)
        except OSError as exc:
            logger.error(
                "cannot reload '%s' after its action model changed: %s (a read-only repository? touch its version "
                "folder yourself, or mount the repository writable)",
                name,
                exc,
            )
            return
        self.reloads.append(name)
        if self.mode == "poll":
            logger.info("touched %s: Triton's next repository poll reloads it", name)
            return
        try:
            client.load_model(name, client_timeout=LOAD_TIMEOUT_S)
            logger.info("reloaded '%s' for its action model's new parameters", name)
        except Exception as exc:
            logger.error("reloading '%s' after its action model changed failed: %s", name, exc)
