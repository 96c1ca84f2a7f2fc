//! Where a table's rows live in Redis: key prefixes, bucket hash tags, bucket key names and the
//! key → bucket function.
//!
//! Everything here is a pure function. The rules are TFRA's, reproduced bit for bit, because a
//! table written by TFRA must open here under the same Redis key names, and the other way round.
//! A bucket is one Redis hash named `P{T}`: a prefix `P` (see [`KeyPrefix`]) followed by a decimal
//! hash tag `T` in braces (see [`HashTag`]).

use std::fmt::{self, Write as _};
use std::sync::OnceLock;

use crate::codec::KeyDtype;
use crate::error::{Error, Result};

/// Number of Redis cluster slots.
pub const SLOT_COUNT: usize = 16384;

/// CRC16-XMODEM (poly 0x1021, init 0, no reflection) lookup table, the checksum Redis Cluster
/// uses for key slots. Built at compile time so that generating the slot table stays cheap.
const CRC16_TABLE: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

fn crc16_xmodem(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0u16, |crc, &b| {
        (crc << 8) ^ CRC16_TABLE[usize::from((crc >> 8) as u8 ^ b)]
    })
}

/// The part of `key` Redis Cluster hashes: the bytes between the first `{` and the first `}`
/// after it, unless that is empty or unclosed, in which case the whole key.
fn hashed_part(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{')
        && let Some(len) = key[open + 1..].iter().position(|&b| b == b'}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

/// The Redis Cluster slot of `key` (CRC16-XMODEM mod 16384, with the `{hashtag}` rule).
///
/// redis-rs 1.8 computes the same value (`cluster_routing::Slot::for_key`) but gives no public
/// way to read the number back, so the few lines are repeated here.
pub fn key_slot(key: &[u8]) -> u16 {
    crc16_xmodem(hashed_part(key)) % SLOT_COUNT as u16
}

/// TFRA's `redis_slots_tab`: entry `s` is the smallest non-negative integer whose decimal string
/// hashes to slot `s`.
///
/// TFRA ships this as a 16384-entry literal array and picks bucket tags from it, so the tag of a
/// bucket is always the smallest number that lands on the wanted slot. Regenerating it gives the
/// identical table (every entry is that minimum; the largest is 109757). Built on first use.
pub(crate) fn slot_table() -> &'static [u32] {
    static TABLE: OnceLock<Box<[u32]>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = vec![u32::MAX; SLOT_COUNT];
        let mut missing = SLOT_COUNT;
        // Decimal digits of n, kept right-aligned and incremented in place: no formatting or
        // allocation per number, and the first n to reach a slot is by construction the minimum.
        let mut digits = [b'0'; 10];
        let mut start = digits.len() - 1;
        let mut n = 0u32;
        while missing > 0 {
            let slot = usize::from(crc16_xmodem(&digits[start..]) % SLOT_COUNT as u16);
            if table[slot] == u32::MAX {
                table[slot] = n;
                missing -= 1;
            }
            n += 1;
            let mut i = digits.len() - 1;
            loop {
                if digits[i] == b'9' {
                    digits[i] = b'0';
                    i -= 1;
                } else {
                    digits[i] += 1;
                    break;
                }
            }
            start = start.min(i);
        }
        table.into_boxed_slice()
    })
}

/// A bucket's hash tag: a non-empty string of decimal digits, kept without braces.
///
/// TFRA's SCAN pattern `P{[0123456789]*}` only finds buckets whose tag starts with a digit, so
/// a tag of any other shape would make its bucket invisible to size, expiry and re-bucketing.
/// We therefore only accept digits.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HashTag(String);

impl HashTag {
    /// Parses a user-supplied tag, `"{123}"` or `"123"`.
    ///
    /// TFRA wraps tags in braces when they are missing, so both spellings name the same bucket.
    /// Empty tags, non-digits and a brace on one side only are rejected with
    /// [`Error::ConfigField`] naming `field`.
    ///
    /// # Errors
    ///
    /// [`Error::ConfigField`] naming `field` when `s` is not a hash tag of digits (with or without
    /// braces).
    pub fn parse(field: &str, s: &str) -> Result<HashTag> {
        let inner = match (s.strip_prefix('{'), s.ends_with('}')) {
            (Some(rest), true) => rest.strip_suffix('}'),
            (None, false) => Some(s),
            _ => None,
        };
        match inner {
            Some(d) if !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()) => {
                Ok(HashTag(d.to_owned()))
            }
            _ => Err(Error::field(
                field,
                format!("should be hash tags of decimal digits like {{3560}}, got {s:?}"),
            )),
        }
    }

    /// The tag TFRA uses for cluster slot `slot`: `{slot_table()[slot]}`.
    ///
    /// # Panics
    /// If `slot >= SLOT_COUNT`.
    pub fn for_slot(slot: u16) -> HashTag {
        HashTag(slot_table()[usize::from(slot)].to_string())
    }

    /// The digits, without braces.
    pub fn digits(&self) -> &str {
        &self.0
    }

    /// The cluster slot every bucket with this tag lives on, whatever its prefix (as long as the
    /// prefix itself contains no `{`).
    pub fn slot(&self) -> u16 {
        key_slot(self.0.as_bytes())
    }
}

impl fmt::Display for HashTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{{}}}", self.0)
    }
}

/// Tags for `n` buckets when no cluster topology is used (Standalone, Sentinel, or Cluster with
/// `redis_hash_tags_hypodispersion`): bucket `i` gets `tab[(16384/n)*i + 16384%n]`.
///
/// This spreads the buckets evenly over the slot space. In Standalone/Sentinel mode only the
/// name matters, but the name of bucket 0 depends on `n`, so it has to be exact.
///
/// # Panics
/// If `n == 0` or `n > SLOT_COUNT` (TFRA would read past its table).
pub(crate) fn hypodispersion_tags(n: usize) -> Vec<HashTag> {
    assert!(
        (1..=SLOT_COUNT).contains(&n),
        "bucket count {n} outside 1..={SLOT_COUNT}"
    );
    let step = SLOT_COUNT / n;
    let offset = SLOT_COUNT % n;
    (0..n)
        .map(|i| HashTag::for_slot((step * i + offset) as u16))
        .collect()
}

/// Tags for `n` buckets in Cluster mode with hypodispersion off (TFRA's default), from the live
/// topology. `masters` holds each master's *first* slot range `(first, last)`, as TFRA parses
/// them from `CLUSTER NODES`; they are sorted and de-duplicated here.
///
/// With `m` masters:
/// * `m >= n`: bucket `i` gets `tab[first_i]`, so each bucket sits on its own master (TFRA logs a
///   skew warning when `m > n`, since some masters then hold nothing).
/// * `m < n`: round robin, bucket `i` goes to master `j = i % m` at
///   `tab[first_j + (i / m) * ((last_j - first_j) * m / n)]` (integer arithmetic, evaluated left
///   to right as TFRA does), which spreads each master's share of buckets over its range.
/// * no masters: TFRA falls back to [`hypodispersion_tags`].
///
/// The result depends on the topology at table creation: resharding that moves the masters'
/// first ranges renames the buckets, which is why explicit tags or hypodispersion are safer.
///
/// # Panics
/// If `n == 0`, `n > SLOT_COUNT` or a range ends at or past `SLOT_COUNT`.
pub(crate) fn topology_tags(masters: &[(u16, u16)], n: usize) -> Vec<HashTag> {
    let mut masters = masters.to_vec();
    masters.sort_unstable();
    masters.dedup();
    let m = masters.len();
    if m == 0 {
        return hypodispersion_tags(n);
    }
    assert!(
        (1..=SLOT_COUNT).contains(&n),
        "bucket count {n} outside 1..={SLOT_COUNT}"
    );
    (0..n)
        .map(|i| {
            let (first, last) = masters[i % m];
            let (first, last) = (usize::from(first), usize::from(last));
            let slot = if m >= n {
                first
            } else {
                first + (i / m) * (last.saturating_sub(first) * m / n)
            };
            HashTag::for_slot(u16::try_from(slot).expect("slot below SLOT_COUNT"))
        })
        .collect()
}

/// The per-round left rotations of MD5 (RFC 1321).
const MD5_SHIFTS: [[u32; 4]; 4] = [
    [7, 12, 17, 22],
    [5, 9, 14, 20],
    [4, 11, 16, 23],
    [6, 10, 15, 21],
];

/// MD5's additive constants, `floor(|sin(i + 1)| * 2^32)` (RFC 1321).
const MD5_K: [u32; 64] = [
    0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501,
    0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821,
    0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
    0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a,
    0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70,
    0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
    0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
    0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391,
];

/// TFRA's "MD5", used for `using_md5_prefix_name` prefixes. It is **not** standard MD5.
///
/// TFRA compiles the RSA reference implementation with `UINT4 = unsigned long`, which is 64 bits
/// on Linux. So the message words (decoded from 4 bytes each) and the constants are 32-bit values,
/// but every sum, the boolean functions (`!x` also sets the high 32 bits) and the "rotation"
/// `(x << s) | (x >> (32 - s))` run on 64-bit words, and the high bits leak back into the low
/// ones through the right shift and carry over from block to block in the state. Only the low 32
/// bits of each state word are emitted, little-endian. Padding and the bit count are standard
/// for inputs shorter than 4 GiB (TFRA's length is an `unsigned int`, so longer ones cannot occur).
pub fn tfra_md5(data: &[u8]) -> [u8; 16] {
    let mut state: [u64; 4] = [0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476];

    let mut message = data.to_vec();
    let bit_len = (data.len() as u64).wrapping_mul(8);
    message.push(0x80);
    while message.len() % 64 != 56 {
        message.push(0);
    }
    message.extend_from_slice(&bit_len.to_le_bytes());

    for block in message.chunks_exact(64) {
        let mut x = [0u64; 16];
        for (w, b) in x.iter_mut().zip(block.chunks_exact(4)) {
            *w = u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        }
        let [mut a, mut b, mut c, mut d] = state;
        for i in 0..64 {
            let round = i / 16;
            let (f, g) = match round {
                0 => ((b & c) | (!b & d), i),
                1 => ((b & d) | (c & !d), (5 * i + 1) % 16),
                2 => (b ^ c ^ d, (3 * i + 5) % 16),
                _ => (c ^ (b | !d), (7 * i) % 16),
            };
            let s = MD5_SHIFTS[round][i % 4];
            let t = a
                .wrapping_add(f)
                .wrapping_add(x[g])
                .wrapping_add(u64::from(MD5_K[i]));
            let rotated = (t << s) | (t >> (32 - s));
            a = d;
            d = c;
            c = b;
            b = b.wrapping_add(rotated);
        }
        for (s, v) in state.iter_mut().zip([a, b, c, d]) {
            *s = s.wrapping_add(v);
        }
    }

    let mut digest = [0u8; 16];
    for (out, s) in digest.chunks_exact_mut(4).zip(state) {
        out.copy_from_slice(&(s as u32).to_le_bytes());
    }
    digest
}

/// The `embedding_name` of a TF table: its name cut at the first `_mht_`.
///
/// `de.Variable` names its per-device tables `<name>_mht_<i>of<N>`; TFRA cuts the suffix so that
/// every shard of a variable maps to the same Redis keys.
pub fn embedding_name(table_name: &str) -> &str {
    table_name
        .split_once("_mht_")
        .map_or(table_name, |(name, _)| name)
}

/// `bytes` made readable for logs and errors: UTF-8 text as is, everything else (control
/// characters, invalid UTF-8, backslash) as `\xNN`. Raw MD5 prefixes are binary, so bucket keys
/// cannot be printed as plain strings without losing or garbling bytes.
pub(crate) fn printable(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for ch in chunk.valid().chars() {
            if ch.is_control() || ch == '\\' {
                let mut buf = [0u8; 4];
                for b in ch.encode_utf8(&mut buf).bytes() {
                    let _ = write!(out, "\\x{b:02x}");
                }
            } else {
                out.push(ch);
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// The prefix `P` shared by all bucket keys of one table under one model tag.
///
/// Plain `model_tag:embedding_name`, or with `using_md5_prefix_name` the 16 raw bytes of
/// [`tfra_md5`] of that string (raw, not hex: TFRA only logs the hex). Raw bytes may contain `{`
/// (0x7B), in which case Redis takes the hash tag from inside the prefix; TFRA has the same
/// problem, and keeping the names identical matters more.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KeyPrefix(Vec<u8>);

impl KeyPrefix {
    /// The prefix of `embedding_name` under `model_tag`.
    pub fn new(model_tag: &str, embedding_name: &str, use_md5: bool) -> KeyPrefix {
        let plain = format!("{model_tag}:{embedding_name}");
        if use_md5 {
            KeyPrefix(tfra_md5(plain.as_bytes()).to_vec())
        } else {
            KeyPrefix(plain.into_bytes())
        }
    }

    /// The raw prefix bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for KeyPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&printable(&self.0))
    }
}

/// The Redis key of one bucket (a hash): prefix bytes followed by `{digits}`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BucketKey(Vec<u8>);

impl BucketKey {
    /// `prefix` + `{tag}`.
    pub fn new(prefix: &KeyPrefix, tag: &HashTag) -> BucketKey {
        let mut key = Vec::with_capacity(prefix.0.len() + tag.0.len() + 2);
        key.extend_from_slice(&prefix.0);
        key.push(b'{');
        key.extend_from_slice(tag.0.as_bytes());
        key.push(b'}');
        BucketKey(key)
    }

    /// The raw key bytes, as sent to Redis.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The cluster slot of this key.
    pub fn slot(&self) -> u16 {
        key_slot(&self.0)
    }
}

impl fmt::Display for BucketKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&printable(&self.0))
    }
}

impl AsRef<[u8]> for BucketKey {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl From<BucketKey> for Vec<u8> {
    fn from(key: BucketKey) -> Vec<u8> {
        key.0
    }
}

/// The bucket keys for `tags`, in bucket order.
pub(crate) fn bucket_keys(prefix: &KeyPrefix, tags: &[HashTag]) -> Vec<BucketKey> {
    tags.iter().map(|t| BucketKey::new(prefix, t)).collect()
}

/// How a key picks its bucket in Cluster mode (`using_hash_storage_slice`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum BucketFn {
    /// The low 32 bits of the key (TFRA's default): cheap, but keys that share their low bits
    /// (e.g. ids built with artificial endings) crowd into the same buckets.
    LowBits,
    /// TFRA's CRC-32C variant of the key's field bytes, see [`crc32c_tfra`].
    Crc32c,
}

impl BucketFn {
    /// The function selected by the config flag `using_hash_storage_slice`.
    pub fn from_flag(using_hash_storage_slice: bool) -> BucketFn {
        if using_hash_storage_slice {
            BucketFn::Crc32c
        } else {
            BucketFn::LowBits
        }
    }
}

/// CRC-32C (Castagnoli) as TFRA computes it: init `0xFFFFFFFF` and no final XOR, i.e. the
/// standard CRC-32C XOR `0xFFFFFFFF`. TFRA feeds the hardware CRC32 instruction directly and
/// never applies the final inversion.
pub(crate) fn crc32c_tfra(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes) ^ 0xFFFF_FFFF
}

/// The bucket index of `key` among `slices` buckets (`H(key) mod slices`, unsigned 32-bit).
///
/// TFRA uses a plain modulo (no power-of-two mask). Only Cluster mode spreads keys this way;
/// Standalone and Sentinel always use bucket 0.
///
/// # Panics
/// If `slices == 0`.
pub(crate) fn bucket_of(key: i64, key_dtype: KeyDtype, slices: u32, f: BucketFn) -> u32 {
    let h = match f {
        // For int32 keys this equals `(key as i32) as u32`, TFRA's int32 rule.
        BucketFn::LowBits => (key as u64 & 0xFFFF_FFFF) as u32,
        BucketFn::Crc32c => crc32c_tfra(key_dtype.field(key).as_ref()),
    };
    h % slices
}

/// The longest string TensorFlow keeps inside the `tstring` object itself (its "small"
/// representation on 64-bit little-endian hosts, x86-64 and aarch64).
pub const TSTRING_SMALL_CAPACITY: usize = 22;

/// The 32-bit hash TFRA's cluster mode buckets a string key by.
///
/// TFRA hashes the bytes of the in-memory `tstring` *object*, not the string's data: CRC-32C
/// (TFRA's CRC-32C variant: init `0xFFFFFFFF`, no final XOR, whatever `using_hash_storage_slice`
/// says) over `length()` bytes from the object's start. For a string of at most
/// [`TSTRING_SMALL_CAPACITY`] bytes the object starts with one header byte `len << 2` followed
/// by the characters, so TFRA hashes `[len << 2] ++ s[..len - 1]`: the header and all but the
/// last character (`"abc"` hashes `0C 61 62`; the empty string hashes nothing). We reproduce
/// that exactly, so such keys land in the bucket TFRA reads them from.
///
/// A longer string's object holds a heap pointer, so TFRA's bucket for it changes from
/// process to process (and past 24 bytes it reads beyond the object). No rule can match that;
/// we use the same CRC-32C over the string's own bytes, which is deterministic. A TFRA process
/// may therefore look for such keys (over 22 bytes, cluster mode, `storage_slice > 1`) in
/// another bucket than the one we wrote them to, as it may for its own earlier writes.
pub fn string_key_hash(key: &[u8]) -> u32 {
    let len = key.len();
    if len > TSTRING_SMALL_CAPACITY {
        return crc32c_tfra(key);
    }
    if len == 0 {
        return crc32c_tfra(&[]);
    }
    let mut object = [0u8; TSTRING_SMALL_CAPACITY];
    // len <= 22, so len << 2 fits a byte; its low two bits (TF's type tag) are 0 = small.
    object[0] = (len << 2) as u8;
    object[1..len].copy_from_slice(&key[..len - 1]);
    crc32c_tfra(&object[..len])
}

/// The bucket index of a string key among `slices` buckets: [`string_key_hash`] mod
/// `slices`. TFRA's string keys always use this CRC-32C rule; `using_hash_storage_slice` only
/// matters for integer keys.
///
/// # Panics
/// If `slices == 0`.
pub fn bucket_of_string(key: &[u8], slices: u32) -> u32 {
    string_key_hash(key) % slices
}

/// Glob metacharacters of Redis' `stringmatchlen`. `]` is only special inside a class but
/// escaping it is harmless.
fn push_glob_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    for &b in bytes {
        if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
            out.push(b'\\');
        }
        out.push(b);
    }
}

/// The SCAN MATCH pattern for this table's buckets: `P{[0123456789]*}`.
///
/// TFRA used the same pattern but did not escape `P`, so prefixes containing glob
/// metacharacters (likely with raw MD5 bytes) broke listing; we escape them. The pattern still
/// matches some foreign keys (`P{1x}`), so filter the results with [`parse_bucket_tag`].
pub(crate) fn bucket_glob(prefix: &KeyPrefix) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.0.len() + 16);
    push_glob_escaped(&mut out, &prefix.0);
    out.extend_from_slice(b"{[0123456789]*}");
    out
}

/// TFRA's wider pattern `P*{[0123456789]*}`, which it uses for `PERSIST` on open and `EXPIRE`
/// on close. It deliberately also matches the table's optimizer slot tables (`P_Adam_m{…}`), and
/// unavoidably every other table whose name starts with `P`; use it only for that TTL rule.
pub fn bucket_family_glob(prefix: &KeyPrefix) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.0.len() + 17);
    push_glob_escaped(&mut out, &prefix.0);
    out.extend_from_slice(b"*{[0123456789]*}");
    out
}

/// The tag of `key` if it is exactly `prefix` + `{digits}`, else `None`.
///
/// This is how the buckets of one table are told apart from tables whose names merely share the
/// prefix (TFRA's rehash scanned `P*{…}` and swallowed those).
pub(crate) fn parse_bucket_tag(prefix: &KeyPrefix, key: &[u8]) -> Option<HashTag> {
    let digits = key
        .strip_prefix(prefix.0.as_slice())?
        .strip_prefix(b"{")?
        .strip_suffix(b"}")?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // All ASCII digits, so valid UTF-8.
    Some(HashTag(String::from_utf8(digits.to_vec()).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(n: usize) -> Vec<String> {
        hypodispersion_tags(n)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    const THREE_MASTERS: [(u16, u16); 3] = [(0, 5460), (5461, 10922), (10923, 16383)];

    fn topo(n: usize) -> Vec<String> {
        topology_tags(&THREE_MASTERS, n)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn key_slots() {
        assert_eq!(key_slot(b"foo"), 12182);
        // The CRC16-XMODEM check value of "123456789" is 0x31C3, below 16384.
        assert_eq!(key_slot(b"123456789"), 0x31C3);
        assert_eq!(
            key_slot(b"{user1000}.following"),
            key_slot(b"{user1000}.followers")
        );
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        // Empty or unclosed tags hash the whole key.
        assert_eq!(key_slot(b"foo{}{bar}"), crc16_xmodem(b"foo{}{bar}") % 16384);
        assert_eq!(key_slot(b"foo{bar"), crc16_xmodem(b"foo{bar") % 16384);
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
    }

    #[test]
    fn slot_table_matches_tfra() {
        let tab = slot_table();
        assert_eq!(tab.len(), SLOT_COUNT);
        assert_eq!(tab[0], 3560);
        assert_eq!(tab[1], 22179);
        assert_eq!(tab[8192], 8209);
        assert_eq!(tab.iter().max(), Some(&109757));
        for (slot, &n) in tab.iter().enumerate().step_by(97) {
            assert_eq!(usize::from(key_slot(n.to_string().as_bytes())), slot);
        }
    }

    #[test]
    fn hash_tag_parse() {
        assert_eq!(HashTag::parse("f", "{123}").unwrap().digits(), "123");
        assert_eq!(HashTag::parse("f", "123").unwrap().to_string(), "{123}");
        for bad in ["", "{}", "{12", "12}", "ab", "{1a}", "{{1}}", " 1"] {
            match HashTag::parse("redis_hash_tags_runtime", bad) {
                Err(Error::ConfigField { field, message }) => {
                    assert_eq!(field, "redis_hash_tags_runtime");
                    assert!(message.contains("{3560}"), "{message}");
                }
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
        assert_eq!(HashTag::for_slot(0).to_string(), "{3560}");
        assert_eq!(HashTag::for_slot(8192).slot(), 8192);
    }

    #[test]
    fn hypodispersion() {
        assert_eq!(tags(1), ["{3560}"]);
        assert_eq!(tags(2), ["{3560}", "{8209}"]);
        assert_eq!(tags(3), ["{22179}", "{450}", "{18948}"]);
        assert_eq!(tags(4), ["{3560}", "{4129}", "{8209}", "{356}"]);
        assert_eq!(
            tags(8),
            [
                "{3560}", "{48576}", "{4129}", "{1296}", "{8209}", "{2821}", "{356}", "{16248}"
            ]
        );
        assert_eq!(hypodispersion_tags(SLOT_COUNT).len(), SLOT_COUNT);
    }

    #[test]
    fn topology() {
        assert_eq!(topo(2), ["{3560}", "{18403}"]);
        assert_eq!(topo(3), ["{3560}", "{18403}", "{18948}"]);
        assert_eq!(topo(4), ["{3560}", "{18403}", "{18948}", "{1866}"]);
        assert_eq!(
            topo(6),
            [
                "{3560}", "{18403}", "{18948}", "{21418}", "{42163}", "{16418}"
            ]
        );
        // Order and duplicates in the input do not matter.
        let shuffled = [
            THREE_MASTERS[2],
            THREE_MASTERS[0],
            THREE_MASTERS[1],
            THREE_MASTERS[0],
        ];
        assert_eq!(
            topology_tags(&shuffled, 6),
            topology_tags(&THREE_MASTERS, 6)
        );
        assert_eq!(topology_tags(&[], 4), hypodispersion_tags(4));
    }

    #[test]
    fn md5_vectors() {
        let cases: [(&str, &str); 5] = [
            ("test:probe_table", "bcd6590c970a8a728e3a0fad47ff0682"),
            ("fixture:fixture_table", "611d4eb69729817c84c6742571092fdf"),
            ("a", "793a9bc07e209b286fa416d6ee29a85d"),
            ("", "e4c23762ed2823a27e62a64b95c024e7"),
            (
                "model_v2:user_embeddings_with_a_rather_long_name_that_spans_more_than_one_md5_block_of_64_bytes",
                "703f0773efe2ce26de45e913f6325150",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(hex(&tfra_md5(input.as_bytes())), want, "{input:?}");
        }
    }

    #[test]
    fn names() {
        assert_eq!(embedding_name("user_emb_mht_1of1"), "user_emb");
        assert_eq!(embedding_name("a_mht_b_mht_1of2"), "a");
        assert_eq!(embedding_name("RedisTable"), "RedisTable");

        let prefix = KeyPrefix::new("fixture", embedding_name("fixture_table"), false);
        let keys = bucket_keys(&prefix, &hypodispersion_tags(1));
        assert_eq!(keys[0].as_bytes(), b"fixture:fixture_table{3560}");
        assert_eq!(keys[0].slot(), 0);
        let keys = bucket_keys(&prefix, &hypodispersion_tags(2));
        let shown: Vec<String> = keys.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            ["fixture:fixture_table{3560}", "fixture:fixture_table{8209}"]
        );

        let md5 = KeyPrefix::new("test", "probe_table", true);
        assert_eq!(hex(md5.as_bytes()), "bcd6590c970a8a728e3a0fad47ff0682");
        let key = BucketKey::new(&md5, &HashTag::for_slot(0));
        assert_eq!(&key.as_bytes()[16..], b"{3560}");
        let vec: Vec<u8> = key.clone().into();
        assert_eq!(vec.len(), 22);
    }

    #[test]
    fn printable_bytes() {
        let prefix = KeyPrefix(vec![0xbc, b'a', 0x0a, b'\\', 0xe2, 0x82, 0xac]);
        let key = BucketKey::new(&prefix, &HashTag::for_slot(0));
        assert_eq!(key.to_string(), "\\xbca\\x0a\\x5c€{3560}");
    }

    #[test]
    fn buckets() {
        for (key, slices, want) in [(5i64, 4u32, 1u32), (-1, 4, 3), ((1 << 32) + 7, 4, 3)] {
            assert_eq!(
                bucket_of(key, KeyDtype::I64, slices, BucketFn::LowBits),
                want
            );
        }
        assert_eq!(bucket_of(-1, KeyDtype::I32, 4, BucketFn::LowBits), 3);
        for (key, want) in [(0i64, 1943489909u32), (1, 988491858), (12345, 1353064894)] {
            assert_eq!(crc32c_tfra(&key.to_le_bytes()), want);
            assert_eq!(
                bucket_of(key, KeyDtype::I64, u32::MAX, BucketFn::Crc32c),
                want % u32::MAX
            );
            assert_eq!(bucket_of(key, KeyDtype::I64, 7, BucketFn::Crc32c), want % 7);
        }
        for (key, want) in [(0i64, 3080238136u32), (1, 1792876160)] {
            assert_eq!(crc32c_tfra(&(key as i32).to_le_bytes()), want);
            assert_eq!(bucket_of(key, KeyDtype::I32, 5, BucketFn::Crc32c), want % 5);
        }
        assert_eq!(BucketFn::from_flag(true), BucketFn::Crc32c);
        assert_eq!(BucketFn::from_flag(false), BucketFn::LowBits);
    }

    /// CRC-32C bit by bit, independent of the `crc32c` crate: init `0xFFFFFFFF`, reflected
    /// polynomial 0x82F63B78, no final XOR (TFRA's variant).
    fn crc32c_bitwise(bytes: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0x82F6_3B78
                } else {
                    crc >> 1
                };
            }
        }
        crc
    }

    #[test]
    fn string_buckets() {
        // The spec's vector: "abc" hashes the tstring object's bytes 0C 61 62.
        assert_eq!(crc32c_bitwise(&[0x0C, 0x61, 0x62]), 718772414);
        assert_eq!(string_key_hash(b"abc"), 718772414);
        assert_eq!(bucket_of_string(b"abc", 7), 718772414 % 7);
        // Nothing hashed for the empty string: the init value itself.
        assert_eq!(string_key_hash(b""), 0xFFFF_FFFF);
        // The last character never counts; every 1-character string hashes [0x04].
        assert_eq!(string_key_hash(b"abd"), string_key_hash(b"abc"));
        assert_eq!(string_key_hash(b"x"), crc32c_bitwise(&[0x04]));
        assert_eq!(string_key_hash(b"\0"), string_key_hash(b"y"));
        // Up to 22 bytes: the small-string object; the header byte of 22 is 0x58.
        for len in [2usize, 5, 21, 22] {
            let key: Vec<u8> = (0..len as u8).map(|i| b'a' + i).collect();
            let mut object = vec![(len << 2) as u8];
            object.extend_from_slice(&key[..len - 1]);
            assert_eq!(string_key_hash(&key), crc32c_bitwise(&object), "len {len}");
        }
        // Past 22 bytes TFRA is not deterministic; ours is CRC-32C of the bytes themselves.
        for len in [23usize, 24, 100] {
            let key = vec![b'k'; len];
            assert_eq!(string_key_hash(&key), crc32c_bitwise(&key), "len {len}");
        }
        let multibyte = "été".as_bytes();
        let mut object = vec![(multibyte.len() << 2) as u8];
        object.extend_from_slice(&multibyte[..multibyte.len() - 1]);
        assert_eq!(string_key_hash(multibyte), crc32c_bitwise(&object));
    }

    #[test]
    fn globs_and_listing() {
        let prefix = KeyPrefix::new("test", "emb", false);
        assert_eq!(bucket_glob(&prefix), b"test:emb{[0123456789]*}");
        assert_eq!(bucket_family_glob(&prefix), b"test:emb*{[0123456789]*}");
        let odd = KeyPrefix(b"a*b?c[d]e\\f".to_vec());
        assert_eq!(bucket_glob(&odd), b"a\\*b\\?c\\[d\\]e\\\\f{[0123456789]*}");

        assert_eq!(
            parse_bucket_tag(&prefix, b"test:emb{3560}"),
            Some(HashTag("3560".into()))
        );
        for other in [
            &b"test:emb2{3560}"[..],
            b"test:emb_Adam_m{3560}",
            b"test:emb{}",
            b"test:emb{35a0}",
            b"test:emb{3560}x",
            b"test:emb{3560",
            b"test:em{3560}",
        ] {
            assert_eq!(parse_bucket_tag(&prefix, other), None, "{other:?}");
        }
    }
}
