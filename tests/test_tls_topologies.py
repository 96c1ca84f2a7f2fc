"""TLS beyond one server: a Sentinel group and a Redis Cluster whose every link is TLS.

The standalone TLS test (with client certificates) is in test_reliability.py. Here the
servers come from `testing.TlsSentinelTopology` and `testing.TlsClusterTopology`: clients,
replication, the sentinels' own links and the cluster bus all use TLS, and the config names
only TLS ports, so a round trip that works went over TLS end to end.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tfra_redis import RedisStore, testing

DIM = 16


def rows_for(keys: np.ndarray) -> np.ndarray:
    """Distinct rows derived from the keys, exactly representable in float32."""
    base = (keys % 100_000).astype(np.float32)[:, None]
    return base + np.arange(DIM, dtype=np.float32)[None, :] * 0.5


def round_trip(config: dict[str, Any], name: str) -> RedisStore:
    """Inserts 20,000 rows in pipelines of many commands, reads them back exactly, accumulates
    into some and removes others."""
    store = RedisStore(config, name, DIM, manage_ttl=False)
    keys = np.arange(20_000, dtype=np.int64) * 7919
    store.insert(keys, rows_for(keys))
    got, exists = store.find(keys, default=-1.0, return_exists=True)
    assert exists.all()
    np.testing.assert_array_equal(got, rows_for(keys))
    delta = np.ones((1000, DIM), dtype=np.float32)
    store.accum(keys[:1000], delta, np.ones(1000, dtype=bool))
    np.testing.assert_array_equal(store.find(keys[:1000]), rows_for(keys[:1000]) + 1)
    store.remove(keys[1000:2000])
    _, exists = store.find(keys[:3000], return_exists=True)
    assert exists[:1000].all() and not exists[1000:2000].any() and exists[2000:].all()
    assert store.size() == 19_000
    return store


def test_a_tls_sentinel_group_serves_a_table(tmp_path, unique_name):
    with testing.TlsSentinelTopology(tmp_path / "tls") as topo:
        config = topo.config_dict()
        # Only TLS ports: a sentinel's plain port is not in the config.
        assert set(config["redis_host_port"]).isdisjoint(s.port for s in topo.sentinels())
        host, port = topo.current_master_addr()
        assert port not in {s.port for s in topo.servers()}, "the sentinels name a TLS port"
        store = round_trip(config, unique_name)
        # The rows are on the master, and the replica got them over TLS replication.
        master, replica = topo.servers()
        bucket = store.bucket_keys[0]
        assert master.execute("HLEN", bucket) == 19_000
        assert master.execute("WAIT", 1, 5000) == 1
        assert replica.execute("HLEN", bucket) == 19_000
        store.clear()


def test_a_tls_cluster_serves_a_table(tmp_path, unique_name):
    topo = testing.TlsClusterTopology(tmp_path / "tls", masters=3, replicas_per_master=1)
    with topo:
        config = {**topo.config_dict(), "storage_slice": 6}
        assert set(config["redis_host_port"]).isdisjoint(topo.seed_ports())
        store = round_trip(config, unique_name)
        # The buckets spread over every master, and each master's replica (linked over TLS)
        # has its rows too.
        per_master: dict[int, int] = {}
        for bucket in store.bucket_keys:
            slot = int(topo.nodes[0].execute("CLUSTER", "KEYSLOT", bucket))
            master = topo.node_for_slot(slot)
            per_master[master.port] = per_master.get(master.port, 0) + master.execute(
                "HLEN", bucket
            )
        assert len(per_master) == 3 and sum(per_master.values()) == 19_000, per_master
        for master in topo.masters():
            assert master.execute("WAIT", 1, 5000) == 1
        for _, _, master, replicas in topo.cluster_slots():
            for bucket in store.bucket_keys:
                slot = int(master.execute("CLUSTER", "KEYSLOT", bucket))
                if topo.node_for_slot(slot) is master:
                    with replicas[0].client() as replica:
                        replica.execute("READONLY")
                        assert replica.execute("HLEN", bucket) == master.execute("HLEN", bucket)
        store.clear()
