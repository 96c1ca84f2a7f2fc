"""TLS for the test rig: a throwaway CA and server certificate, and cluster and Sentinel
topologies whose every link (clients, replication, sentinels, cluster bus) is TLS. Each server
keeps its plain port too, for the rig's own RESP client.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tfra_redis.testing.processes import (
    CLUSTER_BUS_OFFSET,
    HOST,
    MissingBinaryError,
    RedisServer,
    SentinelServer,
    ServerError,
    find_free_port,
)
from tfra_redis.testing.topologies import ClusterTopology, SentinelTopology

__all__ = ["TlsClusterTopology", "TlsSentinelTopology", "make_tls_files", "tls_server_args"]


def make_tls_files(directory: str | os.PathLike[str]) -> dict[str, Path]:
    """Makes a CA and a certificate for IP 127.0.0.1 signed by it, with ``openssl``.

    Returns the paths as ``{"ca_crt", "ca_key", "server_crt", "server_key"}``. The server
    certificate is good for both ends (``serverAuth,clientAuth``): servers use it as clients
    too, when a replica, a sentinel or a cluster node connects to another.
    """
    if shutil.which("openssl") is None:
        raise MissingBinaryError(
            "openssl is not installed; install it with: apt-get install openssl"
        )
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        done = subprocess.run(["openssl", *args], cwd=d, capture_output=True, text=True)
        if done.returncode != 0:
            raise ServerError(f"openssl {' '.join(args)} failed: {done.stderr.strip()}")

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            "/CN=tfra-test-ca", "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
    (d / "san.ext").write_text(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n"
    )
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=tfra-test-server",
            "-keyout", "server.key", "-out", "server.csr")  # fmt: skip
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "san.ext",
            "-out", "server.crt")  # fmt: skip
    return {
        name.replace(".", "_"): d / name
        for name in ("ca.crt", "ca.key", "server.crt", "server.key")
    }


def tls_server_args(files: dict[str, Path], tls_port: int) -> list[str]:
    """redis-server / redis-sentinel arguments for TLS on ``tls_port`` beside the plain port.

    Replication and sentinel links use TLS too (``tls-replication``); clients need not show a
    certificate (``tls-auth-clients no``), so a config with only ``redis_tls_ca_cert`` works.
    """
    return [
        "--tls-port", str(tls_port),
        "--tls-cert-file", str(files["server_crt"]),
        "--tls-key-file", str(files["server_key"]),
        "--tls-ca-cert-file", str(files["ca_crt"]),
        "--tls-auth-clients", "no",
        "--tls-replication", "yes",
    ]  # fmt: skip


class TlsSentinelTopology(SentinelTopology):
    """`SentinelTopology` over TLS: master, replica and sentinels each listen on a TLS port,
    the replica replicates over TLS, and the sentinels monitor the master's TLS port and talk
    to each other over TLS. `config_dict` names the sentinels' TLS ports and the CA.

    The sentinels report TLS ports, so the helpers that map a reported address back to a
    server (`master`, `replica`, `wait_for_failover`, `describe`) do not apply.
    """

    kind = "sentinel-tls"

    def __init__(
        self,
        tls_dir: str | os.PathLike[str],
        *,
        master_name: str = "mymaster",
        sentinels: int = 3,
        quorum: int = 2,
        startup_timeout: float = 30.0,
        engine: str = "redis",
    ) -> None:
        self.tls_files = make_tls_files(tls_dir)
        self.engine = engine
        self.master_name = master_name
        self.password = None
        self.sentinel_password = None
        self.startup_timeout = startup_timeout
        self.startup_seconds = None
        master_tls = find_free_port()
        self._servers = [
            RedisServer(extra_args=tls_server_args(self.tls_files, master_tls), engine=engine),
            RedisServer(
                replica_of=(HOST, master_tls),
                extra_args=tls_server_args(self.tls_files, find_free_port()),
                engine=engine,
            ),
        ]
        self.sentinel_tls_ports = [find_free_port() for _ in range(sentinels)]
        self._sentinels = [
            SentinelServer(
                master_name=master_name,
                master_address=(HOST, master_tls),
                quorum=quorum,
                extra_args=tls_server_args(self.tls_files, port),
                engine=engine,
            )
            for port in self.sentinel_tls_ports
        ]

    def config_dict(self) -> dict[str, Any]:
        """Mode 1 with the sentinels' TLS ports, ``redis_tls`` and the CA."""
        return {
            "redis_connection_mode": 1,
            "redis_master_name": self.master_name,
            "redis_host_ip": [HOST] * len(self.sentinel_tls_ports),
            "redis_host_port": list(self.sentinel_tls_ports),
            "redis_tls": True,
            "redis_tls_ca_cert": str(self.tls_files["ca_crt"]),
        }


class TlsClusterTopology(ClusterTopology):
    """`ClusterTopology` over TLS (``tls-cluster yes``): clients, the cluster bus and
    replication all use TLS. A node answers CLUSTER SLOTS with TLS ports on a TLS connection
    and with plain ports on a plain one, so the harness keeps using the plain ports.
    """

    kind = "cluster-tls"

    def __init__(self, tls_dir: str | os.PathLike[str], **options: Any) -> None:
        self.tls_files = make_tls_files(tls_dir)
        self.tls_ports: dict[int, int] = {}
        super().__init__(**options)

    def _new_node(self, extra_args: Sequence[str]) -> RedisServer:
        port = find_free_port(cluster_bus=True)
        tls_port = find_free_port()
        self.tls_ports[port] = tls_port
        return RedisServer(
            port=port,
            password=self.password,
            cluster=True,
            cluster_node_timeout=self.node_timeout,
            engine=self.engine,
            extra_args=[
                *extra_args,
                *tls_server_args(self.tls_files, tls_port),
                "--tls-cluster",
                "yes",
                # With tls-cluster the bus would sit at the TLS port + 10000; keep it at the
                # plain port + 10000, which the harness's CLUSTER MEET assumes and which
                # find_free_port(cluster_bus=True) checked.
                "--cluster-port",
                str(port + CLUSTER_BUS_OFFSET),
            ],
        )

    def config_dict(self) -> dict[str, Any]:
        """Mode 0 with every node's TLS port as a seed, ``redis_tls`` and the CA."""
        config = super().config_dict()
        config["redis_host_port"] = [self.tls_ports[port] for port in self.seed_ports()]
        config["redis_tls"] = True
        config["redis_tls_ca_cert"] = str(self.tls_files["ca_crt"])
        return config
