"""Topologies built from `RedisServer` and `SentinelServer` processes: a standalone server, a
Redis Cluster, a Sentinel group; the `standalone`, `cluster` and `sentinel` context managers;
`write_config_file` for a tfra-redis JSON config that points at one.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeAlias

from tfra_redis._resp import parse_info
from tfra_redis.testing.processes import (
    CLUSTER_SLOTS,
    HOST,
    RedisServer,
    SentinelServer,
    ServerError,
    _stop_together,
    _wait_until,
)

__all__ = [
    "ClusterTopology",
    "SentinelTopology",
    "StandaloneTopology",
    "Topology",
    "cluster",
    "sentinel",
    "standalone",
    "write_config_file",
]


class StandaloneTopology:
    """One standalone redis-server; ``with StandaloneTopology() as topo`` or `standalone`.

    Keyword arguments go to `RedisServer`, for example ``password``, ``acl_users``, ``rdb_file``.
    """

    kind = "standalone"

    def __init__(self, **server_options: Any) -> None:
        self.server = RedisServer(**server_options)

    def start(self) -> StandaloneTopology:
        """Start the server and wait until it answers PING."""
        started = time.monotonic()
        self.server.start()
        self.startup_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        """Stop the server."""
        self.server.stop()

    def servers(self) -> list[RedisServer]:
        """Every redis-server of the topology (here just one)."""
        return [self.server]

    def config_dict(self) -> dict[str, Any]:
        """``{"redis_connection_mode": 2, "redis_host_ip": [...], "redis_host_port": [...]}``."""
        return self.server.config_dict()

    def flushall(self) -> None:
        """FLUSHALL on the server."""
        self.server.flushall()

    def describe(self) -> dict[str, Any]:
        """Kind, config fragment and processes as JSON-able data (what the CLI writes)."""
        return {
            "kind": self.kind,
            "config": self.config_dict(),
            "servers": [self.server.describe("master")],
            "sentinels": [],
        }

    def __enter__(self) -> StandaloneTopology:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _split_slots(masters: int) -> list[tuple[int, int]]:
    """Slot ranges as ``redis-cli --cluster create`` assigns them: 0-5460, 5461-10922, ..."""
    per_master = CLUSTER_SLOTS / masters
    ranges, first, cursor = [], 0, 0.0
    for i in range(masters):
        # redis-cli uses C lround(), which rounds halves away from zero; Python's round() would
        # round halves to even and could differ by one slot.
        last = int(cursor + per_master - 1 + 0.5)
        if last > CLUSTER_SLOTS - 1 or i == masters - 1:
            last = CLUSTER_SLOTS - 1
        last = max(last, first)
        ranges.append((first, last))
        first = last + 1
        cursor += per_master
    return ranges


class ClusterTopology:
    """A Redis (or Valkey, ``engine="valkey"``) Cluster on 127.0.0.1: 3 masters with 1 replica
    each by default.

    Built with CLUSTER ADDSLOTSRANGE / SET-CONFIG-EPOCH / MEET / REPLICATE directly, which gives
    the same slot ranges as ``redis-cli --cluster create`` (0-5460, 5461-10922, 10923-16383)
    without its one-second polling sleeps. `start` returns once every node says
    ``cluster_state:ok``, every replica's link is up and all nodes agree on CLUSTER SLOTS.
    """

    kind = "cluster"

    def __init__(
        self,
        *,
        masters: int = 3,
        replicas_per_master: int = 1,
        password: str | None = None,
        node_timeout: int = 2000,
        extra_args: Sequence[str] = (),
        acl_users: Sequence[str] = (),
        startup_timeout: float = 30.0,
        engine: str = "redis",
    ) -> None:
        if masters < 1 or replicas_per_master < 0:
            raise ValueError("a cluster needs at least one master and a non-negative replica count")
        self.password = password
        # ACL rules are per node (Redis does not spread them): every node gets them all.
        self.acl_users = list(acl_users)
        self.node_timeout = node_timeout
        self.startup_timeout = startup_timeout
        self.engine = engine
        self.slot_ranges = _split_slots(masters)
        self._initial_masters = [self._new_node(extra_args) for _ in range(masters)]
        # Replica j of master i is at _initial_replicas[i * replicas_per_master + j].
        self.replicas_per_master = replicas_per_master
        self._initial_replicas = [
            self._new_node(extra_args) for _ in range(masters * replicas_per_master)
        ]
        self.startup_seconds: float | None = None

    def _new_node(self, extra_args: Sequence[str]) -> RedisServer:
        return RedisServer(
            password=self.password,
            acl_users=self.acl_users,
            cluster=True,
            cluster_node_timeout=self.node_timeout,
            extra_args=extra_args,
            engine=self.engine,
        )

    @property
    def nodes(self) -> list[RedisServer]:
        """All nodes as created: masters first, then replicas (roles may change after failover)."""
        return self._initial_masters + self._initial_replicas

    def start(self) -> ClusterTopology:
        """Start all nodes, form the cluster and wait until it is fully settled."""
        started = time.monotonic()
        try:
            for node in self.nodes:
                node.start(wait=False)
            for node in self.nodes:
                node.wait_ready()
            self._form()
            self.wait_until_settled(self.startup_timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def _form(self) -> None:
        for epoch, node in enumerate(self.nodes, start=1):
            # Distinct epochs up front, as redis-cli does, so nodes need not resolve collisions.
            node.execute("CLUSTER", "SET-CONFIG-EPOCH", epoch)
        for master, (first, last) in zip(self._initial_masters, self.slot_ranges, strict=True):
            master.execute("CLUSTER", "ADDSLOTSRANGE", first, last)
        # A full mesh of MEETs: every node knows every other after one handshake, instead of
        # waiting for gossip to spread the news from a single meeting point.
        for index, node in enumerate(self.nodes):
            with node.client() as conn:
                conn.pipeline(
                    [("CLUSTER", "MEET", HOST, peer.port) for peer in self.nodes[index + 1 :]]
                )
        master_ids = [master.execute("CLUSTER", "MYID") for master in self._initial_masters]
        # CLUSTER REPLICATE needs the replica to know its master, so wait for gossip first.
        count = len(self.nodes)
        _wait_until(
            lambda: all(_known_nodes(node) == count for node in self._initial_replicas),
            self.startup_timeout,
            f"every replica knows all {count} cluster nodes",
        )
        for index, replica in enumerate(self._initial_replicas):
            replica.execute("CLUSTER", "REPLICATE", master_ids[index // self.replicas_per_master])

    def wait_until_settled(self, timeout: float = 30.0) -> None:
        """Wait until every running node says cluster_state:ok, replicas are in sync, views agree.

        Paused and stopped nodes are left out. Useful after a test restarts or kills a node.
        """

        def settled() -> bool:
            views, live_replicas = [], 0
            for node in self.nodes:
                if not node.running or node.paused:
                    continue
                if (
                    parse_info(node.execute("CLUSTER", "INFO", timeout=2.0))["cluster_state"]
                    != "ok"
                ):
                    return False
                replication = node.info("replication")
                if replication["role"] == "slave":
                    if replication.get("master_link_status") != "up":
                        return False
                    live_replicas += 1
                views.append(_slots_view(node))
            if not views or any(view != views[0] for view in views):
                return False
            # CLUSTER SLOTS lists a replica until it is flagged failed, so a count that matches
            # the running replicas means the failure detector has caught up too.
            return sum(len(entry[3:]) for entry in views[0]) == live_replicas

        _wait_until(settled, timeout, "the cluster is ok and all nodes agree on the slot map")

    def stop(self) -> None:
        """Stop all nodes (in parallel) and remove their directories."""
        _stop_together(self.nodes)
        for node in self.nodes:
            node.stop()

    def _any_live_node(self) -> RedisServer:
        for node in self.nodes:
            if node.running and not node.paused:
                return node
        raise ServerError("no cluster node is running")

    def _node_at(self, port: int) -> RedisServer:
        for node in self.nodes:
            if node.port == port:
                return node
        raise ServerError(f"no node of this cluster listens on port {port}")

    def cluster_slots(self) -> list[tuple[int, int, RedisServer, list[RedisServer]]]:
        """Live slot map: ``(first, last, master, replicas)`` per range, sorted by first slot."""
        entries = []
        for first, last, master, *replicas in _slots_view(self._any_live_node()):
            entries.append(
                (first, last, self._node_at(master[1]), [self._node_at(r[1]) for r in replicas])
            )
        return entries

    def masters(self) -> list[RedisServer]:
        """The masters that serve slots now, in slot order."""
        return [master for _, _, master, _ in self.cluster_slots()]

    def replicas(self) -> list[RedisServer]:
        """The replicas the cluster lists now, in the slot order of their masters."""
        return [replica for *_, replicas in self.cluster_slots() for replica in replicas]

    def node_for_slot(self, slot: int) -> RedisServer:
        """The master that serves ``slot`` now."""
        for first, last, master, _ in self.cluster_slots():
            if first <= slot <= last:
                return master
        raise ServerError(f"no master serves slot {slot}")

    def migrate_slot(self, slot: int, target: RedisServer, *, step_delay: float = 0.0) -> int:
        """Move ``slot`` and its keys to the master ``target``, as ``redis-cli --cluster
        reshard`` does: SETSLOT IMPORTING/MIGRATING, MIGRATE 100 keys at a time, SETSLOT NODE.

        For tests of clients meeting ``MOVED`` (after) and ``ASK`` (during) redirects;
        ``step_delay`` seconds between batches keep the slot migrating longer. Returns how
        many keys moved. Moving a slot to the master that has it already moves nothing.
        """
        source = self.node_for_slot(slot)
        if source is target:
            return 0
        source_id = source.execute("CLUSTER", "MYID")
        target_id = target.execute("CLUSTER", "MYID")
        target.execute("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        source.execute("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        moved = 0
        while keys := source.execute("CLUSTER", "GETKEYSINSLOT", slot, 100, decode=False):
            time.sleep(step_delay)
            source.execute(
                "MIGRATE", target.host, target.port, "", 0, 10000, "REPLACE", "KEYS", *keys,
                timeout=15,
            )  # fmt: skip
            moved += len(keys)
        for node in self.masters():
            node.execute("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        return moved

    def seed_hosts(self) -> list[str]:
        """Hosts of every node, masters first (all of them, so seeds survive a killed master)."""
        return [node.host for node in self.nodes]

    def seed_ports(self) -> list[int]:
        """Ports of every node, in the order of `seed_hosts`."""
        return [node.port for node in self.nodes]

    def config_dict(self) -> dict[str, Any]:
        """``{"redis_connection_mode": 0, "redis_host_ip": [...], "redis_host_port": [...]}``."""
        config: dict[str, Any] = {
            "redis_connection_mode": 0,
            "redis_host_ip": self.seed_hosts(),
            "redis_host_port": self.seed_ports(),
        }
        if self.password is not None:
            config["redis_password"] = self.password
        return config

    def flushall(self) -> None:
        """FLUSHALL on every master (replicas follow; they refuse writes themselves)."""
        for master in self.masters():
            master.execute("FLUSHALL")

    def describe(self) -> dict[str, Any]:
        """Kind, config fragment and processes as JSON-able data (what the CLI writes)."""
        masters = {node.port for node in self.masters()}
        return {
            "kind": self.kind,
            "config": self.config_dict(),
            "servers": [
                node.describe("master" if node.port in masters else "replica")
                for node in self.nodes
            ],
            "sentinels": [],
            "slots": [
                [first, last, master.port] for first, last, master, _ in self.cluster_slots()
            ],
        }

    def __enter__(self) -> ClusterTopology:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _known_nodes(node: RedisServer) -> int:
    lines = node.execute("CLUSTER", "NODES", timeout=2.0).splitlines()
    # A node still in handshake has a random name and would be counted twice.
    return sum(1 for line in lines if "handshake" not in line.split(" ")[2])


def _slots_view(node: RedisServer) -> list[list[Any]]:
    """CLUSTER SLOTS as ``[first, last, [host, port], [host, port]...]`` (ids dropped), sorted."""
    view = []
    for entry in node.execute("CLUSTER", "SLOTS", timeout=2.0):
        first, last, *holders = entry
        replicas = sorted([h[0], h[1]] for h in holders[1:])
        view.append([first, last, [holders[0][0], holders[0][1]], *replicas])
    return sorted(view)


class SentinelTopology:
    """A master, a replica and 3 sentinels watching the master as ``mymaster`` (quorum 2);
    ``engine="valkey"`` runs Valkey's.

    ``password`` protects master and replica (requirepass + masterauth; sentinels get
    ``auth-pass``); ``sentinel_password`` protects the sentinels themselves (requirepass).
    `start` returns once every sentinel reports the master, knows the replica and knows the
    other sentinels, so a failover can start right away.
    """

    kind = "sentinel"

    def __init__(
        self,
        *,
        master_name: str = "mymaster",
        password: str | None = None,
        sentinel_password: str | None = None,
        sentinels: int = 3,
        quorum: int = 2,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
        extra_args: Sequence[str] = (),
        acl_users: Sequence[str] = (),
        startup_timeout: float = 30.0,
        engine: str = "redis",
    ) -> None:
        self.master_name = master_name
        self.engine = engine
        self.password = password
        self.sentinel_password = sentinel_password
        self.startup_timeout = startup_timeout
        # ACL users live on master and replica (a failover must not lock them out); the
        # sentinels keep their own ``sentinel_password``.
        self._servers = [
            RedisServer(
                password=password, acl_users=acl_users, extra_args=extra_args, engine=engine
            )
        ]
        self._servers.append(
            RedisServer(
                password=password,
                acl_users=acl_users,
                replica_of=self._servers[0],
                extra_args=extra_args,
                engine=engine,
            )
        )
        self._sentinels = [
            SentinelServer(
                master_name=master_name,
                master_address=self._servers[0].address,
                quorum=quorum,
                down_after_ms=down_after_ms,
                failover_timeout_ms=failover_timeout_ms,
                auth_pass=password,
                password=sentinel_password,
                engine=engine,
            )
            for _ in range(sentinels)
        ]
        self.startup_seconds: float | None = None

    def start(self) -> SentinelTopology:
        """Start master, replica and sentinels; wait until the sentinels know everything."""
        started = time.monotonic()
        try:
            for server in self._servers:
                server.start(wait=False)
            for server in self._servers:
                server.wait_ready()
            # Sentinels learn replicas from the master's INFO, which they first ask for when they
            # connect; a replica that is linked by then is known at once instead of 10 s later.
            replica = self._servers[1]
            _wait_until(
                lambda: replica.info("replication").get("master_link_status") == "up",
                self.startup_timeout,
                "the replica is linked to the master",
            )
            for sentinel_server in self._sentinels:
                sentinel_server.start(wait=False)
            for sentinel_server in self._sentinels:
                sentinel_server.wait_ready()
            self.wait_until_monitored(self.startup_timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def wait_until_monitored(self, timeout: float = 30.0) -> None:
        """Wait until every running sentinel sees the master up with its replica and peers."""
        others = len(self._sentinels) - 1

        def monitored() -> bool:
            for sentinel_server in self._sentinels:
                if not sentinel_server.running or sentinel_server.paused:
                    continue
                state = sentinel_server.master_state()
                if state["flags"] != "master" or int(state["num-slaves"]) < 1:
                    return False
                if int(state["num-other-sentinels"]) < others:
                    return False
            return True

        _wait_until(
            monitored, timeout, "every sentinel knows the master, its replica and its peers"
        )

    def stop(self) -> None:
        """Stop sentinels and servers (sentinels first, so they do not start a failover)."""
        _stop_together(self._sentinels)
        _stop_together(self._servers)
        for process in [*self._sentinels, *self._servers]:
            process.stop()

    def servers(self) -> list[RedisServer]:
        """Both redis-servers, in creation order (the first was the initial master)."""
        return list(self._servers)

    def sentinels(self) -> list[SentinelServer]:
        """The sentinel processes."""
        return list(self._sentinels)

    def _ask_sentinel(self) -> SentinelServer:
        for sentinel_server in self._sentinels:
            if sentinel_server.running and not sentinel_server.paused:
                return sentinel_server
        raise ServerError("no sentinel is running")

    def current_master_addr(self) -> tuple[str, int]:
        """``(host, port)`` of the master, as the first running sentinel reports it now."""
        return self._ask_sentinel().master_addr()

    def _server_at(self, address: tuple[str, int]) -> RedisServer:
        for server in self._servers:
            if server.address == tuple(address):
                return server
        raise ServerError(f"no server of this topology is at {address[0]}:{address[1]}")

    def master(self) -> RedisServer:
        """The server the sentinels call master now (the initial one until a failover)."""
        return self._server_at(self.current_master_addr())

    def replica(self) -> RedisServer:
        """The other server: the replica (or, after a failover, the old master)."""
        master = self.master()
        return next(server for server in self._servers if server is not master)

    def wait_for_failover(
        self, old_addr: tuple[str, int], timeout: float = 15.0
    ) -> tuple[str, int]:
        """Wait until the sentinels name a master other than ``old_addr`` and it acts as master.

        Returns the new master's ``(host, port)``.
        """

        def new_master() -> tuple[str, int] | None:
            address = self.current_master_addr()
            if address == tuple(old_addr):
                return None
            if self._server_at(address).role(timeout=1.0) != "master":
                return None
            return address

        address: tuple[str, int] = _wait_until(
            new_master, timeout, f"the sentinels fail over from {old_addr[0]}:{old_addr[1]}"
        )
        return address

    def config_dict(self) -> dict[str, Any]:
        """``{"redis_connection_mode": 1, "redis_master_name": ..., sentinel ips and ports}``."""
        config: dict[str, Any] = {
            "redis_connection_mode": 1,
            "redis_master_name": self.master_name,
            "redis_host_ip": [s.host for s in self._sentinels],
            "redis_host_port": [s.port for s in self._sentinels],
        }
        if self.password is not None:
            config["redis_password"] = self.password
        if self.sentinel_password is not None:
            config["redis_sentinel_password"] = self.sentinel_password
        return config

    def flushall(self) -> None:
        """FLUSHALL on the current master."""
        self.master().flushall()

    def describe(self) -> dict[str, Any]:
        """Kind, config fragment and processes as JSON-able data (what the CLI writes)."""
        master = self.master()
        return {
            "kind": self.kind,
            "config": self.config_dict(),
            "servers": [s.describe("master" if s is master else "replica") for s in self._servers],
            "sentinels": [s.describe() for s in self._sentinels],
        }

    def __enter__(self) -> SentinelTopology:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextlib.contextmanager
def standalone(**server_options: Any) -> Iterator[RedisServer]:
    """``with standalone(password=..., engine="valkey") as server:`` -- a started `RedisServer`.

    Keyword arguments go to `RedisServer`. The server stops (by PID) when the block ends.
    """
    with StandaloneTopology(**server_options) as topology:
        yield topology.server


@contextlib.contextmanager
def cluster(**options: Any) -> Iterator[ClusterTopology]:
    """``with cluster() as topo:`` -- a settled 3-master, 3-replica `ClusterTopology`.

    Keyword arguments go to `ClusterTopology` (``masters``, ``replicas_per_master``,
    ``password``, ``acl_users``, ``engine``...). Every node stops when the block ends.
    """
    with ClusterTopology(**options) as topology:
        yield topology


@contextlib.contextmanager
def sentinel(**options: Any) -> Iterator[SentinelTopology]:
    """``with sentinel() as topo:`` -- a monitored `SentinelTopology`.

    Keyword arguments go to `SentinelTopology` (``password``, ``sentinel_password``,
    ``sentinels``, ``engine``...). Sentinels, master and replica stop when the block ends.
    """
    with SentinelTopology(**options) as topology:
        yield topology


Topology: TypeAlias = StandaloneTopology | ClusterTopology | SentinelTopology | RedisServer
"""Anything with a ``config_dict()``: what `write_config_file` accepts."""


def write_config_file(path: str | os.PathLike[str], topology: Topology, **overrides: Any) -> Path:
    """Write a tfra-redis JSON config: the topology's `config_dict` updated with ``overrides``."""
    config = {**topology.config_dict(), **overrides}
    target = Path(path)
    target.write_text(json.dumps(config, indent=2) + "\n")
    return target
