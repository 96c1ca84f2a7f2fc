//! The raw limit of a Redis-backed embedding table, for `benchmarks/bench_store.py`.
//!
//! A minimal client: it prebuilds the RESP bytes of every `HMGET` / `HSET` / `EVAL` command
//! (`--fields` ids per command, TFRA's bucket layout) before the clock starts, then writes them
//! over one TCP connection per node, keeping at most `--window` commands in flight, and only
//! counts the reply bytes (no decoding into rows). Nodes run in parallel, one thread each; every
//! batch (and, for `update`, every phase of a batch) ends when all nodes have answered, as a
//! table call does. Whatever a real client does beyond this is its overhead.
//!
//! Only the standard library: no redis crate, so nothing here can hide a cost.
//!
//! ```text
//! cargo run --release --example raw_limit -p tfra-redis -- \
//!     --op find --bucket 'test:emb{3560}@127.0.0.1:6379' \
//!     --keys keys.bin [--values rows.bin] --row-bytes 128 --batch 65536
//! ```
//!
//! Options:
//! * `--op find|insert|update|accum`: `update` is a find then an insert of every table (what an
//!   optimizer step does); `accum` sends the Lua script of `--script` with `EVAL`.
//! * `--bucket NAME@HOST:PORT`, repeated: bucket keys in bucket order, with the node holding
//!   each. With `--tables T` the list is T tables of equal bucket count, table after table.
//! * `--keys FILE`: int64 little-endian ids; cut into batches of `--batch`.
//! * `--values FILE`: `--row-bytes` bytes per id (insert, update, accum).
//! * `--fields N` ids per command (1024), `--window N` commands in flight per node (32).
//! * `--script FILE --dtype NAME`: the accum Lua body and its TF dtype name (`float`).
//! * `--cpu-node HOST:PORT`, repeated: servers whose `INFO cpu` is summed (default: the nodes).
//!
//! Prints one JSON object: seconds, client CPU seconds, server CPU seconds, bytes, replies.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::sync::Barrier;
use std::time::Instant;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    Find,
    Insert,
    Update,
    Accum,
}

struct Args {
    op: Op,
    buckets: Vec<(Vec<u8>, String)>,
    tables: usize,
    keys: String,
    values: Option<String>,
    row_bytes: usize,
    batch: usize,
    fields: usize,
    window: usize,
    script: Option<String>,
    dtype: String,
    cpu_nodes: Vec<String>,
}

fn usage(message: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{message}; see the doc comment of rust/tfra-redis/examples/raw_limit.rs"),
    )
}

fn parse_args() -> io::Result<Args> {
    let mut args = Args {
        op: Op::Find,
        buckets: Vec::new(),
        tables: 1,
        keys: String::new(),
        values: None,
        row_bytes: 0,
        batch: 65536,
        fields: 1024,
        window: 32,
        script: None,
        dtype: "float".into(),
        cpu_nodes: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| usage(&format!("{flag} needs a value")))
        };
        let number = |v: String| {
            v.parse::<usize>()
                .map_err(|_| usage(&format!("{flag} takes a number, got {v:?}")))
        };
        match flag.as_str() {
            "--op" => {
                args.op = match value()?.as_str() {
                    "find" => Op::Find,
                    "insert" => Op::Insert,
                    "update" => Op::Update,
                    "accum" => Op::Accum,
                    other => return Err(usage(&format!("unknown --op {other:?}"))),
                }
            }
            "--bucket" => {
                let v = value()?;
                let (name, addr) = v
                    .rsplit_once('@')
                    .ok_or_else(|| usage(&format!("--bucket wants NAME@HOST:PORT, got {v:?}")))?;
                args.buckets
                    .push((name.as_bytes().to_vec(), addr.to_string()));
            }
            "--tables" => args.tables = number(value()?)?,
            "--keys" => args.keys = value()?,
            "--values" => args.values = Some(value()?),
            "--row-bytes" => args.row_bytes = number(value()?)?,
            "--batch" => args.batch = number(value()?)?,
            "--fields" => args.fields = number(value()?)?,
            "--window" => args.window = number(value()?)?,
            "--script" => args.script = Some(value()?),
            "--dtype" => args.dtype = value()?,
            "--cpu-node" => args.cpu_nodes.push(value()?),
            other => return Err(usage(&format!("unknown option {other:?}"))),
        }
    }
    if args.buckets.is_empty() || args.keys.is_empty() {
        return Err(usage("--bucket and --keys are required"));
    }
    if args.tables == 0 || !args.buckets.len().is_multiple_of(args.tables) {
        return Err(usage("the --bucket count must be a multiple of --tables"));
    }
    if args.batch == 0 || args.fields == 0 || args.window == 0 {
        return Err(usage("--batch, --fields and --window must be positive"));
    }
    if args.op != Op::Find && (args.values.is_none() || args.row_bytes == 0) {
        return Err(usage(
            "insert, update and accum need --values and --row-bytes",
        ));
    }
    if args.op == Op::Accum && args.script.is_none() {
        return Err(usage("accum needs --script"));
    }
    Ok(args)
}

/// Appends one RESP bulk string.
fn bulk(out: &mut Vec<u8>, bytes: &[u8]) {
    // Writing into a Vec cannot fail.
    let _ = write!(out, "${}\r\n", bytes.len());
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

/// Commands of one phase on one node.
type Phase = Vec<Vec<u8>>;

/// Builds the commands of every batch and phase, per node.
fn build(
    args: &Args,
    keys: &[i64],
    values: &[u8],
    script: &[u8],
) -> (Vec<String>, Vec<Vec<Phase>>) {
    let mut nodes: Vec<String> = Vec::new();
    let node_of: Vec<usize> = args
        .buckets
        .iter()
        .map(|(_, addr)| match nodes.iter().position(|n| n == addr) {
            Some(i) => i,
            None => {
                nodes.push(addr.clone());
                nodes.len() - 1
            }
        })
        .collect();
    let per_table = args.buckets.len() / args.tables;
    let rb = args.row_bytes;
    let phases = match args.op {
        Op::Update => vec![Op::Find, Op::Insert],
        other => vec![other],
    };
    // plan[node][phase-of-all-batches]
    let mut plan: Vec<Vec<Phase>> = vec![Vec::new(); nodes.len()];
    let mut start = 0;
    while start < keys.len() {
        let end = (start + args.batch).min(keys.len());
        // TFRA's rule: (uint32)(key & 0xFFFFFFFF) % storage_slice.
        let mut by_bucket: Vec<Vec<usize>> = vec![Vec::new(); per_table];
        for i in start..end {
            by_bucket[(keys[i] as u32 as usize) % per_table].push(i);
        }
        for &phase in &phases {
            let mut cmds: Vec<Phase> = vec![Vec::new(); nodes.len()];
            for table in 0..args.tables {
                for (b, positions) in by_bucket.iter().enumerate() {
                    let bucket = table * per_table + b;
                    let name = &args.buckets[bucket].0;
                    for chunk in positions.chunks(args.fields) {
                        let mut cmd = Vec::new();
                        match phase {
                            Op::Find => {
                                let _ = write!(cmd, "*{}\r\n", chunk.len() + 2);
                                bulk(&mut cmd, b"HMGET");
                                bulk(&mut cmd, name);
                                for &i in chunk {
                                    bulk(&mut cmd, &keys[i].to_le_bytes());
                                }
                            }
                            Op::Insert => {
                                let _ = write!(cmd, "*{}\r\n", 2 * chunk.len() + 2);
                                bulk(&mut cmd, b"HSET");
                                bulk(&mut cmd, name);
                                for &i in chunk {
                                    bulk(&mut cmd, &keys[i].to_le_bytes());
                                    bulk(&mut cmd, &values[i * rb..(i + 1) * rb]);
                                }
                            }
                            _ => {
                                let _ = write!(cmd, "*{}\r\n", 2 * chunk.len() + 6);
                                bulk(&mut cmd, b"EVAL");
                                bulk(&mut cmd, script);
                                bulk(&mut cmd, b"1");
                                bulk(&mut cmd, name);
                                bulk(&mut cmd, args.dtype.as_bytes());
                                // Every id flagged "seen": deltas are added to present rows.
                                bulk(&mut cmd, &vec![1u8; chunk.len()]);
                                for &i in chunk {
                                    bulk(&mut cmd, &keys[i].to_le_bytes());
                                    bulk(&mut cmd, &values[i * rb..(i + 1) * rb]);
                                }
                            }
                        }
                        cmds[node_of[bucket]].push(cmd);
                    }
                }
            }
            for (node, c) in cmds.into_iter().enumerate() {
                plan[node].push(c);
            }
        }
        start = end;
    }
    (nodes, plan)
}

/// Counts complete RESP2 replies in a byte stream without decoding them.
struct Replies {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Payload bytes (plus CRLF) of the current bulk string still to skip.
    skip: usize,
    /// Elements left in each open array.
    open: Vec<i64>,
    completed: usize,
    bytes: u64,
    nils: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Replies {
    fn new() -> Self {
        Replies {
            buf: vec![0; 1 << 20],
            start: 0,
            end: 0,
            skip: 0,
            open: Vec::new(),
            completed: 0,
            bytes: 0,
            nils: 0,
            errors: 0,
            first_error: None,
        }
    }

    /// Reads until at least `target` replies are complete.
    fn wait_for(&mut self, stream: &mut TcpStream, target: usize) -> io::Result<()> {
        while self.completed < target {
            if self.start == self.end {
                self.start = 0;
                self.end = 0;
            } else if self.end == self.buf.len() {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
                if self.end == self.buf.len() {
                    self.buf.resize(self.buf.len() * 2, 0);
                }
            }
            let n = stream.read(&mut self.buf[self.end..])?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                ));
            }
            self.end += n;
            self.bytes += n as u64;
            self.parse();
        }
        Ok(())
    }

    fn parse(&mut self) {
        loop {
            if self.skip > 0 {
                let take = self.skip.min(self.end - self.start);
                self.start += take;
                self.skip -= take;
                if self.skip > 0 {
                    return;
                }
                self.element_done();
                continue;
            }
            let avail = &self.buf[self.start..self.end];
            let Some(len) = avail.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let kind = avail[0];
            let number = std::str::from_utf8(&avail[1..len])
                .ok()
                .and_then(|s| s.parse::<i64>().ok());
            if kind == b'-' && self.first_error.is_none() {
                self.first_error = Some(String::from_utf8_lossy(&avail[1..len]).into_owned());
            }
            self.start += len + 2;
            match (kind, number) {
                (b'$', Some(n)) if n >= 0 => self.skip = n as usize + 2,
                (b'$', _) => {
                    self.nils += 1;
                    self.element_done();
                }
                (b'*', Some(n)) if n > 0 => self.open.push(n),
                (b'-', _) => {
                    self.errors += 1;
                    self.element_done();
                }
                _ => self.element_done(),
            }
        }
    }

    fn element_done(&mut self) {
        while let Some(left) = self.open.last_mut() {
            *left -= 1;
            if *left > 0 {
                return;
            }
            self.open.pop();
        }
        self.completed += 1;
    }
}

/// Sends `cmds` keeping at most `window` unanswered, then waits for every reply.
fn pipeline(
    stream: &mut TcpStream,
    replies: &mut Replies,
    cmds: &[Vec<u8>],
    window: usize,
) -> io::Result<()> {
    let base = replies.completed;
    for (i, cmd) in cmds.iter().enumerate() {
        if i >= window {
            replies.wait_for(stream, base + i + 1 - window)?;
        }
        stream.write_all(cmd)?;
    }
    replies.wait_for(stream, base + cmds.len())
}

/// `used_cpu_sys + used_cpu_user` of a server, on a connection of its own.
fn server_cpu(addr: &str) -> io::Result<f64> {
    let mut stream = TcpStream::connect(addr)?;
    stream.write_all(b"*2\r\n$4\r\nINFO\r\n$3\r\ncpu\r\n")?;
    let mut text = Vec::new();
    let mut chunk = [0u8; 4096];
    // The reply is one bulk string: "$<len>\r\n<len bytes>\r\n".
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        text.extend_from_slice(&chunk[..n]);
        if let Some(nl) = text.windows(2).position(|w| w == b"\r\n") {
            let len: usize = std::str::from_utf8(&text[1..nl])
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            if text.len() >= nl + 2 + len + 2 {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&text);
    let mut total = 0.0;
    for line in text.lines() {
        if let Some((k, v)) = line.split_once(':')
            && (k == "used_cpu_sys" || k == "used_cpu_user")
        {
            total += v.trim().parse::<f64>().unwrap_or(0.0);
        }
    }
    Ok(total)
}

#[repr(C)]
struct Timespec {
    tv_sec: i64,
    tv_nsec: i64,
}

unsafe extern "C" {
    fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
}

/// CPU seconds of this process, all threads (`CLOCK_PROCESS_CPUTIME_ID`).
fn process_cpu() -> f64 {
    const CLOCK_PROCESS_CPUTIME_ID: i32 = 2;
    let mut ts = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the struct we pass, laid out as the C timespec.
    let rc = unsafe { clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return f64::NAN;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn run() -> io::Result<()> {
    let args = parse_args()?;
    let raw_keys = std::fs::read(&args.keys)?;
    if !raw_keys.len().is_multiple_of(8) {
        return Err(usage("the --keys file must hold int64 values"));
    }
    let keys: Vec<i64> = raw_keys
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    drop(raw_keys);
    let values = match &args.values {
        Some(path) => std::fs::read(path)?,
        None => Vec::new(),
    };
    if args.op != Op::Find && values.len() != keys.len() * args.row_bytes {
        return Err(usage(&format!(
            "--values holds {} bytes, want {} ids x {} bytes",
            values.len(),
            keys.len(),
            args.row_bytes
        )));
    }
    let script = match &args.script {
        Some(path) => std::fs::read(path)?,
        None => Vec::new(),
    };
    let (nodes, plan) = build(&args, &keys, &values, &script);
    drop(values);
    let request_bytes: u64 = plan
        .iter()
        .flatten()
        .flatten()
        .map(|c| c.len() as u64)
        .sum();
    let commands: usize = plan.iter().flatten().map(Vec::len).sum();

    let mut streams = Vec::new();
    for addr in &nodes {
        let mut s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        let mut warm = Replies::new();
        s.write_all(b"*1\r\n$4\r\nPING\r\n")?;
        warm.wait_for(&mut s, 1)?;
        streams.push(s);
    }
    let cpu_nodes = if args.cpu_nodes.is_empty() {
        nodes.clone()
    } else {
        args.cpu_nodes.clone()
    };
    let mut server_before = BTreeMap::new();
    for addr in &cpu_nodes {
        server_before.insert(addr.clone(), server_cpu(addr)?);
    }

    let barrier = Barrier::new(nodes.len());
    let cpu0 = process_cpu();
    let t0 = Instant::now();
    let results: Vec<io::Result<Replies>> = std::thread::scope(|scope| {
        let handles: Vec<_> = streams
            .iter_mut()
            .zip(&plan)
            .map(|(stream, phases)| {
                let barrier = &barrier;
                let window = args.window;
                scope.spawn(move || {
                    let mut replies = Replies::new();
                    for cmds in phases {
                        pipeline(stream, &mut replies, cmds, window)?;
                        // A batch (or phase) ends when every node has answered.
                        barrier.wait();
                    }
                    Ok(replies)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a node thread panicked"))
            .collect()
    });
    let seconds = t0.elapsed().as_secs_f64();
    let client_cpu = process_cpu() - cpu0;
    let mut server_cpu_seconds = 0.0;
    for addr in &cpu_nodes {
        server_cpu_seconds += server_cpu(addr)? - server_before[addr];
    }

    let (mut reply_bytes, mut replies, mut nils, mut errors) = (0u64, 0usize, 0u64, 0u64);
    let mut first_error = String::new();
    for r in results {
        let r = r?;
        reply_bytes += r.bytes;
        replies += r.completed;
        nils += r.nils;
        errors += r.errors;
        if first_error.is_empty() {
            first_error = r.first_error.unwrap_or_default();
        }
    }
    let op = match args.op {
        Op::Find => "find",
        Op::Insert => "insert",
        Op::Update => "update",
        Op::Accum => "accum",
    };
    println!(
        "{{\"op\": \"{op}\", \"keys\": {}, \"tables\": {}, \"batch\": {}, \"nodes\": {}, \
         \"commands\": {commands}, \"seconds\": {seconds:.6}, \"client_cpu_seconds\": \
         {client_cpu:.6}, \"server_cpu_seconds\": {server_cpu_seconds:.6}, \"request_bytes\": \
         {request_bytes}, \"reply_bytes\": {reply_bytes}, \"replies\": {replies}, \"nils\": \
         {nils}, \"errors\": {errors}, \"first_error\": {}, \"peak_rss_bytes\": {}}}",
        keys.len(),
        args.tables,
        args.batch,
        nodes.len(),
        json_string(&first_error),
        peak_rss_bytes()
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("raw_limit: {e}");
            ExitCode::FAILURE
        }
    }
}
