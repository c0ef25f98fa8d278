//! `ferry serve`'s request parser (RESP arrays and inline lines) on arbitrary client bytes.
//!
//! Checked: nothing panics; the requests read do not depend on how the bytes arrive (the whole input at
//! once, or cut at any point and the rest appended later), and neither does where a protocol error stops
//! the reading.
#![no_main]
use bytes::BytesMut;
use ferry::resp::CommandDecoder;
use ferry::serve::{next_request, MAX_REQUEST};
use libfuzzer_sys::fuzz_target;

/// The requests read from `bytes` delivered in two parts (cut at `cut`), and whether an error ended them.
fn read(bytes: &[u8], cut: usize) -> (Vec<Vec<Vec<u8>>>, bool) {
    let mut dec = CommandDecoder::with_max_bulk_len(MAX_REQUEST);
    let mut buf = BytesMut::from(&bytes[..cut]);
    let mut out = Vec::new();
    for part in [&bytes[cut..], &[][..]] {
        loop {
            match next_request(&mut buf, &mut dec) {
                Ok(Some(args)) => out.push(args),
                Ok(None) => break,
                Err(_) => return (out, true),
            }
        }
        buf.extend_from_slice(part);
    }
    (out, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let cut = usize::from(cut) % (rest.len() + 1);
    assert_eq!(read(rest, rest.len()), read(rest, cut));
});
