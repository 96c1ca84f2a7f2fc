"""Start and stop real Redis topologies on 127.0.0.1: standalone, cluster and sentinel.

Used by the test suite, the example's default setup and the benchmarks, and (through
``python -m tfra_redis.servers up ...``) by anything outside Python that needs a topology.

Only the standard library is used, so this module imports without TensorFlow, without the native
extension and without redis-py. Servers are talked to with the tiny RESP client below.

Every process runs in the foreground of its own session (never ``--daemonize``), so we always
hold its ``Popen`` handle and its PID: stopping is SIGTERM, wait, then SIGKILL, and a process-wide
``atexit`` hook stops whatever a caller forgot. Nothing is ever stopped by name.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "HOST",
    "INSTALL_HINT",
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
    "cluster",
    "find_free_port",
    "make_tls_files",
    "parse_info",
    "require_binary",
    "sentinel",
    "standalone",
    "tls_server_args",
    "write_config_file",
]

HOST = "127.0.0.1"
INSTALL_HINT = "apt-get install redis-server redis-sentinel redis-tools"
CLUSTER_SLOTS = 16384
# Redis Cluster always puts the node-to-node bus on the data port + 10000.
CLUSTER_BUS_OFFSET = 10000


# --------------------------------------------------------------------------------------------
# Errors


class ServerError(RuntimeError):
    """Base class of the errors this module raises about the servers it manages."""


class MissingBinaryError(ServerError):
    """A Redis binary (redis-server, redis-sentinel or redis-cli) is not installed."""


class ServerStartError(ServerError):
    """A server did not come up (or a topology did not settle) in time; the message has its log."""


class RedisReplyError(Exception):
    """An error reply from Redis, such as ``NOPERM ...`` or ``MOVED 3999 127.0.0.1:7001``."""

    @property
    def code(self) -> str:
        """The first word of the error, for example ``NOPERM`` or ``WRONGPASS``."""
        return str(self).split(" ", 1)[0]


def require_binary(name: str) -> str:
    """Return the absolute path of a Redis binary, or raise `MissingBinaryError` naming it.

    Debian's packages install into /usr/bin, which we also search because test runners sometimes
    start with a reduced PATH.
    """
    search_path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/bin", "/usr/sbin"])
    found = shutil.which(name, path=search_path)
    if found is None:
        raise MissingBinaryError(
            f"{name} is not installed (searched {search_path}); install it with: {INSTALL_HINT}"
        )
    return found


# --------------------------------------------------------------------------------------------
# Ports

_handed_out_ports: set[int] = set()
_port_lock = threading.Lock()


def _port_is_free(port: int) -> bool:
    # No SO_REUSEADDR on purpose: a port still in TIME_WAIT counts as taken, like it would for
    # a cluster bus that redis-server binds later.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def find_free_port(*, cluster_bus: bool = False) -> int:
    """Return a port on 127.0.0.1 that is free now and that this process has not handed out yet.

    With ``cluster_bus=True`` the port + 10000 (the cluster bus port) must also be free, which
    also rules out ports above 55535.
    """
    with _port_lock:
        for _ in range(500):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.bind((HOST, 0))
                port = probe.getsockname()[1]
            if port in _handed_out_ports:
                continue
            if cluster_bus:
                bus = port + CLUSTER_BUS_OFFSET
                if bus > 65535 or bus in _handed_out_ports or not _port_is_free(bus):
                    continue
                _handed_out_ports.add(bus)
            _handed_out_ports.add(port)
            return port
    raise ServerError("could not find a free port on 127.0.0.1")


# --------------------------------------------------------------------------------------------
# A tiny RESP2 client


def _encode_command(args: Sequence[Any]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes | bytearray | memoryview):
            data = bytes(arg)
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, int | float):
            data = repr(arg).encode()
        else:
            raise TypeError(f"cannot send {type(arg).__name__} to Redis: {arg!r}")
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class RespConnection:
    """One RESP2 connection to a Redis server or sentinel, enough for tests and tooling.

    Replies map to Python as: simple string -> ``str``, integer -> ``int``, bulk string ->
    ``str`` (or ``bytes`` with ``decode=False``), nil -> ``None``, array -> ``list``. An error
    reply is raised as `RedisReplyError` (inside an array it is returned in place, as for EXEC).
    """

    def __init__(
        self,
        host: str = HOST,
        port: int = 6379,
        *,
        username: str | None = None,
        password: str | None = None,
        timeout: float | None = 5.0,
    ) -> None:
        self.host = host
        self.port = port
        self._sock = socket.create_connection((host, port), timeout=timeout)
        try:
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._reader = self._sock.makefile("rb")
            if password is not None:
                self.execute("AUTH", *([username] if username else []), password)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> RespConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the socket; safe to call twice."""
        reader = getattr(self, "_reader", None)
        if reader is not None:
            reader.close()
            self._reader = None
        self._sock.close()

    def execute(self, *args: Any, decode: bool = True) -> Any:
        """Send one command and return its reply; raise `RedisReplyError` on an error reply."""
        self._sock.sendall(_encode_command(args))
        reply = self._read_reply(decode)
        if isinstance(reply, RedisReplyError):
            raise reply
        return reply

    def pipeline(self, commands: Sequence[Sequence[Any]], *, decode: bool = True) -> list[Any]:
        """Send many commands in one write; return all replies (errors returned, not raised)."""
        self._sock.sendall(b"".join(_encode_command(cmd) for cmd in commands))
        return [self._read_reply(decode) for _ in commands]

    def _read_line(self) -> bytes:
        line = self._reader.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError(f"connection to {self.host}:{self.port} closed by the server")
        return line[:-2]

    def _read_reply(self, decode: bool) -> Any:
        line = self._read_line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return RedisReplyError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            length = int(rest)
            if length < 0:
                return None
            data = self._reader.read(length + 2)
            if len(data) != length + 2:
                raise ConnectionError(f"connection to {self.host}:{self.port} closed mid-reply")
            data = data[:-2]
            return data.decode(errors="surrogateescape") if decode else data
        if kind == b"*":
            count = int(rest)
            if count < 0:
                return None
            return [self._read_reply(decode) for _ in range(count)]
        raise ConnectionError(f"unexpected RESP reply from {self.host}:{self.port}: {line[:80]!r}")


def parse_info(text: str) -> dict[str, str]:
    """Turn the text of an INFO (or CLUSTER INFO) reply into a ``{field: value}`` dict."""
    fields = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and ":" in line:
            key, value = line.split(":", 1)
            fields[key] = value.strip()
    return fields


def _pairs_to_dict(flat: Sequence[Any]) -> dict[str, Any]:
    # SENTINEL MASTER and friends reply with a flat [key, value, key, value, ...] array.
    return {flat[i]: flat[i + 1] for i in range(0, len(flat) - 1, 2)}


def _quote(value: str) -> str:
    """Quote a value for a redis.conf line (double quotes, backslash escapes)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _wait_until(condition, timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``condition()`` until it returns a truthy value; raise `ServerStartError` on timeout.

    Exceptions from the condition count as "not yet" (a node may still be loading), and the last
    one goes into the timeout message because it usually says why.
    """
    deadline = time.monotonic() + timeout
    last_problem: object = None
    while True:
        try:
            result = condition()
        except (OSError, RedisReplyError) as exc:
            result, last_problem = None, exc
        if result:
            return result
        if time.monotonic() > deadline:
            detail = f" (last problem: {last_problem})" if last_problem else ""
            raise ServerStartError(f"timed out after {timeout:.1f}s waiting until {what}{detail}")
        time.sleep(interval)


# --------------------------------------------------------------------------------------------
# Process lifecycle

_live_processes: set[RedisProcess] = set()
_live_lock = threading.Lock()
_libc: Any = None
if sys.platform.startswith("linux"):
    with contextlib.suppress(OSError):
        # Loaded in the parent: dlopen between fork and exec is not safe.
        _libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Runs in the child between fork and exec. If the harness is SIGKILLed (a test run killed by
    # a timeout, say), its servers get SIGTERM instead of lingering on the machine's ports.
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _stop_all_live() -> None:
    with _live_lock:
        processes = list(_live_processes)
    _stop_together(processes)
    for process in processes:
        process.stop()


atexit.register(_stop_all_live)


def _stop_together(processes: Sequence[RedisProcess], timeout: float = 5.0) -> None:
    """Stop many processes at once: signal them all first, then wait, so shutdowns overlap."""
    for process in processes:
        process._send_terminate()
    for process in processes:
        process._reap(timeout)


class RedisProcess:
    """One redis-server or redis-sentinel process in the foreground; base of the two kinds.

    The process is started from a config file written into ``dir`` (a fresh temporary directory
    unless one is given) and logs to ``dir/redis.log``. The temporary directory is removed by
    `stop`; a directory the caller gave is left alone.
    """

    binary_name = "redis-server"
    config_name = "redis.conf"

    def __init__(
        self,
        *,
        port: int | None = None,
        password: str | None = None,
        dir: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 10.0,
    ) -> None:
        self.binary = require_binary(self.binary_name)
        self._port_given = port is not None
        self._port = port if port is not None else find_free_port(cluster_bus=self._needs_bus())
        self.password = password
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self._owns_dir = dir is None
        self._dir = Path(dir) if dir is not None else None
        self._process: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._config_written = False

    def _needs_bus(self) -> bool:
        return False

    def _config_lines(self) -> list[str]:
        raise NotImplementedError

    # -- properties ---------------------------------------------------------------------------

    @property
    def host(self) -> str:
        """Always 127.0.0.1: the harness never listens anywhere else."""
        return HOST

    @property
    def port(self) -> int:
        """The TCP port the process listens on."""
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)``, the form sentinels report addresses in."""
        return (HOST, self._port)

    @property
    def pid(self) -> int | None:
        """The PID while the process runs (also while paused), else None."""
        if self._process is None or self._process.poll() is not None:
            return None
        return self._process.pid

    @property
    def dir(self) -> Path:
        """The working directory: config file, log, RDB/AOF, nodes.conf."""
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix=f"tfra-{self.binary_name}-"))
        return self._dir

    @property
    def log_path(self) -> Path:
        """Where the process writes its log (stdout and stderr)."""
        return self.dir / "redis.log"

    @property
    def running(self) -> bool:
        """True while the process exists (paused counts as running)."""
        return self.pid is not None

    @property
    def paused(self) -> bool:
        """True between `pause` and `resume`."""
        return self._paused and self.running

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {HOST}:{self._port} pid={self.pid}>"

    # -- talking to it ------------------------------------------------------------------------

    def client(
        self,
        *,
        username: str | None = None,
        password: str | None = None,
        timeout: float | None = 5.0,
    ) -> RespConnection:
        """Open a `RespConnection`; without arguments it authenticates with the server password."""
        if password is None and username is None:
            password = self.password
        return RespConnection(
            HOST, self._port, username=username, password=password, timeout=timeout
        )

    def execute(self, *args: Any, decode: bool = True, timeout: float | None = 5.0) -> Any:
        """Run one command on a fresh connection (authenticated with the server password)."""
        with self.client(timeout=timeout) as conn:
            return conn.execute(*args, decode=decode)

    def scan_keys(self, pattern: str) -> list[bytes]:
        """Every key of this server matching ``pattern`` (``SCAN MATCH`` to the end)."""
        found: list[bytes] = []
        with self.client() as conn:
            cursor = b"0"
            while True:
                cursor, batch = conn.execute(
                    "SCAN", cursor, "MATCH", pattern, "COUNT", 1000, decode=False
                )
                found += batch
                if cursor == b"0":
                    return found

    def info(self, section: str | None = None) -> dict[str, str]:
        """``INFO [section]`` parsed into a dict."""
        return parse_info(self.execute("INFO", *([section] if section else [])))

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, *, wait: bool = True) -> RedisProcess:
        """Start the process; with ``wait`` (the default) return once it answers PING.

        ``wait=False`` only spawns it, so a topology can start all its servers at once and call
        `wait_ready` on each afterwards.
        """
        if self.running:
            raise ServerError(f"{self!r} is already running")
        if not self._config_written:
            self._write_config()
        self._spawn()
        if wait:
            self.wait_ready()
        return self

    def _write_config(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / self.config_name
        path.write_text("\n".join(self._config_lines()) + "\n")
        self._config_written = True

    def _spawn(self) -> None:
        use_pdeathsig = _libc is not None and threading.current_thread() is threading.main_thread()
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                [self.binary, str(self.dir / self.config_name), *self.extra_args],
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own session: a Ctrl-C in the terminal reaches the harness, which then stops
                # the servers in order, instead of every server dying on its own.
                start_new_session=True,
                # PDEATHSIG fires when the *thread* that forked exits, so only use it from the
                # main thread; servers started from a worker thread rely on stop()/atexit.
                preexec_fn=_die_with_parent if use_pdeathsig else None,
            )
        self._paused = False
        with _live_lock:
            _live_processes.add(self)

    def wait_ready(self) -> None:
        """Block until the process answers PING; raise `ServerStartError` with its log if not.

        A process that dies because its (automatically chosen) port was taken in the meantime is
        restarted on a new port, which makes parallel test runs on one machine reliable.
        """
        deadline = time.monotonic() + self.startup_timeout
        port_retries = 5
        last_problem: object = None
        while True:
            assert self._process is not None
            returncode = self._process.poll()
            if returncode is not None:
                self._forget()
                tail = self.log_tail()
                if "Address already in use" in tail and not self._port_given and port_retries:
                    port_retries -= 1
                    self._port = find_free_port(cluster_bus=self._needs_bus())
                    self._write_config()
                    self._spawn()
                    continue
                log_path = self.log_path
                self.stop()
                raise ServerStartError(
                    f"{self.binary_name} on port {self._port} exited with code {returncode} "
                    f"during startup; last lines of {log_path}:\n{tail}"
                )
            try:
                with self.client(timeout=0.5) as conn:
                    if conn.execute("PING") == "PONG":
                        return
            except RedisReplyError as exc:
                # LOADING (big RDB) and BUSY are passing states; anything else (WRONGPASS,
                # NOAUTH) will not fix itself, so say so now rather than after the timeout.
                if exc.code not in ("LOADING", "BUSY", "MASTERDOWN"):
                    self.stop()
                    raise ServerStartError(
                        f"{self.binary_name} on port {self._port} answered PING with: {exc}"
                    ) from exc
                last_problem = exc
            except OSError as exc:
                last_problem = exc
            if time.monotonic() > deadline:
                tail, log_path = self.log_tail(), self.log_path
                self.stop()
                raise ServerStartError(
                    f"{self.binary_name} on port {self._port} did not answer PING within "
                    f"{self.startup_timeout:.1f}s (last problem: {last_problem}); "
                    f"last lines of {log_path}:\n{tail}"
                )
            time.sleep(0.01)

    def _send_terminate(self) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.send_signal(signal.SIGTERM)
        if self._paused:
            # A stopped process only acts on SIGTERM once it runs again.
            self._process.send_signal(signal.SIGCONT)
            self._paused = False

    def _reap(self, timeout: float) -> None:
        if self._process is not None:
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._forget()

    def _forget(self) -> None:
        self._paused = False
        with _live_lock:
            _live_processes.discard(self)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the process (SIGTERM, then SIGKILL after ``timeout``) and remove an own temp dir.

        Safe to call on a process that was never started, already stopped or killed.
        """
        self._shutdown(timeout)
        if self._owns_dir and self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
            self._config_written = False

    def _shutdown(self, timeout: float = 5.0) -> None:
        self._send_terminate()
        self._reap(timeout)

    def kill(self) -> None:
        """SIGKILL the process (no shutdown save, no goodbye to replicas); the dir is kept."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
        self._reap(5.0)

    def pause(self) -> None:
        """SIGSTOP: the process keeps its sockets open but answers nothing until `resume`."""
        if not self.running:
            raise ServerError(f"cannot pause {self!r}: not running")
        os.kill(self._process.pid, signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT after `pause`."""
        if self.running:
            os.kill(self._process.pid, signal.SIGCONT)
        self._paused = False

    @contextlib.contextmanager
    def pausing(self) -> Iterator[RedisProcess]:
        """``with server.pausing(): ...`` pauses the process for the block and always resumes it."""
        self.pause()
        try:
            yield self
        finally:
            self.resume()

    def restart(self, *, wait: bool = True) -> RedisProcess:
        """Stop (gracefully, or after `kill`) and start again on the same port and directory.

        Data survives only if persistence was enabled (``save``/``appendonly``) or the process
        was started from an RDB file that is still there.
        """
        self._shutdown()
        return self.start(wait=wait)

    def __enter__(self) -> RedisProcess:
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class RedisServer(RedisProcess):
    """One redis-server: standalone, a replica (``replica_of``) or a cluster node (``cluster``).

    Persistence is off unless asked for (``save="900 1"``, ``appendonly=True``) so that tests do
    not spend time writing RDB files. To start on a copy of an RDB fixture pass ``rdb_file``
    (copied into the server's directory), or ``dir`` and ``dbfilename`` to use one in place.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        password: str | None = None,
        acl_users: Sequence[str] = (),
        extra_args: Sequence[str] = (),
        cluster: bool = False,
        cluster_node_timeout: int = 2000,
        replica_of: RedisServer | tuple[str, int] | None = None,
        masterauth: str | None = None,
        dir: str | os.PathLike[str] | None = None,
        dbfilename: str = "dump.rdb",
        rdb_file: str | os.PathLike[str] | None = None,
        save: str | None = None,
        appendonly: bool = False,
        startup_timeout: float = 10.0,
    ) -> None:
        self.cluster = cluster
        super().__init__(
            port=port,
            password=password,
            dir=dir,
            extra_args=extra_args,
            startup_timeout=startup_timeout,
        )
        if save is not None and not all(part.isdigit() for part in save.split()):
            raise ValueError(f"save must look like '900 1 300 10', got {save!r}")
        self.acl_users = list(acl_users)
        self.cluster_node_timeout = cluster_node_timeout
        self.replica_of = replica_of.address if isinstance(replica_of, RedisServer) else replica_of
        self.masterauth = masterauth if masterauth is not None else password
        self.dbfilename = dbfilename
        self.rdb_file = Path(rdb_file) if rdb_file is not None else None
        self.save = save
        self.appendonly = appendonly

    def _needs_bus(self) -> bool:
        return self.cluster

    def _write_config(self) -> None:
        super()._write_config()
        if self.rdb_file is not None:
            target = self.dir / self.dbfilename
            if not target.exists():
                shutil.copyfile(self.rdb_file, target)
                # Fixtures are often read-only; the server must be able to replace its RDB.
                target.chmod(0o644)

    def _config_lines(self) -> list[str]:
        lines = [
            f"port {self._port}",
            f"bind {HOST}",
            "daemonize no",
            'logfile ""',
            f"dir {_quote(str(self.dir))}",
            f"dbfilename {_quote(self.dbfilename)}",
            f"save {self.save}" if self.save else 'save ""',
            f"appendonly {'yes' if self.appendonly else 'no'}",
            # The default 5 s delay before a diskless full sync would dominate topology startup.
            "repl-diskless-sync-delay 0",
            # Redis 7 waits up to 10 s on SIGTERM for lagging replicas; a paused replica must not
            # make every stop() slow.
            "shutdown-timeout 1",
            # Lets tests use DEBUG SLEEP / DEBUG RELOAD from 127.0.0.1 (off by default in 7.x).
            "enable-debug-command local",
        ]
        if self.password is not None:
            lines.append(f"requirepass {_quote(self.password)}")
        if self.masterauth is not None:
            lines.append(f"masterauth {_quote(self.masterauth)}")
        lines.extend(f"user {rule}" for rule in self.acl_users)
        if self.cluster:
            lines += [
                "cluster-enabled yes",
                f"cluster-node-timeout {self.cluster_node_timeout}",
                "cluster-config-file nodes.conf",
                # CLUSTER SLOTS leaves out a replica until its replication offset is non-zero,
                # and an idle master only moves it with a PING every repl-ping-replica-period
                # (10 s by default): without this, clients see no replicas for 10 s.
                "repl-ping-replica-period 1",
            ]
        if self.replica_of is not None:
            host, port = self.replica_of
            lines.append(f"replicaof {host} {port}")
        return lines

    def config_dict(self) -> dict[str, Any]:
        """The connection part of a tfra-redis JSON config for this server in standalone mode."""
        config: dict[str, Any] = {
            "redis_connection_mode": 2,
            "redis_host_ip": [HOST],
            "redis_host_port": [self._port],
        }
        if self.password is not None:
            config["redis_password"] = self.password
        return config

    def flushall(self) -> None:
        """FLUSHALL, so a test starts from an empty server."""
        self.execute("FLUSHALL")

    def role(self, timeout: float = 2.0) -> str:
        """``master`` or ``slave``, as ROLE reports it now."""
        return self.execute("ROLE", timeout=timeout)[0]

    def describe(self, role: str | None = None) -> dict[str, Any]:
        """Host, port, pid and dir as plain JSON-able data."""
        entry: dict[str, Any] = {
            "host": HOST,
            "port": self._port,
            "pid": self.pid,
            "dir": str(self.dir),
        }
        if role is not None:
            entry["role"] = role
        return entry


class SentinelServer(RedisProcess):
    """One redis-sentinel monitoring one master group.

    Sentinel rewrites its own config file as it learns the topology, so on `restart` the file is
    kept as the sentinel left it.
    """

    binary_name = "redis-sentinel"
    config_name = "sentinel.conf"

    def __init__(
        self,
        *,
        master_name: str,
        master_address: tuple[str, int],
        quorum: int = 2,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
        auth_pass: str | None = None,
        password: str | None = None,
        port: int | None = None,
        dir: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 10.0,
    ) -> None:
        super().__init__(
            port=port,
            password=password,
            dir=dir,
            extra_args=extra_args,
            startup_timeout=startup_timeout,
        )
        self.master_name = master_name
        self.master_address = master_address
        self.quorum = quorum
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.auth_pass = auth_pass

    def _config_lines(self) -> list[str]:
        host, port = self.master_address
        name = self.master_name
        lines = [
            f"port {self._port}",
            f"bind {HOST}",
            "daemonize no",
            'logfile ""',
            f"dir {_quote(str(self.dir))}",
            f"sentinel monitor {name} {host} {port} {self.quorum}",
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
        ]
        if self.auth_pass is not None:
            lines.append(f"sentinel auth-pass {name} {_quote(self.auth_pass)}")
        if self.password is not None:
            # A sentinel also uses its requirepass to authenticate to the other sentinels.
            lines.append(f"requirepass {_quote(self.password)}")
        return lines

    def master_state(self, timeout: float = 2.0) -> dict[str, Any]:
        """``SENTINEL MASTER <name>`` as a dict (flags, num-slaves, num-other-sentinels, ...)."""
        return _pairs_to_dict(self.execute("SENTINEL", "MASTER", self.master_name, timeout=timeout))

    def master_addr(self, timeout: float = 2.0) -> tuple[str, int]:
        """Where this sentinel says the master is now."""
        host, port = self.execute(
            "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name, timeout=timeout
        )
        return (host, int(port))

    def describe(self) -> dict[str, Any]:
        """Host, port, pid and dir as plain JSON-able data."""
        return {"host": HOST, "port": self._port, "pid": self.pid, "dir": str(self.dir)}


# --------------------------------------------------------------------------------------------
# Topologies


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
    """A Redis Cluster on 127.0.0.1: 3 masters with 1 replica each by default.

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
    ) -> None:
        if masters < 1 or replicas_per_master < 0:
            raise ValueError("a cluster needs at least one master and a non-negative replica count")
        self.password = password
        # ACL rules are per node (Redis does not spread them): every node gets them all.
        self.acl_users = list(acl_users)
        self.node_timeout = node_timeout
        self.startup_timeout = startup_timeout
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
    """A master, a replica and 3 sentinels watching the master as ``mymaster`` (quorum 2).

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
    ) -> None:
        self.master_name = master_name
        self.password = password
        self.sentinel_password = sentinel_password
        self.startup_timeout = startup_timeout
        # ACL users live on master and replica (a failover must not lock them out); the
        # sentinels keep their own ``sentinel_password``.
        self._servers = [RedisServer(password=password, acl_users=acl_users, extra_args=extra_args)]
        self._servers.append(
            RedisServer(
                password=password,
                acl_users=acl_users,
                replica_of=self._servers[0],
                extra_args=extra_args,
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

        return _wait_until(
            new_master, timeout, f"the sentinels fail over from {old_addr[0]}:{old_addr[1]}"
        )

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


# --------------------------------------------------------------------------------------------
# TLS: certificates and topologies whose every link (clients, replication, sentinels, cluster
# bus) is TLS. Each server keeps its plain port too, for the harness's own RESP client.


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
    ) -> None:
        self.tls_files = make_tls_files(tls_dir)
        self.master_name = master_name
        self.password = None
        self.sentinel_password = None
        self.startup_timeout = startup_timeout
        self.startup_seconds = None
        master_tls = find_free_port()
        self._servers = [
            RedisServer(extra_args=tls_server_args(self.tls_files, master_tls)),
            RedisServer(
                replica_of=(HOST, master_tls),
                extra_args=tls_server_args(self.tls_files, find_free_port()),
            ),
        ]
        self.sentinel_tls_ports = [find_free_port() for _ in range(sentinels)]
        self._sentinels = [
            SentinelServer(
                master_name=master_name,
                master_address=(HOST, master_tls),
                quorum=quorum,
                extra_args=tls_server_args(self.tls_files, port),
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


@contextlib.contextmanager
def standalone(**server_options: Any) -> Iterator[RedisServer]:
    """``with standalone(password=..., acl_users=[...]) as server:`` -- a started `RedisServer`."""
    with StandaloneTopology(**server_options) as topology:
        yield topology.server


@contextlib.contextmanager
def cluster(**options: Any) -> Iterator[ClusterTopology]:
    """``with cluster() as topo:`` -- a settled 3-master, 3-replica `ClusterTopology`."""
    with ClusterTopology(**options) as topology:
        yield topology


@contextlib.contextmanager
def sentinel(**options: Any) -> Iterator[SentinelTopology]:
    """``with sentinel() as topo:`` -- a monitored `SentinelTopology`."""
    with SentinelTopology(**options) as topology:
        yield topology


Topology = StandaloneTopology | ClusterTopology | SentinelTopology | RedisServer


def write_config_file(path: str | os.PathLike[str], topology: Topology, **overrides: Any) -> Path:
    """Write a tfra-redis JSON config: the topology's `config_dict` updated with ``overrides``."""
    config = {**topology.config_dict(), **overrides}
    target = Path(path)
    target.write_text(json.dumps(config, indent=2) + "\n")
    return target


# --------------------------------------------------------------------------------------------
# Command line: python -m tfra_redis.servers up {standalone|cluster|sentinel} --json FILE

_TOPOLOGIES = {
    "standalone": StandaloneTopology,
    "cluster": ClusterTopology,
    "sentinel": SentinelTopology,
}


def _write_json_atomically(path: str, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=2) + "\n"
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    # A reader polling for the file must never see half of it.
    temporary = f"{path}.tmp-{os.getpid()}"
    Path(temporary).write_text(text)
    os.replace(temporary, path)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m tfra_redis.servers``."""
    parser = argparse.ArgumentParser(
        prog="python -m tfra_redis.servers",
        description="Start a Redis topology on 127.0.0.1 and keep it up until SIGTERM/SIGINT.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start a topology and stay in the foreground")
    up.add_argument("kind", choices=sorted(_TOPOLOGIES))
    up.add_argument(
        "--json",
        required=True,
        metavar="FILE",
        help="where to write the description ('-' = stdout)",
    )
    up.add_argument("--password", help="requirepass of the data servers")
    up.add_argument("--sentinel-password", help="requirepass of the sentinels (sentinel only)")
    up.add_argument(
        "--node-timeout", type=int, default=2000, help="cluster-node-timeout in ms (cluster only)"
    )
    args = parser.parse_args(argv)

    options: dict[str, Any] = {}
    if args.password is not None:
        options["password"] = args.password
    if args.kind == "cluster":
        options["node_timeout"] = args.node_timeout
    if args.kind == "sentinel" and args.sentinel_password is not None:
        options["sentinel_password"] = args.sentinel_password

    stop_requested = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    topology = _TOPOLOGIES[args.kind](**options)
    with topology:
        description = topology.describe()
        description["startup_seconds"] = round(topology.startup_seconds, 3)
        description["harness_pid"] = os.getpid()
        _write_json_atomically(args.json, description)
        print(
            f"{args.kind} topology up in {topology.startup_seconds:.2f}s; "
            f"stop with kill -TERM {os.getpid()}",
            file=sys.stderr,
            flush=True,
        )
        while not stop_requested.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
