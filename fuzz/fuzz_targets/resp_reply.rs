//! Fuzzing of the reply parser: `parse_reply`, `parse_reply_bytes`, `skip_reply` and `reply_error` agree with
//! each other (same verdict, same length, same error-ness, same error), never panic, give the same verdict
//! on every prefix-then-whole split, and agree with `redis-protocol`'s RESP2 decoder under the rule
//! documented in `src/resp/tests.rs`:
//! - we accept a RESP2-only reply ⇒ it accepts the same frame and length; a reply with RESP3 types (a blob
//!   error `!` included, though it parses to our `Error`) ⇒ it rejects;
//! - we wait ⇒ it waits (or rejects, when the input holds a RESP3 type byte);
//! - we reject ⇒ it rejects, waits, or accepted a frame that is not canonically encoded, has a line
//!   containing LF, or nests deeper than `MAX_DEPTH`.
#![no_main]
use bytes::{Bytes, BytesMut};
use ferry::resp::{
    self, parse_reply, parse_reply_bytes, reply_error, skip_reply, Reply, MAX_DEPTH,
};
use libfuzzer_sys::fuzz_target;
use redis_protocol::resp2::{decode::decode_range, types::RangeFrame};

const RESP3_TYPES: &[u8] = b"_,#!=(%~>|";

fn is_resp2(r: &Reply) -> bool {
    match r {
        Reply::Simple(_)
        | Reply::Error(_)
        | Reply::Integer(_)
        | Reply::Bulk(_)
        | Reply::Array(None) => true,
        Reply::Array(Some(v)) => v.iter().all(is_resp2),
        _ => false,
    }
}

fn same(r: &Reply, f: &RangeFrame, input: &[u8]) -> bool {
    match (r, f) {
        (Reply::Simple(a), RangeFrame::SimpleString((s, e)))
        | (Reply::Error(a), RangeFrame::Error((s, e)))
        | (Reply::Bulk(Some(a)), RangeFrame::BulkString((s, e))) => a[..] == input[*s..*e],
        (Reply::Integer(a), RangeFrame::Integer(b)) => a == b,
        (Reply::Bulk(None) | Reply::Array(None), RangeFrame::Null) => true,
        (Reply::Array(Some(a)), RangeFrame::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(r, f)| same(r, f, input))
        }
        _ => false,
    }
}

fn depth(f: &RangeFrame) -> usize {
    match f {
        RangeFrame::Array(v) => 1 + v.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn lf_line(f: &RangeFrame, input: &[u8]) -> bool {
    match f {
        RangeFrame::SimpleString((s, e)) | RangeFrame::Error((s, e)) => {
            input[*s..*e].contains(&b'\n')
        }
        RangeFrame::Array(v) => v.iter().any(|f| lf_line(f, input)),
        _ => false,
    }
}

/// The end of `f`'s canonical encoding if `input[pos..]` starts with it.
fn canonical(f: &RangeFrame, input: &[u8], pos: usize) -> Option<usize> {
    let mut b = BytesMut::new();
    match f {
        RangeFrame::SimpleString((s, e)) | RangeFrame::Error((s, e)) => {
            b.extend_from_slice(if matches!(f, RangeFrame::Error(_)) {
                b"-"
            } else {
                b"+"
            });
            b.extend_from_slice(&input[*s..*e]);
            b.extend_from_slice(b"\r\n");
        }
        RangeFrame::Integer(i) => Reply::Integer(*i).encode(&mut b),
        RangeFrame::BulkString((s, e)) => resp::write_bulk(&mut b, &input[*s..*e]),
        RangeFrame::Null => {
            let rest = input.get(pos..)?;
            return (rest.starts_with(b"$-1\r\n") || rest.starts_with(b"*-1\r\n"))
                .then_some(pos + 5);
        }
        RangeFrame::Array(v) => {
            resp::write_array_header(&mut b, v.len());
            let mut p = (input.get(pos..pos + b.len())? == &b[..]).then_some(pos + b.len())?;
            for f in v {
                p = canonical(f, input, p)?;
            }
            return Some(p);
        }
    }
    (input.get(pos..pos + b.len())? == &b[..]).then_some(pos + b.len())
}

fn check_one(input: &[u8]) {
    let frozen = Bytes::copy_from_slice(input);
    let full = parse_reply_bytes(&frozen);
    let skip = skip_reply(input);
    match (&full, &skip) {
        (Ok(Some((r, n))), Ok(Some((h, m)))) => {
            assert_eq!(n, m);
            assert_eq!(r.is_error(), h.is_error());
            if let Some(range) = h.error() {
                assert!(range.start <= range.end && range.end <= *n);
            }
            // Re-encoding what we parsed and parsing it again gives the same reply.
            let mut again = BytesMut::new();
            r.encode(&mut again);
            let (r2, n2) = parse_reply_bytes(&again.freeze()).unwrap().unwrap();
            assert_eq!(&r2, r);
            let _ = (n2, r.to_string());
        }
        (Ok(None), Ok(None)) => {}
        (Err(a), Err(b)) => {
            assert_eq!(a, b);
            assert!(a.offset() <= input.len());
            assert_eq!(skip_reply(&input[..a.offset()]), Ok(None), "{a}");
        }
        _ => panic!("parse {full:?} vs skip {skip:?}"),
    }
    // `array_items` (the EXEC result walker) agrees with the whole parse: one item per element, tiling the
    // reply after its header, each parsing to that element with the same error-ness.
    match (resp::array_items(input), &full) {
        (Ok(Some(items)), Ok(Some((Reply::Array(Some(v)), n)))) => {
            assert_eq!(items.len(), v.len());
            let mut end = items.first().map(|i| i.1.start).unwrap_or(*n);
            for ((h, range), r) in items.iter().zip(v) {
                assert_eq!(range.start, end, "items are contiguous");
                end = range.end;
                let one = Bytes::copy_from_slice(&input[range.clone()]);
                let (again, m) = parse_reply_bytes(&one).unwrap().unwrap();
                assert_eq!(m, range.len());
                assert_eq!(&again, r);
                assert_eq!(h.is_error(), r.is_error());
                if let Some(e) = h.error() {
                    assert!(range.start <= e.start && e.end <= range.end);
                }
            }
            assert_eq!(end, *n, "the last item ends the reply");
        }
        (Ok(Some(items)), other) => panic!("array_items {items:?} but the parse says {other:?}"),
        (Ok(None), Ok(Some((Reply::Array(Some(_)), _)))) => panic!("array_items missed an array"),
        (Ok(None) | Err(_), _) => {}
    }
    let re = reply_error(input);
    assert_eq!(
        re.as_ref().ok().map(|o| o.as_ref().map(|x| x.1)),
        skip.as_ref().ok().map(|o| o.as_ref().map(|x| x.1))
    );
    let mut bm = BytesMut::from(input);
    match (parse_reply(&mut bm), &full) {
        (Ok(Some(r)), Ok(Some((r2, n)))) => {
            assert_eq!(&r, r2);
            assert_eq!(bm.len(), input.len() - n);
        }
        (Ok(None), Ok(None)) | (Err(_), Err(_)) => assert_eq!(bm.len(), input.len()),
        (a, b) => panic!("parse_reply {a:?} vs parse_reply_bytes {b:?}"),
    }

    let theirs = decode_range(input);
    match (&full, &theirs) {
        // A blob error (`!`) is a RESP3 type that parses to our RESP2-looking `Error`.
        (Ok(Some((r, n))), t) if !is_resp2(r) || (t.is_err() && input[..*n].contains(&b'!')) => {
            assert!(t.is_err(), "RESP3 vs {t:?}")
        }
        (Ok(Some((r, n))), Ok(Some((f, m)))) => {
            assert_eq!(n, m);
            assert!(same(r, f, input), "{r:?} vs {f:?}");
        }
        (Ok(Some(r)), t) => panic!("we accept {r:?}, redis-protocol: {t:?}"),
        (Ok(None), Ok(None)) => {}
        (Ok(None), Err(_)) if input.iter().any(|b| RESP3_TYPES.contains(b)) => {}
        (Ok(None), t) => panic!("we wait, redis-protocol: {t:?}"),
        (Err(_), Err(_) | Ok(None)) => {}
        (Err(e), Ok(Some((f, m)))) => assert!(
            canonical(f, input, 0) != Some(*m) || lf_line(f, input) || depth(f) > MAX_DEPTH,
            "we reject ({e}) the canonical {f:?}"
        ),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, input)) = data.split_first() else {
        return;
    };
    check_one(input);
    // A prefix then the whole: the prefix is incomplete or gives the same verdict.
    let k = ctl as usize % (input.len() + 1);
    let whole = skip_reply(input);
    match skip_reply(&input[..k]) {
        Ok(None) => {}
        Ok(Some((_, n))) => assert_eq!(
            whole.as_ref().ok().and_then(|w| w.as_ref()).map(|w| w.1),
            Some(n)
        ),
        Err(e) => assert_eq!(whole.as_ref().err(), Some(&e)),
    }
    // A pipelined sequence: consume replies one by one, checking each.
    let mut pos = 0;
    while let Ok(Some((_, n))) = skip_reply(&input[pos..]) {
        assert!(n > 0);
        pos += n;
        if pos < input.len() {
            check_one(&input[pos..]);
        }
    }
});
