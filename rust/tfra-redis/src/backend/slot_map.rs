//! The cluster's slot map as pure data: parsing `CLUSTER SLOTS` and redirects, patching a map
//! after a `MOVED`, and choosing between the views of several nodes. No I/O here (that is
//! `cluster.rs`), so every rule is unit-tested on literal replies.
//!
//! Endpoints follow the Redis Cluster spec (`CLUSTER SLOTS`, Redis 7): a NULL or empty
//! endpoint means "the host you sent this command to" (nodes behind a load balancer that do
//! not know their own address, `cluster-preferred-endpoint-type unknown-endpoint`); `?` means
//! the endpoint is unknown (`hostname` preferred but none announced), which is *not* the host
//! asked, so such a node is left out: its slots have no known master until a later refresh.

use std::collections::{BTreeMap, HashSet};

use redis::Value;

use crate::error::{Error, Result};
use crate::layout::SLOT_COUNT;

/// `(host, port)` of a node.
pub(crate) type Addr = (String, u16);

/// One slot range and the nodes that serve it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SlotRange {
    pub(crate) start: u16,
    pub(crate) end: u16,
    pub(crate) master: Addr,
    pub(crate) replicas: Vec<Addr>,
}

/// Slot ranges sorted by their first slot, without overlaps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SlotMap {
    pub(crate) ranges: Vec<SlotRange>,
}

impl SlotMap {
    /// The range that holds `slot`, if any node is known to serve it.
    pub(crate) fn owner(&self, slot: u16) -> Option<&SlotRange> {
        let i = self.ranges.partition_point(|r| r.start <= slot);
        let range = self.ranges.get(i.checked_sub(1)?)?;
        (slot <= range.end).then_some(range)
    }

    /// Each master and its slot ranges, sorted.
    pub(crate) fn masters(&self) -> BTreeMap<Addr, Vec<(u16, u16)>> {
        let mut masters: BTreeMap<Addr, Vec<(u16, u16)>> = BTreeMap::new();
        for r in &self.ranges {
            masters
                .entry(r.master.clone())
                .or_default()
                .push((r.start, r.end));
        }
        for ranges in masters.values_mut() {
            ranges.sort();
        }
        masters
    }

    /// Every node, masters first.
    pub(crate) fn nodes(&self) -> Vec<Addr> {
        let mut seen = HashSet::new();
        let masters = self.ranges.iter().map(|r| &r.master);
        let replicas = self.ranges.iter().flat_map(|r| &r.replicas);
        masters
            .chain(replicas)
            .filter(|a| seen.insert(*a))
            .cloned()
            .collect()
    }

    /// How many slots have a known master.
    pub(crate) fn covered(&self) -> usize {
        self.ranges
            .iter()
            .map(|r| usize::from(r.end - r.start) + 1)
            .sum()
    }

    /// The map with `slot` served by `master`, as a `MOVED` reply says. The rest of the old
    /// range keeps its nodes; the moved slot gets no replicas until a refresh names them.
    pub(crate) fn with_slot_moved(&self, slot: u16, master: Addr) -> SlotMap {
        let mut ranges = Vec::with_capacity(self.ranges.len() + 2);
        for r in &self.ranges {
            if !(r.start..=r.end).contains(&slot) {
                ranges.push(r.clone());
                continue;
            }
            if r.start < slot {
                ranges.push(SlotRange {
                    end: slot - 1,
                    ..r.clone()
                });
            }
            if slot < r.end {
                ranges.push(SlotRange {
                    start: slot + 1,
                    ..r.clone()
                });
            }
        }
        ranges.push(SlotRange {
            start: slot,
            end: slot,
            master,
            replicas: Vec::new(),
        });
        ranges.sort_by_key(|r| r.start);
        SlotMap { ranges }
    }

    /// What two views are compared on: which master serves which slots. Replica lists are
    /// left out: nodes list a replica only once its offset moved, so they differ for a while
    /// without either view being outdated.
    fn assignment(&self) -> Vec<(u16, u16, &Addr)> {
        self.ranges
            .iter()
            .map(|r| (r.start, r.end, &r.master))
            .collect()
    }
}

/// Picks the view to trust among the slot maps several nodes reported (in the order they were
/// asked), or `None` when there is none.
///
/// `CLUSTER SLOTS` carries no config epoch, so the newest view cannot be read off a reply.
/// (`CLUSTER NODES` has epochs, but would mean parsing every node's line and redoing Redis'
/// per-slot epoch resolution on each refresh.) An outdated view is the one a minority holds: a
/// node cut off from the others, or one that has not heard of a failover or reshard yet, while
/// the nodes that made the change agree. So the view most nodes report wins; between equally
/// common views, the one serving more slots (a node that was just reset, or still joining,
/// knows fewer); then the one asked first (masters are asked first).
pub(crate) fn choose_view(views: Vec<SlotMap>) -> Option<SlotMap> {
    let mut best: Option<(usize, usize, usize)> = None; // (votes, covered, index), index min
    for (i, view) in views.iter().enumerate() {
        let votes = views
            .iter()
            .filter(|other| other.assignment() == view.assignment())
            .count();
        let better = match best {
            None => true,
            Some((v, c, _)) => (votes, view.covered()) > (v, c),
        };
        if better {
            best = Some((votes, view.covered(), i));
        }
    }
    let (_, _, i) = best?;
    views.into_iter().nth(i)
}

/// The target of a `MOVED`/`ASK` reply (`3999 127.0.0.1:6381`), asked of `replied_host`. An
/// empty host means that same host (Redis 7 with unknown endpoints sends `3999 :6381`); `?`
/// means the endpoint is unknown, which gives `None`: the redirect cannot be followed.
pub(crate) fn parse_redirect(details: &str, replied_host: &str) -> Option<Addr> {
    let target = details.split_ascii_whitespace().nth(1)?;
    let (host, port) = target.rsplit_once(':')?;
    let host = match host {
        "?" => return None,
        "" => replied_host,
        host => host,
    };
    Some((host.to_string(), port.parse().ok()?))
}

fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// `CLUSTER SLOTS`: `[[start, end, [endpoint, port, id, ...], replicas...], ...]`, asked of
/// `asked_host`. A range whose master has the unknown endpoint `?` is left out, and so is a
/// replica with it (see the module doc).
pub(crate) fn parse_cluster_slots(reply: Value, asked_host: &str) -> Result<SlotMap> {
    let bad = |why: &str| Error::Command {
        source: None,
        command: "CLUSTER SLOTS".into(),
        bucket: String::new(),
        message: format!("unexpected reply: {why}"),
    };
    let Value::Array(entries) = reply else {
        return Err(bad("not an array"));
    };
    // `Ok(None)`: a node with the unknown endpoint `?`.
    let node = |v: &Value| -> Result<Option<Addr>> {
        let Value::Array(parts) = v else {
            return Err(bad("node entry"));
        };
        let endpoint = match parts.first() {
            Some(Value::Nil) => String::new(),
            Some(v) => as_string(v).ok_or_else(|| bad("node endpoint"))?,
            None => return Err(bad("node endpoint")),
        };
        let port = parts
            .get(1)
            .and_then(as_int)
            .ok_or_else(|| bad("node port"))?;
        let port = u16::try_from(port).map_err(|_| bad("port"))?;
        Ok(match endpoint.as_str() {
            "?" => None,
            "" => Some((asked_host.to_string(), port)),
            _ => Some((endpoint, port)),
        })
    };
    let mut ranges = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(parts) = entry else {
            return Err(bad("range is not an array"));
        };
        let (Some(start), Some(end)) = (
            parts.first().and_then(as_int),
            parts.get(1).and_then(as_int),
        ) else {
            return Err(bad("range bounds"));
        };
        // Slots index TFRA's slot table when bucket tags are picked from the topology, so a
        // slot past the slot space must stop here rather than panic there.
        let slot = |n: i64| {
            u16::try_from(n)
                .ok()
                .filter(|&s| usize::from(s) < SLOT_COUNT)
        };
        let (Some(start), Some(end)) = (slot(start), slot(end)) else {
            return Err(bad(&format!(
                "slot range {start}-{end} outside 0-{}",
                SLOT_COUNT - 1
            )));
        };
        if start > end {
            return Err(bad(&format!(
                "slot range {start}-{end} ends before it starts"
            )));
        }
        let master = node(parts.get(2).ok_or_else(|| bad("master entry"))?)?;
        let mut replicas = Vec::new();
        for replica in &parts[3..] {
            replicas.extend(node(replica)?);
        }
        if let Some(master) = master {
            ranges.push(SlotRange {
                start,
                end,
                master,
                replicas,
            });
        }
    }
    ranges.sort_by_key(|r| r.start);
    if ranges.windows(2).any(|w| w[0].end >= w[1].start) {
        // Routing takes the first range holding a slot; overlapping claims mean a confused
        // node, and guessing would send rows to the wrong master.
        return Err(bad("overlapping slot ranges"));
    }
    Ok(SlotMap { ranges })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(ip: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::BulkString(ip.as_bytes().to_vec()),
            Value::Int(port),
            Value::BulkString(b"id".to_vec()),
        ])
    }

    fn null_node(port: i64) -> Value {
        Value::Array(vec![
            Value::Nil,
            Value::Int(port),
            Value::BulkString(b"id".to_vec()),
        ])
    }

    fn range(start: i64, end: i64, nodes: Vec<Value>) -> Value {
        let mut parts = vec![Value::Int(start), Value::Int(end)];
        parts.extend(nodes);
        Value::Array(parts)
    }

    fn addr(host: &str, port: u16) -> Addr {
        (host.to_string(), port)
    }

    fn three_masters(third: u16) -> SlotMap {
        parse_cluster_slots(
            Value::Array(vec![
                range(0, 5460, vec![node("h", 7000)]),
                range(5461, 10922, vec![node("h", 7001)]),
                range(10923, 16383, vec![node("h", third.into())]),
            ]),
            "h",
        )
        .unwrap()
    }

    #[test]
    fn slot_map_finds_owners_and_gaps() {
        let reply = Value::Array(vec![
            range(5461, 10922, vec![node("127.0.0.1", 7001), node("", 7004)]),
            range(0, 5460, vec![node("127.0.0.1", 7000)]),
            range(12000, 16383, vec![node("127.0.0.1", 7002)]),
        ]);
        let map = parse_cluster_slots(reply, "10.0.0.1").unwrap();
        assert_eq!(map.owner(0).unwrap().master.1, 7000);
        assert_eq!(map.owner(5460).unwrap().master.1, 7000);
        assert_eq!(map.owner(5461).unwrap().master.1, 7001);
        assert_eq!(
            map.owner(6000).unwrap().replicas,
            vec![addr("10.0.0.1", 7004)]
        );
        assert!(
            map.owner(11000).is_none(),
            "slots 10923-11999 are unassigned"
        );
        assert_eq!(map.owner(16383).unwrap().master.1, 7002);
        assert_eq!(map.nodes().len(), 4);
        assert_eq!(map.covered(), 16384 - (12000 - 10923));
        let firsts: Vec<_> = map.masters().into_values().map(|r| r[0]).collect();
        assert_eq!(firsts, vec![(0, 5460), (5461, 10922), (12000, 16383)]);
    }

    #[test]
    fn null_and_empty_endpoints_are_the_host_asked() {
        // `cluster-preferred-endpoint-type unknown-endpoint` answers NULL; a node that does
        // not know its own address answers "". Both mean: the host this was asked of.
        let reply = Value::Array(vec![
            range(0, 8000, vec![null_node(7000), null_node(7003)]),
            range(8001, 16383, vec![node("", 7001), node("", 7004)]),
        ]);
        let map = parse_cluster_slots(reply, "10.1.2.3").unwrap();
        assert_eq!(map.owner(0).unwrap().master, addr("10.1.2.3", 7000));
        assert_eq!(map.owner(0).unwrap().replicas, vec![addr("10.1.2.3", 7003)]);
        assert_eq!(map.owner(9000).unwrap().master, addr("10.1.2.3", 7001));
        assert_eq!(
            map.owner(9000).unwrap().replicas,
            vec![addr("10.1.2.3", 7004)]
        );
    }

    #[test]
    fn unknown_endpoints_are_left_out_not_taken_for_the_host_asked() {
        // `?`: a hostname is preferred but the node announced none. It is some other node,
        // so routing there (as we did, to the host asked) sent rows to the wrong server.
        let reply = Value::Array(vec![
            range(0, 8000, vec![node("10.0.0.5", 7000), node("?", 7003)]),
            range(8001, 16383, vec![node("?", 7001), node("10.0.0.6", 7004)]),
        ]);
        let map = parse_cluster_slots(reply, "10.0.0.5").unwrap();
        assert_eq!(map.owner(0).unwrap().master, addr("10.0.0.5", 7000));
        assert!(map.owner(0).unwrap().replicas.is_empty(), "{map:?}");
        assert!(
            map.owner(9000).is_none(),
            "a master at '?' serves nothing we can reach"
        );
        assert_eq!(map.covered(), 8001);
        assert_eq!(map.nodes(), vec![addr("10.0.0.5", 7000)]);
    }

    #[test]
    fn malformed_node_entries_are_named_errors() {
        for bad in [
            Value::Array(vec![]),
            Value::Array(vec![Value::Int(5), Value::Int(7000)]),
            Value::Array(vec![Value::BulkString(b"h".to_vec()), Value::Nil]),
            Value::Array(vec![Value::BulkString(b"h".to_vec()), Value::Int(70_000)]),
            Value::Int(3),
        ] {
            let reply = Value::Array(vec![range(0, 10, vec![bad.clone()])]);
            let err = parse_cluster_slots(reply, "h").unwrap_err();
            assert!(err.to_string().contains("CLUSTER SLOTS"), "{bad:?}: {err}");
        }
        let overlapping = Value::Array(vec![
            range(0, 100, vec![node("h", 1)]),
            range(100, 200, vec![node("h", 2)]),
        ]);
        let err = parse_cluster_slots(overlapping, "h").unwrap_err();
        assert!(err.to_string().contains("overlapping"), "{err}");
    }

    #[test]
    fn slot_numbers_outside_the_slot_space_are_a_named_error() {
        // A server (or a proxy posing as one) can answer anything; slots past 16383 used to
        // index past the slot table when the bucket tags were picked from the topology.
        for (start, end) in [(0, 16384), (16384, 16384), (20000, 30000), (10, 5), (-1, 5)] {
            let reply = Value::Array(vec![range(start, end, vec![node("127.0.0.1", 7000)])]);
            match parse_cluster_slots(reply, "10.0.0.1") {
                Err(Error::Command {
                    command, message, ..
                }) => {
                    assert_eq!(command, "CLUSTER SLOTS");
                    assert!(message.contains("slot range"), "{message}");
                }
                Err(other) => panic!("{start}-{end}: {other:?}"),
                Ok(map) => panic!("{start}-{end} accepted: {:?}", map.masters()),
            }
        }
    }

    #[test]
    fn the_view_most_nodes_hold_wins_over_an_outdated_one() {
        let new = three_masters(7002);
        let old = three_masters(7005); // before the failover of the third master
        // Asked first, the outdated node used to decide the map on its own.
        let chosen = choose_view(vec![old.clone(), new.clone(), new.clone()]).unwrap();
        assert_eq!(chosen, new);
        let chosen = choose_view(vec![new.clone(), old.clone(), new.clone()]).unwrap();
        assert_eq!(chosen, new);
        // Replica lists do not split the vote.
        let mut with_replica = new.clone();
        with_replica.ranges[0].replicas.push(addr("h", 7003));
        let chosen = choose_view(vec![old.clone(), new.clone(), with_replica.clone()]).unwrap();
        assert_eq!(chosen.owner(16000).unwrap().master.1, 7002);
        assert_eq!(choose_view(Vec::new()), None);
    }

    #[test]
    fn between_equally_common_views_the_fuller_one_wins() {
        let full = three_masters(7002);
        let mut partial = full.clone();
        partial.ranges.pop(); // a node that has not learnt of the third master yet
        assert_eq!(
            choose_view(vec![partial.clone(), full.clone()]).unwrap(),
            full
        );
        assert_eq!(
            choose_view(vec![full.clone(), partial.clone()]).unwrap(),
            full
        );
        // A tie in both: the first node asked.
        let other = three_masters(7009);
        assert_eq!(
            choose_view(vec![other.clone(), full.clone()]).unwrap(),
            other
        );
    }

    #[test]
    fn a_moved_slot_is_patched_in_and_its_range_split() {
        let map = three_masters(7002);
        let moved = map.with_slot_moved(100, addr("h", 7001));
        assert_eq!(moved.owner(99).unwrap().master.1, 7000);
        assert_eq!(moved.owner(100).unwrap().master.1, 7001);
        assert_eq!(moved.owner(101).unwrap().master.1, 7000);
        assert_eq!(moved.covered(), 16384);
        // At a range edge, and into a gap.
        let moved = map.with_slot_moved(0, addr("h", 7002));
        assert_eq!(moved.owner(0).unwrap().master.1, 7002);
        assert_eq!(moved.owner(1).unwrap().master.1, 7000);
        let mut gap = map.clone();
        gap.ranges.pop();
        let patched = gap.with_slot_moved(16383, addr("h", 7000));
        assert_eq!(patched.owner(16383).unwrap().master.1, 7000);
        assert!(patched.owner(16382).is_none());
    }

    #[test]
    fn redirect_targets_follow_the_endpoint_rules() {
        assert_eq!(
            parse_redirect("3999 127.0.0.1:6381", "h"),
            Some(addr("127.0.0.1", 6381))
        );
        assert_eq!(
            parse_redirect("3999 :6381", "10.0.0.9"),
            Some(addr("10.0.0.9", 6381))
        );
        assert_eq!(parse_redirect("3999 ?:6381", "10.0.0.9"), None);
        assert_eq!(parse_redirect("3999", "h"), None);
        assert_eq!(parse_redirect("3999 h:port", "h"), None);
    }
}
