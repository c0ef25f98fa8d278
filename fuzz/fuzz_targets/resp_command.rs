//! Differential fuzzing of the replication-stream command decoder.
//!
//! The first input byte picks chunk sizes; the rest is the stream. Checked:
//! - decoding the stream whole and in chunks (sizes from the first byte, and 1 byte at a time for short
//!   inputs) yields the same commands, lengths and final verdict (incomplete, or the same error);
//! - an error's offset is preceded by a valid incomplete prefix;
//! - every `Command` agrees with the decoder's spans (`arg`, `args`, `arg_bytes`);
//! - the first command agrees with `redis-protocol`'s RESP2 decoder under the rule documented in
//!   `src/resp/tests.rs`: we accept exactly the canonical encodings of arrays of bulk strings (plus
//!   keep-alive newlines); where we accept, it accepts the same; where we wait, it waits; where we reject, it
//!   rejects, waits, or accepted a non-canonical / non-bulk frame.
#![no_main]
use bytes::BytesMut;
use ferry::resp::{self, CommandDecoder, RespError, DEFAULT_MAX_BULK_LEN};
use libfuzzer_sys::fuzz_target;
use redis_protocol::resp2::{decode::decode_range, types::RangeFrame};

type Cmd = (Vec<u8>, Vec<Vec<u8>>);
type First = Result<Option<(usize, Vec<Vec<u8>>)>, RespError>;

/// Decode commands from `stream` fed in `chunks` (cycled): the commands, then the final error if any.
fn run(stream: &[u8], chunks: &[usize]) -> (Vec<Cmd>, Option<RespError>) {
    let mut d = CommandDecoder::new();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut fed = 0;
    let mut i = 0;
    while fed < stream.len() {
        let k = chunks[i % chunks.len()].clamp(1, stream.len() - fed);
        i += 1;
        buf.extend_from_slice(&stream[fed..fed + k]);
        fed += k;
        loop {
            let before = buf.len();
            match d.decode_frozen(&mut buf) {
                Ok(Some(c)) => {
                    let args: Vec<Vec<u8>> = c.args().map(|a| a.to_vec()).collect();
                    assert_eq!(args.len(), c.argc());
                    for (j, a) in args.iter().enumerate() {
                        assert_eq!(c.arg(j), &a[..]);
                        assert_eq!(&c.arg_bytes(j)[..], &a[..]);
                    }
                    assert!(c.get(c.argc()).is_none());
                    assert_eq!(c.len(), before - buf.len());
                    out.push((c.raw().to_vec(), args));
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before);
                    break;
                }
                Err(e) => {
                    assert_eq!(buf.len(), before);
                    return (out, Some(e));
                }
            }
        }
    }
    (out, None)
}

fn decode_one(input: &[u8]) -> First {
    let mut d = CommandDecoder::new();
    Ok(d.decode(input)?.map(|n| {
        (
            n,
            d.args().iter().map(|r| input[r.clone()].to_vec()).collect(),
        )
    }))
}

fn canonical(frame: &RangeFrame, input: &[u8], m: usize) -> bool {
    let RangeFrame::Array(items) = frame else {
        return false;
    };
    let mut args: Vec<&[u8]> = Vec::new();
    for f in items {
        match f {
            RangeFrame::BulkString((s, e)) if e - s <= DEFAULT_MAX_BULK_LEN => {
                args.push(&input[*s..*e])
            }
            _ => return false,
        }
    }
    let mut b = BytesMut::new();
    resp::encode_command(&mut b, &args);
    b[..] == input[..m]
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, input)) = data.split_first() else {
        return;
    };

    // Whole vs chunked vs byte by byte.
    let whole = run(input, &[input.len().max(1)]);
    let chunks = [1 + (ctl & 7) as usize, 1 + (ctl >> 3) as usize * 3, 2];
    assert_eq!(run(input, &chunks), whole, "chunks {chunks:?}");
    if input.len() <= 512 {
        assert_eq!(run(input, &[1]), whole);
    }
    let consumed: usize = whole.0.iter().map(|c| c.0.len()).sum();
    assert!(consumed <= input.len());

    // The first command, and the error offset rule.
    let ours = decode_one(input);
    if let Err(e) = &ours {
        assert!(e.offset() <= input.len());
        assert_eq!(decode_one(&input[..e.offset()]), Ok(None), "{e}");
    }
    // Resuming after a split at a data-derived point gives the same result.
    let k = ctl as usize % (input.len() + 1);
    let mut d = CommandDecoder::new();
    match d.decode(&input[..k]) {
        Ok(None) => {
            let again = d.decode(input).map(|o| {
                o.map(|n| {
                    (
                        n,
                        d.args().iter().map(|r| input[r.clone()].to_vec()).collect(),
                    )
                })
            });
            assert_eq!(again, ours);
        }
        Ok(Some(n)) => assert_eq!(
            ours.as_ref().ok().and_then(|o| o.as_ref()).map(|o| o.0),
            Some(n)
        ),
        Err(e) => assert_eq!(ours.as_ref().err(), Some(&e)),
    }

    // Differential against redis-protocol.
    if input.first().is_some_and(|b| *b == b'\r' || *b == b'\n') {
        match input {
            [b'\n', ..] => assert_eq!(ours, Ok(Some((1, vec![])))),
            [b'\r'] => assert_eq!(ours, Ok(None)),
            [b'\r', b'\n', ..] => assert_eq!(ours, Ok(Some((2, vec![])))),
            _ => assert!(ours.is_err()),
        }
        return;
    }
    let theirs = decode_range(input);
    match (&ours, &theirs) {
        (Ok(Some((n, args))), Ok(Some((RangeFrame::Array(items), m)))) => {
            assert_eq!(n, m);
            assert_eq!(args.len(), items.len());
            for (a, f) in args.iter().zip(items) {
                match f {
                    RangeFrame::BulkString((s, e)) => assert_eq!(&a[..], &input[*s..*e]),
                    other => panic!("we accepted a non-bulk element {other:?}"),
                }
            }
        }
        (Ok(Some(_)), t) => panic!("we accept, redis-protocol: {t:?}"),
        (Ok(None), Ok(None)) => {}
        (Ok(None), t) => panic!("we wait, redis-protocol: {t:?}"),
        (Err(_), Err(_) | Ok(None)) => {}
        (Err(e), Ok(Some((frame, m)))) => {
            assert!(
                !canonical(frame, input, *m),
                "we reject ({e}) a canonical command"
            )
        }
    }
});
