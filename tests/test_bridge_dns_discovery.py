"""The bridge follows the Triton servers behind a DNS name, as it does a Kubernetes headless Service: two
tritonservers on their own loopback addresses (one port, as pods have), a real DNS server whose A records the
test edits. A server that joins the name gets traffic; one removed from it under traffic finishes the request
it holds and gets no new ones, so stopping it afterwards costs robots nothing; every robot's answers equal
its reference throughout and none fails."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time

import dns.name
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from openpi_bridge.errors import TritonCallError
from openpi_bridge.triton_discovery import DnsDiscovery
from openpi_bridge.triton_gateway import TritonGateway
from openpi_triton.native.tiny import EmbeddedDefault
from openpi_triton.triton.launcher import ServerOptions, TritonServer, free_ports
from perf.soak import robot_observation
from tests.conftest import start_bridge_process, stop_bridge_process
from tests.dns_server import DnsServer
from tests.triton_helpers import copy_model, wait_until

NAME = "triton.openpi-test.svc.cluster.local"
POD_ADDRESSES = ("127.0.0.2", "127.0.0.3")
# A call outstanding this long is held by the frozen server (the bridge's call timeout is 60 s).
HELD_S = 5.0


def _port_free_on(addresses: tuple[str, ...]) -> int:
    """One TCP port free on every address (pods share the container port, each on its own IP)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((addresses[0], 0))
            port = probe.getsockname()[1]
        try:
            for address in addresses:
                with socket.socket() as other:
                    other.bind((address, port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no TCP port free on all of {addresses}")


def _count(url: str) -> int:
    stats = grpcclient.InferenceServerClient(url).get_inference_statistics("action", as_json=True)
    return int(stats["model_stats"][0].get("inference_count", 0))


class Robot:
    """Calls back to back with its fixed observation and noise; every answer must equal its first."""

    def __init__(self, port: int, robot_id: int) -> None:
        self.robot_id = robot_id
        self.obs = robot_observation("pi05_aloha", robot_id)
        self.port = port
        self.reference: np.ndarray | None = None
        self.answers = 0
        self.calling_since: float | None = None
        self.wrong: list[str] = []
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        policy = WebsocketClientPolicy(host="127.0.0.1", port=self.port)
        try:
            while not self.stop.is_set():
                self.calling_since = time.monotonic()
                try:
                    actions = np.asarray(policy.infer(self.obs)["actions"])
                except Exception as exc:  # counted: the test allows none
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                    policy._ws.close()
                    policy = WebsocketClientPolicy(host="127.0.0.1", port=self.port)
                    continue
                finally:
                    self.calling_since = None
                if self.reference is None:
                    self.reference = actions
                elif actions.shape != self.reference.shape or not np.allclose(actions, self.reference, atol=1e-4):
                    self.wrong.append(f"answer {self.answers}: max diff {np.abs(actions - self.reference).max()}")
                self.answers += 1
        finally:
            policy._ws.close()


@pytest.fixture
def pod_servers(embedded_default: EmbeddedDefault, tmp_path):
    """Two tritonservers: gRPC on the same port at 127.0.0.2 and 127.0.0.3, HTTP (readiness) on 127.0.0.1."""
    grpc_port = _port_free_on(POD_ADDRESSES)
    servers = []
    try:
        for address in POD_ADDRESSES:
            repo = tmp_path / address
            copy_model(repo, "action", "action", {"batch_buckets": "1,2"})
            http, unused_grpc, metrics = free_ports(3)
            options = ServerOptions(
                repo,
                http,
                unused_grpc,
                metrics,
                extra_args=(f"--grpc-port={grpc_port}", f"--grpc-address={address}"),
                env={"OPENPI_TRITON_HOME": str(embedded_default.root.parent)},
            )
            servers.append(TritonServer(options, log_stream=open(tmp_path / f"{address}.log", "w")).start())
        for server in servers:
            server.wait_ready(["action"], timeout=300)
        yield grpc_port, servers
    finally:
        for server in servers:
            server.stop()


def test_bridge_follows_the_pods_behind_a_dns_name(pod_servers, tmp_path) -> None:
    grpc_port, servers = pod_servers
    url_a, url_b = (f"{address}:{grpc_port}" for address in POD_ADDRESSES)
    with DnsServer({NAME: [POD_ADDRESSES[0]]}) as dns:
        discovery = {"name": NAME, "port": grpc_port, "refresh_s": 0.5, "nameservers": [dns.address]}
        bridge = start_bridge_process(
            "", tmp_path, planner=None, admin={"enabled": False}, triton={"discovery": discovery}
        )
        # Three robots back to back: both pods hold requests most of the time, so pod a has some in flight
        # when it leaves the name.
        robots = [Robot(bridge.action_port, robot_id) for robot_id in range(3)]
        frozen = False
        witness = robots[0]
        try:
            for robot in robots:
                robot.thread.start()
            wait_until(lambda: witness.answers >= 3, 120, "the witness answered through the first pod")
            assert _count(url_b) == 0  # not in DNS yet: nothing reaches it

            # Scale-out: a second pod becomes ready and joins the name; the bridge balances onto it.
            dns.set_addresses(NAME, list(POD_ADDRESSES))
            wait_until(lambda: _count(url_b) > 0, 120, "traffic on the joined pod")

            # Scale-in with a request held on pod a: freeze its tritonserver until a robot's call is stuck there
            # (the others keep answering through b), take a out of the name (Kubernetes does that when the pod
            # starts terminating), let the bridge re-read it, then let a answer: the held call must complete.
            os.kill(servers[0].process.pid, signal.SIGSTOP)
            frozen = True

            def held_on_a() -> list[Robot]:
                # Healthy calls take well under a second here; one this old waits on the frozen server.
                now = time.monotonic()
                return [r for r in robots if r.calling_since is not None and now - r.calling_since > HELD_S]

            held = wait_until(held_on_a, 60, "a robot's call held on the frozen pod")
            dns.set_addresses(NAME, [POD_ADDRESSES[1]])
            queries = dns.queries
            wait_until(lambda: dns.queries >= queries + 2, 60, "the bridge re-read the name")
            left_at = time.monotonic()
            held_answers = [robot.answers for robot in held]
            os.kill(servers[0].process.pid, signal.SIGCONT)
            frozen = False
            wait_until(
                lambda: all(r.answers > n for r, n in zip(held, held_answers, strict=True)),
                120,
                "the calls held on pod a answered after it left the name",
            )

            # Calls sent before the bridge dropped pod a (not only the held ones) may still be finishing there.
            wait_until(
                lambda: all(r.calling_since is None or r.calling_since > left_at for r in robots),
                120,
                "every call sent before pod a left the name answered",
            )
            # From now on pod a gets nothing, and stopping it (SIGTERM after the drain) costs robots nothing. Its
            # count is read after five more answers: Triton counts a batch once its execute has returned, which
            # can be after its robot read the answer.
            answers = witness.answers
            wait_until(lambda: witness.answers >= answers + 5, 120, "the witness answered after a left")
            served_by_a = _count(url_a)
            answers = witness.answers
            wait_until(lambda: witness.answers >= answers + 5, 120, "the witness answered again")
            assert _count(url_a) == served_by_a, "pod a got requests after it left DNS"
            servers[0].stop()
            answers = witness.answers
            wait_until(lambda: witness.answers >= answers + 5, 120, "the witness answered after a stopped")
        finally:
            if frozen:
                os.kill(servers[0].process.pid, signal.SIGCONT)
            for robot in robots:
                robot.stop.set()
            for robot in robots:
                robot.thread.join(timeout=120)
            log = bridge.log.read_text()
            stop_bridge_process(bridge)
    for robot in robots:
        assert robot.failures == [], f"robot {robot.robot_id}: {robot.failures}\nbridge log:\n{log}"
        assert robot.wrong == [], f"robot {robot.robot_id}: {robot.wrong}"


def test_a_failed_or_empty_lookup_keeps_the_known_servers() -> None:
    """A DNS blip must not drain the fleet: only an answer with addresses changes the server list."""

    async def scenario() -> None:
        with DnsServer({NAME: list(POD_ADDRESSES)}) as dns:
            gateway = TritonGateway([], 5.0, "off", discovery=DnsDiscovery(NAME, 8001, [dns.address]))
            await gateway.refresh_servers()
            both = [f"{address}:8001" for address in POD_ADDRESSES]
            assert gateway.urls == both
            dns.set_addresses(NAME, [])  # the name has no ready pod, or the answer came back empty
            await gateway.refresh_servers()
            assert gateway.urls == both
            leaving = gateway.endpoints[0]
            leaving.begin()  # a request in flight on it
            dns.set_addresses(NAME, [POD_ADDRESSES[1]])
            await gateway.refresh_servers()
            assert gateway.urls == both[1:]
            assert not leaving.idle.is_set()  # its channel stays open for the request in flight
            leaving.end()
            await asyncio.wait_for(asyncio.gather(*gateway._retiring), 10)  # then it is closed
        await gateway.refresh_servers()  # the DNS server is gone: the lookup fails
        assert gateway.urls == both[1:]
        with pytest.raises(TritonCallError, match="no Triton server found"):
            await TritonGateway([], 5.0, discovery=DnsDiscovery(NAME, 8001, ["127.0.0.1:9"])).infer("action", {})
        await gateway.close()

    asyncio.run(scenario())


class FailingOnceDiscovery(DnsDiscovery):
    """Real lookups, except that the second one raises what no DNS error is (a bug in a library or ours)."""

    lookups = 0

    async def urls(self) -> list[str]:
        self.lookups += 1
        if self.lookups == 2:
            raise RuntimeError("an unexpected error in a lookup")
        return await super().urls()


class FailingOnceHealthGateway(TritonGateway):
    """The real gateway whose first health round raises before it checks anything."""

    rounds = 0

    async def check_health(self) -> None:
        self.rounds += 1
        if self.rounds == 1:
            raise RuntimeError("an unexpected error in a health round")
        await super().check_health()


async def _until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def test_an_unexpected_error_in_a_background_step_is_counted_and_the_task_goes_on() -> None:
    """DNS following and health checks outlive an exception: it is logged, counted, and the next round runs."""
    closed_port = _port_free_on(POD_ADDRESSES)  # nothing listens: the servers never answer their health check
    url_a, url_b = (f"{address}:{closed_port}" for address in POD_ADDRESSES)

    async def scenario() -> None:
        with DnsServer({NAME: [POD_ADDRESSES[0]]}) as dns:
            discovery = FailingOnceDiscovery(NAME, closed_port, [dns.address])
            gateway = FailingOnceHealthGateway([], 5.0, "off", discovery=discovery, discovery_refresh_s=0.5)
            await gateway.start()
            assert gateway.urls == [url_a]
            await _until(lambda: discovery.lookups >= 2, 30, "the lookup that raises")
            dns.set_addresses(NAME, list(POD_ADDRESSES))
            await _until(lambda: gateway.urls == [url_a, url_b], 30, "the joined server, after the failed lookup")
            await _until(
                lambda: all(not e.healthy for e in gateway.endpoints), 30, "the health check, after the failed round"
            )
            sample = gateway.metrics.registry.get_sample_value
            assert sample("openpi_bridge_background_failures_total", {"task": "dns"}) == 1
            assert sample("openpi_bridge_background_failures_total", {"task": "health"}) == 1
            await gateway.close()

    asyncio.run(scenario())


def test_close_closes_the_channels_of_servers_still_retiring() -> None:
    """A server that left DNS with a request in flight is closed by close(), not left open."""

    async def scenario() -> None:
        with DnsServer({NAME: list(POD_ADDRESSES)}) as dns:
            gateway = TritonGateway([], 5.0, "off", discovery=DnsDiscovery(NAME, 8001, [dns.address]))
            await gateway.refresh_servers()
            leaving = gateway.endpoints[0]
            leaving.begin()  # its request never finishes: the bridge shuts down first
            dns.set_addresses(NAME, [POD_ADDRESSES[1]])
            await gateway.refresh_servers()
            assert list(gateway._retiring.values()) == [leaving]
            await gateway.close()
            with pytest.raises(Exception, match="Channel is closed"):
                await leaving.client.is_server_live(client_timeout=1.0)
            with pytest.raises(Exception, match="Channel is closed"):
                await gateway.endpoints[0].client.is_server_live(client_timeout=1.0)

    asyncio.run(scenario())


def test_an_absolute_name_is_one_query_under_a_pods_search_domains() -> None:
    """A pod's resolv.conf (``search <ns>.svc.cluster.local ...``, ``ndots:5``) makes a relative name of four
    dots try every search domain first; the chart's name ends in a dot, so each refresh is one query."""
    search = ["openpi-test.svc.cluster.local.", "svc.cluster.local.", "cluster.local."]

    async def queries_for(name: str) -> tuple[list[str], int]:
        with DnsServer({NAME: list(POD_ADDRESSES)}) as server:
            discovery = DnsDiscovery(name, 8001, [server.address])
            discovery.resolver.search = [dns.name.from_text(domain) for domain in search]
            discovery.resolver.ndots = 5
            urls = await discovery.urls()
            return urls, server.queries

    both = [f"{address}:8001" for address in POD_ADDRESSES]
    assert asyncio.run(queries_for(NAME + ".")) == (both, 1)
    urls, queries = asyncio.run(queries_for(NAME))
    assert urls == both and queries == len(search) + 1  # what the trailing dot saves on every refresh
