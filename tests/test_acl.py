"""A least-privileged ACL user runs a whole table round trip in every connection mode.

The user may run ``+@read +@write +@hash +@scripting +@connection`` and, in cluster mode,
``+cluster|slots``: nothing ``@admin`` or ``@dangerous``. Opening a Sentinel table used to need
``ROLE`` (``@admin @dangerous``), and the mode check needed ``INFO`` (``@dangerous``).
Each topology here is this module's own: the session ones have no such user.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import tfra_redis
from tfra_redis import RedisStore, testing

PASSWORD = "lp-secret"
RIGHTS = "~* resetchannels -@all +@read +@write +@hash +@scripting +@connection"
# Standalone and Sentinel data nodes.
USER = f"lp on >{PASSWORD} {RIGHTS}"
# Cluster discovery needs CLUSTER SLOTS, which is only in @slow.
CLUSTER_USER = f"lp on >{PASSWORD} {RIGHTS} +cluster|slots"
NO_DISCOVERY_USER = f"nodiscovery on >{PASSWORD} {RIGHTS}"


@pytest.fixture(scope="module")
def lp_standalone() -> Iterator[testing.RedisServer]:
    # The default user has a password, so nothing can pass as it.
    with testing.standalone(password="adm1n", acl_users=[USER]) as server:
        yield server


@pytest.fixture(scope="module")
def lp_sentinel() -> Iterator[testing.SentinelTopology]:
    with testing.sentinel(acl_users=[USER]) as topology:
        yield topology


@pytest.fixture(scope="module")
def lp_cluster() -> Iterator[testing.ClusterTopology]:
    with testing.cluster(acl_users=[CLUSTER_USER, NO_DISCOVERY_USER]) as topology:
        yield topology


def as_user(config: dict[str, Any], user: str = "lp") -> dict[str, Any]:
    return {**config, "redis_user": user, "redis_password": PASSWORD}


def round_trip(config: dict[str, Any], name: str) -> None:
    """Open (with TTL handling: PERSIST, EXPIRE on close), insert, find, accum, size, export,
    clear -- with no warning about a refused command."""
    store = RedisStore(config, name, 3)
    keys = np.arange(500, dtype=np.int64)
    values = np.repeat(keys[:, None].astype(np.float32), 3, axis=1)
    store.insert(keys, values)
    np.testing.assert_array_equal(store.find(keys), values)
    store.accum(keys, np.ones_like(values), np.ones(len(keys), dtype=bool))
    np.testing.assert_array_equal(store.find(keys), values + 1)
    assert store.size() == len(keys)
    exported, rows = store.export()
    assert sorted(exported.tolist()) == keys.tolist()
    assert rows.shape == (len(keys), 3)
    store.clear()
    assert store.size() == 0
    store.close()


@pytest.mark.filterwarnings("error")
def test_standalone(lp_standalone, caplog):
    round_trip(as_user(lp_standalone.config_dict()), "lp_standalone")
    # TFRA's default mode (Sentinel) pointed at a plain server falls back to it, with a
    # warning (logger tfra_redis); telling the two apart used to need INFO.
    round_trip(as_user({**lp_standalone.config_dict(), "redis_connection_mode": 1}), "lp_default")
    assert "plain Redis server" in caplog.text
    # The mode check works without INFO: a cluster config on a plain server is refused.
    with pytest.raises(tfra_redis.RedisTableError, match="not a Redis Cluster node"):
        RedisStore(as_user({**lp_standalone.config_dict(), "redis_connection_mode": 0}), "x", 1)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("replica_reads", [False, True])
def test_sentinel(lp_sentinel, replica_reads):
    config = {**lp_sentinel.config_dict(), "redis_read_access_slave": replica_reads}
    if replica_reads:
        config["redis_durable_write_replicas"] = 1
    round_trip(as_user(config), f"lp_sentinel_{replica_reads}")


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("replica_reads", [False, True])
def test_cluster(lp_cluster, replica_reads):
    config = {**lp_cluster.config_dict(), "redis_read_access_slave": replica_reads}
    if replica_reads:
        config["redis_durable_write_replicas"] = 1
    round_trip(as_user(config), f"lp_cluster_{replica_reads}")


def test_cluster_without_discovery_right_names_it(lp_cluster):
    with pytest.raises(tfra_redis.RedisAuthError, match=r"\+cluster\|slots"):
        RedisStore(as_user(lp_cluster.config_dict(), "nodiscovery"), "lp_nodiscovery", 1)
