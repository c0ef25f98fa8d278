//! The cluster module's parsers on arbitrary input: `CLUSTER SLOTS` / `CLUSTER SHARDS` replies (any RESP
//! a node could send), redirection errors, and the key positions of any command line.
//!
//! Checked: nothing panics; a map that parses assigns every slot at most once, to a node it lists, and its
//! uncovered ranges are exactly the slots without an owner; a redirection names a slot below 16384; the key
//! positions of a command are increasing indexes of its arguments, and a per-key split rule never reads
//! past them.
#![no_main]
use bytes::Bytes;
use ferry::cluster::{command_keys, key_slot, split_rule, KeyRoute, Redirect, SlotMap, Split, SLOTS};
use ferry::resp::parse_reply_bytes;
use libfuzzer_sys::fuzz_target;

fn check_map(map: &SlotMap) {
    let uncovered = map.uncovered();
    let mut free = 0usize;
    for s in 0..SLOTS as u16 {
        match map.owner(s) {
            Some(n) => assert!(n < map.nodes().len(), "slot {s} owned by a node not listed"),
            None => free += 1,
        }
    }
    let listed: usize = uncovered
        .iter()
        .map(|(a, b)| usize::from(*b) - usize::from(*a) + 1)
        .sum();
    assert_eq!(free, listed, "uncovered ranges and owners disagree");
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            let bytes = Bytes::copy_from_slice(rest);
            if let Ok(Some((reply, _))) = parse_reply_bytes(&bytes) {
                if let Ok(m) = SlotMap::from_cluster_slots(&reply, "127.0.0.1:7000") {
                    check_map(&m);
                }
                if let Ok(m) = SlotMap::from_cluster_shards(&reply, "127.0.0.1:7000") {
                    check_map(&m);
                }
            }
        }
        1 => {
            let _ = key_slot(rest);
            match Redirect::parse(rest) {
                Some(Redirect::Moved { slot, .. }) | Some(Redirect::Ask { slot, .. }) => {
                    assert!(usize::from(slot) < SLOTS)
                }
                _ => {}
            }
        }
        _ => {
            // Arguments separated by 0xff.
            let args: Vec<&[u8]> = rest.split(|b| *b == 0xff).collect();
            if args.is_empty() || args[0].is_empty() {
                return;
            }
            if let KeyRoute::Keys(k) = command_keys(&args) {
                assert!(k.windows(2).all(|w| w[0] < w[1]), "key positions not increasing");
                assert!(k.iter().all(|&i| i > 0 && i < args.len()), "key position out of range");
                if let Split::PerKey { first, step } = split_rule(args[0]) {
                    assert!(first >= 1 && step >= 1);
                }
            }
        }
    }
});
