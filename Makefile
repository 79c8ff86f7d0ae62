# openpi-triton. Newcomers need two targets: `make serve` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
GOLDEN ?= ../shared/golden

.PHONY: venv lint test golden-check default-model bench serve clean flash-transport flash-transport-release \
	perf perf-sweep perf-fleet perf-analyzer perf-capacity perf-scheduler k8s-check

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	cargo fmt --manifest-path flash-transport/Cargo.toml --check
	cargo clippy --quiet --manifest-path flash-transport/Cargo.toml --all-targets -- -D warnings

# The QUIC sidecar binary (Rust). Tests use the debug build; `make serve` the release build.
flash-transport:
	cargo build --manifest-path flash-transport/Cargo.toml

flash-transport-release:
	cargo build --release --manifest-path flash-transport/Cargo.toml

# All tests: lint, unit tests, the golden vectors in $(GOLDEN) through the real golden-check CLI.
test: venv lint flash-transport k8s-check
	cargo test --quiet --manifest-path flash-transport/Cargo.toml
	$(PY) -m pytest

# The Helm chart deploy/helm/openpi-triton: helm lint, helm template over its value sets, every object checked
# offline against Kubernetes $(K8S_VERSION)'s schemas (the kubernetes-validate wheel) or, for PodMonitor and
# ScaledObject, their projects' Go types (deploy/helm/crdcheck), and the chart's contract tests. helm and
# crdcheck are built from Go modules into $(K8S_TOOLS) once (minutes; Go's caches under ~/go and ~/.cache).
K8S_VERSION := 1.34.0
HELM_VERSION := v3.19.0
K8S_TOOLS := .cache/k8s-tools
GO ?= $(shell command -v go || echo /usr/local/go/bin/go)
# What helm's own release build stamps in: its version, and the Kubernetes version it renders for by default.
HELM_LDFLAGS := -X helm.sh/helm/v3/internal/version.version=$(HELM_VERSION) \
	-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=$(word 1,$(subst ., ,$(K8S_VERSION))) \
	-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$(word 2,$(subst ., ,$(K8S_VERSION)))

# The version is in the file name: a new HELM_VERSION is a file that does not exist yet, so it gets built.
HELM := $(K8S_TOOLS)/helm-$(HELM_VERSION)
# crdcheck is rebuilt when its sources or pinned modules (go.mod, go.sum) change.
CRDCHECK := $(K8S_TOOLS)/crdcheck
GO_NEEDED := $(shell sed -n 's/^go //p' deploy/helm/crdcheck/go.mod)
# A missing Go fails here, saying what is needed, not as a bare "command not found" halfway through.
REQUIRE_GO = @$(GO) version >/dev/null 2>&1 || { echo "[k8s-check] Go $(GO_NEEDED) or newer is needed to \
build helm and crdcheck, and '$(GO)' does not run: install Go from https://go.dev/dl into /usr/local/go \
(Debian's golang is older), or run make GO=/path/to/go" >&2; exit 1; }

$(HELM):
	$(REQUIRE_GO)
	@echo "[k8s-check] building helm $(HELM_VERSION) from Go modules with $$($(GO) version) (first run: several minutes)"
	@mkdir -p $(K8S_TOOLS)/tmp
	GOBIN=$(abspath $(K8S_TOOLS)/tmp) $(GO) install \
		-ldflags "$(HELM_LDFLAGS)" helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)
	mv $(K8S_TOOLS)/tmp/helm $@

$(CRDCHECK): deploy/helm/crdcheck/main.go deploy/helm/crdcheck/go.mod deploy/helm/crdcheck/go.sum
	$(REQUIRE_GO)
	@echo "[k8s-check] building crdcheck (prometheus-operator and KEDA API types) from Go modules (first run: minutes)"
	cd deploy/helm/crdcheck && $(GO) build -o $(abspath $@) .

k8s-check: venv $(HELM) $(CRDCHECK)
	HELM=$(HELM) CRDCHECK=$(CRDCHECK) K8S_VERSION=$(K8S_VERSION) \
		$(PY) -m pytest -q -p no:cacheprovider deploy/helm/tests

# Every case of a golden-format folder against the native runtime; non-zero exit if outside tolerance.
golden-check: venv
	$(PY) -m openpi_triton.golden.check $(GOLDEN)

# Builds the embedded default model (tiny random pi0.5 ALOHA) into ~/.cache/openpi-triton/default.
default-model: venv
	$(PY) -m openpi_triton.native.tiny

# Native runtime benchmark; SIZE=tiny|full, or CHECKPOINT=<dir> CONFIG=<openpi config name>.
SIZE ?= tiny
bench: venv
	$(PY) perf/bench_runtime.py $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT) --config $(or $(CONFIG),pi05_aloha),--size $(SIZE))

# The whole stack on the embedded default: Triton (HTTP 8100, gRPC 8101, metrics 8102, poll mode) with
# model_repository/, and the bridge (WebSocket 8000 action / 8002 planner, admin 127.0.0.1:8001).
# plus one supervised QUIC sidecar per slot (UDP 5555 action / 5556 planner). Ctrl-C stops everything.
# Elsewhere: SERVE_ARGS="--bridge-config my.json --http-port 9100 --grpc-port 9101 --metrics-port 9102", or
# OPENPI_* variables for single bridge fields (OPENPI_ACTION_TRANSPORT__WEBSOCKET_PORT=9000 make serve).
serve: default-model flash-transport-release
	$(PY) -m openpi_triton.stack --model-repository model_repository $(SERVE_ARGS)

# perf_analyzer from the tritonclient 2.51.0 wheel (needs Debian's libb64-0d); ARGS pass through, e.g.
# make perf-analyzer ARGS="-m action -u 127.0.0.1:8101 -i grpc --input-data action.json"
perf-analyzer: venv
	perf/perf_analyzer.sh $(if $(ARGS),$(ARGS),--version)

# perf_analyzer sweeps + the robot-fleet benchmark against openpi-server, into perf/results/<timestamp>/.
# SIZE=tiny|full (full: random full-size pi0.5, for a GPU). See docs/performance.md.
PERF_STAMP := $(shell date +%Y%m%d-%H%M%S)
PERF_RESULTS ?= perf/results/$(PERF_STAMP)
perf: perf-sweep perf-fleet
	@echo "results in $(PERF_RESULTS)"

perf-sweep: venv default-model
	$(PY) -m perf.sweep --size $(SIZE) --results $(PERF_RESULTS)

perf-fleet: venv default-model flash-transport-release
	$(PY) -m perf.fleet --size $(SIZE) --results $(PERF_RESULTS)

# Fleet capacity side by side in one run: our stack vs openpi-server under a GPU cost curve (SIMULATED, default
# openpi_triton/cost_curves/pi05_published.json; CURVE=<name or .json>) and on the real tiny model; non-zero exit when a
# goal is missed. Results (JSON + markdown) in perf/results/capacity-<date>/. See docs/performance.md.
CURVE ?= pi05_published
perf-capacity: venv default-model flash-transport-release
	$(PY) -m perf.capacity --cost-curve $(CURVE)

# The robot scheduler (queue delay, preferred batch sizes, stale deadline) measured on the cost curve, SIMULATED;
# results in perf/results/scheduler-<date>/.
perf-scheduler: venv default-model
	$(PY) -m perf.scheduler --cost-curve $(CURVE)

# Soak test: a fresh stack (Triton + bridge + QUIC sidecar) and 16 robots (4 on QUIC) at 0.9 Hz each for 5 min,
# every answer checked; fails on a lost/wrong answer, >10 % RSS growth, >16 new descriptors or p99 drift.
# Report in perf/results/soak-<timestamp>/soak.json. `make test` runs a 4-robot, 20 s version (drift not judged).
.PHONY: soak
soak: venv default-model flash-transport
	$(PY) -m perf.soak --robots 16 --duration 300

# Adversarial run: a fresh stack (`make serve`'s, with an API key and a QUIC token), a WebSocket and a QUIC witness
# robot calling throughout, every attack of perf/attack_cases.py (loopback only, bounded); one line per attack,
# exit 1 if a witness saw a wrong answer, an error or a stall. Report in perf/results/attack-<timestamp>/attack.json.
# `make test` runs the --short subset (tests/test_attack_short.py).
.PHONY: attack
attack: venv default-model flash-transport
	$(PY) -m perf.attack

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
