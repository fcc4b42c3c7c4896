"""The emulated cluster: tc parsing and argument checks (anywhere), namespaces and a 2x2 torchrun fit (root only)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lightning_autoopt import cluster as cl
from lightning_autoopt.strategies import _wire

ROOT = Path(__file__).resolve().parents[1]

TC_TEXT = """qdisc noqueue 0: dev lo root refcnt 2
 Sent 0 bytes 0 pkt (dropped 0, overlimits 0 requeues 0)
 backlog 0b 0p requeues 0
qdisc tbf 8001: dev l123n0 root refcnt 2 rate 200Mbit burst 256Kb lat 100ms
 Sent 15159856 bytes 2120 pkt (dropped 3, overlimits 478 requeues 1)
 backlog 0b 0p requeues 1
qdisc fq_codel 0: dev eth9 parent 1:1 limit 10240p
"""


def _support_reason() -> str | None:
    try:
        cl.check_support(probe=True)
    except cl.ClusterUnavailable as err:
        return str(err)
    return None


_REASON = _support_reason()
needs_namespaces = pytest.mark.skipif(_REASON is not None, reason=f"no emulated cluster here: {_REASON}")


# ----------------------------------------------------------------------------- pure parts
def test_parse_tc_qdisc_stats_all_fields_and_devices():
    recs = cl.parse_tc_qdisc_stats(TC_TEXT)
    assert [(r.kind, r.dev) for r in recs] == [("noqueue", "lo"), ("tbf", "l123n0")]  # fq_codel has no Sent line
    tbf = recs[1]
    assert (tbf.handle, tbf.bytes, tbf.packets, tbf.dropped, tbf.overlimits, tbf.requeues) == (
        "8001:",
        15159856,
        2120,
        3,
        478,
        1,
    )
    only = "qdisc tbf 8003: root refcnt 2 rate 100Mbit\n Sent 1 bytes 1 pkt (dropped 0, overlimits 0 requeues 0)\n"
    assert cl.parse_tc_qdisc_stats(only, dev="lo")[0].dev == "lo"  # `show dev X` omits the device
    assert recs[0].rate_bps is None and tbf.rate_bps == 200_000_000  # the header's shaping rate
    assert cl.parse_tc_qdisc_stats(only, dev="lo")[0].rate_bps == 100_000_000
    assert cl.parse_tc_qdisc_stats("") == []
    with pytest.raises(ValueError, match="qdisc"):
        cl.parse_tc_qdisc_stats(" Sent 1 bytes 1 pkt (dropped 0, overlimits 0 requeues 0)")


def test_rates_and_sizes():
    assert cl.parse_rate("200mbit") == 200_000_000
    assert cl.parse_rate("1GBIT") == 10**9
    assert cl.parse_rate("1.5kbit") == 1500
    assert cl.parse_size("256kb") == 262144
    assert cl.parse_size("9100") == 9100
    for bad in ("200mb", "fast", "", "-1mbit", "0mbit"):
        with pytest.raises(ValueError, match="link"):
            cl.parse_rate(bad)
    with pytest.raises(ValueError, match="burst"):
        cl.parse_size("lots")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"nodes": 0}, "nodes"),
        ({"nodes": 2.0}, "nodes"),
        ({"link": "100mb"}, "link"),
        ({"burst": "8kb"}, "must exceed the MTU"),  # 8192 <= 9000 + 14: nothing would pass
        ({"mtu": 100}, "mtu"),
        ({"latency": "soon"}, "latency"),
        ({"subnet_prefix": "10.0.0.0"}, "subnet_prefix"),
    ],
)
def test_cluster_arguments_fail_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        cl.EmulatedCluster(**kwargs)


def test_addresses_and_torchrun_commands():
    two = cl.EmulatedCluster(nodes=2)
    assert [two.address(i) for i in range(2)] == ["10.213.0.1", "10.213.0.2"]
    assert two.exec_argv(1, ["true"])[:3] == ["ip", "netns", "exec"]
    assert cl.EmulatedCluster(nodes=1).address(0) == "127.0.0.1"
    fit = cl.torchrun_command(["fit", "--config", "x.yaml"], nodes=2, nproc_per_node=3)
    assert fit == [
        "-m",
        "lightning_autoopt",
        "fit",
        "--config",
        "x.yaml",
        "--trainer.devices=3",
        "--trainer.num_nodes=2",
    ]
    assert cl.torchrun_command(["train.py", "--lr", "1"], 2, 2) == ["train.py", "--lr", "1"]
    assert cl.torchrun_command(["-m", "pkg.train"], 2, 2) == ["-m", "pkg.train"]
    for bad, match in (([], "after `--`"), (["-m"], "module"), (["make"], "cannot run")):
        with pytest.raises(ValueError, match=match):
            cl.torchrun_command(bad, 2, 2)


def test_command_line_validation(capsys):
    args, command = cl.parse_args(["--nodes", "2", "--link", "1gbit", "--", "fit", "--config", "a.yaml"])
    assert (args.nodes, args.link, command) == (2, "1gbit", ["fit", "--config", "a.yaml"])
    for argv, match in (
        (["--link", "fast", "--", "t.py"], "link"),
        (["--nproc-per-node", "0", "--", "t.py"], "--nproc-per-node"),
        (["--nodes", "2"], "after `--`"),
        (["--timeout", "-1", "--", "t.py"], "timeout"),
    ):
        with pytest.raises(SystemExit):
            cl.parse_args(argv)
        assert match in capsys.readouterr().err
    help_text = cl.build_parser().format_help()
    assert "--nproc-per-node" in help_text and "tbf" in help_text


def test_refuses_without_root_or_tools(monkeypatch):
    monkeypatch.setattr(cl.sys, "platform", "linux")
    monkeypatch.setattr(cl.os, "geteuid", lambda: 1000)
    with pytest.raises(cl.ClusterUnavailable, match="root"):
        cl.check_support()
    monkeypatch.setattr(cl.os, "geteuid", lambda: 0)
    monkeypatch.setattr(cl, "_which", lambda tool: None if tool == "tc" else "/bin/" + tool)
    with pytest.raises(cl.ClusterUnavailable, match="missing tools: tc"):
        cl.check_support()
    assert cl.main(["--", "t.py"]) == 2  # the command line says why and exits 2, before touching anything


def test_set_link_rate_outside_a_cluster_says_so(monkeypatch):
    monkeypatch.delenv(cl.TOPOLOGY_ENV, raising=False)
    with pytest.raises(cl.ClusterError, match="not running inside"):
        cl.set_link_rate("1gbit")
    with pytest.raises(cl.ClusterError, match="pass `rate`"):  # an old topology without the rate
        cl.set_link_rate(None, {"nodes": 1, "namespaces": ["x"], "devices": ["lo"]})


def test_wire_model_closed_forms():
    s = 1000
    assert _wire.rank_wire_bytes("all_reduce", s, 4, rank=2) == 1500  # 2 (w - 1) / w
    assert _wire.broadcast_edges(4) == [(0, 1), (0, 2), (1, 3)]
    assert [_wire.rank_wire_bytes("broadcast", s, 4, r) for r in range(4)] == [2000, 1000, 0, 0]
    assert _wire.rank_wire_bytes("all_gather", s, 4, rank=0) == 3000
    assert _wire.link_payload_bytes("all_reduce", s, nodes=1, per_node=4) == 6000  # loopback sees every rank
    assert _wire.link_payload_bytes("all_reduce", s, nodes=2, per_node=2) == 3000  # ring crosses twice
    assert _wire.link_payload_bytes("broadcast", s, nodes=2, per_node=2) == 2000  # 0->2 and 1->3
    assert _wire.link_payload_bytes("isend_irecv", s, nodes=2, per_node=2, dst=1) == 0  # same node
    assert _wire.convention_bytes("all_reduce", s, 4) == 4000
    assert _wire.overhead_factor(9000) == pytest.approx(1.0085, abs=1e-4)
    assert _wire.overhead_factor(1500) == pytest.approx(1 + 66 / 1448 + 0.0011)
    with pytest.raises(ValueError, match="op"):
        _wire.rank_wire_bytes("reduce", s, 2, 0)


# ----------------------------------------------------------------------------- namespaces (root)
@needs_namespaces
def test_cleanup_on_error_ends_processes_and_deletes_namespaces():
    with pytest.raises(RuntimeError, match="boom"):  # noqa: PT012
        with cl.EmulatedCluster(nodes=3, link="1gbit") as cluster:
            names = [*cluster.namespaces, cluster.switch_ns]
            proc = cluster.popen(0, ["sleep", "60"])
            done = cluster.run(2, ["ip", "-4", "-o", "addr", "show"])
            assert "10.213.0.3/24" in done.stdout
            ping = cluster.run(2, [sys.executable, "-c", _CONNECT, "10.213.0.1"], timeout=30)
            assert ping.returncode == 0, ping.stderr  # node 2 reaches node 0 through the bridge
            assert set(cluster.link_bytes()) == {"node0", "node1", "node2"}
            raise RuntimeError("boom")
    assert proc.poll() is not None
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(n in listed.split() for n in names)


_CONNECT = (
    "import socket, sys\n"
    "s = socket.socket(); s.settimeout(5)\n"
    "try:\n    s.connect((sys.argv[1], 9))\nexcept ConnectionRefusedError:\n    pass\n"  # a RST came back: reachable
)


@needs_namespaces
@pytest.mark.slow
def test_two_host_torchrun_fit_bytes_match_the_kernel(tmp_path):
    """2 nodes x 2 workers, LocalSGD every 2 steps: the self-counted bytes against tc on the inter-node link."""
    out = tmp_path / "run"
    script = ROOT / "tests" / "scripts" / "cluster_fit.py"
    start = time.perf_counter()
    with cl.EmulatedCluster(nodes=2, link="200mbit") as cluster:
        args = [str(script), "--out", str(out), "--nodes", "2", "--devices", "2", "--steps", "8", "--period", "2"]
        run = cluster.torchrun(args, nproc_per_node=2, timeout=150, log_dir=tmp_path / "logs")
    logs = "\n".join(p.read_text()[-3000:] for p in run.logs)
    assert run.ok, logs
    states = [torch.load(out / f"rank{r}.pt", weights_only=False)["state"] for r in range(4)]
    assert all(s["num_rounds"] == 4 and s["num_steps"] == 8 for s in states)
    per_rank = states[0]["bytes_sent_total"]
    assert per_rank > 0 and all(s["bytes_sent_total"] == per_rank for s in states)
    ckpt = torch.load(out / "ckpt" / "last.ckpt", weights_only=False)
    assert [r["strategy"]["bytes_sent_total"] for r in ckpt["local_update_strategy"]["ranks"]] == [per_rank] * 4

    window = json.loads((out / "window.json").read_text())
    loopback = {k: window["after"]["loopback"][k] - window["before"]["loopback"][k] for k in ("node0", "node1")}
    kernel = {k: window["after"][k]["sent"] - window["before"][k]["sent"] for k in ("node0", "node1")}
    assert kernel["node0"] > 0 and kernel["node1"] > 0  # the ring crosses the link in both directions
    rounds = states[0]["num_rounds"]
    predicted = rounds * _wire.predicted_link_bytes("all_reduce", per_rank // rounds, nodes=2, per_node=2)
    ratio = sum(kernel.values()) / predicted
    assert 0.99 < ratio < 1.10, (kernel, predicted)  # two barriers and the TCP acks are the only extras
    # the convention (4 bytes per parameter per rank and round) is off by the ring's 2 (w - 1) / w over the link
    assert sum(kernel.values()) / (4 * per_rank) == pytest.approx(0.75 * _wire.overhead_factor(), rel=0.05)
    # every byte the workers sent (the link plus each host's loopback) against their own wire counts
    wire = sum(s["wire_bytes_total"] for s in states)
    assert wire == pytest.approx(rounds * 4 * _wire.rank_wire_bytes("all_reduce", per_rank // rounds, 4, 0))
    assert loopback["node0"] > 0 and loopback["node1"] > 0  # the ring's hops inside each host
    assert 0.99 < (sum(kernel.values()) + sum(loopback.values())) / wire < 1.10, (kernel, loopback, wire)
    assert run.inter_node_bytes >= sum(kernel.values())  # the whole run also holds start-up and the checkpoint
    assert time.perf_counter() - start < 120


@needs_namespaces
def test_set_link_rate_changes_every_shaped_device_and_keeps_the_counters():
    with cl.EmulatedCluster(nodes=3, link="100mbit") as cluster:
        topo = cluster.topology()
        assert (topo["rate"], topo["burst"], topo["latency"]) == ("100mbit", "256kb", "100ms")
        ends = cl._shaped_ends(topo)
        assert len(ends) == 6  # three node ends and three switch ports
        ping = cluster.run(2, [sys.executable, "-c", _CONNECT, "10.213.0.1"], timeout=30)
        assert ping.returncode == 0, ping.stderr
        before = cluster.link_bytes()
        cluster.set_link_rate("20gbit")
        assert {cl._qdisc(ns, dev).rate_bps for ns, dev in ends} == {20 * 10**9}
        after = cluster.link_bytes()
        assert after["node2"].sent >= before["node2"].sent > 0  # `tc qdisc change` keeps the counters
        env = {**os.environ, cl.TOPOLOGY_ENV: json.dumps(topo)}
        back = cluster.run(0, [sys.executable, "-c", "from lightning_autoopt.cluster import set_link_rate as s; s()"],
                           env={**env, "PYTHONPATH": str(ROOT)})  # fmt: skip
        assert back.returncode == 0, back.stderr  # from inside the cluster, topology from the environment
        assert {cl._qdisc(ns, dev).rate_bps for ns, dev in ends} == {100 * 10**6}
        with pytest.raises(ValueError, match="link"):
            cluster.set_link_rate("fast")


@needs_namespaces
def test_namespaces_of_a_dead_run_are_removed():
    dead = next(p for p in range(4_000_000, 4_100_000) if not os.path.exists(f"/proc/{p}"))
    name = f"lao{dead}n0"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        assert name in cl.remove_stale_namespaces()
        assert name not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
