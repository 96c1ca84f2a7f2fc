//! Replies kept as the bytes the server sent.
//!
//! redis-rs turns every reply into a [`Value`] tree: an `HMGET` of 1,024 rows becomes 1,024
//! separately allocated `Vec<u8>`s that the table then copies into its output and frees. The
//! profile of a lookup showed that parsing and those allocations took over half of the
//! client's CPU time. On our own sockets (see `link.rs`) a batch's replies are read into one
//! buffer; this module finds where each reply ends and lets the table copy rows straight out
//! of it. Anything else (status, errors, scan pages) is still handed to redis-rs's parser, one
//! complete reply at a time, so only the framing is ours.

use std::ops::Range;
use std::sync::Arc;

use redis::{ServerError, Value};

/// The RESP reply of one command.
#[derive(Clone, Debug)]
pub enum Reply {
    /// Bytes of one complete reply inside a buffer shared by the replies of one pipeline.
    Frame(Arc<Vec<u8>>, Range<usize>),
    /// A reply parsed by redis-rs (TLS connections go through redis-rs's own socket).
    Parsed(Value),
}

/// A reply that is not the array of bulk strings the caller expected.
#[derive(Debug, PartialEq, Eq)]
pub struct Unexpected(pub &'static str);

impl Reply {
    /// A borrowed view of the reply.
    pub fn view(&self) -> ReplyView<'_> {
        match self {
            Reply::Frame(buf, range) => ReplyView::Frame(&buf[range.clone()]),
            Reply::Parsed(v) => ReplyView::Parsed(v),
        }
    }

    /// The server's error, when the reply is one.
    pub fn server_error(&self) -> Option<ServerError> {
        self.view().server_error()
    }

    /// The reply as a redis-rs value (parsed now for a frame).
    pub fn to_value(&self) -> Value {
        self.view().to_value()
    }

    /// Consumes the reply into a redis-rs value.
    pub fn into_value(self) -> Value {
        match self {
            Reply::Parsed(v) => v,
            frame => frame.to_value(),
        }
    }

    /// The integer of an integer reply.
    pub fn as_int(&self) -> Option<i64> {
        match self.to_value() {
            Value::Int(n) => Some(n),
            _ => None,
        }
    }

    /// See [`ReplyView::for_each_bulk`].
    pub fn for_each_bulk<E>(
        &self,
        f: impl FnMut(usize, Option<&[u8]>) -> Result<(), E>,
    ) -> Result<Result<usize, E>, Unexpected> {
        self.view().for_each_bulk(f)
    }
}

/// A reply borrowed from wherever it was read.
#[derive(Clone, Copy, Debug)]
pub enum ReplyView<'a> {
    /// The bytes of one complete reply.
    Frame(&'a [u8]),
    /// A reply parsed by redis-rs.
    Parsed(&'a Value),
}

impl ReplyView<'_> {
    /// The server's error, when the reply is one.
    pub fn server_error(&self) -> Option<ServerError> {
        match *self {
            ReplyView::Frame(bytes) if bytes.first() != Some(&b'-') => None,
            ReplyView::Frame(_) => match self.to_value() {
                Value::ServerError(e) => Some(e),
                _ => None,
            },
            ReplyView::Parsed(Value::ServerError(e)) => Some(e.clone()),
            ReplyView::Parsed(_) => None,
        }
    }

    /// The reply as a redis-rs value.
    pub fn to_value(&self) -> Value {
        match *self {
            ReplyView::Parsed(v) => v.clone(),
            // The scanner only cuts complete, well-formed replies, so this parse cannot fail;
            // if it somehow did, Nil makes the caller report an unexpected reply.
            ReplyView::Frame(bytes) => redis::parse_redis_value(bytes).unwrap_or(Value::Nil),
        }
    }

    /// Calls `f` with each element of an array of bulk strings (`None` for a nil), in order,
    /// without copying; returns the number of elements. Stops at the first error of `f`.
    pub fn for_each_bulk<E>(
        &self,
        mut f: impl FnMut(usize, Option<&[u8]>) -> Result<(), E>,
    ) -> Result<Result<usize, E>, Unexpected> {
        match *self {
            ReplyView::Parsed(Value::Array(items)) => {
                for (k, item) in items.iter().enumerate() {
                    let item = match item {
                        Value::BulkString(b) => Some(b.as_slice()),
                        Value::Nil => None,
                        _ => return Err(Unexpected("an array element is not a string")),
                    };
                    if let Err(e) = f(k, item) {
                        return Ok(Err(e));
                    }
                }
                Ok(Ok(items.len()))
            }
            ReplyView::Parsed(_) => Err(Unexpected("not an array")),
            ReplyView::Frame(bytes) => {
                let mut at = 0;
                let (kind, count) = header(bytes, &mut at).ok_or(Unexpected("not an array"))?;
                if kind != b'*' || count < 0 {
                    return Err(Unexpected("not an array"));
                }
                for k in 0..count as usize {
                    let (kind, len) = header(bytes, &mut at).ok_or(Unexpected("truncated"))?;
                    let item = match (kind, len) {
                        (b'$', -1) | (b'_', _) => None,
                        (b'$', len) if len >= 0 => {
                            let body = bytes
                                .get(at..at + len as usize)
                                .ok_or(Unexpected("truncated"))?;
                            at += len as usize + 2;
                            Some(body)
                        }
                        _ => return Err(Unexpected("an array element is not a string")),
                    };
                    if let Err(e) = f(k, item) {
                        return Ok(Err(e));
                    }
                }
                Ok(Ok(count as usize))
            }
        }
    }
}

/// Reads the `<type><integer>\r\n` line at `*at` and moves past it; `None` when the line is
/// incomplete or its integer is malformed. Simple lines (`+OK`) report 0.
fn header(buf: &[u8], at: &mut usize) -> Option<(u8, i64)> {
    let kind = *buf.get(*at)?;
    let rest = buf.get(*at + 1..)?;
    let nl = rest.iter().position(|&b| b == b'\n')?;
    if nl == 0 || rest[nl - 1] != b'\r' {
        return None;
    }
    let line = &rest[..nl - 1];
    *at += nl + 2;
    let value = match kind {
        b'$' | b'*' | b':' | b'=' | b'!' | b'%' | b'~' | b'>' | b'|' => parse_int(line)?,
        _ => 0,
    };
    Some((kind, value))
}

fn parse_int(line: &[u8]) -> Option<i64> {
    let (neg, digits) = match line.split_first() {
        Some((b'-', d)) => (true, d),
        _ => (false, line),
    };
    if digits.is_empty() || digits.len() > 18 {
        return None;
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n * 10 + i64::from(d - b'0');
    }
    Some(if neg { -n } else { n })
}

/// Finds where complete replies end in a buffer that grows as bytes arrive. It resumes where
/// it stopped, so a big reply read in many pieces is scanned once, not once per piece.
#[derive(Debug)]
pub(crate) struct FrameScanner {
    /// Start of the reply being scanned.
    start: usize,
    /// Start of the first element not yet complete.
    at: usize,
    /// Elements (the reply itself included) still to complete the current reply.
    pending: u64,
}

/// A reply that breaks the protocol (the connection cannot be used any more).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ProtocolError(pub String);

impl FrameScanner {
    /// A scanner at the start of `buf`.
    pub(crate) fn new() -> Self {
        FrameScanner {
            start: 0,
            at: 0,
            pending: 1,
        }
    }

    /// Forgets the first `n` bytes of the buffer (the caller removed consumed replies); `n`
    /// must not go past the start of the reply being scanned.
    pub(crate) fn shift(&mut self, n: usize) {
        debug_assert!(n <= self.start);
        self.start -= n;
        self.at -= n;
    }

    /// Where the reply being scanned starts: everything before it is complete replies.
    pub(crate) fn start(&self) -> usize {
        self.start
    }

    /// The next complete reply in `buf`, or `None` until more bytes arrive.
    pub(crate) fn next_frame(&mut self, buf: &[u8]) -> Result<Option<Range<usize>>, ProtocolError> {
        while self.pending > 0 {
            let mut at = self.at;
            let Some(&kind) = buf.get(at) else {
                return Ok(None);
            };
            let Some((_, n)) = header(buf, &mut at) else {
                // An incomplete line, or a number that does not parse: tell which.
                let rest = &buf[self.at..];
                if rest.contains(&b'\n') || rest.len() > 64 {
                    return Err(ProtocolError(format!(
                        "malformed reply line {:?}",
                        String::from_utf8_lossy(&rest[..rest.len().min(40)])
                    )));
                }
                return Ok(None);
            };
            match kind {
                b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => {}
                b'$' | b'=' | b'!' => {
                    if n >= 0 {
                        let end = at + n as usize + 2;
                        if buf.len() < end {
                            return Ok(None);
                        }
                        if &buf[end - 2..end] != b"\r\n" {
                            return Err(ProtocolError("a bulk string overruns its length".into()));
                        }
                        at = end;
                    }
                }
                b'*' | b'~' | b'>' => self.pending += n.max(0) as u64,
                b'%' | b'|' => self.pending += 2 * n.max(0) as u64,
                other => {
                    return Err(ProtocolError(format!(
                        "unknown reply type byte 0x{other:02x}"
                    )));
                }
            }
            self.pending -= 1;
            self.at = at;
        }
        let frame = self.start..self.at;
        self.start = self.at;
        self.pending = 1;
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(buf: &[u8]) -> Vec<Range<usize>> {
        let mut s = FrameScanner::new();
        let mut out = Vec::new();
        while let Some(f) = s.next_frame(buf).unwrap() {
            out.push(f);
        }
        out
    }

    const SAMPLE: &[u8] = b"+OK\r\n:42\r\n$3\r\nabc\r\n$-1\r\n*3\r\n$2\r\nxy\r\n$-1\r\n*1\r\n:1\r\n-ERR bad\r\n*0\r\n*-1\r\n";

    #[test]
    fn cuts_every_kind_of_resp2_reply() {
        let got = frames(SAMPLE);
        let texts: Vec<&[u8]> = got.iter().map(|r| &SAMPLE[r.clone()]).collect();
        assert_eq!(
            texts,
            vec![
                &b"+OK\r\n"[..],
                b":42\r\n",
                b"$3\r\nabc\r\n",
                b"$-1\r\n",
                b"*3\r\n$2\r\nxy\r\n$-1\r\n*1\r\n:1\r\n",
                b"-ERR bad\r\n",
                b"*0\r\n",
                b"*-1\r\n",
            ]
        );
        // Each frame is exactly one value for redis-rs's parser.
        for r in got {
            redis::parse_redis_value(&SAMPLE[r]).unwrap();
        }
    }

    #[test]
    fn resumes_when_bytes_arrive_one_at_a_time() {
        let mut s = FrameScanner::new();
        let mut got = Vec::new();
        for end in 0..=SAMPLE.len() {
            while let Some(f) = s.next_frame(&SAMPLE[..end]).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, frames(SAMPLE));
    }

    #[test]
    fn rejects_garbage() {
        let mut s = FrameScanner::new();
        assert!(s.next_frame(b"?what\r\n").is_err());
        let mut s = FrameScanner::new();
        assert!(s.next_frame(b"$x\r\n").is_err());
        let mut s = FrameScanner::new();
        assert!(s.next_frame(b"$2\r\nabc\r\n").is_err());
    }

    #[test]
    fn bulk_arrays_read_without_copies_match_redis_rs() {
        let buf = Arc::new(b"*4\r\n$3\r\nabc\r\n$-1\r\n$0\r\n\r\n$2\r\n\r\n\r\n".to_vec());
        let frame = Reply::Frame(buf.clone(), 0..buf.len());
        let parsed = Reply::Parsed(frame.to_value());
        for reply in [frame, parsed] {
            let mut seen = Vec::new();
            let n = reply
                .for_each_bulk(|k, item| {
                    seen.push((k, item.map(<[u8]>::to_vec)));
                    Ok::<(), ()>(())
                })
                .unwrap()
                .unwrap();
            assert_eq!(n, 4);
            assert_eq!(
                seen,
                vec![
                    (0, Some(b"abc".to_vec())),
                    (1, None),
                    (2, Some(Vec::new())),
                    (3, Some(b"\r\n".to_vec()))
                ]
            );
        }
    }

    #[test]
    fn errors_and_wrong_shapes_are_reported() {
        let buf = Arc::new(b"-WRONGTYPE Operation against a key\r\n:5\r\n".to_vec());
        let err = Reply::Frame(buf.clone(), 0..36);
        assert_eq!(err.server_error().unwrap().code(), "WRONGTYPE");
        let int = Reply::Frame(buf.clone(), 36..buf.len());
        assert!(int.server_error().is_none());
        assert_eq!(int.as_int(), Some(5));
        assert_eq!(
            int.for_each_bulk(|_, _| Ok::<(), ()>(())).unwrap_err(),
            Unexpected("not an array")
        );
        let stop = Arc::new(b"*2\r\n$1\r\na\r\n$1\r\nb\r\n".to_vec());
        let r = Reply::Frame(stop.clone(), 0..stop.len());
        assert_eq!(
            r.for_each_bulk(|k, _| if k == 1 { Err("stop") } else { Ok(()) }),
            Ok(Err("stop"))
        );
    }
}
