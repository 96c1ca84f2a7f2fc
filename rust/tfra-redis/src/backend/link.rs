//! One connection to a Redis node.
//!
//! Plain TCP connections are our own socket, so that a batch's replies can be read into one
//! buffer and cut into frames (`reply.rs`) instead of being parsed into a `Value` per row:
//! redis-rs has no way to hand out reply bytes (its maintainers suggest an own client for
//! that, redis-rs issue #420). Everything else on these sockets still goes through redis-rs:
//! ad-hoc commands are encoded by `redis::Cmd` (the table's own by `batch.rs`), and non-row
//! replies are parsed by `redis::parse_redis_value`, via the `ConnectionLike` impl below, so
//! `cmd.query(&mut link)` works as on a redis-rs connection. TLS connections stay redis-rs
//! connections (their replies are parsed into `Value`s, and a streamed lookup sends all its
//! commands at once).

use std::io::{IoSlice, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use redis::{ConnectionLike, ErrorKind, RedisError, RedisResult, Value};

use super::options::{ConnectOptions, connect_node};
use super::reply::{FrameScanner, Reply, ReplyView};
use crate::error::{Error, Result};

/// A connection: our socket for plain TCP, redis-rs's for TLS.
pub(crate) enum Link {
    /// Plain TCP, read frame by frame.
    Plain(PlainLink),
    /// TLS, through redis-rs.
    Tls(redis::Connection),
}

/// Our side of a plain TCP connection.
pub(crate) struct PlainLink {
    stream: TcpStream,
    db: i64,
    open: bool,
    /// The read buffer of the last pipeline, shared with its replies. Once the caller has
    /// dropped them, the next pipeline reuses it: a fresh 30 MB buffer per lookup cost more
    /// in page faults and zeroing than reading the replies did.
    buf: Arc<Vec<u8>>,
    /// The most bytes `buf` keeps between pipelines (`redis_client_buffer_keep_bytes`).
    /// Keeping every buffer up to 64 MB left a 3-master cluster client at 258 MB of RSS
    /// after a burst of 65,536-id lookups from 4 threads (37 MB before it), for as long
    /// as the process lived.
    keep: usize,
}

/// The first read buffer of a pipeline; it doubles as replies arrive.
const FIRST_READ: usize = 64 * 1024;

impl Link {
    /// Connects to `host:port` with the configured timeouts, authenticates and selects the db
    /// as redis-rs would (TFRA's rules, see `ConnectOptions::redis_settings`).
    pub(crate) fn connect(opts: &ConnectOptions, host: &str, port: u16) -> RedisResult<Link> {
        if opts.tls.is_some() {
            return connect_node(
                opts.node_info(host, port),
                opts.tls.as_ref(),
                opts.connect_timeout,
                opts.socket_timeout,
            )
            .map(Link::Tls);
        }
        let mut last = None;
        for addr in (host, port).to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, opts.connect_timeout) {
                Ok(stream) => return PlainLink::handshake(stream, opts),
                Err(e) => last = Some(e),
            }
        }
        Err(last
            .unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))
            .into())
    }

    /// Sends a pipeline (the concatenation of `parts`, each a whole number of commands) and
    /// reads `expected` replies, stopping at the first transport error (redis-rs's
    /// `req_packed_commands` keeps reading after one, which on a paused server cost one socket
    /// timeout per command).
    pub(crate) fn exchange(&mut self, parts: &[&[u8]], expected: usize) -> RedisResult<Vec<Reply>> {
        match self {
            Link::Plain(link) => link.exchange(parts, expected),
            Link::Tls(conn) => {
                // One write for the whole pipeline: a write per command cost a TLS record
                // and a system call each (a cluster node's share of a batch is many parts).
                tls_send(conn, parts)?;
                let mut replies = Vec::with_capacity(expected);
                while replies.len() < expected {
                    match conn.recv_response()? {
                        // RESP3 push data is not a reply (we speak RESP2, but a server may
                        // still push).
                        Value::Push { .. } => continue,
                        reply => replies.push(Reply::Parsed(reply)),
                    }
                }
                Ok(replies)
            }
        }
    }
}

impl Link {
    /// [`Link::exchange`] for a pipeline that ends with a durable-write `WAIT`. The server
    /// holds WAIT's reply for up to `wait` (`redis_durable_write_timeout_ms`) when replicas do
    /// not confirm, so reading it with only the socket timeout raced the two: with both at
    /// their 1000 ms defaults the socket usually lost, and the caller got a timeout (never
    /// retried) instead of "durable write not confirmed" (retried when idempotent). The read
    /// timeout is `socket_timeout + wait` for this pipeline only.
    pub(crate) fn exchange_waiting(
        &mut self,
        parts: &[&[u8]],
        expected: usize,
        socket_timeout: Duration,
        wait: Duration,
    ) -> RedisResult<Vec<Reply>> {
        self.set_read_timeout(socket_timeout.saturating_add(wait))?;
        let result = self.exchange(parts, expected);
        // After a failure the connection is dropped anyway.
        if result.is_ok() {
            self.set_read_timeout(socket_timeout)?;
        }
        result
    }

    fn set_read_timeout(&mut self, timeout: Duration) -> RedisResult<()> {
        match self {
            Link::Plain(link) => Ok(link.stream.set_read_timeout(Some(timeout))?),
            Link::Tls(conn) => conn.set_read_timeout(Some(timeout)),
        }
    }
}

/// Why a streamed pipeline stopped. Either way the connection is out of step afterwards.
pub(crate) enum StreamError {
    /// The connection failed.
    Transport(RedisError),
    /// The reply handler refused a reply.
    Handler(Error),
}

/// Reply bytes a streamed pipeline keeps in flight. Sending a whole 65,536-id window at once
/// made redis-server buffer up to 35 MB of replies and spend ~20% more CPU per row than for a
/// client that keeps pace, and 36 commands of dim-128 rows still cost ~12% more. Fewer bytes
/// in flight cost round trips on a slow network: this much hides up to ~10 ms of round trip
/// at the speed one server answers, and keeps a 65,536-id lookup of dim 32 at two round trips.
const IN_FLIGHT_REPLY_BYTES: usize = 8 << 20;

/// Commands sent before the size of a reply is known.
const FIRST_FLIGHT: usize = 4;

/// Replies a streamed lookup's buffer holds before it is compacted rather than grown.
const REPLIES_PER_BUFFER: usize = 8;

impl Link {
    /// Bytes held by the read buffer kept for the next pipeline (0 for TLS, whose buffers
    /// redis-rs owns); the test of `redis_client_buffer_keep_bytes` reads it.
    #[cfg(test)]
    pub(crate) fn kept_buffer_capacity(&self) -> usize {
        match self {
            Link::Plain(link) => link.buf.capacity(),
            Link::Tls(_) => 0,
        }
    }

    /// Sends one command per entry of `cmds` and hands each reply to `on_reply` as soon as it
    /// is complete, while later commands are still running on the server; replies are
    /// dropped from the buffer once handled, so it stays about one reply in size.
    pub(crate) fn stream(
        &mut self,
        cmds: &[&[u8]],
        on_reply: &mut dyn FnMut(usize, ReplyView<'_>) -> Result<()>,
    ) -> std::result::Result<(), StreamError> {
        match self {
            Link::Plain(link) => {
                let result = link.stream(cmds, on_reply);
                if result.is_err() {
                    link.open = false;
                }
                result
            }
            Link::Tls(conn) => tls_stream(conn, cmds, on_reply),
        }
    }
}

/// Sends `parts` (whole commands) on a TLS connection in one write.
fn tls_send(conn: &mut redis::Connection, parts: &[&[u8]]) -> RedisResult<()> {
    let bytes: Vec<u8>;
    let one = match parts.iter().filter(|p| !p.is_empty()).count() {
        // redis-rs refuses an empty write (the unused WAIT slot is one).
        0 => return Ok(()),
        1 => *parts.iter().find(|p| !p.is_empty()).expect("counted one"),
        _ => {
            bytes = parts.concat();
            &bytes
        }
    };
    #[cfg(test)]
    tls_writes::count();
    conn.send_packed_command(one)
}

/// [`Link::stream`] over TLS. Commands go out a window at a time, as on plain TCP (see
/// `IN_FLIGHT_REPLY_BYTES`), each window in one write: sending every command by itself cost
/// one TLS record and one system call per command, and sending all of them before reading
/// made the server buffer every reply of a huge lookup. The window is refilled once half of
/// it is answered, so that writes stay a window's worth, not one per reply.
fn tls_stream(
    conn: &mut redis::Connection,
    cmds: &[&[u8]],
    on_reply: &mut dyn FnMut(usize, ReplyView<'_>) -> Result<()>,
) -> std::result::Result<(), StreamError> {
    let (mut sent, mut done) = (0, 0);
    let mut window = FIRST_FLIGHT;
    while done < cmds.len() {
        if sent == done || (sent < cmds.len() && sent - done <= window / 2) {
            let upto = (done + window).min(cmds.len());
            tls_send(conn, &cmds[sent..upto]).map_err(StreamError::Transport)?;
            sent = upto;
        }
        let reply = loop {
            match conn.recv_response().map_err(StreamError::Transport)? {
                Value::Push { .. } => continue,
                reply => break reply,
            }
        };
        if done == 0 {
            window = (IN_FLIGHT_REPLY_BYTES / value_bytes(&reply).max(1)).max(FIRST_FLIGHT);
        }
        on_reply(done, ReplyView::Parsed(&reply)).map_err(StreamError::Handler)?;
        done += 1;
    }
    Ok(())
}

/// About the size of a reply on the wire: its strings plus a few bytes of framing each.
fn value_bytes(value: &Value) -> usize {
    match value {
        Value::BulkString(b) => b.len() + 16,
        Value::Array(items) => items.iter().map(value_bytes).sum::<usize>() + 16,
        _ => 16,
    }
}

/// Counts the writes of TLS pipelines on this thread, for the test that a window of
/// commands is one write.
#[cfg(test)]
pub(crate) mod tls_writes {
    use std::cell::Cell;

    thread_local! {
        static WRITES: Cell<usize> = const { Cell::new(0) };
    }

    pub(crate) fn count() {
        WRITES.with(|w| w.set(w.get() + 1));
    }

    /// Writes so far on this thread.
    pub(crate) fn so_far() -> usize {
        WRITES.with(Cell::get)
    }
}

impl PlainLink {
    fn handshake(stream: TcpStream, opts: &ConnectOptions) -> RedisResult<Link> {
        stream.set_nodelay(true)?;
        if opts.keep_alive {
            let sock = redis::io::tcp::socket2::SockRef::from(&stream);
            sock.set_tcp_keepalive(
                &redis::io::tcp::socket2::TcpKeepalive::new().with_time(Duration::from_secs(60)),
            )?;
        }
        // The handshake is bounded by the connect timeout: a server that accepts TCP but does
        // not answer must not hold a new connection for a whole socket timeout.
        stream.set_read_timeout(Some(opts.connect_timeout))?;
        stream.set_write_timeout(Some(opts.connect_timeout))?;
        let mut link = Link::Plain(PlainLink {
            stream,
            db: opts.db,
            open: true,
            buf: Arc::new(Vec::new()),
            keep: opts.buffer_keep,
        });
        let settings = opts.redis_settings(opts.db);
        if let Some(password) = settings.password() {
            let mut auth = redis::cmd("AUTH");
            if let Some(user) = settings.username() {
                auth.arg(user);
            }
            auth.arg(password);
            auth.query::<()>(&mut link).map_err(auth_failed)?;
        }
        if opts.db != 0 {
            redis::cmd("SELECT").arg(opts.db).query::<()>(&mut link)?;
        }
        if let Link::Plain(plain) = &link {
            plain.stream.set_read_timeout(Some(opts.socket_timeout))?;
            plain.stream.set_write_timeout(Some(opts.socket_timeout))?;
        }
        Ok(link)
    }

    fn exchange(&mut self, parts: &[&[u8]], expected: usize) -> RedisResult<Vec<Reply>> {
        let result = self.send_and_read(parts, expected);
        if result.is_err() {
            // Replies may be half read: the connection is out of step for good.
            self.open = false;
        }
        let (buf, frames) = result?;
        let buf = Arc::new(buf);
        self.keep_buffer(buf.clone());
        Ok(frames
            .into_iter()
            .map(|range| Reply::Frame(buf.clone(), range))
            .collect())
    }

    fn send_and_read(
        &mut self,
        parts: &[&[u8]],
        expected: usize,
    ) -> RedisResult<(Vec<u8>, Vec<std::ops::Range<usize>>)> {
        self.write_parts(parts)?;
        let mut frames = Vec::with_capacity(expected);
        let mut scanner = FrameScanner::new();
        let mut buf = self.take_buffer();
        let mut filled = 0;
        while frames.len() < expected {
            filled += self.read_more(&mut buf, filled)?;
            while frames.len() < expected {
                match scanner.next_frame(&buf[..filled]) {
                    Ok(Some(frame)) => frames.push(frame),
                    Ok(None) => break,
                    Err(e) => return Err(protocol_error(e.0)),
                }
            }
        }
        check_no_leftover(&scanner, filled)?;
        Ok((buf, frames))
    }

    fn stream(
        &mut self,
        cmds: &[&[u8]],
        on_reply: &mut dyn FnMut(usize, ReplyView<'_>) -> Result<()>,
    ) -> std::result::Result<(), StreamError> {
        let transport = |e: RedisError| StreamError::Transport(e);
        let mut buf = self.take_buffer();
        let mut filled = 0;
        // Below this size the buffer grows instead of being compacted (see below).
        let mut roomy = 0;
        let mut scanner = FrameScanner::new();
        let (mut sent, mut done) = (0, 0);
        let mut window = FIRST_FLIGHT;
        while done < cmds.len() {
            let upto = (done + window).min(cmds.len());
            if upto > sent {
                self.write_parts(&cmds[sent..upto])
                    .map_err(|e| transport(e.into()))?;
                sent = upto;
            }
            // Handled replies leave a full buffer by moving the start of the next reply to
            // the front. The buffer holds several replies first, so that this copy is a small
            // part of what was read (moving the tail after every read copied up to half the
            // rows a second time).
            let consumed = scanner.start();
            if filled == buf.len() && consumed > 0 && buf.len() >= roomy {
                buf.copy_within(consumed..filled, 0);
                filled -= consumed;
                scanner.shift(consumed);
            }
            filled += self
                .read_more(&mut buf, filled)
                .map_err(|e| transport(e.into()))?;
            while done < cmds.len() {
                let frame = scanner
                    .next_frame(&buf[..filled])
                    .map_err(|e| transport(protocol_error(e.0)))?;
                let Some(frame) = frame else { break };
                if done == 0 {
                    // Replies of one batch are about the same size (ids x row bytes).
                    let size = frame.len().max(1);
                    window = (IN_FLIGHT_REPLY_BYTES / size).max(FIRST_FLIGHT);
                    // Within the kept size when possible, so that the buffer is compacted
                    // rather than grown past what the connection may keep.
                    roomy = (REPLIES_PER_BUFFER * size).min(self.keep);
                }
                on_reply(done, ReplyView::Frame(&buf[frame])).map_err(StreamError::Handler)?;
                done += 1;
            }
            if scanner.start() == filled {
                // Everything read is handled: start over at the front, nothing to move.
                scanner.shift(filled);
                filled = 0;
            }
        }
        check_no_leftover(&scanner, filled).map_err(transport)?;
        self.keep_buffer(Arc::new(buf));
        Ok(())
    }

    /// Reads what the socket has into `buf[filled..]`, doubling `buf` first when it is full;
    /// returns the number of bytes read. The buffer is initialized up to its length (zeros or
    /// an older reply), so growing costs one memset of the new part and reuse costs nothing.
    fn read_more(&mut self, buf: &mut Vec<u8>, filled: usize) -> std::io::Result<usize> {
        if filled == buf.len() {
            // A big reply (a node's share of a 65,536-row lookup is ~11 MB) grows the buffer
            // past what the connection keeps, on every call: huge pages fault it in 2 MiB at
            // a time instead of 4 KiB.
            buf.reserve_exact(buf.len());
            super::advise_huge_pages(buf.as_ptr(), buf.capacity());
            buf.resize(buf.len() * 2, 0);
        }
        match self.stream.read(&mut buf[filled..])? {
            0 => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            )),
            n => Ok(n),
        }
    }

    /// Writes all parts with as few system calls as the socket allows (a cluster node's
    /// share of a batch is many separate commands; copying them together would cost a pass
    /// over every row).
    fn write_parts(&mut self, parts: &[&[u8]]) -> std::io::Result<()> {
        let mut slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
        let mut rest = &mut slices[..];
        IoSlice::advance_slices(&mut rest, 0);
        while !rest.is_empty() {
            match self.stream.write_vectored(rest) {
                Ok(0) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::WriteZero,
                        "the server stopped accepting data",
                    ));
                }
                Ok(n) => IoSlice::advance_slices(&mut rest, n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The buffer kept from the last pipeline when no reply still uses it, else a new one.
    fn take_buffer(&mut self) -> Vec<u8> {
        let mut buf = match Arc::get_mut(&mut self.buf) {
            Some(kept) => std::mem::take(kept),
            None => Vec::new(),
        };
        if buf.is_empty() {
            buf.resize(FIRST_READ, 0);
        }
        buf
    }

    /// Keeps `buf` for the next pipeline, cut down to `keep` bytes when it grew larger. A
    /// buffer that replies still share cannot be cut: the connection lets go of it, and it is
    /// freed with the last reply.
    fn keep_buffer(&mut self, mut buf: Arc<Vec<u8>>) {
        if buf.capacity() > self.keep {
            match Arc::get_mut(&mut buf) {
                Some(own) => {
                    own.truncate(self.keep);
                    own.shrink_to_fit();
                }
                None => buf = Arc::new(Vec::new()),
            }
        }
        self.buf = buf;
    }
}

fn protocol_error(detail: String) -> RedisError {
    RedisError::from((ErrorKind::Parse, "protocol error", detail))
}

/// Fails when bytes follow the last reply: something else is talking on this connection.
fn check_no_leftover(scanner: &FrameScanner, filled: usize) -> RedisResult<()> {
    if scanner.start() == filled {
        return Ok(());
    }
    Err(protocol_error(
        "the server sent more than the replies asked for".into(),
    ))
}

/// AUTH refusals become authentication errors, as from redis-rs's own handshake; ACL codes
/// are kept as they are, since the error classification reads them.
fn auth_failed(err: RedisError) -> RedisError {
    if err.is_io_error() || err.code().is_some_and(super::is_access_code) {
        return err;
    }
    RedisError::from((
        ErrorKind::AuthenticationFailed,
        "authentication failed",
        err.to_string(),
    ))
}

impl ConnectionLike for Link {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        match self {
            Link::Tls(c) => c.req_packed_command(cmd),
            plain => {
                let mut replies = plain.exchange(&[cmd], 1)?;
                Ok(replies.pop().map(Reply::into_value).unwrap_or(Value::Nil))
            }
        }
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        match self {
            Link::Tls(c) => c.req_packed_commands(cmd, offset, count),
            plain => Ok(plain
                .exchange(&[cmd], offset + count)?
                .into_iter()
                .skip(offset)
                .map(Reply::into_value)
                .collect()),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::Plain(l) => l.db,
            Link::Tls(c) => c.get_db(),
        }
    }

    fn check_connection(&mut self) -> bool {
        redis::cmd("PING").query::<Value>(self).is_ok()
    }

    fn is_open(&self) -> bool {
        match self {
            Link::Plain(l) => l.open,
            Link::Tls(c) => c.is_open(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RedisConfig;
    use crate::test_servers::Standalone;

    fn link_to(server: &Standalone, keep: u64) -> Link {
        let config = RedisConfig {
            redis_connection_mode: crate::config::ConnectionMode::Standalone,
            redis_host_port: vec![server.port()],
            redis_client_buffer_keep_bytes: keep,
            ..Default::default()
        };
        let opts = ConnectOptions::from_config(&config).unwrap();
        Link::connect(&opts, "127.0.0.1", server.port()).unwrap()
    }

    /// 16,384 fields of 512 bytes in hash `big`: an HMGET of all of them answers ~8.5 MB.
    fn fill(link: &mut Link) -> Vec<u8> {
        let mut hmget = redis::cmd("HMGET");
        hmget.arg("big");
        for chunk in 0..16 {
            let mut hset = redis::cmd("HSET");
            hset.arg("big");
            for i in chunk * 1024..(chunk + 1) * 1024 {
                hset.arg(i).arg(vec![i as u8; 512]);
                hmget.arg(i);
            }
            hset.query::<()>(link).unwrap();
        }
        hmget.get_packed_command()
    }

    #[test]
    fn a_big_reply_leaves_no_more_than_the_kept_bytes_on_the_connection() {
        let server = Standalone::start();
        let keep = 1 << 20;
        let mut link = link_to(&server, keep);
        let hmget = fill(&mut link);
        let replies = link.exchange(&[&hmget], 1).unwrap();
        let mut bytes = 0;
        let fields = replies[0]
            .for_each_bulk(|_, b| {
                bytes += b.map_or(0, <[u8]>::len);
                Ok::<_, ()>(())
            })
            .unwrap()
            .unwrap();
        assert_eq!((fields, bytes), (16_384, 16_384 * 512));
        // While the reply lives, its bytes are its own; the connection holds nothing big.
        assert!(link.kept_buffer_capacity() <= keep as usize);
        drop(replies);
        assert!(link.kept_buffer_capacity() <= keep as usize);

        // A streamed read compacts within the kept size and stays there.
        let cmds: Vec<Vec<u8>> = (0..16)
            .map(|chunk| {
                let mut c = redis::cmd("HMGET");
                c.arg("big");
                for i in chunk * 1024..(chunk + 1) * 1024 {
                    c.arg(i);
                }
                c.get_packed_command()
            })
            .collect();
        let parts: Vec<&[u8]> = cmds.iter().map(Vec::as_slice).collect();
        let mut rows = 0;
        let counted = link.stream(&parts, &mut |_, reply| {
            rows += reply
                .for_each_bulk(|_, b| {
                    assert_eq!(b.map(<[u8]>::len), Some(512));
                    Ok::<_, ()>(())
                })
                .unwrap()
                .unwrap();
            Ok(())
        });
        assert!(counted.is_ok());
        assert_eq!(rows, 16_384);
        let kept = link.kept_buffer_capacity();
        assert!(kept > 0 && kept <= keep as usize, "kept {kept} bytes");

        // A small reply afterwards reuses what was kept.
        let ping = redis::cmd("PING").get_packed_command();
        link.exchange(&[&ping], 1).unwrap();
        assert_eq!(link.kept_buffer_capacity(), kept);
    }
}

#[cfg(test)]
mod tls_tests {
    use super::*;
    use crate::config::{ConnectionMode, RedisConfig};
    use crate::test_servers::{ServerOptions, Standalone, TlsCerts, find_free_port};

    #[test]
    fn a_tls_pipeline_is_one_write_and_a_streamed_one_a_write_per_window() {
        let certs = TlsCerts::make();
        let tls_port = find_free_port(false);
        let _server = Standalone::start_with(ServerOptions {
            extra_args: certs.server_args(tls_port),
            ..Default::default()
        });
        let config = RedisConfig {
            redis_connection_mode: ConnectionMode::Standalone,
            redis_host_port: vec![tls_port],
            redis_tls: true,
            redis_tls_ca_cert: certs.ca().display().to_string(),
            ..Default::default()
        };
        let opts = ConnectOptions::from_config(&config).unwrap();
        let mut link = Link::connect(&opts, "127.0.0.1", tls_port).unwrap();
        assert!(matches!(link, Link::Tls(_)));

        // 64 commands of 100 rows each, as a batch hands them over: one part per command.
        let row = |i: u32| vec![(i % 251) as u8; 64];
        let hsets: Vec<Vec<u8>> = (0..64u32)
            .map(|c| {
                let mut cmd = redis::cmd("HSET");
                cmd.arg("tls_bucket");
                for i in c * 100..(c + 1) * 100 {
                    cmd.arg(i).arg(row(i));
                }
                cmd.get_packed_command()
            })
            .collect();
        let parts: Vec<&[u8]> = hsets.iter().map(Vec::as_slice).collect();
        let before = tls_writes::so_far();
        let replies = link.exchange(&parts, parts.len()).unwrap();
        assert_eq!(
            tls_writes::so_far() - before,
            1,
            "one write for the pipeline"
        );
        assert!(replies.iter().all(|r| r.as_int() == Some(100)));

        let hmgets: Vec<Vec<u8>> = (0..64u32)
            .map(|c| {
                let mut cmd = redis::cmd("HMGET");
                cmd.arg("tls_bucket");
                for i in c * 100..(c + 1) * 100 {
                    cmd.arg(i);
                }
                cmd.get_packed_command()
            })
            .collect();
        let cmds: Vec<&[u8]> = hmgets.iter().map(Vec::as_slice).collect();
        let before = tls_writes::so_far();
        let mut seen = 0;
        link.stream(&cmds, &mut |c, reply| {
            reply
                .for_each_bulk(|k, b| {
                    let i = c as u32 * 100 + k as u32;
                    assert_eq!(b, Some(&row(i)[..]), "row {i}");
                    seen += 1;
                    Ok::<_, ()>(())
                })
                .unwrap()
                .unwrap();
            Ok(())
        })
        .map_err(|_| "stream failed")
        .unwrap();
        assert_eq!(seen, 6400);
        // The first flight, then the rest: these replies are small, so one window holds them.
        assert_eq!(
            tls_writes::so_far() - before,
            2,
            "writes of the streamed pipeline"
        );
    }
}
