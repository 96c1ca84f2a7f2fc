//! Real Redis topologies on 127.0.0.1 for the integration tests: standalone, cluster, sentinel.
//!
//! Only std (plus `serde_json` for the JSON configs), and no code shared with the Python harness
//! (`python/tfra_redis/testing/`), so these tests depend on nothing but the Redis binaries.
//!
//! Every process runs in the foreground under our own `Child` handle (never `--daemonize`), so
//! it is stopped by its PID: SIGTERM, a short wait, then SIGKILL. `Drop` does that, which covers
//! failing tests too (the panic unwinds through the topology). Do not keep a topology in a
//! `static`: statics are never dropped, and their servers would outlive the test binary.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::env;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The only address the harness listens on.
pub const HOST: &str = "127.0.0.1";
/// What to run when a Redis binary is missing.
pub const INSTALL_HINT: &str = "apt-get install redis-server redis-sentinel redis-tools";
/// How long one server may take to answer its first PING.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a whole topology may take to settle.
const TOPOLOGY_TIMEOUT: Duration = Duration::from_secs(30);
/// Redis Cluster always puts the node-to-node bus on the data port + 10000.
const CLUSTER_BUS_OFFSET: u16 = 10000;

/// Signals by PID. `Child::kill` only knows SIGKILL, and std has no other way to send a signal;
/// the numbers are Linux's (the same on x86_64 and aarch64).
mod signal {
    unsafe extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    pub const SIGKILL: i32 = 9;
    pub const SIGTERM: i32 = 15;
    pub const SIGCONT: i32 = 18;
    pub const SIGSTOP: i32 = 19;

    /// Send `sig` to `pid`; a process that is already gone is not an error.
    pub fn send(pid: u32, sig: i32) {
        // SAFETY: kill(2) takes plain integers and touches no memory of ours.
        unsafe {
            kill(pid as i32, sig);
        }
    }
}

/// The absolute path of a Redis binary; panics with the install command if it is missing.
pub fn binary(name: &str) -> PathBuf {
    // Debian installs into /usr/bin, searched too because test runners may reduce PATH.
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("{name} is not installed; install it with: {INSTALL_HINT}"))
}

static HANDED_OUT_PORTS: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

fn port_is_free(port: u16) -> bool {
    TcpListener::bind((HOST, port)).is_ok()
}

/// A port on 127.0.0.1 that is free now and that this test binary has not handed out before
/// (tests run on parallel threads). With `cluster_bus`, port + 10000 must be free too.
pub fn find_free_port(cluster_bus: bool) -> u16 {
    let mut guard = HANDED_OUT_PORTS.lock().unwrap_or_else(|e| e.into_inner());
    let handed_out = guard.get_or_insert_with(HashSet::new);
    for _ in 0..500 {
        let port = TcpListener::bind((HOST, 0))
            .and_then(|listener| listener.local_addr())
            .expect("cannot bind any port on 127.0.0.1")
            .port();
        if handed_out.contains(&port) {
            continue;
        }
        if cluster_bus {
            let Some(bus) = port.checked_add(CLUSTER_BUS_OFFSET) else {
                continue;
            };
            if handed_out.contains(&bus) || !port_is_free(bus) {
                continue;
            }
            handed_out.insert(bus);
        }
        handed_out.insert(port);
        return port;
    }
    panic!("no free port on 127.0.0.1");
}

static DIR_COUNTER: AtomicU64 = AtomicU64::new(0);

fn fresh_dir(kind: &str) -> PathBuf {
    let dir = env::temp_dir().join(format!(
        "tfra-{kind}-{}-{}",
        std::process::id(),
        DIR_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("cannot create a temp dir for a server");
    dir
}

/// Run `redis-cli -h 127.0.0.1 -p <port> <args>` and return stdout and stderr, trimmed.
///
/// Output is redis-cli's raw format (stdout is not a terminal): no quotes, no `(integer)`, one
/// array element per line, error replies as plain text such as `NOPERM ...`.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    redis_cli_as(port, None, None, args)
}

/// `redis_cli` with `--user` and a password (passed in `REDISCLI_AUTH`, which keeps redis-cli
/// from warning about `-a` on stderr).
pub fn redis_cli_as(
    port: u16,
    user: Option<&str>,
    password: Option<&str>,
    args: &[&str],
) -> String {
    let mut command = Command::new(binary("redis-cli"));
    command.args(["-h", HOST, "-p", &port.to_string()]);
    if let Some(user) = user {
        command.args(["--user", user]);
    }
    match password {
        Some(password) => command.env("REDISCLI_AUTH", password),
        None => command.env_remove("REDISCLI_AUTH"),
    };
    let output = command
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("cannot run redis-cli");
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    text.trim().to_string()
}

/// `INFO`-style text (`field:value` lines) as a map.
pub fn parse_info(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.trim().to_string(), value.trim().to_string()))
        .collect()
}

/// Poll `condition` every 50 ms until it holds; panic with `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting until {what}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Options of one redis-server. `Default` is a standalone server without password or persistence.
#[derive(Clone, Debug, Default)]
pub struct ServerOptions {
    /// `requirepass` (and `masterauth`, so replicas of a protected master can sync).
    pub password: Option<String>,
    /// ACL rule lines such as `"alice on >secret ~* +@all"`.
    pub acl_users: Vec<String>,
    /// More `--option value` arguments, applied after the config file.
    pub extra_args: Vec<String>,
    /// Start as a cluster node (`cluster-enabled yes`).
    pub cluster: bool,
    /// `cluster-node-timeout` in ms; 2000 when `None`.
    pub cluster_node_timeout_ms: Option<u64>,
    /// Start as a replica of the server on this port.
    pub replica_of: Option<u16>,
    /// Work directory to use (kept on drop); a fresh temp dir (removed on drop) when `None`.
    pub dir: Option<PathBuf>,
    /// RDB file name inside the dir (`dump.rdb` when `None`).
    pub dbfilename: Option<String>,
    /// `save` points such as `"3600 1"`; persistence is off when `None`.
    pub save: Option<String>,
}

/// The ACL rule of the least-privileged user the library supports in standalone and Sentinel
/// mode: `user:secret`, hashes, scripts (accum) and connection commands (AUTH, PING, HELLO,
/// WAIT), nothing `@admin` or `@dangerous`.
pub const LEAST_PRIVILEGE_USER: &str =
    "lp on >lp-secret ~* resetchannels -@all +@read +@write +@hash +@scripting +@connection";

/// [`LEAST_PRIVILEGE_USER`] plus the one command cluster discovery needs: `CLUSTER SLOTS`
/// (only in `@slow`, not `@admin` or `@dangerous`, and without it no client can learn the
/// slot map).
pub const LEAST_PRIVILEGE_CLUSTER_USER: &str = "lp on >lp-secret ~* resetchannels -@all +@read \
     +@write +@hash +@scripting +@connection +cluster|slots";

/// Options of one redis-sentinel.
#[derive(Clone, Debug)]
struct SentinelProcessOptions {
    master_name: String,
    master_port: u16,
    quorum: u32,
    down_after_ms: u64,
    failover_timeout_ms: u64,
    auth_pass: Option<String>,
    password: Option<String>,
}

#[derive(Clone, Debug)]
enum Kind {
    Server(ServerOptions),
    Sentinel(SentinelProcessOptions),
}

/// Quote a value for a redis.conf line.
fn quote(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}

/// One redis-server or redis-sentinel process, stopped by PID on drop.
pub struct RedisServer {
    kind: Kind,
    port: u16,
    dir: PathBuf,
    owns_dir: bool,
    child: Option<Child>,
    paused: bool,
}

impl RedisServer {
    /// Start a redis-server and wait until it answers PING.
    pub fn start(options: ServerOptions) -> RedisServer {
        let mut server = RedisServer::spawn(Kind::Server(options));
        server.wait_ready();
        server
    }

    fn spawn(kind: Kind) -> RedisServer {
        let (dir, owns_dir, cluster) = match &kind {
            Kind::Server(options) => match &options.dir {
                Some(dir) => (dir.clone(), false, options.cluster),
                None => (fresh_dir("redis-server"), true, options.cluster),
            },
            Kind::Sentinel(_) => (fresh_dir("redis-sentinel"), true, false),
        };
        let port = find_free_port(cluster);
        let mut server = RedisServer {
            kind,
            port,
            dir,
            owns_dir,
            child: None,
            paused: false,
        };
        server.write_config();
        server.launch();
        server
    }

    fn binary_name(&self) -> &'static str {
        match self.kind {
            Kind::Server(_) => "redis-server",
            Kind::Sentinel(_) => "redis-sentinel",
        }
    }

    fn config_path(&self) -> PathBuf {
        match self.kind {
            Kind::Server(_) => self.dir.join("redis.conf"),
            Kind::Sentinel(_) => self.dir.join("sentinel.conf"),
        }
    }

    /// Where the process writes its log (stdout and stderr).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    fn write_config(&self) {
        let mut lines = vec![
            format!("port {}", self.port),
            format!("bind {HOST}"),
            "daemonize no".to_string(),
            "logfile \"\"".to_string(),
            format!("dir {}", quote(&self.dir.to_string_lossy())),
        ];
        match &self.kind {
            Kind::Server(options) => {
                let dbfilename = options.dbfilename.as_deref().unwrap_or("dump.rdb");
                lines.push(format!("dbfilename {}", quote(dbfilename)));
                match &options.save {
                    Some(points) => lines.push(format!("save {points}")),
                    None => lines.push("save \"\"".to_string()),
                }
                lines.extend([
                    "appendonly no".to_string(),
                    // The default 5 s delay before a diskless full sync would dominate startup.
                    "repl-diskless-sync-delay 0".to_string(),
                    // Redis 7 waits up to 10 s on SIGTERM for lagging replicas.
                    "shutdown-timeout 1".to_string(),
                    "enable-debug-command local".to_string(),
                ]);
                if let Some(password) = &options.password {
                    lines.push(format!("requirepass {}", quote(password)));
                    lines.push(format!("masterauth {}", quote(password)));
                }
                lines.extend(options.acl_users.iter().map(|rule| format!("user {rule}")));
                if options.cluster {
                    let timeout = options.cluster_node_timeout_ms.unwrap_or(2000);
                    lines.extend([
                        "cluster-enabled yes".to_string(),
                        format!("cluster-node-timeout {timeout}"),
                        "cluster-config-file nodes.conf".to_string(),
                        // CLUSTER SLOTS hides a replica until its replication offset moves, which
                        // an idle master only does every repl-ping-replica-period (10 s default).
                        "repl-ping-replica-period 1".to_string(),
                    ]);
                }
                if let Some(master_port) = options.replica_of {
                    lines.push(format!("replicaof {HOST} {master_port}"));
                }
            }
            Kind::Sentinel(options) => {
                let name = &options.master_name;
                lines.extend([
                    format!(
                        "sentinel monitor {name} {HOST} {} {}",
                        options.master_port, options.quorum
                    ),
                    format!(
                        "sentinel down-after-milliseconds {name} {}",
                        options.down_after_ms
                    ),
                    format!(
                        "sentinel failover-timeout {name} {}",
                        options.failover_timeout_ms
                    ),
                ]);
                if let Some(auth_pass) = &options.auth_pass {
                    lines.push(format!("sentinel auth-pass {name} {}", quote(auth_pass)));
                }
                if let Some(password) = &options.password {
                    // Sentinels also use their requirepass to talk to each other.
                    lines.push(format!("requirepass {}", quote(password)));
                }
            }
        }
        fs::create_dir_all(&self.dir).expect("cannot create the server dir");
        fs::write(self.config_path(), lines.join("\n") + "\n").expect("cannot write the config");
    }

    fn launch(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("cannot open the server log");
        let log_err = log.try_clone().expect("cannot clone the log handle");
        let extra_args = match &self.kind {
            Kind::Server(options) => options.extra_args.clone(),
            Kind::Sentinel(_) => Vec::new(),
        };
        let child = Command::new(binary(self.binary_name()))
            .arg(self.config_path())
            .args(extra_args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary_name()));
        self.child = Some(child);
        self.paused = false;
    }

    /// Block until the process answers PING; panic with the tail of its log if it does not.
    ///
    /// A process that exits because its automatically chosen port was taken meanwhile (another
    /// test binary, say) is restarted on a new port.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut port_retries = 5;
        loop {
            let child = self
                .child
                .as_mut()
                .expect("wait_ready on a process never started");
            if let Some(status) = child.try_wait().expect("cannot poll the server process") {
                self.child = None;
                let tail = self.log_tail(30);
                if tail.contains("Address already in use") && port_retries > 0 {
                    port_retries -= 1;
                    self.port = find_free_port(self.is_cluster_node());
                    self.write_config();
                    self.launch();
                    continue;
                }
                panic!(
                    "{} on port {} exited with {status} during startup; log {}:\n{tail}",
                    self.binary_name(),
                    self.port,
                    self.log_path().display()
                );
            }
            let reply = self.cli(&["PING"]);
            if reply == "PONG" {
                return;
            }
            if Instant::now() > deadline {
                let tail = self.log_tail(30);
                self.stop_process();
                panic!(
                    "{} on port {} did not answer PING within {STARTUP_TIMEOUT:?} (last reply: \
                     {reply}); log {}:\n{tail}",
                    self.binary_name(),
                    self.port,
                    self.log_path().display()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn is_cluster_node(&self) -> bool {
        matches!(&self.kind, Kind::Server(options) if options.cluster)
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `"127.0.0.1:<port>"`.
    pub fn addr(&self) -> String {
        format!("{HOST}:{}", self.port)
    }

    /// The PID while the process runs (paused counts), else `None`.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The work directory (config, log, RDB, nodes.conf).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The password clients must send (`requirepass`), if any.
    pub fn password(&self) -> Option<&str> {
        match &self.kind {
            Kind::Server(options) => options.password.as_deref(),
            Kind::Sentinel(options) => options.password.as_deref(),
        }
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Run redis-cli against this process, authenticated with its password.
    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli_as(self.port, None, self.password(), args)
    }

    /// One `INFO <section>` field, for example `info_field("replication", "role")`.
    pub fn info_field(&self, section: &str, field: &str) -> Option<String> {
        parse_info(&self.cli(&["INFO", section])).remove(field)
    }

    /// SIGSTOP: the process keeps its sockets but answers nothing until `resume`.
    pub fn pause(&mut self) {
        let pid = self
            .pid()
            .expect("cannot pause a server that is not running");
        signal::send(pid, signal::SIGSTOP);
        self.paused = true;
    }

    /// SIGCONT after `pause`.
    pub fn resume(&mut self) {
        if let Some(pid) = self.pid() {
            signal::send(pid, signal::SIGCONT);
        }
        self.paused = false;
    }

    /// True between `pause` and `resume`.
    pub fn is_paused(&self) -> bool {
        self.paused && self.child.is_some()
    }

    /// SIGKILL: no shutdown save, no goodbye to replicas. The dir is kept for `restart`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }

    /// Stop (gracefully) if running and start again on the same port and dir.
    pub fn restart(&mut self) {
        self.stop_process();
        self.launch();
        self.wait_ready();
    }

    fn send_terminate(&mut self) {
        if let Some(pid) = self.pid() {
            signal::send(pid, signal::SIGTERM);
            if self.paused {
                // A stopped process only acts on SIGTERM once it runs again.
                signal::send(pid, signal::SIGCONT);
                self.paused = false;
            }
        }
    }

    fn reap(&mut self, timeout: Duration) {
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + timeout;
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => thread::sleep(Duration::from_millis(10)),
                }
            }
        }
        self.paused = false;
    }

    fn stop_process(&mut self) {
        self.send_terminate();
        self.reap(Duration::from_secs(5));
    }

    /// Stop the process (SIGTERM, SIGKILL after 5 s); `Drop` does this too.
    pub fn stop(&mut self) {
        self.stop_process();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop_process();
        if self.owns_dir {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Stop many processes at once: signal all, then wait, so their shutdowns overlap.
fn stop_together<'a>(servers: impl IntoIterator<Item = &'a mut RedisServer>) {
    let mut servers: Vec<&mut RedisServer> = servers.into_iter().collect();
    for server in servers.iter_mut() {
        server.send_terminate();
    }
    for server in servers.iter_mut() {
        server.reap(Duration::from_secs(5));
    }
}

/// Merge `extra` (a JSON object, or `Value::Null` for nothing) into `base` and serialise it.
fn merge_config(mut base: Value, extra: Value) -> String {
    match extra {
        Value::Null => {}
        Value::Object(fields) => {
            let target = base.as_object_mut().expect("base config is an object");
            target.extend(fields);
        }
        other => panic!("config extras must be a JSON object, got {other}"),
    }
    base.to_string()
}

fn add_password(config: &mut Value, key: &str, password: Option<&str>) {
    if let Some(password) = password {
        config[key] = json!(password);
    }
}

/// One standalone redis-server.
pub struct Standalone {
    /// The server.
    pub server: RedisServer,
}

impl Standalone {
    /// A standalone server without password.
    pub fn start() -> Standalone {
        Standalone::start_with(ServerOptions::default())
    }

    /// A standalone server with the given options (password, ACL users, RDB dir, ...).
    pub fn start_with(options: ServerOptions) -> Standalone {
        Standalone {
            server: RedisServer::start(options),
        }
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// A full JSON config (mode 2, this server, its password) with `extra`'s fields merged in.
    pub fn config_json(&self, extra: Value) -> String {
        let mut config = json!({
            "redis_connection_mode": 2,
            "redis_host_ip": [HOST],
            "redis_host_port": [self.port()],
        });
        add_password(&mut config, "redis_password", self.server.password());
        merge_config(config, extra)
    }
}

/// A Redis Cluster: 3 masters (slots 0-5460, 5461-10922, 10923-16383), 1 replica each, created
/// by `redis-cli --cluster create` and settled (state ok everywhere, replicas in sync).
pub struct Cluster {
    /// All six nodes in creation order; redis-cli makes the first three the masters.
    pub nodes: Vec<RedisServer>,
    password: Option<String>,
}

impl Cluster {
    /// A cluster without password.
    pub fn start() -> Cluster {
        Cluster::start_with(ServerOptions::default())
    }

    /// A cluster whose six nodes share `options` (password, extra args); `cluster` is forced on.
    pub fn start_with(options: ServerOptions) -> Cluster {
        let options = ServerOptions {
            cluster: true,
            dir: None,
            replica_of: None,
            ..options
        };
        let mut nodes: Vec<RedisServer> = (0..6)
            .map(|_| RedisServer::spawn(Kind::Server(options.clone())))
            .collect();
        for node in nodes.iter_mut() {
            node.wait_ready();
        }
        let cluster = Cluster {
            nodes,
            password: options.password.clone(),
        };
        let addresses: Vec<String> = cluster.nodes.iter().map(RedisServer::addr).collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addresses.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "1", "--cluster-yes"]);
        let output = redis_cli_as(
            cluster.nodes[0].port(),
            None,
            cluster.password.as_deref(),
            &args,
        );
        assert!(
            output.contains("[OK] All 16384 slots covered"),
            "redis-cli --cluster create failed:\n{output}"
        );
        cluster.wait_until_settled(TOPOLOGY_TIMEOUT);
        cluster
    }

    /// Wait until every running node says `cluster_state:ok`, every replica is linked and every
    /// node lists all running nodes in CLUSTER SLOTS (clients see the same map from any seed).
    pub fn wait_until_settled(&self, timeout: Duration) {
        wait_until(
            timeout,
            "the cluster is ok and every node sees every replica",
            || {
                let live: Vec<&RedisServer> = self
                    .nodes
                    .iter()
                    .filter(|node| node.pid().is_some() && !node.is_paused())
                    .collect();
                live.iter().all(|node| {
                    let state = parse_info(&node.cli(&["CLUSTER", "INFO"]));
                    let replication = parse_info(&node.cli(&["INFO", "replication"]));
                    let linked = replication.get("role").map(String::as_str) != Some("slave")
                        || replication.get("master_link_status").map(String::as_str) == Some("up");
                    let slots = node.cli(&["CLUSTER", "SLOTS"]);
                    let sees_all = live
                        .iter()
                        .all(|other| slots.lines().any(|line| line == other.port().to_string()));
                    state.get("cluster_state").map(String::as_str) == Some("ok")
                        && linked
                        && sees_all
                })
            },
        );
    }

    /// Live slot map from CLUSTER NODES: `(first slot, last slot, master port)`, in slot order.
    pub fn slot_ranges(&self) -> Vec<(u16, u16, u16)> {
        let node = self
            .nodes
            .iter()
            .find(|node| node.pid().is_some() && !node.is_paused())
            .expect("no cluster node is running");
        let mut ranges = Vec::new();
        for line in node.cli(&["CLUSTER", "NODES"]).lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let port: u16 = fields[1]
                .split('@')
                .next()
                .and_then(|addr| addr.rsplit(':').next())
                .and_then(|port| port.parse().ok())
                .expect("CLUSTER NODES address");
            for range in &fields[8..] {
                let (first, last) = range.split_once('-').unwrap_or((range, range));
                if let (Ok(first), Ok(last)) = (first.parse(), last.parse()) {
                    ranges.push((first, last, port));
                }
            }
        }
        ranges.sort_unstable();
        ranges
    }

    fn node_at(&self, port: u16) -> &RedisServer {
        self.nodes
            .iter()
            .find(|node| node.port() == port)
            .expect("a port of this cluster")
    }

    /// The masters that serve slots now, in slot order.
    pub fn masters(&self) -> Vec<&RedisServer> {
        let mut ports: Vec<u16> = Vec::new();
        for (_, _, port) in self.slot_ranges() {
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        ports.into_iter().map(|port| self.node_at(port)).collect()
    }

    /// The running nodes that are not masters now.
    pub fn replicas(&self) -> Vec<&RedisServer> {
        let masters: Vec<u16> = self.masters().iter().map(|node| node.port()).collect();
        self.nodes
            .iter()
            .filter(|node| node.pid().is_some() && !masters.contains(&node.port()))
            .collect()
    }

    /// The master that serves `slot` now.
    pub fn node_for_slot(&self, slot: u16) -> &RedisServer {
        let (_, _, port) = self
            .slot_ranges()
            .into_iter()
            .find(|(first, last, _)| (*first..=*last).contains(&slot))
            .unwrap_or_else(|| panic!("no master serves slot {slot}"));
        self.node_at(port)
    }

    /// Moves `slot` (and its keys) from its master to another master behind any client's
    /// back, the way `redis-cli --cluster reshard` does, and returns the new master's port.
    /// Every master is told at once, so all masters agree right after.
    pub fn move_slot(&self, slot: u16) -> u16 {
        let source = self.node_for_slot(slot);
        let target = self
            .masters()
            .into_iter()
            .find(|m| m.port() != source.port())
            .expect("a second master");
        let (source_id, target_id) = (
            source.cli(&["CLUSTER", "MYID"]),
            target.cli(&["CLUSTER", "MYID"]),
        );
        let slot_s = slot.to_string();
        target.cli(&["CLUSTER", "SETSLOT", &slot_s, "IMPORTING", &source_id]);
        source.cli(&["CLUSTER", "SETSLOT", &slot_s, "MIGRATING", &target_id]);
        let keys = source.cli(&["CLUSTER", "GETKEYSINSLOT", &slot_s, "1000"]);
        for key in keys.lines().filter(|k| !k.is_empty()) {
            let port = target.port().to_string();
            let out = source.cli(&["MIGRATE", HOST, &port, key, "0", "5000"]);
            assert_eq!(out, "OK", "MIGRATE {key}");
        }
        for m in self.masters() {
            m.cli(&["CLUSTER", "SETSLOT", &slot_s, "NODE", &target_id]);
        }
        target.port()
    }

    /// Takes the replica `node` (an index into `nodes`) out of the cluster while it keeps
    /// running: it forgets the cluster (`CLUSTER RESET HARD`), every other node forgets it
    /// (`CLUSTER FORGET`), and this waits until no other node lists it in `CLUSTER SLOTS`.
    pub fn remove_replica(&self, node: usize) {
        let removed = &self.nodes[node];
        let id = removed.cli(&["CLUSTER", "MYID"]);
        assert_eq!(
            removed.cli(&["ROLE"]).lines().next(),
            Some("slave"),
            "not a replica"
        );
        removed.cli(&["CLUSTER", "RESET", "HARD"]);
        for other in self.nodes.iter().filter(|n| n.port() != removed.port()) {
            let out = other.cli(&["CLUSTER", "FORGET", &id]);
            assert_eq!(out, "OK", "CLUSTER FORGET on {}", other.addr());
        }
        let port = removed.port().to_string();
        wait_until(
            TOPOLOGY_TIMEOUT,
            "no node lists the removed replica",
            || {
                self.nodes
                    .iter()
                    .filter(|n| n.port() != removed.port())
                    .all(|n| !n.cli(&["CLUSTER", "SLOTS"]).lines().any(|l| l == port))
            },
        );
    }

    /// Ports of all nodes, masters first, as seeds for a client.
    pub fn seed_ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisServer::port).collect()
    }

    /// A full JSON config (mode 0, every node as a seed) with `extra`'s fields merged in.
    pub fn config_json(&self, extra: Value) -> String {
        let ports = self.seed_ports();
        let mut config = json!({
            "redis_connection_mode": 0,
            "redis_host_ip": vec![HOST; ports.len()],
            "redis_host_port": ports,
        });
        add_password(&mut config, "redis_password", self.password.as_deref());
        merge_config(config, extra)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        stop_together(self.nodes.iter_mut());
    }
}

/// Options of a `Sentinel` topology.
#[derive(Clone, Debug)]
pub struct SentinelOptions {
    /// The monitored group's name (`redis_master_name`).
    pub master_name: String,
    /// `requirepass`/`masterauth` of master and replica, `auth-pass` of the sentinels.
    pub password: Option<String>,
    /// `requirepass` of the sentinels.
    pub sentinel_password: Option<String>,
    /// `sentinel down-after-milliseconds`.
    pub down_after_ms: u64,
    /// `sentinel failover-timeout`.
    pub failover_timeout_ms: u64,
    /// ACL rule lines for master and replica (the sentinels keep their own auth).
    pub acl_users: Vec<String>,
}

impl Default for SentinelOptions {
    fn default() -> Self {
        SentinelOptions {
            master_name: "mymaster".to_string(),
            password: None,
            sentinel_password: None,
            down_after_ms: 1000,
            failover_timeout_ms: 3000,
            acl_users: Vec::new(),
        }
    }
}

/// A master, one replica and 3 sentinels watching the master with quorum 2.
pub struct Sentinel {
    /// The master as started (after a failover, ask `current_master_port`).
    pub master: RedisServer,
    /// The replica as started.
    pub replica: RedisServer,
    /// The three sentinels.
    pub sentinels: Vec<RedisServer>,
    options: SentinelOptions,
}

impl Sentinel {
    /// Default options: `mymaster`, no passwords, down after 1 s, failover timeout 3 s.
    pub fn start() -> Sentinel {
        Sentinel::start_with(SentinelOptions::default())
    }

    /// Start master and replica, wait for the link, then the sentinels; return once every
    /// sentinel sees the master up, knows the replica and both other sentinels.
    pub fn start_with(options: SentinelOptions) -> Sentinel {
        let master = RedisServer::start(ServerOptions {
            password: options.password.clone(),
            acl_users: options.acl_users.clone(),
            ..ServerOptions::default()
        });
        let replica = RedisServer::start(ServerOptions {
            password: options.password.clone(),
            acl_users: options.acl_users.clone(),
            replica_of: Some(master.port()),
            ..ServerOptions::default()
        });
        // Sentinels learn replicas from the master's INFO, first asked when they connect: a
        // replica linked by then is known at once instead of one INFO period (10 s) later.
        wait_until(TOPOLOGY_TIMEOUT, "the replica is linked", || {
            replica
                .info_field("replication", "master_link_status")
                .as_deref()
                == Some("up")
        });
        let mut sentinels: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::spawn(Kind::Sentinel(SentinelProcessOptions {
                    master_name: options.master_name.clone(),
                    master_port: master.port(),
                    quorum: 2,
                    down_after_ms: options.down_after_ms,
                    failover_timeout_ms: options.failover_timeout_ms,
                    auth_pass: options.password.clone(),
                    password: options.sentinel_password.clone(),
                }))
            })
            .collect();
        for sentinel in sentinels.iter_mut() {
            sentinel.wait_ready();
        }
        let topology = Sentinel {
            master,
            replica,
            sentinels,
            options,
        };
        wait_until(
            TOPOLOGY_TIMEOUT,
            "every sentinel knows master, replica and peers",
            || {
                topology.sentinels.iter().all(|sentinel| {
                    let state = topology.master_state(sentinel);
                    state.get("flags").map(String::as_str) == Some("master")
                        && state.get("num-slaves").map(String::as_str) == Some("1")
                        && state.get("num-other-sentinels").map(String::as_str) == Some("2")
                })
            },
        );
        topology
    }

    /// `SENTINEL MASTER <name>` from one sentinel, as a map.
    pub fn master_state(&self, sentinel: &RedisServer) -> BTreeMap<String, String> {
        let reply = sentinel.cli(&["SENTINEL", "MASTER", &self.options.master_name]);
        let lines: Vec<&str> = reply.lines().collect();
        lines
            .chunks(2)
            .filter(|pair| pair.len() == 2)
            .map(|pair| (pair[0].to_string(), pair[1].to_string()))
            .collect()
    }

    /// The master's port as the first running sentinel reports it now.
    pub fn current_master_port(&self) -> u16 {
        let sentinel = self
            .sentinels
            .iter()
            .find(|s| s.pid().is_some() && !s.is_paused())
            .expect("no sentinel is running");
        let reply = sentinel.cli(&[
            "SENTINEL",
            "GET-MASTER-ADDR-BY-NAME",
            &self.options.master_name,
        ]);
        reply
            .lines()
            .nth(1)
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("unexpected GET-MASTER-ADDR-BY-NAME reply: {reply}"))
    }

    /// Wait until the sentinels name a master other than `old_port` and it reports role master;
    /// return its port.
    pub fn wait_for_failover(&self, old_port: u16, timeout: Duration) -> u16 {
        let mut new_port = old_port;
        wait_until(timeout, "the sentinels fail over", || {
            new_port = self.current_master_port();
            new_port != old_port
                && redis_cli_as(new_port, None, self.options.password.as_deref(), &["ROLE"])
                    .lines()
                    .next()
                    == Some("master")
        });
        new_port
    }

    /// A full JSON config (mode 1, master name, the sentinels) with `extra`'s fields merged in.
    pub fn config_json(&self, extra: Value) -> String {
        let ports: Vec<u16> = self.sentinels.iter().map(RedisServer::port).collect();
        let mut config = json!({
            "redis_connection_mode": 1,
            "redis_master_name": self.options.master_name,
            "redis_host_ip": vec![HOST; ports.len()],
            "redis_host_port": ports,
        });
        add_password(
            &mut config,
            "redis_password",
            self.options.password.as_deref(),
        );
        add_password(
            &mut config,
            "redis_sentinel_password",
            self.options.sentinel_password.as_deref(),
        );
        merge_config(config, extra)
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        // Sentinels first, so they do not start a failover while the servers go down.
        stop_together(self.sentinels.iter_mut());
        stop_together([&mut self.master, &mut self.replica]);
    }
}

/// How many times `server` ran `command` (`INFO commandstats`; subcommands as `cluster|slots`).
pub fn command_calls(server: &RedisServer, command: &str) -> u64 {
    server
        .info_field("commandstats", &format!("cmdstat_{command}"))
        .and_then(|stat| stat.split(',').next()?.strip_prefix("calls=")?.parse().ok())
        .unwrap_or(0)
}

/// How many error replies with `code` (`MOVED`, `ASK`, ...) `server` sent (`INFO errorstats`).
pub fn error_replies(server: &RedisServer, code: &str) -> u64 {
    server
        .info_field("errorstats", &format!("errorstat_{code}"))
        .and_then(|stat| stat.strip_prefix("count=")?.parse().ok())
        .unwrap_or(0)
}

/// Send a raw PING over TCP and wait at most `timeout` for `+PONG`; false on any failure.
/// Lets a test tell a paused server (no answer) from a live one without redis-cli, which has
/// no read timeout.
pub fn answers_ping_within(port: u16, timeout: Duration) -> bool {
    let Ok(mut stream) = TcpStream::connect((HOST, port)) else {
        return false;
    };
    if stream.set_read_timeout(Some(timeout)).is_err() || stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    matches!(stream.read_exact(&mut reply), Ok(())) && &reply == b"+PONG\r\n"
}

/// A CA and a server certificate for IP 127.0.0.1 signed by it, made with `openssl` in a temp
/// dir (removed on drop), for servers that listen on a TLS port too.
pub struct TlsCerts {
    dir: PathBuf,
}

impl TlsCerts {
    /// Makes the CA and the server key pair (RSA 2048, valid 2 days).
    pub fn make() -> TlsCerts {
        let dir = fresh_dir("tls");
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .stdin(Stdio::null())
                .output()
                .expect("cannot run openssl (apt-get install openssl)");
            assert!(
                out.status.success(),
                "openssl {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=tfra-test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ]);
        fs::write(
            dir.join("san.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n",
        )
        .expect("cannot write san.ext");
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=tfra-test-server",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.crt",
        ]);
        TlsCerts { dir }
    }

    /// The CA certificate, for `redis_tls_ca_cert`.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// Server arguments: TLS on `tls_port` beside the plain port (which the harness keeps
    /// using), no client certificates asked for.
    pub fn server_args(&self, tls_port: u16) -> Vec<String> {
        let path = |name: &str| self.dir.join(name).display().to_string();
        vec![
            "--tls-port".into(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            path("server.crt"),
            "--tls-key-file".into(),
            path("server.key"),
            "--tls-ca-cert-file".into(),
            path("ca.crt"),
            "--tls-auth-clients".into(),
            "no".into(),
        ]
    }
}

impl Drop for TlsCerts {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Rows of f32 as the little-endian bytes a table stores.
pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The f32 values of little-endian bytes.
pub fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}
