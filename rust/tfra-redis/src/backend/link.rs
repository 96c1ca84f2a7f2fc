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
}

/// The first read buffer of a pipeline; it doubles as replies arrive.
const FIRST_READ: usize = 64 * 1024;

/// Read buffers up to this size stay with their connection for the next pipeline (a window
/// of 65,536 rows of dim 128 needs about 35 MB).
const MAX_KEPT_BUFFER: usize = 64 << 20;

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
                // redis-rs refuses an empty write (the unused WAIT slot is one).
                for part in parts.iter().filter(|p| !p.is_empty()) {
                    conn.send_packed_command(part)?;
                }
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
            Link::Tls(conn) => {
                for cmd in cmds {
                    conn.send_packed_command(cmd)
                        .map_err(StreamError::Transport)?;
                }
                for i in 0..cmds.len() {
                    let reply = loop {
                        match conn.recv_response().map_err(StreamError::Transport)? {
                            Value::Push { .. } => continue,
                            reply => break reply,
                        }
                    };
                    on_reply(i, ReplyView::Parsed(&reply)).map_err(StreamError::Handler)?;
                }
                Ok(())
            }
        }
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
                    roomy = (REPLIES_PER_BUFFER * size).min(MAX_KEPT_BUFFER);
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

    fn keep_buffer(&mut self, buf: Arc<Vec<u8>>) {
        if buf.len() <= MAX_KEPT_BUFFER {
            self.buf = buf;
        }
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
    if err.is_io_error() || matches!(err.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM")) {
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
