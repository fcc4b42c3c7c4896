r"""An emulated cluster on one Linux machine: rate-limited links between network namespaces, torchrun on top.

Try a distributed strategy on a slow network before renting one. Two layouts, both entirely inside private network
namespaces (they have no route to any other network, so no traffic can leave the machine):

* **one shaped host** (``nodes=1``): one namespace whose loopback is rate-limited with a token-bucket filter
  (``tc qdisc ... tbf``). Every worker shares that link, like hosts behind one switch port.
* **N hosts** (``nodes>=2``): one namespace per node. Two nodes are joined by a single veth pair; more nodes by
  veth pairs to a bridge in a separate "switch" namespace. Every veth end is shaped with ``tbf``, so the slow link
  is *between* nodes while the loopback inside a node stays fast. ``torchrun --nnodes=N --nproc-per-node=P`` runs
  once per node namespace, with the c10d rendezvous on node 0's address.

The kernel counts the bytes that crossed every shaped device (``tc -s qdisc show``); :meth:`EmulatedCluster.link_bytes`
parses them, so a strategy's own ``dist/bytes_sent`` can be checked against what really went over the wire.

Needs root, ``ip`` and ``tc`` (iproute2) and ``unshare``; ``netem`` (delay, loss) is not used: only bandwidth is
emulated. Namespaces are always deleted and every process started inside them ended (by PID), on success, on error
and on Ctrl-C/SIGTERM; namespaces left behind by a killed run (named ``lao<pid>...``) are removed by the next run.

Command line (prints the bytes that crossed each link when the command ends)::

    python -m lightning_autoopt.cluster --nodes 2 --nproc-per-node 2 --link 200mbit -- \
        fit --config recipe:localsgd_mnist1d
    python -m lightning_autoopt.cluster --nodes 1 --nproc-per-node 4 --link 100mbit -- my_train_script.py --lr 0.1

A command starting with ``fit``/``validate``/``test``/``predict`` runs this package's Lightning CLI with
``--trainer.devices`` and ``--trainer.num_nodes`` set to the cluster's shape; a command ending in ``.py`` runs that
script and ``-m module ...`` a module, each under torchrun (Lightning detects the torchrun environment).

Example::

    from lightning_autoopt.cluster import EmulatedCluster

    with EmulatedCluster(nodes=2, link="200mbit") as cluster:
        result = cluster.torchrun(["train.py"], nproc_per_node=2, timeout=600)
    print(result.returncodes, result.links)
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

__all__ = [
    "ClusterError",
    "ClusterRun",
    "ClusterUnavailable",
    "EmulatedCluster",
    "LinkBytes",
    "QdiscStats",
    "check_support",
    "main",
    "parse_rate",
    "parse_size",
    "parse_tc_qdisc_stats",
    "read_link_bytes",
    "read_loopback_bytes",
    "set_link_rate",
]

_PREFIX = "lao"  # every namespace this module creates is named lao<pid>..., interfaces l<pid>...
_STALE_NS = re.compile(rf"^{_PREFIX}(\d+)(?:h|sw|n\d+)$")
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(bit|kbit|mbit|gbit|tbit)\s*$", re.IGNORECASE)
_SIZE = re.compile(r"^\s*(\d+)\s*(b|kb|mb|k|m)?\s*$", re.IGNORECASE)
_TIME = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|ms|s)\s*$", re.IGNORECASE)
_RATE_FACTORS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9, "tbit": 10**12}
_SIZE_FACTORS = {"b": 1, "": 1, "k": 1024, "kb": 1024, "m": 1024**2, "mb": 1024**2}
_CLI_SUBCOMMANDS = ("fit", "validate", "test", "predict")
TOPOLOGY_ENV = "LIGHTNING_AUTOOPT_CLUSTER"
"""Environment variable holding the cluster's device names for :func:`read_link_bytes` inside the cluster."""
ETHERNET_HEADER_BYTES = 14
"""Link-layer header the kernel counts in ``tc`` bytes on veth and loopback devices."""


class ClusterUnavailable(RuntimeError):
    """The machine cannot host an emulated cluster (not root, tools missing, namespaces not permitted)."""


class ClusterError(RuntimeError):
    """A setup command failed or a run timed out; the message holds the command and its error output."""


# ----------------------------------------------------------------------------------------------- pure parsing
def parse_rate(rate: str) -> int:
    """Bits per second of a ``tc`` rate string such as ``"200mbit"`` or ``"1gbit"`` (decimal prefixes, as tc).

    Raises:
        ValueError: If ``rate`` is not a positive number followed by ``bit``, ``kbit``, ``mbit``, ``gbit`` or
            ``tbit``.

    Example::

        >>> parse_rate("200mbit")
        200000000
    """
    match = _RATE.match(rate) if isinstance(rate, str) else None
    if match is None:
        raise ValueError(f"`link` must be a rate like '200mbit', '1gbit' or '500kbit' (tc units), got {rate!r}.")
    value = int(float(match.group(1)) * _RATE_FACTORS[match.group(2).lower()])
    if value <= 0:
        raise ValueError(f"`link` must be a positive rate, got {rate!r}.")
    return value


def parse_size(size: str) -> int:
    """Bytes of a ``tc`` size string such as ``"256kb"`` (``kb`` = 1024 bytes, as tc).

    Raises:
        ValueError: If ``size`` is not an integer optionally followed by ``b``, ``kb`` or ``mb``.
    """
    match = _SIZE.match(size) if isinstance(size, str) else None
    if match is None:
        raise ValueError(f"`burst` must be a size like '256kb' or '1mb' (tc units), got {size!r}.")
    return int(match.group(1)) * _SIZE_FACTORS[(match.group(2) or "").lower()]


@dataclass(frozen=True)
class QdiscStats:
    """One queueing discipline's counters from ``tc -s qdisc show``.

    ``bytes`` and ``packets`` are what the qdisc let through (sent) on its device: payload plus TCP/IP and link-layer
    headers of every packet, in one direction (the device's egress).
    """

    kind: str
    handle: str
    dev: str | None
    bytes: int
    packets: int
    dropped: int
    overlimits: int
    requeues: int
    rate_bps: int | None = None
    """The shaping rate in the header line (``tbf``: ``rate 100Mbit``), in bits per second; ``None`` if absent."""


_RATE_IN_HEADER = re.compile(r"\brate\s+(\d+(?:\.\d+)?)([KMGT]?bit)\b", re.IGNORECASE)
_QDISC_LINE = re.compile(r"^qdisc\s+(\S+)\s+(\S+)(?:\s+dev\s+(\S+))?")
_SENT_LINE = re.compile(
    r"^\s*Sent\s+(\d+)\s+bytes\s+(\d+)\s+pkts?\s+\(dropped\s+(\d+),\s+overlimits\s+(\d+)\s+requeues\s+(\d+)\)"
)


def parse_tc_qdisc_stats(text: str, dev: str | None = None) -> list[QdiscStats]:
    """Parse the text of ``tc -s qdisc show [dev DEV]`` into one record per qdisc.

    Args:
        text: The command's standard output.
        dev: Device name to use for records whose header line has no ``dev`` field (``tc -s qdisc show dev X``
            omits it).

    Returns:
        The qdiscs in output order; a qdisc header without a ``Sent`` line is skipped.

    Raises:
        ValueError: If a ``Sent`` line appears before any ``qdisc`` header (not ``tc`` output).

    Example::

        >>> out = '''qdisc tbf 8001: root refcnt 2 rate 100Mbit burst 256Kb lat 100ms
        ...  Sent 10085090 bytes 1289 pkt (dropped 0, overlimits 478 requeues 0)
        ...  backlog 0b 0p requeues 0'''
        >>> parse_tc_qdisc_stats(out, dev="lo")[0].bytes
        10085090
    """
    records: list[QdiscStats] = []
    header: tuple[str, str, str | None] | None = None
    rate_bps: int | None = None
    for line in text.splitlines():
        head = _QDISC_LINE.match(line)
        if head is not None:
            header = (head.group(1), head.group(2), head.group(3) or dev)
            shown = _RATE_IN_HEADER.search(line)
            rate_bps = parse_rate(shown.group(1) + shown.group(2)) if shown else None
            continue
        sent = _SENT_LINE.match(line)
        if sent is None:
            continue
        if header is None:
            raise ValueError(f"'Sent' line before any 'qdisc' header; is this `tc -s qdisc show` output? {line!r}")
        b, p, d, o, r = (int(g) for g in sent.groups())
        records.append(QdiscStats(header[0], header[1], header[2], b, p, d, o, r, rate_bps))
        header = None
    return records


# ----------------------------------------------------------------------------------------------- support check
def _which(tool: str) -> str | None:
    found = shutil.which(tool)
    if found is None:
        for folder in ("/usr/sbin", "/sbin", "/usr/bin", "/bin"):
            candidate = os.path.join(folder, tool)
            if os.access(candidate, os.X_OK):
                return candidate
    return found


def check_support(probe: bool = True) -> None:
    """Raise :class:`ClusterUnavailable` with the reason when this machine cannot host an emulated cluster.

    Args:
        probe: Also create (and delete) a throw-away namespace to prove namespaces are permitted.

    Raises:
        ClusterUnavailable: Not Linux, not root, ``ip``/``tc``/``unshare`` missing, or namespaces not permitted.
    """
    if not sys.platform.startswith("linux"):
        raise ClusterUnavailable(f"an emulated cluster needs Linux network namespaces; this is {sys.platform}.")
    if os.geteuid() != 0:
        raise ClusterUnavailable(
            "an emulated cluster needs root (network namespaces and tc); run as root, e.g. in a container or VM "
            "where you are root."
        )
    missing = [tool for tool in ("ip", "tc", "unshare") if _which(tool) is None]
    if missing:
        raise ClusterUnavailable(
            f"missing tools: {', '.join(missing)}; install iproute2 (ip, tc) and util-linux (unshare)."
        )
    if probe:
        name = f"{_PREFIX}{os.getpid()}h"
        done = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
        if done.returncode != 0:
            raise ClusterUnavailable(f"cannot create a network namespace (`ip netns add`): {done.stderr.strip()}")
        try:
            shaped = subprocess.run(
                ["ip", "netns", "exec", name, "tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", "1gbit",
                 "burst", "256kb", "latency", "100ms"],
                capture_output=True,
                text=True,
            )  # fmt: skip
            if shaped.returncode != 0:
                raise ClusterUnavailable(f"cannot add a tbf qdisc in a namespace: {shaped.stderr.strip()}")
        finally:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _run(argv: Sequence[str]) -> str:
    done = subprocess.run(list(argv), capture_output=True, text=True)
    if done.returncode != 0:
        raise ClusterError(f"`{' '.join(argv)}` failed (exit {done.returncode}): {done.stderr.strip()}")
    return done.stdout


def remove_stale_namespaces() -> list[str]:
    """Delete namespaces named by this module whose creating process no longer exists; returns their names."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    removed = []
    for line in out.splitlines():
        name = line.split()[0] if line.strip() else ""
        match = _STALE_NS.match(name)
        if match and not os.path.exists(f"/proc/{match.group(1)}"):
            _kill_namespace_pids(name)
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
            removed.append(name)
    return removed


def _namespace_pids(name: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def _kill_namespace_pids(name: str) -> None:
    for pid in _namespace_pids(name):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ----------------------------------------------------------------------------------------------- the cluster
@dataclass(frozen=True)
class LinkBytes:
    """Kernel-counted traffic of one shaped link.

    For ``nodes>=2``, ``link`` is ``"node<i>"``: ``sent`` is what node ``i`` put on its link (its veth end's egress),
    ``received`` what arrived over it. For one shaped host, ``link`` is ``"lo"`` and ``sent`` counts every packet
    between the workers (``received`` equals ``sent``: a loopback packet leaves and arrives on the same device).
    Both include TCP/IP and Ethernet headers and the TCP acknowledgements.
    """

    link: str
    sent: int
    received: int
    sent_packets: int
    received_packets: int
    dropped: int


@dataclass
class ClusterRun:
    """Outcome of :meth:`EmulatedCluster.torchrun`."""

    returncodes: list[int]
    wall_s: float
    links: dict[str, LinkBytes]
    logs: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every node's torchrun exited with 0."""
        return all(code == 0 for code in self.returncodes)

    @property
    def inter_node_bytes(self) -> int:
        """Bytes all nodes put on their links (for one shaped host: every loopback byte)."""
        return sum(link.sent for link in self.links.values())


def _check_int(name: str, value: Any, low: int, high: int, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"`{name}` must be an integer in [{low}, {high}] ({hint}), got {value!r}.")
    return value


class EmulatedCluster:
    """Network namespaces joined by rate-limited links; a context manager that always cleans up.

    Args:
        nodes: ``1`` for one shaped host (shaped loopback), ``>= 2`` for that many hosts on shaped links.
        link: Rate of every shaped link (tc units: ``"100mbit"``, ``"1gbit"``). For several nodes each veth end
            is shaped, so each direction of a node's link gets this rate.
        burst: Token-bucket size; must exceed the MTU plus the 14-byte link header or nothing passes.
        latency: How long a packet may wait in the tbf queue before it is dropped (tc's ``latency``).
        mtu: MTU of the shaped devices (9000: fewer packets, so the shaping costs little CPU).
        subnet_prefix: First three octets of the private addresses given to the nodes (node ``i`` gets
            ``<prefix>.<i+1>``); they exist only inside the namespaces.

    Raises:
        ValueError: On a bad argument (names the argument).
        ClusterUnavailable: On :meth:`start`/``__enter__`` when the machine cannot host the cluster.
        ClusterError: When a setup command fails (everything created so far is removed first).

    Example::

        with EmulatedCluster(nodes=1, link="100mbit") as cluster:
            cluster.run(0, ["python", "train.py"])
            print(cluster.link_bytes()["lo"].sent)
    """

    def __init__(
        self,
        nodes: int = 2,
        link: str = "200mbit",
        burst: str = "256kb",
        latency: str = "100ms",
        mtu: int = 9000,
        subnet_prefix: str = "10.213.0",
    ) -> None:
        self.nodes = _check_int("nodes", nodes, 1, 64, "1 = one shaped host, N >= 2 = N hosts")
        self.rate_bps = parse_rate(link)
        self.link = link
        self.mtu = _check_int("mtu", mtu, 576, 65535, "MTU of the shaped devices")
        self.burst_bytes = parse_size(burst)
        if self.burst_bytes <= self.mtu + ETHERNET_HEADER_BYTES:
            raise ValueError(
                f"`burst` ({burst} = {self.burst_bytes} bytes) must exceed the MTU plus the link header "
                f"({self.mtu + ETHERNET_HEADER_BYTES} bytes), or no packet ever passes; use e.g. '256kb'."
            )
        self.burst = burst
        if not isinstance(latency, str) or _TIME.match(latency) is None:
            raise ValueError(f"`latency` must be a time like '100ms' (tc units us/ms/s), got {latency!r}.")
        self.latency = latency
        octets = subnet_prefix.split(".") if isinstance(subnet_prefix, str) else []
        if len(octets) != 3 or not all(o.isdigit() and 0 <= int(o) <= 255 for o in octets):
            raise ValueError(f"`subnet_prefix` must be three octets like '10.213.0', got {subnet_prefix!r}.")
        self.subnet_prefix = subnet_prefix
        tag = os.getpid()
        self._tag = tag
        self.switch_ns = f"{_PREFIX}{tag}sw"
        if self.nodes == 1:
            self.namespaces = [f"{_PREFIX}{tag}h"]
            self.devices = ["lo"]
        else:
            self.namespaces = [f"{_PREFIX}{tag}n{i}" for i in range(self.nodes)]
            self.devices = [f"l{tag}n{i}" for i in range(self.nodes)]
        self._switch_devices = [f"l{tag}s{i}" for i in range(self.nodes)] if self.nodes > 2 else []
        self._created: list[str] = []
        self._procs: list[subprocess.Popen[bytes]] = []
        self._started = False

    # ------------------------------------------------------------------ addresses and commands
    def address(self, node: int) -> str:
        """The IPv4 address workers of ``node`` use (``127.0.0.1`` for one shaped host)."""
        if self.nodes == 1:
            return "127.0.0.1"
        return f"{self.subnet_prefix}.{node + 1}"

    def exec_argv(self, node: int, argv: Sequence[str]) -> list[str]:
        """``argv`` prefixed so that it runs inside ``node``'s namespace."""
        return ["ip", "netns", "exec", self.namespaces[node], *argv]

    def node_env(self, node: int, env: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for processes of ``node``: gloo bound to the node's shaped device (or ``lo``)."""
        out = dict(os.environ if env is None else env)
        out["GLOO_SOCKET_IFNAME"] = self.devices[node]
        out[TOPOLOGY_ENV] = json.dumps(self.topology())
        out.setdefault("OMP_NUM_THREADS", "1")
        return out

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> EmulatedCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Create the namespaces, links and qdiscs.

        Raises:
            ClusterUnavailable: When the machine cannot host the cluster.
            ClusterError: When a setup command fails (what was created is removed before raising).
        """
        if self._started:
            return
        check_support(probe=False)
        remove_stale_namespaces()
        self._started = True
        atexit.register(self.close)
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _add_ns(self, name: str) -> None:
        try:
            _run(["ip", "netns", "add", name])
        except ClusterError as err:
            raise ClusterUnavailable(f"cannot create network namespace {name}: {err}") from err
        self._created.append(name)
        _run(["ip", "-n", name, "link", "set", "lo", "up"])

    def _shape(self, ns: str, dev: str) -> None:
        _run(["ip", "-n", ns, "link", "set", dev, "mtu", str(self.mtu)])
        _run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", self.link,
              "burst", self.burst, "latency", self.latency])  # fmt: skip

    def _build(self) -> None:
        for ns in self.namespaces:
            self._add_ns(ns)
        if self.nodes == 1:
            self._shape(self.namespaces[0], "lo")
            return
        if self.nodes == 2:
            (ns0, ns1), (dev0, dev1) = self.namespaces, self.devices
            _run(["ip", "link", "add", dev0, "netns", ns0, "type", "veth", "peer", "name", dev1, "netns", ns1])
            ends = [(ns0, dev0), (ns1, dev1)]
        else:
            self._add_ns(self.switch_ns)
            _run(["ip", "-n", self.switch_ns, "link", "add", "br0", "type", "bridge"])
            ends = []
            for ns, dev, port in zip(self.namespaces, self.devices, self._switch_devices):
                _run(["ip", "link", "add", dev, "netns", ns, "type", "veth", "peer", "name", port, "netns",
                      self.switch_ns])  # fmt: skip
                ends += [(ns, dev), (self.switch_ns, port)]
        for ns, dev in ends:
            self._shape(ns, dev)
        for node, (ns, dev) in enumerate(zip(self.namespaces, self.devices)):
            _run(["ip", "-n", ns, "addr", "add", f"{self.address(node)}/24", "dev", dev])
            _run(["ip", "-n", ns, "link", "set", dev, "up"])
        if self.nodes > 2:
            _run(["ip", "-n", self.switch_ns, "link", "set", "br0", "mtu", str(self.mtu)])
            for port in self._switch_devices:
                _run(["ip", "-n", self.switch_ns, "link", "set", port, "master", "br0"])
                _run(["ip", "-n", self.switch_ns, "link", "set", port, "up"])
            _run(["ip", "-n", self.switch_ns, "link", "set", "br0", "up"])

    def close(self) -> None:
        """End every process started in the namespaces (by PID) and delete the namespaces. Idempotent."""
        for proc in self._procs:
            _terminate(proc)
        self._procs = []
        for ns in reversed(self._created):
            _kill_namespace_pids(ns)  # anything left inside (workers run in their own sessions)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self._created = []
        if self._started:
            atexit.unregister(self.close)
        self._started = False

    # ------------------------------------------------------------------ running things
    def popen(
        self, node: int, argv: Sequence[str], env: Mapping[str, str] | None = None, **kwargs: Any
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside ``node``'s namespace in its own process group; :meth:`close` ends it."""
        if not self._started:
            raise ClusterError("the cluster is not started; use it as a context manager or call start().")
        _check_int("node", node, 0, self.nodes - 1, "index of a node")
        proc = subprocess.Popen(
            self.exec_argv(node, argv), env=self.node_env(node, env), start_new_session=True, **kwargs
        )
        self._procs.append(proc)
        return proc

    def run(
        self, node: int, argv: Sequence[str], timeout: float | None = None, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` to completion inside ``node``'s namespace and capture its output."""
        return subprocess.run(
            self.exec_argv(node, argv), env=self.node_env(node, env), capture_output=True, text=True, timeout=timeout
        )

    def topology(self) -> dict[str, Any]:
        """Names of the shaped devices and their namespaces (JSON-serializable; see :func:`read_link_bytes`)."""
        return {
            "nodes": self.nodes,
            "namespaces": list(self.namespaces),
            "devices": list(self.devices),
            "switch_ns": self.switch_ns if self.nodes > 2 else None,
            "switch_devices": list(self._switch_devices),
            "rate": self.link,
            "burst": self.burst,
            "latency": self.latency,
        }

    def link_bytes(self) -> dict[str, LinkBytes]:
        """Kernel-counted bytes per link so far (see :class:`LinkBytes`)."""
        return read_link_bytes(self.topology())

    def set_link_rate(self, rate: str | None = None) -> None:
        """Change the rate of every shaped link (``None``: back to ``link``); see :func:`set_link_rate`."""
        set_link_rate(rate, self.topology())

    def torchrun(
        self,
        command: Sequence[str],
        nproc_per_node: int,
        timeout: float | None = None,
        port: int = 29400,
        env: Mapping[str, str] | None = None,
        log_dir: str | os.PathLike[str] | None = None,
        max_restarts: int = 0,
    ) -> ClusterRun:
        """Run ``torchrun --nnodes=<nodes> --nproc-per-node=<nproc_per_node>`` once per node, rendezvous on node 0.

        Args:
            command: What torchrun runs: ``["script.py", ...]``, ``["-m", "module", ...]`` or a Lightning CLI
                subcommand (``["fit", "--config", ...]``, see :func:`torchrun_command`).
            nproc_per_node: Worker processes per node.
            timeout: Seconds before every process is ended and :class:`ClusterError` raised (``None``: no limit).
            port: Rendezvous port on node 0's address.
            env: Base environment (default: this process's).
            log_dir: Write node ``i``'s output to ``<log_dir>/node<i>.log`` instead of this process's stdout.
            max_restarts: torchrun's ``--max-restarts``: how often the workers are restarted after a failure (a
                restarted ``autoopt fit`` resumes from its last checkpoint).

        Returns:
            Exit codes per node, wall time and the bytes that crossed each link during the run.

        Raises:
            ClusterError: On timeout (after ending every process).
        """
        _check_int("nproc_per_node", nproc_per_node, 1, 256, "worker processes per node")
        _check_int("port", port, 1024, 65535, "rendezvous port")
        _check_int("max_restarts", max_restarts, 0, 100, "torchrun restarts after a failure")
        tail = torchrun_command(command, nodes=self.nodes, nproc_per_node=nproc_per_node)
        before = self.link_bytes()
        logs: list[Path] = []
        files: list[TextIO] = []
        procs = []
        start = time.perf_counter()
        try:
            for node in range(self.nodes):
                argv = [
                    sys.executable, "-m", "torch.distributed.run",
                    f"--nnodes={self.nodes}", f"--nproc-per-node={nproc_per_node}",
                    "--rdzv-backend=c10d", f"--rdzv-endpoint={self.address(0)}:{port}",
                    f"--rdzv-conf=is_host={1 if node == 0 else 0}", f"--local-addr={self.address(node)}",
                    f"--max-restarts={max_restarts}", *tail,
                ]  # fmt: skip
                kwargs: dict[str, Any] = {}
                if log_dir is not None:
                    path = Path(log_dir) / f"node{node}.log"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    handle: TextIO = open(path, "w")  # noqa: SIM115 (closed in finally)
                    files.append(handle)
                    logs.append(path)
                    kwargs = {"stdout": handle, "stderr": subprocess.STDOUT}
                procs.append(self.popen(node, argv, env=env, **kwargs))
            deadline = None if timeout is None else start + timeout
            codes = []
            for proc in procs:
                left = None if deadline is None else max(deadline - time.perf_counter(), 0.0)
                try:
                    codes.append(proc.wait(timeout=left))
                except subprocess.TimeoutExpired as err:
                    raise ClusterError(f"torchrun did not finish within {timeout} s; every process was ended.") from err
            wall = time.perf_counter() - start
        finally:
            for proc in procs:
                _terminate(proc)
                if proc in self._procs:
                    self._procs.remove(proc)
            for ns in self.namespaces:
                _kill_namespace_pids(ns)
            for handle in files:
                handle.close()
        after = self.link_bytes()
        links = {
            k: LinkBytes(
                k,
                after[k].sent - before[k].sent,
                after[k].received - before[k].received,
                after[k].sent_packets - before[k].sent_packets,
                after[k].received_packets - before[k].received_packets,
                after[k].dropped - before[k].dropped,
            )
            for k in after
        }
        return ClusterRun(codes, wall, links, logs)


def _qdisc(ns: str, dev: str) -> QdiscStats:
    text = _run(["ip", "netns", "exec", ns, "tc", "-s", "qdisc", "show", "dev", dev])
    found = [q for q in parse_tc_qdisc_stats(text, dev=dev) if q.kind == "tbf"]
    if not found:
        raise ClusterError(f"no tbf qdisc on {dev} in namespace {ns}:\n{text}")
    return found[0]


def read_link_bytes(topology: Mapping[str, Any] | None = None) -> dict[str, LinkBytes]:
    """Kernel-counted bytes per link of a running cluster, readable from inside it (e.g. by rank 0 each epoch).

    Args:
        topology: :meth:`EmulatedCluster.topology`; ``None`` reads it from the environment variable
            ``LIGHTNING_AUTOOPT_CLUSTER``, which the cluster sets for every process it starts.

    Raises:
        ClusterError: Outside a cluster (no topology) or when ``tc`` fails.
    """
    topology = _load_topology(topology)
    namespaces, devices = topology["namespaces"], topology["devices"]
    if topology["nodes"] == 1:
        lo = _qdisc(namespaces[0], "lo")
        return {"lo": LinkBytes("lo", lo.bytes, lo.bytes, lo.packets, lo.packets, lo.dropped)}
    out = {}
    for node, (ns, dev) in enumerate(zip(namespaces, devices)):
        up = _qdisc(ns, dev)
        if topology["nodes"] == 2:
            down = _qdisc(namespaces[1 - node], devices[1 - node])
        else:
            down = _qdisc(topology["switch_ns"], topology["switch_devices"][node])
        name = f"node{node}"
        out[name] = LinkBytes(name, up.bytes, down.bytes, up.packets, down.packets, up.dropped + down.dropped)
    return out


def read_loopback_bytes(topology: Mapping[str, Any] | None = None) -> dict[str, int]:
    """Bytes every host of a running cluster sent over its own loopback: the traffic between its workers.

    For ``nodes >= 2`` that traffic never crosses a shaped link, so :func:`read_link_bytes` does not see it; these
    counters (``ip -s link show lo`` in each host's namespace, Ethernet header included as ``tc`` counts it) complete
    the picture: shaped links plus loopbacks is every byte the workers sent. For one shaped host the loopback *is*
    the shaped link (the same bytes as ``read_link_bytes()["lo"].sent``).

    Args:
        topology: As for :func:`read_link_bytes`.

    Returns:
        ``{"node<i>": bytes}``, cumulative since the host was created.

    Raises:
        ClusterError: Outside a cluster or when ``ip`` fails.
    """
    topology = _load_topology(topology)
    out = {}
    for node, ns in enumerate(topology["namespaces"]):
        text = _run(["ip", "-n", ns, "-j", "-s", "link", "show", "lo"])
        try:
            out[f"node{node}"] = int(json.loads(text)[0]["stats64"]["tx"]["bytes"])
        except (ValueError, LookupError, TypeError) as err:
            raise ClusterError(f"cannot read the loopback counters of namespace {ns}: {text!r}") from err
    return out


def _load_topology(topology: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if topology is not None:
        return topology
    raw = os.environ.get(TOPOLOGY_ENV)
    if not raw:
        raise ClusterError(f"not running inside an emulated cluster (${TOPOLOGY_ENV} is not set).")
    loaded: Mapping[str, Any] = json.loads(raw)
    return loaded


def _shaped_ends(topology: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(namespace, device)`` of every tbf-shaped device of a cluster."""
    ends = list(zip(topology["namespaces"], topology["devices"]))
    if topology["nodes"] > 2:
        ends += [(topology["switch_ns"], dev) for dev in topology["switch_devices"]]
    return ends


def set_link_rate(rate: str | None = None, topology: Mapping[str, Any] | None = None) -> None:
    """Change the rate of every shaped link of a running cluster in place (``tc qdisc change``); counters are kept.

    For example, a benchmark can shape the links only while it times training and let its (untimed) evaluation
    collectives run at loopback speed. The kernel's byte counters are not reset by the change. Needs root, like the
    cluster itself; callable from inside the cluster (e.g. by rank 0 between barriers).

    Args:
        rate: New rate in tc units (``"20gbit"``); ``None`` restores the rate the cluster was built with.
        topology: :meth:`EmulatedCluster.topology`; ``None`` reads it from ``$LIGHTNING_AUTOOPT_CLUSTER``.

    Raises:
        ValueError: If ``rate`` is not a tc rate.
        ClusterError: Outside a cluster, when ``tc`` fails, or when a device does not report the new rate.

    Example::

        set_link_rate("20gbit")  # fast: evaluation, checkpoints
        try:
            evaluate()
        finally:
            set_link_rate()  # back to the cluster's link rate
    """
    topology = _load_topology(topology)
    if rate is None:
        if "rate" not in topology:
            raise ClusterError("the topology does not hold the cluster's rate; pass `rate` explicitly.")
        rate = str(topology["rate"])
    wanted = parse_rate(rate)
    burst, latency = topology.get("burst", "256kb"), topology.get("latency", "100ms")
    for ns, dev in _shaped_ends(topology):
        _run(["ip", "netns", "exec", ns, "tc", "qdisc", "change", "dev", dev, "root", "tbf", "rate", rate, "burst",
              burst, "latency", latency])  # fmt: skip
        shown = _qdisc(ns, dev).rate_bps
        if shown is None or abs(shown - wanted) > 0.01 * wanted:
            raise ClusterError(f"{dev} in {ns} reports rate {shown} bit/s after setting {rate!r}.")


def _terminate(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM the process group of ``proc`` (torchrun forwards it to its workers), then SIGKILL after ``grace``."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def torchrun_command(command: Sequence[str], nodes: int, nproc_per_node: int) -> list[str]:
    """The part of the torchrun command line after its own options.

    ``fit``/``validate``/``test``/``predict ...`` becomes ``-m lightning_autoopt <sub> ... --trainer.devices=P
    --trainer.num_nodes=N`` (the Trainer must agree with torchrun's world); ``script.py ...`` and
    ``-m module ...`` are passed through.

    Raises:
        ValueError: On an empty command or one that is none of the three forms.
    """
    argv = list(command)
    if not argv:
        raise ValueError("give the command to run after `--`, e.g. `-- fit --config recipe:localsgd_mnist1d`.")
    first = argv[0]
    if first in _CLI_SUBCOMMANDS:
        return [
            "-m", "lightning_autoopt", *argv, f"--trainer.devices={nproc_per_node}", f"--trainer.num_nodes={nodes}"
        ]  # fmt: skip
    if first == "-m":
        if len(argv) < 2:
            raise ValueError("`-m` needs a module name, e.g. `-- -m my_package.train`.")
        return argv
    if first.endswith(".py"):
        return argv
    raise ValueError(
        f"cannot run {first!r}: give a Lightning CLI subcommand ({'/'.join(_CLI_SUBCOMMANDS)}), a script ending in "
        "'.py', or '-m module'."
    )


# ----------------------------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``python -m lightning_autoopt.cluster``."""
    parser = argparse.ArgumentParser(
        prog="python -m lightning_autoopt.cluster",
        description=(
            "Run a torchrun job on an emulated cluster: network namespaces on this machine joined by rate-limited "
            "links (tc tbf). --nodes 1 shapes one host's loopback (every worker shares the link); --nodes N>=2 "
            "gives N hosts with a shaped link each and fast loopback inside a node. Needs root, iproute2 and "
            "util-linux. No traffic leaves the namespaces. Prints the bytes that crossed each link."
        ),
        epilog=(
            "examples:\n"
            "  python -m lightning_autoopt.cluster --nodes 2 --nproc-per-node 2 --link 200mbit -- "
            "fit --config recipe:localsgd_mnist1d\n"
            "  python -m lightning_autoopt.cluster --nodes 1 --nproc-per-node 4 --link 100mbit -- train.py --lr 0.1"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--nodes", type=int, default=2, help="1 = one shaped host; N >= 2 = N hosts (default 2)")
    parser.add_argument("--nproc-per-node", type=int, default=2, help="worker processes per node (default 2)")
    parser.add_argument("--link", default="200mbit", help="rate of each shaped link, tc units (default 200mbit)")
    parser.add_argument("--burst", default="256kb", help="token bucket size, must exceed the MTU (default 256kb)")
    parser.add_argument("--latency", default="100ms", help="max queueing delay in the tbf (default 100ms)")
    parser.add_argument("--mtu", type=int, default=9000, help="MTU of the shaped devices (default 9000)")
    parser.add_argument("--port", type=int, default=29400, help="rendezvous port on node 0 (default 29400)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds before the job is ended (default none)")
    parser.add_argument("--log-dir", default=None, help="write node<i>.log here instead of the terminal")
    parser.add_argument("--stats-json", default=None, help="also write the per-link bytes and exit codes as JSON")
    return parser


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Split ``argv`` at ``--`` and validate both halves (raises ``SystemExit`` with usage on a bad argument)."""
    argv = list(argv)
    parser = build_parser()
    if "--" in argv:
        cut = argv.index("--")
        own, command = argv[:cut], argv[cut + 1 :]
    else:
        own, command = argv, []
    args = parser.parse_args(own)
    try:
        EmulatedCluster(nodes=args.nodes, link=args.link, burst=args.burst, latency=args.latency, mtu=args.mtu)
        _check_int("nproc_per_node", args.nproc_per_node, 1, 256, "worker processes per node")
        _check_int("port", args.port, 1024, 65535, "rendezvous port")
        if args.timeout is not None and not args.timeout > 0:
            raise ValueError(f"`timeout` must be > 0 seconds, got {args.timeout}.")
        torchrun_command(command, args.nodes, args.nproc_per_node)
    except ValueError as err:
        parser.error(str(err).replace("`nproc_per_node`", "--nproc-per-node"))
    return args, command


def format_links(run: ClusterRun) -> str:
    """A small table of the bytes that crossed each link."""
    lines = [f"{'link':<8} {'sent bytes':>14} {'recv bytes':>14} {'sent pkts':>10} {'dropped':>8}"]
    for link in run.links.values():
        lines.append(f"{link.link:<8} {link.sent:>14,} {link.received:>14,} {link.sent_packets:>10,} {link.dropped:>8}")
    lines.append(f"exit codes per node: {run.returncodes}; wall time {run.wall_s:.1f} s")
    return "\n".join(lines)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m lightning_autoopt.cluster``; returns the worst exit code of the nodes."""
    args, command = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        check_support(probe=False)
    except ClusterUnavailable as err:
        sys.stderr.write(f"lightning_autoopt.cluster: {err}\n")
        return 2
    # Ctrl-C, SIGTERM and SIGHUP all clean up (SIGINT too when the shell started us with it ignored)
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        with EmulatedCluster(
            nodes=args.nodes, link=args.link, burst=args.burst, latency=args.latency, mtu=args.mtu
        ) as cluster:
            run = cluster.torchrun(
                command, args.nproc_per_node, timeout=args.timeout, port=args.port, log_dir=args.log_dir
            )
    except KeyboardInterrupt:
        sys.stderr.write("lightning_autoopt.cluster: interrupted; namespaces deleted and processes ended.\n")
        return 130
    except (ClusterError, ClusterUnavailable) as err:
        sys.stderr.write(f"lightning_autoopt.cluster: {err}\n")
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    sys.stdout.write(format_links(run) + "\n")  # the command's report: printing is its job
    if args.stats_json:
        payload = {"returncodes": run.returncodes, "wall_s": run.wall_s}
        payload["links"] = {k: asdict(v) for k, v in run.links.items()}
        Path(args.stats_json).write_text(json.dumps(payload, indent=2))
    return max((abs(c) for c in run.returncodes), default=0)


if __name__ == "__main__":
    sys.exit(main())
