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
    pub fn to_value(self) -> Value {
        match self {
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

/// A decimal `i64`, the whole range (`:` replies reach it, e.g. `INCRBY`); `None` when it
/// overflows or is not a number.
fn parse_int(line: &[u8]) -> Option<i64> {
    let (neg, digits) = match line.split_first() {
        Some((b'-', d)) => (true, d),
        _ => (false, line),
    };
    if digits.is_empty() {
        return None;
    }
    // Accumulated negative, so that i64::MIN, which has no positive counterpart, fits.
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_sub(i64::from(d - b'0'))?;
    }
    if neg { Some(n) } else { n.checked_neg() }
}

/// The longest line of a reply type whose line is a number (with sign, `\r\n` and slack).
/// Past it an incomplete line is garbage, not a line still arriving.
const MAX_NUMBER_LINE: usize = 64;

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
                // An incomplete line, or a number that does not parse: tell which. Status and
                // error lines have no length limit: a MOVED naming a long host name, split by
                // a read, is still arriving.
                let rest = &buf[self.at..];
                let number_line = matches!(
                    kind,
                    b'$' | b'*' | b':' | b'=' | b'!' | b'%' | b'~' | b'>' | b'|'
                );
                if rest.contains(&b'\n') || (number_line && rest.len() > MAX_NUMBER_LINE) {
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
                        let end = usize::try_from(n)
                            .ok()
                            .and_then(|n| at.checked_add(n)?.checked_add(2))
                            .ok_or_else(|| {
                                ProtocolError(format!("a bulk string claims {n} bytes"))
                            })?;
                        if buf.len() < end {
                            return Ok(None);
                        }
                        if &buf[end - 2..end] != b"\r\n" {
                            return Err(ProtocolError("a bulk string overruns its length".into()));
                        }
                        at = end;
                    }
                }
                b'*' | b'~' | b'>' | b'%' | b'|' => {
                    let per_entry = if matches!(kind, b'%' | b'|') { 2 } else { 1 };
                    // Counts now reach i64::MAX: no real reply holds that many elements, and
                    // adding them up must not overflow.
                    self.pending = (n.max(0) as u64)
                        .checked_mul(per_entry)
                        .and_then(|more| self.pending.checked_add(more))
                        .ok_or_else(|| ProtocolError(format!("a reply claims {n} elements")))?;
                }
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

    /// Replies captured from redis-server 7 for a pipeline of SET (a value holding CRLF), GET,
    /// GET of a missing key, HSET, HMGET, SET, INCRBY up to i64::MAX, INCRBY down to i64::MIN,
    /// a script returning a MOVED error with a long host name, a script returning nested
    /// arrays, SCAN, HLEN, LRANGE of a missing key, PING, an unknown command and WRONGTYPE.
    const REAL: &[u8] =
        b"+OK\r\n$4\r\nv\r\nx\r\n$-1\r\n:2\r\n*3\r\n$3\r\nabc\r\n$-1\r\n$0\r\n\r\n+OK\r\n\
        :9223372036854775807\r\n:-9223372036854775808\r\n-MOVED 12182 hhhhhhhhhhhhhhhhhhhhhhhhhhhhh\
        hhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhh\
        .example.com:6379\r\n*4\r\n:1\r\n*2\r\n$1\r\na\r\n$-1\r\n*0\r\n$1\r\nx\r\n*2\r\n$1\r\n0\r\n\
        *4\r\n$1\r\nh\r\n$1\r\nn\r\n$1\r\nk\r\n$1\r\nm\r\n:2\r\n*0\r\n+PONG\r\n-ERR unknown \
        command 'WRONGCMD', with args beginning with: \r\n-WRONGTYPE Operation against a key \
        holding the wrong kind of value\r\n";

    #[test]
    fn a_long_error_line_split_by_a_read_waits_for_the_rest() {
        let moved = format!("-MOVED 12182 {}.example.com:6379\r\n", "h".repeat(200));
        let moved = moved.as_bytes();
        for cut in [1, 40, 65, 100, moved.len() - 2, moved.len() - 1] {
            let mut s = FrameScanner::new();
            assert_eq!(s.next_frame(&moved[..cut]), Ok(None), "cut at {cut}");
            assert_eq!(
                s.next_frame(moved),
                Ok(Some(0..moved.len())),
                "cut at {cut}"
            );
        }
        let status = format!("+{}\r\n", "s".repeat(1000));
        assert_eq!(frames(status.as_bytes()), vec![0..status.len()]);
        // A number line has no reason to be long: past the limit it is garbage.
        let mut s = FrameScanner::new();
        assert!(
            s.next_frame(format!("*{}", "1".repeat(70)).as_bytes())
                .is_err()
        );
    }

    #[test]
    fn integers_use_the_whole_i64_range() {
        for n in [
            i64::MAX,
            i64::MIN,
            i64::MAX - 1,
            i64::MIN + 1,
            0,
            -1,
            1_000_000_000_000_000_000,
        ] {
            let line = format!(":{n}\r\n");
            assert_eq!(parse_int(&line.as_bytes()[1..line.len() - 2]), Some(n));
            let buf = Arc::new(line.into_bytes());
            assert_eq!(frames(&buf), vec![0..buf.len()]);
            assert_eq!(Reply::Frame(buf.clone(), 0..buf.len()).as_int(), Some(n));
        }
        for bad in [
            &b"9223372036854775808"[..],
            b"-9223372036854775809",
            b"99999999999999999999",
            b"-",
            b"",
            b"1-",
            b"+1",
        ] {
            assert_eq!(parse_int(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        // Element counts that large are refused instead of overflowing the count of elements
        // still to come.
        let mut s = FrameScanner::new();
        let huge = format!("*{m}\r\n*{m}\r\n*{m}\r\n%{m}\r\n", m = i64::MAX);
        assert!(s.next_frame(huge.as_bytes()).is_err());
        let mut s = FrameScanner::new();
        assert_eq!(
            s.next_frame(format!("${}\r\nab", i64::MAX).as_bytes()),
            Ok(None)
        );
    }

    /// xorshift64*: reproducible randomness without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A random RESP2 reply of the kinds servers send, encoded.
    fn random_reply(rng: &mut Rng, depth: u32, out: &mut Vec<u8>) {
        let kinds = if depth >= 3 { 6 } else { 8 };
        match rng.below(kinds) {
            0 => {
                let len = [0, 2, 70, 300][rng.below(4) as usize];
                let text: String = (0..len).map(|i| (b'a' + (i % 26) as u8) as char).collect();
                out.extend_from_slice(format!("+{text}\r\n").as_bytes());
            }
            1 => {
                let host = "h".repeat(rng.below(300) as usize);
                let slot = rng.below(16384);
                out.extend_from_slice(format!("-MOVED {slot} {host}:6379\r\n").as_bytes());
            }
            2 => {
                let n = match rng.below(4) {
                    0 => i64::MAX - rng.below(1000) as i64,
                    1 => i64::MIN + rng.below(1000) as i64,
                    _ => rng.next() as i64 >> rng.below(64),
                };
                out.extend_from_slice(format!(":{n}\r\n").as_bytes());
            }
            3 => out.extend_from_slice(b"$-1\r\n"),
            4 | 5 => {
                let len = [0, 1, 2, 17, 5000][rng.below(5) as usize];
                // Bytes that look like protocol: CR, LF, '$', '*' and digits.
                let body: Vec<u8> = (0..len)
                    .map(|_| b"\r\n$*:-+0123456789x"[rng.below(18) as usize])
                    .collect();
                out.extend_from_slice(format!("${len}\r\n").as_bytes());
                out.extend_from_slice(&body);
                out.extend_from_slice(b"\r\n");
            }
            6 => out.extend_from_slice(b"*-1\r\n"),
            _ => {
                let n = rng.below(6);
                out.extend_from_slice(format!("*{n}\r\n").as_bytes());
                for _ in 0..n {
                    random_reply(rng, depth + 1, out);
                }
            }
        }
    }

    /// Feeds `stream` to a scanner in pieces cut at random points, as socket reads cut it, and
    /// checks that the frames cover the stream and are, in order, the values redis-rs's parser
    /// reads from the whole stream.
    fn check_random_splits(stream: &[u8], rng: &mut Rng) {
        // The parser keeps what it buffered between calls, so it reads value after value.
        let mut parser = redis::Parser::new();
        let mut reader = stream;
        let want: Vec<Value> =
            std::iter::from_fn(|| parser.parse_value(&mut reader).ok()).collect();
        let mut s = FrameScanner::new();
        let mut got = Vec::new();
        let (mut end, mut covered) = (0, 0);
        while end < stream.len() {
            end = (end + 1 + rng.below(stream.len() as u64 / 4 + 2) as usize).min(stream.len());
            while let Some(f) = s.next_frame(&stream[..end]).unwrap() {
                assert_eq!(f.start, covered);
                covered = f.end;
                got.push(redis::parse_redis_value(&stream[f]).unwrap());
            }
        }
        assert_eq!(covered, stream.len());
        assert_eq!(got, want);
    }

    #[test]
    fn random_splits_of_real_and_generated_replies_match_redis_rs() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..200 {
            check_random_splits(REAL, &mut rng);
        }
        for _ in 0..2000 {
            let mut stream = Vec::new();
            for _ in 0..1 + rng.below(8) {
                random_reply(&mut rng, 0, &mut stream);
            }
            check_random_splits(&stream, &mut rng);
        }
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
