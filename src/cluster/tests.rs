//! Unit tests of the cluster module. The checks against real servers (`CLUSTER KEYSLOT`, `COMMAND GETKEYS`,
//! the replies of a real cluster, `target::shard::discover`) are in `tests/integration/cluster_keys.rs`.

use bytes::Bytes;

use super::keys::{command_keys, split_rule, KeyRoute, Split};
use super::map::{join_host_port, split_host_port, Redirect, SlotMap};
use super::slot::{self, hashed_part, key_in_slot, key_slot, same_slot_name, slot_tag, SLOTS};
use crate::resp::Reply;

// ---------------------------------------------------------------------------------------------------
// Slots

/// CRC-16/XMODEM bit by bit, as `src/crc16.c` describes it (independent of the `crc` crate).
fn crc16_bitwise(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[test]
fn key_slot_of_known_keys() {
    // The CRC-16/XMODEM check value, and slots Redis' docs and `CLUSTER KEYSLOT` give.
    assert_eq!(crc16_bitwise(b"123456789"), 0x31C3);
    assert_eq!(key_slot(b"123456789"), 0x31C3 & 0x3FFF);
    assert_eq!(key_slot(b"foo"), 12182);
    assert_eq!(key_slot(b"bar"), 5061);
    assert_eq!(key_slot(b"hello"), 866);
    assert_eq!(key_slot(b""), 0);
    assert_eq!(
        key_slot(b"{user1000}.following"),
        key_slot(b"{user1000}.followers")
    );
    assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
}

#[test]
fn hash_tag_rule_is_keyhashslot() {
    let cases: &[(&[u8], &[u8])] = &[
        (b"", b""),
        (b"abc", b"abc"),
        (b"{a}", b"a"),
        (b"x{a}y", b"a"),
        (b"a{b}{c}", b"b"),
        (b"{{a}}", b"{a"),
        (b"{}", b"{}"),
        (b"{}a{b}", b"{}a{b}"), // the first `{` decides, and its tag is empty
        (b"{a", b"{a"),
        (b"a}", b"a}"),
        (b"a}{b}", b"b"),
        (b"}{", b"}{"),
        (b"{a}}", b"a"),
        (b"{\x00\xff}", b"\x00\xff"),
        (b"\r\n{\r\n}", b"\r\n"),
    ];
    for (key, hashed) in cases {
        assert_eq!(
            hashed_part(key),
            *hashed,
            "{:?}",
            String::from_utf8_lossy(key)
        );
        assert_eq!(key_slot(key), crc16_bitwise(hashed) & 0x3FFF);
    }
}

#[test]
fn key_slot_matches_the_bitwise_crc_on_many_keys() {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for len in 0..200usize {
        let key: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        assert_eq!(key_slot(&key), crc16_bitwise(hashed_part(&key)) & 0x3FFF);
    }
}

#[test]
fn every_slot_has_a_tag_that_lands_there() {
    for s in 0..SLOTS as u16 {
        let t = slot_tag(s);
        assert!(!t.is_empty() && t.len() <= 3, "slot {s}: {t:?}");
        assert!(t.iter().all(u8::is_ascii_alphanumeric), "slot {s}: {t:?}");
        let mut k = b"{".to_vec();
        k.extend_from_slice(t);
        k.push(b'}');
        assert_eq!(key_slot(&k), s, "{}", String::from_utf8_lossy(&k));
    }
}

#[test]
fn tags_are_the_shortest_then_smallest() {
    // An independent search: every string of up to 3 characters in byte order, shortest first.
    let mut alphabet: Vec<u8> = (b'0'..=b'9')
        .chain(b'A'..=b'Z')
        .chain(b'a'..=b'z')
        .collect();
    alphabet.sort_unstable();
    let mut want: Vec<Option<Vec<u8>>> = vec![None; SLOTS];
    let mut strings: Vec<Vec<u8>> = vec![Vec::new()];
    for _len in 1..=3 {
        strings = strings
            .iter()
            .flat_map(|p| {
                alphabet.iter().map(move |&c| {
                    let mut s = p.clone();
                    s.push(c);
                    s
                })
            })
            .collect();
        for s in &strings {
            let slot = usize::from(crc16_bitwise(s) & 0x3FFF);
            if want[slot].is_none() {
                want[slot] = Some(s.clone());
            }
        }
    }
    for (s, w) in want.iter().enumerate() {
        assert_eq!(Some(slot_tag(s as u16)), w.as_deref(), "slot {s}");
    }
    assert_eq!(slot_tag(0), b"06S");
    assert_eq!(slot_tag(16383), b"6ZJ");
}

#[test]
fn tag_table_builds_fast() {
    // The table is built once per process; its cost is a one-off stall on the first call.
    let best = (0..3)
        .map(|_| {
            let t = std::time::Instant::now();
            let tags = slot::build_tags();
            assert_eq!(tags.len(), SLOTS);
            t.elapsed()
        })
        .min()
        .unwrap();
    eprintln!("tag table: {best:?}");
    assert!(
        best.as_millis() < 50,
        "building the tag table took {best:?}"
    );
}

#[test]
fn names_of_our_own_land_in_the_slot_asked() {
    for s in [0u16, 1, 866, 5061, 12182, 16383] {
        let k = key_in_slot(b"__ferry:mark:", s);
        assert!(k.starts_with(b"__ferry:mark:{"));
        assert!(k.ends_with(b"}"));
        assert_eq!(key_slot(&k), s);
    }
    // A prefix may contain `}`: the first `{` is still ours.
    assert_eq!(key_slot(&key_in_slot(b"a}b", 77)), 77);
    assert_eq!(key_slot(&key_in_slot(b"", 4242)), 4242);
    for key in [
        &b"foo"[..],
        b"{user1000}.x",
        b"",
        b"{}",
        b"a{b}{c}",
        b"\xff\x00",
    ] {
        let name = same_slot_name(b"__ferry:", key);
        assert_eq!(key_slot(&name), key_slot(key));
        assert_eq!(name, key_in_slot(b"__ferry:", key_slot(key)));
    }
}

// ---------------------------------------------------------------------------------------------------
// Slot maps

fn bulk(s: &str) -> Reply {
    Reply::Bulk(Some(Bytes::copy_from_slice(s.as_bytes())))
}

fn int(i: i64) -> Reply {
    Reply::Integer(i)
}

fn arr(v: Vec<Reply>) -> Reply {
    Reply::Array(Some(v))
}

/// A `CLUSTER SLOTS` node as 7.0 writes it: endpoint, port, id, metadata.
fn slots_node(endpoint: Reply, port: i64, id: &str, meta: &[(&str, &str)]) -> Reply {
    let meta = meta.iter().flat_map(|(k, v)| [bulk(k), bulk(v)]).collect();
    arr(vec![endpoint, int(port), bulk(id), arr(meta)])
}

fn id(c: char) -> String {
    std::iter::repeat(c).take(40).collect()
}

/// Three masters as `CLUSTER SLOTS` of 7.0 answers (the first master owns two ranges).
fn three_masters_slots() -> Reply {
    arr(vec![
        arr(vec![
            int(0),
            int(5460),
            slots_node(bulk("10.0.0.1"), 7000, &id('a'), &[]),
            slots_node(bulk("10.0.0.4"), 7003, &id('d'), &[]),
        ]),
        arr(vec![
            int(5461),
            int(10922),
            slots_node(bulk("10.0.0.2"), 7001, &id('b'), &[]),
        ]),
        arr(vec![
            int(10923),
            int(16000),
            slots_node(bulk("10.0.0.3"), 7002, &id('c'), &[]),
        ]),
        arr(vec![
            int(16001),
            int(16383),
            slots_node(bulk("10.0.0.1"), 7000, &id('a'), &[]),
            slots_node(bulk("10.0.0.5"), 7004, &id('e'), &[]),
        ]),
    ])
}

#[test]
fn cluster_slots_of_three_masters() {
    let m = SlotMap::from_cluster_slots(&three_masters_slots(), "10.0.0.9:7000").unwrap();
    let addrs: Vec<&str> = m.nodes().iter().map(|n| n.addr.as_str()).collect();
    assert_eq!(addrs, ["10.0.0.1:7000", "10.0.0.2:7001", "10.0.0.3:7002"]);
    assert_eq!(m.nodes()[0].id.as_deref(), Some(id('a').as_str()));
    assert_eq!(
        m.nodes()[0].replicas,
        ["10.0.0.4:7003", "10.0.0.5:7004"],
        "replicas of both ranges"
    );
    assert!(m.nodes()[1].replicas.is_empty());
    assert_eq!(m.owner(0), Some(0));
    assert_eq!(m.owner(5460), Some(0));
    assert_eq!(m.owner(5461), Some(1));
    assert_eq!(m.owner(16383), Some(0));
    assert_eq!(m.owner_addr(12000), Some("10.0.0.3:7002"));
    assert_eq!(m.ranges_of(0), [(0, 5460), (16001, 16383)]);
    assert_eq!(m.ranges_of(2), [(10923, 16000)]);
    assert!(m.ranges_of(3).is_empty());
    assert!(m.uncovered().is_empty());
    assert!(m.is_complete());
    let dbg = format!("{m:?}");
    assert!(
        dbg.contains("\"10.0.0.1:7000\": [(0, 5460), (16001, 16383)]"),
        "{dbg}"
    );
}

#[test]
fn cluster_slots_of_older_servers_and_gaps() {
    // 3.x: no id, no metadata; a gap nobody owns.
    let r = arr(vec![
        arr(vec![
            int(0),
            int(99),
            arr(vec![bulk("127.0.0.1"), int(30001)]),
            arr(vec![bulk("127.0.0.1"), int(30004)]),
        ]),
        arr(vec![
            int(200),
            int(16383),
            arr(vec![bulk("127.0.0.1"), int(30002)]),
        ]),
    ]);
    let m = SlotMap::from_cluster_slots(&r, "127.0.0.1:30001").unwrap();
    assert_eq!(m.nodes().len(), 2);
    assert_eq!(m.nodes()[0].id, None);
    assert_eq!(m.nodes()[0].replicas, ["127.0.0.1:30004"]);
    assert_eq!(m.uncovered(), [(100, 199)]);
    assert_eq!(m.owner(150), None);
    assert!(!m.is_complete());
    // An empty reply: a cluster with no slot assigned.
    let empty = SlotMap::from_cluster_slots(&arr(vec![]), "h:1").unwrap();
    assert!(empty.nodes().is_empty());
    assert_eq!(empty.uncovered(), [(0, 16383)]);
}

#[test]
fn cluster_slots_endpoints_empty_null_unknown_and_ipv6() {
    let r = arr(vec![
        // Empty endpoint (a node that does not know its own IP yet): the host asked.
        arr(vec![
            int(0),
            int(9),
            slots_node(bulk(""), 7000, &id('a'), &[]),
        ]),
        // Null endpoint (cluster-preferred-endpoint-type unknown-endpoint): the host asked.
        arr(vec![
            int(10),
            int(19),
            slots_node(Reply::Bulk(None), 7001, &id('b'), &[("ip", "10.1.1.1")]),
        ]),
        // RESP3 null too.
        arr(vec![
            int(20),
            int(29),
            slots_node(Reply::Null, 7002, &id('c'), &[]),
        ]),
        // `?`: a hostname the node does not know; its IP from the metadata.
        arr(vec![
            int(30),
            int(39),
            slots_node(bulk("?"), 7003, &id('d'), &[("ip", "10.1.1.4")]),
        ]),
        // `?` without metadata: the host asked.
        arr(vec![int(40), int(49), arr(vec![bulk("?"), int(7004)])]),
        // A hostname, and an IPv6 address.
        arr(vec![
            int(50),
            int(59),
            slots_node(
                bulk("redis-5.example"),
                7005,
                &id('f'),
                &[("ip", "10.1.1.6")],
            ),
        ]),
        arr(vec![
            int(60),
            int(69),
            slots_node(bulk("fd00::7"), 7006, &id('g'), &[]),
        ]),
    ]);
    let m = SlotMap::from_cluster_slots(&r, "seed.example:7000").unwrap();
    let addrs: Vec<&str> = m.nodes().iter().map(|n| n.addr.as_str()).collect();
    assert_eq!(
        addrs,
        [
            "seed.example:7000",
            "seed.example:7001",
            "seed.example:7002",
            "10.1.1.4:7003",
            "seed.example:7004",
            "redis-5.example:7005",
            "[fd00::7]:7006"
        ]
    );
    // An IPv6 seed asked, with an empty endpoint.
    let r = arr(vec![arr(vec![
        int(0),
        int(1),
        arr(vec![bulk(""), int(7000)]),
    ])]);
    let m = SlotMap::from_cluster_slots(&r, "[::1]:7000").unwrap();
    assert_eq!(m.nodes()[0].addr, "[::1]:7000");
}

#[test]
fn cluster_slots_refuses_garbage() {
    let bad = [
        (bulk("x"), "not an array"),
        (arr(vec![arr(vec![int(0), int(1)])]), "fewer than 3"),
        (
            arr(vec![arr(vec![
                int(0),
                int(16384),
                arr(vec![bulk("h"), int(1)]),
            ])]),
            "not a slot",
        ),
        (
            arr(vec![arr(vec![
                int(9),
                int(1),
                arr(vec![bulk("h"), int(1)]),
            ])]),
            "ends before it starts",
        ),
        (
            arr(vec![arr(vec![
                int(0),
                int(1),
                arr(vec![bulk("h"), int(0)]),
            ])]),
            "not a port",
        ),
        (
            arr(vec![arr(vec![int(0), int(1), arr(vec![bulk("h")])])]),
            "fewer than 2",
        ),
        (
            arr(vec![
                arr(vec![int(0), int(10), arr(vec![bulk("h"), int(1)])]),
                arr(vec![int(10), int(20), arr(vec![bulk("h"), int(2)])]),
            ]),
            "slot 10 is claimed by both h:1 and h:2",
        ),
    ];
    for (reply, want) in bad {
        let e = SlotMap::from_cluster_slots(&reply, "h:1").unwrap_err();
        assert!(e.contains(want), "{e:?} lacks {want:?}");
    }
    assert!(SlotMap::from_cluster_slots(&arr(vec![]), "no-port").is_err());
}

/// A `CLUSTER SHARDS` node, RESP2 flat form.
fn shard_node(fields: &[(&str, Reply)]) -> Reply {
    arr(fields
        .iter()
        .flat_map(|(k, v)| [bulk(k), v.clone()])
        .collect())
}

fn node7(idc: char, ip: &str, port: i64, role: &str, health: &str) -> Reply {
    shard_node(&[
        ("id", bulk(&id(idc))),
        ("port", int(port)),
        ("ip", bulk(ip)),
        ("endpoint", bulk(ip)),
        ("role", bulk(role)),
        ("replication-offset", int(72156)),
        ("health", bulk(health)),
    ])
}

fn shard(slots: &[i64], nodes: Vec<Reply>) -> Reply {
    arr(vec![
        bulk("slots"),
        arr(slots.iter().map(|&s| int(s)).collect()),
        bulk("nodes"),
        arr(nodes),
    ])
}

#[test]
fn cluster_shards_gives_the_same_map_as_cluster_slots() {
    let shards = arr(vec![
        shard(
            &[10923, 16000],
            vec![node7('c', "10.0.0.3", 7002, "master", "online")],
        ),
        shard(
            &[0, 5460, 16001, 16383],
            vec![
                node7('a', "10.0.0.1", 7000, "master", "online"),
                node7('d', "10.0.0.4", 7003, "replica", "online"),
                node7('e', "10.0.0.5", 7004, "replica", "online"),
                node7('x', "10.0.0.8", 7008, "replica", "loading"),
            ],
        ),
        shard(
            &[5461, 10922],
            vec![node7('b', "10.0.0.2", 7001, "master", "online")],
        ),
        // An empty master: no slots, so not a node of the map.
        shard(&[], vec![node7('f', "10.0.0.6", 7005, "master", "online")]),
    ]);
    let a = SlotMap::from_cluster_shards(&shards, "10.0.0.9:7000").unwrap();
    let b = SlotMap::from_cluster_slots(&three_masters_slots(), "10.0.0.9:7000").unwrap();
    assert_eq!(a, b);
    assert!(a.same_layout(&b));
}

#[test]
fn cluster_shards_failed_masters_resp3_and_endpoints() {
    // After a failover: the old master failed, the promoted replica is the online master.
    let failed_over = shard(
        &[0, 8191],
        vec![
            node7('a', "10.0.0.1", 7000, "master", "fail"),
            node7('d', "10.0.0.4", 7003, "master", "online"),
        ],
    );
    // A shard whose only master is down: its slots are nobody's.
    let down = shard(
        &[8192, 16383],
        vec![
            node7('b', "10.0.0.2", 7001, "master", "fail"),
            node7('e', "10.0.0.5", 7004, "replica", "online"),
        ],
    );
    let m = SlotMap::from_cluster_shards(&arr(vec![failed_over, down]), "h:1").unwrap();
    assert_eq!(m.nodes().len(), 1);
    assert_eq!(m.nodes()[0].addr, "10.0.0.4:7003");
    assert_eq!(m.nodes()[0].id.as_deref(), Some(id('d').as_str()));
    assert_eq!(m.uncovered(), [(8192, 16383)]);

    // RESP3 maps; endpoints empty, `?` and a hostname; a bulk-string port.
    let map = |fields: Vec<(&str, Reply)>| {
        Reply::Map(fields.into_iter().map(|(k, v)| (bulk(k), v)).collect())
    };
    let r = arr(vec![
        map(vec![
            ("slots", arr(vec![int(0), int(99)])),
            (
                "nodes",
                arr(vec![map(vec![
                    ("id", bulk(&id('a'))),
                    ("port", int(7000)),
                    ("ip", bulk("10.0.0.1")),
                    ("endpoint", bulk("")),
                    ("role", bulk("master")),
                    ("health", bulk("online")),
                ])]),
            ),
        ]),
        map(vec![
            ("slots", arr(vec![int(100), int(199)])),
            (
                "nodes",
                arr(vec![map(vec![
                    ("port", bulk("7001")),
                    ("ip", bulk("10.0.0.2")),
                    ("endpoint", bulk("?")),
                    ("role", bulk("master")),
                    ("health", bulk("online")),
                ])]),
            ),
        ]),
        map(vec![
            ("slots", arr(vec![int(200), int(16383)])),
            (
                "nodes",
                arr(vec![map(vec![
                    ("port", int(7002)),
                    ("ip", bulk("10.0.0.3")),
                    ("endpoint", bulk("node-3.example")),
                    ("hostname", bulk("node-3.example")),
                    ("role", bulk("master")),
                    ("health", bulk("online")),
                ])]),
            ),
        ]),
    ]);
    let m = SlotMap::from_cluster_shards(&r, "seed:7000").unwrap();
    let addrs: Vec<&str> = m.nodes().iter().map(|n| n.addr.as_str()).collect();
    assert_eq!(addrs, ["seed:7000", "10.0.0.2:7001", "node-3.example:7002"]);
    assert_eq!(m.nodes()[1].id, None);
}

#[test]
fn cluster_shards_refuses_garbage() {
    let tls_only = shard(
        &[0, 1],
        vec![shard_node(&[
            ("id", bulk(&id('a'))),
            ("tls-port", int(7443)),
            ("ip", bulk("h")),
            ("role", bulk("master")),
            ("health", bulk("online")),
        ])],
    );
    let bad = [
        (arr(vec![bulk("x")]), "not a map"),
        (arr(vec![arr(vec![bulk("nodes"), arr(vec![])])]), "no slots"),
        (arr(vec![arr(vec![bulk("slots"), arr(vec![])])]), "no nodes"),
        (
            arr(vec![shard(
                &[0],
                vec![node7('a', "h", 1, "master", "online")],
            )]),
            "odd number",
        ),
        (arr(vec![tls_only]), "only tls-port"),
        (
            arr(vec![
                shard(&[0, 10], vec![node7('a', "h", 1, "master", "online")]),
                shard(&[5, 20], vec![node7('b', "h", 2, "master", "online")]),
            ]),
            "slot 5 is claimed by both h:1 and h:2",
        ),
    ];
    for (reply, want) in bad {
        let e = SlotMap::from_cluster_shards(&reply, "h:1").unwrap_err();
        assert!(e.contains(want), "{e:?} lacks {want:?}");
    }
}

#[test]
fn layout_comparison_and_moves() {
    let a = SlotMap::from_cluster_slots(&three_masters_slots(), "h:1").unwrap();
    let mut b = a.clone();
    assert!(a.same_layout(&b));
    // Ids and replicas do not count, addresses do.
    let plain = arr(vec![
        arr(vec![
            int(0),
            int(5460),
            arr(vec![bulk("10.0.0.1"), int(7000)]),
        ]),
        arr(vec![
            int(5461),
            int(10922),
            arr(vec![bulk("10.0.0.2"), int(7001)]),
        ]),
        arr(vec![
            int(10923),
            int(16000),
            arr(vec![bulk("10.0.0.3"), int(7002)]),
        ]),
        arr(vec![
            int(16001),
            int(16383),
            arr(vec![bulk("10.0.0.1"), int(7000)]),
        ]),
    ]);
    let c = SlotMap::from_cluster_slots(&plain, "h:1").unwrap();
    assert!(a.same_layout(&c));
    assert_ne!(a, c);
    // A MOVED to a known master, then to a new one.
    assert_eq!(b.assign(100, "10.0.0.2:7001"), 1);
    assert!(!a.same_layout(&b));
    assert_eq!(b.owner_addr(100), Some("10.0.0.2:7001"));
    assert_eq!(b.ranges_of(0), [(0, 99), (101, 5460), (16001, 16383)]);
    assert_eq!(b.assign(101, "10.0.0.7:7007"), 3);
    assert_eq!(b.nodes()[3].addr, "10.0.0.7:7007");
    assert_eq!(b.ranges_of(3), [(101, 101)]);
    let empty = SlotMap::default();
    assert!(empty.same_layout(&SlotMap::empty()));
    assert!(!empty.same_layout(&a));
}

#[test]
fn redirects_as_cluster_c_writes_them() {
    let moved = |slot, addr: &str| Redirect::Moved {
        slot,
        addr: addr.into(),
    };
    assert_eq!(
        Redirect::parse(b"MOVED 3999 127.0.0.1:6381"),
        Some(moved(3999, "127.0.0.1:6381"))
    );
    assert_eq!(
        Redirect::parse(b"-MOVED 3999 127.0.0.1:6381\r\n"),
        Some(moved(3999, "127.0.0.1:6381"))
    );
    assert_eq!(
        Redirect::parse(b"ASK 0 redis-1.example:7000"),
        Some(Redirect::Ask {
            slot: 0,
            addr: "redis-1.example:7000".into()
        })
    );
    // An IPv6 endpoint is written bare: `%s:%d`.
    assert_eq!(
        Redirect::parse(b"MOVED 16383 fd00::1:7000"),
        Some(moved(16383, "[fd00::1]:7000"))
    );
    assert_eq!(Redirect::parse(b"MOVED 1 :7000"), Some(moved(1, ":7000")));
    assert_eq!(Redirect::parse(b"MOVED 1 ?:7000"), Some(moved(1, "?:7000")));
    assert_eq!(
        Redirect::parse(b"-TRYAGAIN Multiple keys request during rehashing of slot"),
        Some(Redirect::TryAgain)
    );
    assert_eq!(
        Redirect::parse(b"CLUSTERDOWN The cluster is down"),
        Some(Redirect::ClusterDown)
    );
    assert_eq!(
        Redirect::parse(b"CLUSTERDOWN Hash slot not served"),
        Some(Redirect::ClusterDown)
    );
    assert_eq!(
        Redirect::parse(b"LOADING Redis is loading the dataset in memory"),
        Some(Redirect::Loading)
    );
    assert_eq!(Redirect::parse(b"TRYAGAIN"), Some(Redirect::TryAgain));
    for not in [
        &b"ERR unknown command"[..],
        b"MOVED",
        b"MOVED 16384 h:1",
        b"MOVED -1 h:1",
        b"MOVED x h:1",
        b"MOVED 1",
        b"MOVED 1 h",
        b"MOVED 1 h:99999",
        b"MOVED 1 h:1 extra",
        b"moved 1 h:1",
        b"CROSSSLOT Keys in request don't hash to the same slot",
        b"LOADINGX",
        b"",
        b"\xff",
    ] {
        assert_eq!(
            Redirect::parse(not),
            None,
            "{:?}",
            String::from_utf8_lossy(not)
        );
    }
}

#[test]
fn redirect_addresses_resolve_against_the_node_that_answered() {
    let r = Redirect::parse(b"MOVED 1 :7005").unwrap();
    assert_eq!(r.resolve("10.0.0.1:7000").as_deref(), Some("10.0.0.1:7005"));
    assert_eq!(r.resolve("[::1]:7000").as_deref(), Some("[::1]:7005"));
    let r = Redirect::parse(b"ASK 1 10.0.0.2:7001").unwrap();
    assert_eq!(r.resolve("10.0.0.1:7000").as_deref(), Some("10.0.0.2:7001"));
    assert_eq!(
        Redirect::parse(b"MOVED 1 ?:7001").unwrap().resolve("h:1"),
        None
    );
    assert_eq!(Redirect::TryAgain.resolve("h:1"), None);
}

#[test]
fn host_port_helpers() {
    assert_eq!(join_host_port("10.0.0.1", 7000), "10.0.0.1:7000");
    assert_eq!(join_host_port("::1", 7000), "[::1]:7000");
    assert_eq!(join_host_port("[::1]", 7000), "[::1]:7000");
    assert_eq!(split_host_port("[::1]:7000"), Some(("::1".into(), 7000)));
    assert_eq!(split_host_port("::1:7000"), Some(("::1".into(), 7000)));
    assert_eq!(split_host_port("h:1"), Some(("h".into(), 1)));
    assert_eq!(split_host_port(":1"), Some(("".into(), 1)));
    assert_eq!(split_host_port("h"), None);
    assert_eq!(split_host_port("h:x"), None);
    assert_eq!(split_host_port("h:70000"), None);
}

// ---------------------------------------------------------------------------------------------------
// Keys

/// `command_keys` of a line written as words.
fn keys_of(line: &str) -> KeyRoute {
    let args: Vec<&[u8]> = line.split(' ').map(str::as_bytes).collect();
    command_keys(&args)
}

fn k(v: &[usize]) -> KeyRoute {
    KeyRoute::Keys(v.to_vec())
}

fn check(cases: &[(&str, KeyRoute)]) {
    for (line, want) in cases {
        assert_eq!(&keys_of(line), want, "{line}");
    }
}

#[test]
fn keyless_commands() {
    check(&[
        ("FLUSHALL", KeyRoute::Keyless),
        ("flushall ASYNC", KeyRoute::Keyless),
        ("FLUSHDB SYNC", KeyRoute::Keyless),
        ("SWAPDB 0 1", KeyRoute::Keyless),
        ("SELECT 3", KeyRoute::Keyless),
        ("MULTI", KeyRoute::Keyless),
        ("EXEC", KeyRoute::Keyless),
        ("PING", KeyRoute::Keyless),
        ("REPLCONF GETACK *", KeyRoute::Keyless),
        ("SCRIPT LOAD return", KeyRoute::Keyless),
        ("SCRIPT FLUSH", KeyRoute::Keyless),
        ("FUNCTION LOAD code", KeyRoute::Keyless),
        ("FUNCTION DELETE lib", KeyRoute::Keyless),
        ("FUNCTION RESTORE payload REPLACE", KeyRoute::Keyless),
        ("PUBLISH chan msg", KeyRoute::Keyless),
        ("XGROUP HELP", KeyRoute::Keyless),
    ]);
}

#[test]
fn string_commands() {
    check(&[
        ("SET k v", k(&[1])),
        ("set k v PXAT 1700000000000 GET", k(&[1])),
        ("SETNX k v", k(&[1])),
        ("SETEX k 10 v", k(&[1])),
        ("PSETEX k 10 v", k(&[1])),
        ("GETSET k v", k(&[1])),
        ("GETDEL k", k(&[1])),
        ("GETEX k PERSIST", k(&[1])),
        ("APPEND k v", k(&[1])),
        ("INCR k", k(&[1])),
        ("DECR k", k(&[1])),
        ("INCRBY k 2", k(&[1])),
        ("DECRBY k 2", k(&[1])),
        ("INCRBYFLOAT k 1.5", k(&[1])),
        ("SETRANGE k 3 v", k(&[1])),
        ("SETBIT k 7 1", k(&[1])),
        ("BITFIELD k SET u8 0 255 INCRBY u8 0 1", k(&[1])),
        ("MSET a 1 b 2 c 3", k(&[1, 3, 5])),
        ("MSETNX a 1 b 2", k(&[1, 3])),
        ("MSET a 1 b", KeyRoute::Unknown),
        ("MSET", KeyRoute::Unknown),
        ("MSETEX 2 a 1 b 2 NX EX 10", k(&[2, 4])),
        ("MSETEX 2 a 1 b", KeyRoute::Unknown),
        ("MSETEX 0", KeyRoute::Unknown),
        ("BITOP AND dest a b c", k(&[2, 3, 4, 5])),
        ("BITOP NOT dest a", k(&[2, 3])),
        ("PFADD hll a b c", k(&[1])),
        ("PFMERGE dest a b", k(&[1, 2, 3])),
        ("PFCOUNT a", k(&[1])),
        ("PFCOUNT a b", k(&[1, 2])),
        ("PFDEBUG TODENSE hll", k(&[2])),
        ("DELEX k IFEQ v", k(&[1])),
        ("DELIFEQ k v", k(&[1])),
    ]);
}

#[test]
fn list_commands() {
    check(&[
        ("LPUSH l a b", k(&[1])),
        ("RPUSHX l a", k(&[1])),
        ("LPOP l 2", k(&[1])),
        ("RPOP l", k(&[1])),
        ("LINSERT l BEFORE a b", k(&[1])),
        ("LSET l 0 v", k(&[1])),
        ("LTRIM l 0 -1", k(&[1])),
        ("LREM l 0 v", k(&[1])),
        ("LMOVE src dst LEFT RIGHT", k(&[1, 2])),
        ("BLMOVE src dst LEFT RIGHT 0", k(&[1, 2])),
        ("RPOPLPUSH src dst", k(&[1, 2])),
        ("BRPOPLPUSH src dst 0", k(&[1, 2])),
        ("BLPOP a b c 0", k(&[1, 2, 3])),
        ("BRPOP a 1.5", k(&[1])),
        ("BLPOP a", KeyRoute::Unknown),
        ("LMPOP 2 a b LEFT COUNT 3", k(&[2, 3])),
        ("LMPOP 3 a b LEFT", k(&[2, 3, 4])), // `LEFT` counted as a key: the command itself refuses it
        ("LMPOP 4 a b LEFT", KeyRoute::Unknown),
        ("LMPOP 0 LEFT", KeyRoute::Unknown),
        ("LMPOP -1 a LEFT", KeyRoute::Unknown),
        ("LMPOP 01 a LEFT", KeyRoute::Unknown),
        ("BLMPOP 0 2 a b RIGHT", k(&[3, 4])),
    ]);
}

#[test]
fn set_commands() {
    check(&[
        ("SADD s a b", k(&[1])),
        ("SREM s a", k(&[1])),
        ("SPOP s 3", k(&[1])),
        ("SMOVE src dst m", k(&[1, 2])),
        ("SINTERSTORE dst a b", k(&[1, 2, 3])),
        ("SUNIONSTORE dst a", k(&[1, 2])),
        ("SDIFFSTORE dst a b c", k(&[1, 2, 3, 4])),
        ("SINTERCARD 2 a b LIMIT 5", k(&[2, 3])),
    ]);
}

#[test]
fn sorted_set_commands() {
    check(&[
        ("ZADD z NX CH 1 a 2 b", k(&[1])),
        ("ZINCRBY z 1 a", k(&[1])),
        ("ZREM z a b", k(&[1])),
        ("ZREMRANGEBYSCORE z 0 1", k(&[1])),
        ("ZREMRANGEBYRANK z 0 1", k(&[1])),
        ("ZREMRANGEBYLEX z [a [b", k(&[1])),
        ("ZPOPMIN z 2", k(&[1])),
        ("ZPOPMAX z", k(&[1])),
        ("BZPOPMIN a b 0", k(&[1, 2])),
        ("BZPOPMAX a 0", k(&[1])),
        (
            "ZUNIONSTORE dst 2 a b WEIGHTS 1 2 AGGREGATE MAX",
            k(&[1, 3, 4]),
        ),
        ("ZINTERSTORE dst 1 a", k(&[1, 3])),
        ("ZDIFFSTORE dst 3 a b c", k(&[1, 3, 4, 5])),
        ("ZUNIONSTORE dst 3 a b", KeyRoute::Unknown),
        ("ZUNIONSTORE dst 0", KeyRoute::Unknown),
        ("ZRANGESTORE dst src 0 -1 REV", k(&[1, 2])),
        ("ZMPOP 2 a b MIN COUNT 2", k(&[2, 3])),
        ("BZMPOP 0.5 1 a MAX", k(&[3])),
        ("ZINTERCARD 2 a b", k(&[2, 3])),
    ]);
}

#[test]
fn hash_commands() {
    check(&[
        ("HSET h f v g w", k(&[1])),
        ("HMSET h f v", k(&[1])),
        ("HSETNX h f v", k(&[1])),
        ("HDEL h f", k(&[1])),
        ("HINCRBY h f 1", k(&[1])),
        ("HINCRBYFLOAT h f 1.5", k(&[1])),
        ("HEXPIRE h 10 NX FIELDS 2 f g", k(&[1])),
        ("HPEXPIRE h 10 FIELDS 1 f", k(&[1])),
        ("HEXPIREAT h 1700000000 FIELDS 1 f", k(&[1])),
        ("HPEXPIREAT h 1700000000000 FIELDS 1 f", k(&[1])),
        ("HPERSIST h FIELDS 1 f", k(&[1])),
        ("HGETDEL h FIELDS 1 f", k(&[1])),
        ("HGETEX h EX 10 FIELDS 1 f", k(&[1])),
        ("HSETEX h FNX EX 10 FIELDS 1 f v", k(&[1])),
    ]);
}

#[test]
fn stream_commands() {
    check(&[
        ("XADD s MAXLEN ~ 10 * f v", k(&[1])),
        ("XDEL s 1-1", k(&[1])),
        ("XTRIM s MINID 0", k(&[1])),
        ("XSETID s 5-0 ENTRIESADDED 3 MAXDELETEDID 2-0", k(&[1])),
        ("XGROUP CREATE s g $ MKSTREAM", k(&[2])),
        ("xgroup setid s g 0", k(&[2])),
        ("XGROUP DESTROY s g", k(&[2])),
        ("XGROUP CREATECONSUMER s g c", k(&[2])),
        ("XGROUP DELCONSUMER s g c", k(&[2])),
        ("XGROUP NOPE s", KeyRoute::Unknown),
        ("XGROUP", KeyRoute::Unknown),
        ("XACK s g 1-1 2-2", k(&[1])),
        ("XCLAIM s g c 0 1-1 FORCE JUSTID", k(&[1])),
        ("XAUTOCLAIM s g c 0 0-0 COUNT 10", k(&[1])),
        ("XDELEX s KEEPREF IDS 1 1-1", k(&[1])),
        ("XACKDEL s g IDS 1 1-1", k(&[1])),
        (
            "XREADGROUP GROUP g c COUNT 1 BLOCK 0 NOACK STREAMS a b > >",
            k(&[10, 11]),
        ),
        // `STREAMS` as the group and consumer name: only the option counts.
        ("XREADGROUP GROUP STREAMS STREAMS STREAMS s >", k(&[5])),
        ("XREADGROUP GROUP g c STREAMS a b >", KeyRoute::Unknown),
        ("XREADGROUP STREAMS a >", KeyRoute::Unknown),
        ("XREADGROUP GROUP g c", KeyRoute::Unknown),
        ("XREAD COUNT 2 STREAMS a b 0 0", k(&[4, 5])),
        ("XREADGROUP GROUP g c CLAIM 100 STREAMS s >", k(&[7])),
        ("XREAD CLAIM 100 STREAMS s 0", KeyRoute::Unknown),
        ("XREAD GROUP g c STREAMS a 0", KeyRoute::Unknown),
    ]);
}

#[test]
fn geo_commands() {
    check(&[
        ("GEOADD g 13.36 38.11 palermo", k(&[1])),
        ("GEORADIUS g 15 37 200 km WITHDIST", k(&[1])),
        ("GEORADIUS g 15 37 200 km STORE dst", k(&[1, 7])),
        (
            "GEORADIUS g 15 37 200 km ASC COUNT 3 ANY STOREDIST dst",
            k(&[1, 11]),
        ),
        ("GEORADIUS g 15 37 200 km STORE a STOREDIST b", k(&[1, 9])),
        ("GEORADIUS g 15 37 200 km STORE", KeyRoute::Unknown),
        ("GEORADIUS g 15 37 200 km BOGUS", KeyRoute::Unknown),
        ("GEORADIUSBYMEMBER g palermo 100 km STORE dst", k(&[1, 6])),
        ("GEORADIUSBYMEMBER g store 100 km", k(&[1])),
        ("GEORADIUS_RO g 15 37 200 km", k(&[1])),
        (
            "GEOSEARCHSTORE dst src FROMMEMBER m BYRADIUS 1 km STOREDIST",
            k(&[1, 2]),
        ),
    ]);
}

#[test]
fn generic_commands() {
    check(&[
        ("DEL a b c", k(&[1, 2, 3])),
        ("UNLINK a", k(&[1])),
        ("EXISTS a b", k(&[1, 2])),
        ("TOUCH a", k(&[1])),
        ("DEL", KeyRoute::Unknown),
        ("EXPIRE k 10 NX", k(&[1])),
        ("PEXPIREAT k 1700000000000", k(&[1])),
        ("PERSIST k", k(&[1])),
        ("RENAME a b", k(&[1, 2])),
        ("RENAMENX a b", k(&[1, 2])),
        ("MOVE k 1", k(&[1])),
        ("COPY a b DB 1 REPLACE", k(&[1, 2])),
        ("RESTORE k 0 payload REPLACE ABSTTL IDLETIME 1", k(&[1])),
        ("RESTORE-ASKING k 0 payload", k(&[1])),
        ("SORT k", k(&[1])),
        (
            "SORT k BY w_* LIMIT 0 10 GET # GET o_* DESC ALPHA STORE dst",
            k(&[1, 14]),
        ),
        ("SORT k STORE a STORE b", k(&[1, 5])),
        // The destination may be named like an option: it is skipped as SORT skips it.
        ("SORT k STORE limit", k(&[1, 3])),
        ("SORT k LIMIT 0", KeyRoute::Unknown),
        ("SORT k BOGUS", KeyRoute::Unknown),
        ("SORT_RO k BY x", k(&[1])),
        ("MIGRATE h 6379 k 0 5000", k(&[3])),
        ("MIGRATE h 6379 k 0 5000 COPY REPLACE AUTH pw", k(&[3])),
        (
            "MIGRATE h 6379  0 5000 REPLACE AUTH2 u pw KEYS a b",
            k(&[11, 12]),
        ),
        ("MIGRATE h 6379 k 0 5000 KEYS a b", KeyRoute::Unknown),
        ("MIGRATE h 6379  0 5000 KEYS", KeyRoute::Unknown),
        ("SPUBLISH chan msg", k(&[1])),
        ("DEBUG RELOAD", KeyRoute::Unknown),
        ("OBJECT FREQ k", KeyRoute::Unknown),
        ("NOSUCHCOMMAND k", KeyRoute::Unknown),
        ("SET", KeyRoute::Unknown),
        ("RENAME a", KeyRoute::Unknown),
    ]);
    assert_eq!(command_keys(&[]), KeyRoute::Unknown);
    assert_eq!(command_keys(&[&[b'A'; 64][..], b"k"]), KeyRoute::Unknown);
}

#[test]
fn script_commands() {
    check(&[
        ("EVAL body 2 a b x y", k(&[3, 4])),
        ("EVALSHA sha 1 a", k(&[3])),
        ("EVAL body 0", k(&[])),
        ("EVAL body 0 arg", k(&[])),
        ("EVAL body 3 a b", KeyRoute::Unknown),
        ("EVAL body -1", KeyRoute::Unknown),
        ("EVAL body", KeyRoute::Unknown),
        ("EVAL_RO body 1 a", k(&[3])),
        ("EVALSHA_RO sha 1 a", k(&[3])),
        ("FCALL f 2 a b arg", k(&[3, 4])),
        ("FCALL_RO f 0", k(&[])),
    ]);
}

#[test]
fn binary_arguments_and_case() {
    let args: [&[u8]; 3] = [b"dEl", b"\x00{k}\xff", b"\r\n"];
    assert_eq!(command_keys(&args), k(&[1, 2]));
    let args: [&[u8]; 4] = [b"eval", b"return 1", b"1", b""];
    assert_eq!(command_keys(&args), k(&[3]));
}

#[test]
fn split_rules() {
    for name in ["DEL", "unlink", "Touch", "EXISTS"] {
        assert_eq!(
            split_rule(name.as_bytes()),
            Split::PerKey { first: 1, step: 1 },
            "{name}"
        );
    }
    assert_eq!(split_rule(b"mset"), Split::PerKey { first: 1, step: 2 });
    for name in [
        "MSETNX",
        "MSETEX",
        "SET",
        "RENAME",
        "SUNIONSTORE",
        "EVAL",
        "MGET",
        "BLPOP",
        "",
    ] {
        assert_eq!(split_rule(name.as_bytes()), Split::Whole, "{name}");
    }
    // The rule and the key positions agree.
    for line in ["DEL a b c", "MSET a 1 b 2 c 3", "EXISTS a", "TOUCH a b"] {
        let args: Vec<&[u8]> = line.split(' ').map(str::as_bytes).collect();
        let Split::PerKey { first, step } = split_rule(args[0]) else {
            panic!("{line}")
        };
        let want: Vec<usize> = (first..args.len()).step_by(step).collect();
        assert_eq!(command_keys(&args), KeyRoute::Keys(want), "{line}");
    }
}
