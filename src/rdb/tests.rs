//! Decoder tests over the shared fixtures and generated files.
use super::*;
use bytes::BytesMut;

pub(crate) fn decode_all(
    data: &[u8],
    opts: DecoderOptions,
    step: usize,
) -> Result<Vec<Event>, RdbError> {
    let mut d = Decoder::new(opts);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut fed = 0;
    loop {
        while let Some(ev) = d.decode(&mut buf)? {
            out.push(ev);
        }
        if fed == data.len() {
            break;
        }
        let end = (fed + step).min(data.len());
        buf.extend_from_slice(&data[fed..end]);
        fed = end;
    }
    d.finish()?;
    Ok(out)
}

#[test]
fn fixtures_whole() {
    let dir = std::env::var("FERRY_FIXTURES")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures")
        })
        .join("rdb");
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return;
    };
    let mut files = Vec::new();
    for o in rd {
        for f in std::fs::read_dir(o.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            if p.extension().is_some_and(|e| e == "rdb") {
                files.push(p);
            }
        }
    }
    files.sort();
    for p in files {
        let data = std::fs::read(&p).unwrap();
        let r = decode_all(&data, DecoderOptions::default(), usize::MAX);
        match r {
            Ok(evs) => {
                let mut n = 0;
                let mut bad = 0;
                for e in &evs {
                    if let Event::Entry(e) = e {
                        n += 1;
                        if let Err(err) = decode_value(e.rdb_type, &e.payload) {
                            bad += 1;
                            eprintln!("   value {:?} type {}: {err}", e.key, e.rdb_type);
                        }
                    }
                }
                eprintln!("{}: ok {} entries ({} undecodable)", p.display(), n, bad);
            }
            Err(e) => eprintln!("{}: ERR {e}", p.display()),
        }
    }
}
