//! A batch of commands encoded once, straight into one buffer.
//!
//! Building a `redis::Cmd` per bucket copies every row into the command, growing its buffer
//! by doubling, and packing the pipeline copies it all again: for an insert of 65,536 rows of
//! dim 128 those copies and their page faults were half the client's time. The table writes
//! its commands here instead, in RESP form, and backends send the bytes as they are.

use std::ops::Range;

use redis::Cmd;

/// One command inside a [`Batch`].
#[derive(Clone, Debug)]
struct Entry {
    /// Its bytes in the batch buffer.
    bytes: Range<usize>,
    /// Its key (the bucket): where a cluster routes it, and what error messages name.
    key: Range<usize>,
    /// The command name, upper case.
    name: String,
}

/// Commands in RESP form, back to back, with their names and keys.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    buf: Vec<u8>,
    entries: Vec<Entry>,
    /// Arguments the open command still expects.
    missing: usize,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Empties the batch, keeping its buffers for the next one.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.entries.clear();
        self.missing = 0;
    }

    /// Starts a command of `args` arguments after its name; the caller then gives exactly
    /// that many with [`Batch::arg`] and [`Batch::key`] (one of them the key).
    pub fn command(&mut self, name: &str, args: usize) {
        assert_eq!(self.missing, 0, "the previous command is missing arguments");
        let start = self.buf.len();
        self.header(b'*', args + 1);
        self.bulk(name.as_bytes());
        self.entries.push(Entry {
            bytes: start..start,
            key: 0..0,
            name: name.to_ascii_uppercase(),
        });
        self.missing = args;
        self.close_if_done();
    }

    /// Adds an argument to the open command.
    pub fn arg(&mut self, arg: &[u8]) {
        assert!(self.missing > 0, "more arguments than the command declared");
        self.bulk(arg);
        self.missing -= 1;
        self.close_if_done();
    }

    /// Adds one argument made of `parts` back to back (a row and its slots), without
    /// joining them in a buffer of their own first.
    pub fn arg_parts(&mut self, parts: &[&[u8]]) {
        assert!(self.missing > 0, "more arguments than the command declared");
        self.header(b'$', parts.iter().map(|p| p.len()).sum());
        for part in parts {
            self.buf.extend_from_slice(part);
        }
        self.buf.extend_from_slice(b"\r\n");
        self.missing -= 1;
        self.close_if_done();
    }

    /// Adds the argument that is the command's key.
    pub fn key(&mut self, key: &[u8]) {
        self.arg(key);
        // The key is the last thing written, just before its "\r\n".
        let end = self.buf.len() - 2;
        let entry = self.entries.last_mut().expect("a command is open");
        entry.key = end - key.len()..end;
    }

    /// Appends command `i` of `other` as it is.
    fn copy_command(&mut self, other: &Batch, i: usize) {
        assert_eq!(self.missing, 0, "the previous command is missing arguments");
        let entry = &other.entries[i];
        let start = self.buf.len();
        self.buf.extend_from_slice(&other.buf[entry.bytes.clone()]);
        let shift = |r: &Range<usize>| {
            if r.is_empty() {
                start..start
            } else {
                r.start - entry.bytes.start + start..r.end - entry.bytes.start + start
            }
        };
        self.entries.push(Entry {
            bytes: start..self.buf.len(),
            key: shift(&entry.key),
            name: entry.name.clone(),
        });
    }

    /// Appends every command of `cmds`, each routed by its first key (for `EVAL`, the key
    /// after the key count).
    pub fn from_cmds(cmds: &[Cmd]) -> Batch {
        let mut batch = Batch::new();
        for cmd in cmds {
            let args: Vec<&[u8]> = cmd
                .args_iter()
                .filter_map(|a| match a {
                    redis::Arg::Simple(b) => Some(b),
                    // Cursors only appear in iterator commands, which never go through here.
                    _ => None,
                })
                .collect();
            let Some((name, rest)) = args.split_first() else {
                continue;
            };
            let name = String::from_utf8_lossy(name);
            batch.command(&name, rest.len());
            let key_at = key_position(&name, rest);
            for (i, a) in rest.iter().enumerate() {
                if Some(i) == key_at {
                    batch.key(a);
                } else {
                    batch.arg(a);
                }
            }
        }
        batch
    }

    fn header(&mut self, kind: u8, n: usize) {
        // Formatted by hand: `to_string` would allocate for every argument of a 2,048-argument
        // HSET.
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut n = n;
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.buf.push(kind);
        self.buf.extend_from_slice(&digits[at..]);
        self.buf.extend_from_slice(b"\r\n");
    }

    fn bulk(&mut self, arg: &[u8]) {
        self.header(b'$', arg.len());
        self.buf.extend_from_slice(arg);
        self.buf.extend_from_slice(b"\r\n");
    }

    fn close_if_done(&mut self) {
        if self.missing == 0
            && let Some(entry) = self.entries.last_mut()
        {
            entry.bytes.end = self.buf.len();
        }
    }

    /// Makes room for about `bytes` more bytes at once. A big write (65,536 rows of dim 128
    /// is ~35 MB) would otherwise grow the buffer by doubling, and fault its fresh pages in
    /// 4 KiB at a time while rows are copied in; since a buffer above
    /// `redis_client_buffer_keep_bytes` is freed after its call, every big insert paid that
    /// again (half of the client's CPU per id at dim 128, batch 65,536). A buffer of 4 MiB or
    /// more is advised transparent huge pages, as numpy advises its own big arrays.
    pub(crate) fn reserve_for(&mut self, bytes: usize) {
        if self.buf.capacity() - self.buf.len() >= bytes {
            return;
        }
        self.buf.reserve(bytes);
        advise_huge_pages(self.buf.as_ptr(), self.buf.capacity());
    }

    /// Appends every command of `other`, in order.
    pub(crate) fn append(&mut self, other: &Batch) {
        assert_eq!(self.missing, 0, "the previous command is missing arguments");
        for i in 0..other.len() {
            self.copy_command(other, i);
        }
    }

    /// Keeps the first `n` commands.
    pub(crate) fn truncate(&mut self, n: usize) {
        assert_eq!(self.missing, 0, "a command is missing arguments");
        if n < self.entries.len() {
            self.buf.truncate(self.entries[n].bytes.start);
            self.entries.truncate(n);
        }
    }

    /// Bytes the buffer holds without growing.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// The number of commands.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no commands.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// All commands' bytes, in order.
    pub(crate) fn bytes(&self) -> &[u8] {
        debug_assert_eq!(self.missing, 0, "a command is missing arguments");
        &self.buf
    }

    /// The bytes of command `i`.
    pub(crate) fn command_bytes(&self, i: usize) -> &[u8] {
        &self.buf[self.entries[i].bytes.clone()]
    }

    /// The key of command `i` (empty when it has none).
    pub(crate) fn key_of(&self, i: usize) -> &[u8] {
        &self.buf[self.entries[i].key.clone()]
    }

    /// The upper-case name of command `i`.
    pub(crate) fn name_of(&self, i: usize) -> &str {
        &self.entries[i].name
    }
}

/// The commands of one call as a backend routes and reports them, before or after encoding.
///
/// A [`Batch`] is encoded already. A write built by the table (`Table::insert` and friends)
/// is encoded where it is sent instead ([`Backend::run_deferred`](super::Backend::run_deferred)):
/// a cluster encodes each node's commands in that node's thread, so that the first node
/// starts on its share while the others still encode theirs. Encoding the whole batch first
/// (~2 MB of rows for 4,096 ids of dim 128) left every server idle meanwhile.
pub trait Commands: Sync {
    /// The number of commands.
    fn len(&self) -> usize;

    /// True when there are no commands.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The upper-case name of command `i`.
    fn name_of(&self, i: usize) -> &str;

    /// The key of command `i`, which routes it (empty when it has none).
    fn key_of(&self, i: usize) -> &[u8];

    /// The bytes of command `i` when they exist already (a [`Batch`]); `None` when the
    /// command is encoded on demand by [`Commands::encode`].
    fn encoded(&self, i: usize) -> Option<&[u8]>;

    /// Appends command `i` to `out`, byte for byte what a [`Batch`] of the whole call would
    /// hold for it.
    fn encode(&self, i: usize, out: &mut Batch);
}

impl Commands for Batch {
    fn len(&self) -> usize {
        self.entries.len()
    }

    fn name_of(&self, i: usize) -> &str {
        Batch::name_of(self, i)
    }

    fn key_of(&self, i: usize) -> &[u8] {
        Batch::key_of(self, i)
    }

    fn encoded(&self, i: usize) -> Option<&[u8]> {
        Some(self.command_bytes(i))
    }

    fn encode(&self, i: usize, out: &mut Batch) {
        out.copy_command(self, i);
    }
}

/// Asks Linux to back `len` bytes at `ptr` (one allocation) with transparent huge pages when
/// they are 4 MiB or more, as numpy's allocator does for its arrays: a first touch then faults
/// in 2 MiB at a time instead of 4 KiB. Only advice: a failure changes nothing. Also used by
/// the Python bindings' pool of result blocks.
#[cfg(target_os = "linux")]
pub fn advise_huge_pages(ptr: *const u8, len: usize) {
    const PAGE: usize = 4096;
    if len < (4 << 20) {
        return;
    }
    let start = (ptr as usize).next_multiple_of(PAGE);
    let end = ptr as usize + len;
    if end > start {
        // SAFETY: the range lies inside the buffer's own allocation; the advice changes how
        // its pages are backed, never their contents.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(not(target_os = "linux"))]
pub fn advise_huge_pages(_ptr: *const u8, _len: usize) {}

/// Which argument after the name is the key a command is routed by: the first one, except
/// for scripts (`EVAL script numkeys key ...`), which have none when `numkeys` is 0.
fn key_position(name: &str, args: &[&[u8]]) -> Option<usize> {
    const SCRIPTS: [&str; 6] = [
        "EVAL",
        "EVALSHA",
        "EVAL_RO",
        "EVALSHA_RO",
        "FCALL",
        "FCALL_RO",
    ];
    if SCRIPTS.iter().any(|s| name.eq_ignore_ascii_case(s)) {
        return (args.get(1).copied() != Some(&b"0"[..]) && args.len() > 2).then_some(2);
    }
    (!args.is_empty()).then_some(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_as_redis_rs_does() {
        let mut batch = Batch::new();
        batch.command("HSET", 5);
        batch.key(b"bucket{1}");
        batch.arg(b"f1");
        batch.arg(&[0, 1, 2]);
        batch.arg(b"f2");
        batch.arg(b"");
        batch.command("hmget", 2);
        batch.key(b"b2");
        batch.arg(b"f");
        let cmds = [
            redis::cmd("HSET")
                .arg("bucket{1}")
                .arg("f1")
                .arg(&[0u8, 1, 2][..])
                .arg("f2")
                .arg("")
                .clone(),
            redis::cmd("hmget").arg("b2").arg("f").clone(),
        ];
        let mut expected = Vec::new();
        for c in &cmds {
            c.write_packed_command(&mut expected);
        }
        assert_eq!(batch.bytes(), &expected[..]);
        assert_eq!(batch.len(), 2);
        assert_eq!(batch.key_of(0), b"bucket{1}");
        assert_eq!(batch.name_of(1), "HMGET");
        assert_eq!(
            batch.command_bytes(1),
            &cmds[1].get_packed_command()[..],
            "each command's own bytes"
        );
        let same = Batch::from_cmds(&cmds);
        assert_eq!(same.bytes(), batch.bytes());
        assert_eq!(same.key_of(0), b"bucket{1}");
    }

    #[test]
    fn scripts_are_routed_by_their_first_key() {
        let cmds = [
            redis::cmd("EVAL")
                .arg("return 1")
                .arg(1)
                .arg("bkt")
                .arg("x")
                .clone(),
            redis::cmd("evalsha")
                .arg("abc")
                .arg(2)
                .arg("k1")
                .arg("k2")
                .clone(),
            redis::cmd("eval").arg("return 1").arg(0).clone(),
            redis::cmd("HMGET").arg("b{1}").arg("f").clone(),
        ];
        let batch = Batch::from_cmds(&cmds);
        assert_eq!(batch.key_of(0), b"bkt");
        assert_eq!(batch.name_of(0), "EVAL");
        assert_eq!(batch.key_of(1), b"k1");
        assert_eq!(batch.key_of(2), b"");
        assert_eq!(batch.key_of(3), b"b{1}");
    }

    #[test]
    fn a_batch_encodes_its_commands_as_they_are() {
        let mut batch = Batch::new();
        batch.command("HSET", 3);
        batch.key(b"b{1}");
        batch.arg(b"f");
        batch.arg(b"b{1}");
        batch.command("PING", 0);
        batch.command("hmget", 2);
        batch.key(b"b{2}");
        batch.arg(b"f");
        let mut out = Batch::new();
        out.command("ASKING", 0);
        for i in [2, 1, 0] {
            assert_eq!(Commands::encoded(&batch, i), Some(batch.command_bytes(i)));
            Commands::encode(&batch, i, &mut out);
        }
        assert_eq!(out.command_bytes(0), b"*1\r\n$6\r\nASKING\r\n");
        for (j, i) in [(1, 2), (2, 1), (3, 0)] {
            assert_eq!(out.command_bytes(j), batch.command_bytes(i));
            assert_eq!(out.key_of(j), batch.key_of(i));
            assert_eq!(out.name_of(j), batch.name_of(i));
        }
        assert_eq!(out.key_of(2), b"", "PING has no key");
    }

    #[test]
    #[should_panic(expected = "more arguments")]
    fn too_many_arguments_are_a_bug() {
        let mut batch = Batch::new();
        batch.command("PING", 0);
        batch.arg(b"x");
    }
}
