"""A real Redis Cluster for the tests: N masters from Debian's redis-server (>= 7), on free ports.

Each node keeps its files (nodes.conf, log) in a directory of its own, so a node stopped and
started again rejoins with its slots. `cluster-require-full-coverage no`: while one master
is down, the other shards keep answering (a production setting worth having too).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import redis

from tasklog.demo.embedded import HOST, free_port

SERVER = "/usr/bin/redis-server"
CLI = "/usr/bin/redis-cli"


def unavailable() -> str | None:
    """Why a cluster cannot be started here (None when it can)."""
    server = shutil.which(SERVER) or shutil.which("redis-server")
    if server is None or shutil.which(CLI) is None:
        return f"Redis Cluster tests need {SERVER} and {CLI} >= 7 (apt-get install redis-server)"
    out = subprocess.run([server, "--version"], capture_output=True, text=True, check=False)
    found = re.search(r"v=(\d+)\.", out.stdout)
    if found is None or int(found.group(1)) < 7:
        return f"Redis Cluster tests need redis-server >= 7 (sharded pub/sub); found {out.stdout}"
    return None


class Node:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.port = free_port()
        # The cluster bus port: its own free port (the default, port + 10000, may be taken or
        # past 65535).
        self.bus_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, socket_timeout=5)

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        argv = [
            SERVER,
            "--port",
            str(self.port),
            "--bind",
            HOST,
            "--cluster-enabled",
            "yes",
            "--cluster-port",
            str(self.bus_port),
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
            "--cluster-require-full-coverage",
            "no",
            # A replica whose link to a dead master is old may still take over (tests only
            # kill masters whose replicas are in sync).
            "--cluster-replica-validity-factor",
            "0",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.dir),
            "--daemonize",
            "no",
        ]
        with (self.dir / "redis.log").open("ab") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 15
        while True:
            try:
                with self.client() as client:
                    client.ping()
                return
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"redis-server on {self.port} did not start: "
                        + (self.dir / "redis.log").read_text()[-2000:]
                    ) from None
                time.sleep(0.02)

    def stop(self, timeout: float = 10) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class RedisClusterNodes:
    """`masters` cluster nodes (each with `replicas` replicas), created as one cluster, always
    stopped on exit."""

    def __init__(self, directory: Path, masters: int = 3, replicas: int = 0) -> None:
        self.replicas = replicas
        self.nodes = [Node(directory / f"node{i}") for i in range(masters * (1 + replicas))]

    def __enter__(self) -> Self:
        try:
            for node in self.nodes:
                node.start()
            subprocess.run(
                [
                    CLI,
                    "--cluster",
                    "create",
                    *(f"{HOST}:{node.port}" for node in self.nodes),
                    "--cluster-replicas",
                    str(self.replicas),
                    "--cluster-yes",
                ],
                check=True,
                capture_output=True,
                timeout=60,
            )
            self.wait_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def running(self) -> list[Node]:
        return [node for node in self.nodes if node.proc is not None]

    def wait_ok(self, timeout: float = 30) -> None:
        """Until every running node reports the cluster ok and knows every node."""
        deadline = time.monotonic() + timeout
        while True:
            states = []
            for node in self.running():
                try:
                    with node.client() as client:
                        info = client.execute_command("CLUSTER", "INFO").decode()
                        known = len(client.execute_command("CLUSTER", "NODES").splitlines())
                    states.append("cluster_state:ok" in info and known == len(self.nodes))
                except redis.RedisError:
                    states.append(False)
            if all(states) and all(self._replica_in_sync(node) for node in self.running()):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"Redis Cluster not ok after {timeout}s: {states}")
            time.sleep(0.1)

    @staticmethod
    def _replica_in_sync(node: Node) -> bool:
        """A master, or a replica whose link to its master is up."""
        try:
            with node.client() as client:
                info = client.info("replication")
        except redis.RedisError:
            return False
        return bool(info.get("role") == "master" or info.get("master_link_status") == "up")

    def owner(self, key: str) -> Node:
        """The master node that owns `key`'s slot (as a running node sees it)."""
        with self.running()[0].client() as client:
            slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
            for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    port = int(master[1])
                    return next(n for n in self.nodes if n.port == port)
        raise AssertionError(f"no node owns the slot of {key}")

    def move_slot(self, key: str, to: Node) -> None:
        """Hand `key`'s slot (holding no keys) to node `to`, as a resharding would."""
        source = self.owner(key)
        with source.client() as client:
            slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
            assert not client.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot)
        with to.client() as client:
            target_id = client.execute_command("CLUSTER", "MYID").decode()
        # The new owner first, then the old one (which then drops the slot's subscribers),
        # then everyone else, as `redis-cli --cluster reshard` does.
        for node in sorted(self.nodes, key=lambda n: (n is not to, n is not source)):
            with node.client() as client:
                client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
