//! RESP benchmarks: the replication-stream command decoder against `redis-protocol`'s RESP2 decoder on the same
//! ~32 MB stream, and `skip_reply` over pipelined replies.
//!
//! Run: `cargo bench --bench resp -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ferry::resp::{self, CommandDecoder, ReplyHead};
use rand::{rngs::StdRng, Rng, SeedableRng};

const STREAM_BYTES: usize = 32 * 1024 * 1024;

/// A replication stream as a busy master sends it: mostly small SETs, HSETs of 20 fields, a few 64 KB values,
/// MULTI/EXEC blocks, the odd PING / REPLCONF GETACK / SELECT.
fn replication_stream() -> (Vec<u8>, usize) {
    let mut rng = StdRng::seed_from_u64(7);
    let mut out = BytesMut::with_capacity(STREAM_BYTES + 128 * 1024);
    let mut cmds = 0usize;
    let big = vec![b'B'; 64 * 1024];
    let mut value = [0u8; 32];
    let key = |rng: &mut StdRng| format!("user:{:011}", rng.gen_range(0..100_000_000u64));
    while out.len() < STREAM_BYTES {
        let r = rng.gen_range(0..1000);
        if r < 700 {
            rng.fill(&mut value[..]);
            resp::encode_command(&mut out, &[b"SET", key(&mut rng).as_bytes(), &value]);
            cmds += 1;
        } else if r < 850 {
            let k = key(&mut rng);
            let fields: Vec<(String, String)> = (0..20)
                .map(|i| (format!("field{i:02}"), format!("{:016x}", rng.gen::<u64>())))
                .collect();
            resp::write_array_header(&mut out, 2 + 2 * fields.len());
            resp::write_bulk(&mut out, b"HSET");
            resp::write_bulk(&mut out, k.as_bytes());
            for (f, v) in &fields {
                resp::write_bulk(&mut out, f.as_bytes());
                resp::write_bulk(&mut out, v.as_bytes());
            }
            cmds += 1;
        } else if r < 852 {
            resp::encode_command(&mut out, &[b"SET", key(&mut rng).as_bytes(), &big]);
            cmds += 1;
        } else if r < 950 {
            resp::encode_command(&mut out, &[b"MULTI"]);
            let k = key(&mut rng);
            resp::encode_command(&mut out, &[b"INCRBY", k.as_bytes(), b"17"]);
            resp::encode_command(&mut out, &[b"LPUSH", k.as_bytes(), b"a", b"b"]);
            resp::encode_command(&mut out, &[b"PEXPIREAT", k.as_bytes(), b"1735689600000"]);
            resp::encode_command(&mut out, &[b"EXEC"]);
            cmds += 5;
        } else if r < 990 {
            resp::encode_command(&mut out, &[b"DEL", key(&mut rng).as_bytes()]);
            cmds += 1;
        } else if r < 995 {
            resp::encode_command(&mut out, &[b"PING"]);
            cmds += 1;
        } else if r < 998 {
            resp::encode_command(&mut out, &[b"REPLCONF", b"GETACK", b"*"]);
            cmds += 1;
        } else {
            resp::encode_command(&mut out, &[b"SELECT", b"0"]);
            cmds += 1;
        }
    }
    (out.to_vec(), cmds)
}

fn decode_ferry(mut buf: BytesMut, d: &mut CommandDecoder) -> usize {
    let mut n = 0;
    while let Some(c) = d.decode_frozen(&mut buf).expect("valid stream") {
        // What the apply layer looks at for every command.
        black_box((c.arg(0), c.arg(1), c.len()));
        n += 1;
    }
    assert!(buf.is_empty());
    n
}

fn decode_redis_protocol(mut buf: BytesMut) -> usize {
    let mut n = 0;
    while let Some((frame, len, bytes)) =
        redis_protocol::resp2::decode::decode_bytes_mut(&mut buf).expect("valid stream")
    {
        black_box((&frame, len, &bytes));
        n += 1;
    }
    assert!(buf.is_empty());
    n
}

fn bench_commands(c: &mut Criterion) {
    let (stream, cmds) = replication_stream();
    let mut d = CommandDecoder::new();
    assert_eq!(decode_ferry(BytesMut::from(&stream[..]), &mut d), cmds);
    assert_eq!(decode_redis_protocol(BytesMut::from(&stream[..])), cmds);
    eprintln!(
        "replication stream: {} bytes, {cmds} commands, {:.0} bytes/command",
        stream.len(),
        stream.len() as f64 / cmds as f64
    );

    for (name, throughput) in [
        (
            "command_stream_bytes",
            Throughput::Bytes(stream.len() as u64),
        ),
        ("command_stream_cmds", Throughput::Elements(cmds as u64)),
    ] {
        let mut g = c.benchmark_group(name);
        g.throughput(throughput);
        g.sample_size(10);
        g.bench_function("ferry_decode_frozen", |b| {
            b.iter_batched(
                || BytesMut::from(&stream[..]),
                |buf| decode_ferry(buf, &mut d),
                BatchSize::LargeInput,
            )
        });
        g.bench_function("redis_protocol_decode_bytes_mut", |b| {
            b.iter_batched(
                || BytesMut::from(&stream[..]),
                decode_redis_protocol,
                BatchSize::LargeInput,
            )
        });
        g.finish();
    }

    // The same stream arriving in 16 KB reads: decode what is complete, keep the rest.
    let mut g = c.benchmark_group("command_stream_16k_reads");
    g.throughput(Throughput::Bytes(stream.len() as u64));
    g.sample_size(10);
    g.bench_function("ferry_decode_frozen", |b| {
        b.iter(|| {
            let mut buf = BytesMut::with_capacity(256 * 1024);
            let mut n = 0;
            for chunk in stream.chunks(16 * 1024) {
                buf.extend_from_slice(chunk);
                if buf.len() < d.needed() {
                    continue;
                }
                while let Some(c) = d.decode_frozen(&mut buf).expect("valid stream") {
                    black_box(c.arg(0));
                    n += 1;
                }
            }
            assert_eq!(n, cmds);
        })
    });
    g.finish();
}

fn bench_replies(c: &mut Criterion) {
    let oks = b"+OK\r\n".repeat(100_000);
    let mut mixed = BytesMut::new();
    let mut n_mixed = 0;
    for i in 0..20_000i64 {
        mixed.extend_from_slice(b"+OK\r\n:1\r\n$5\r\nhello\r\n-ERR wrong\r\n");
        mixed.extend_from_slice(b"*3\r\n+OK\r\n:");
        mixed.extend_from_slice(i.to_string().as_bytes());
        mixed.extend_from_slice(b"\r\n$-1\r\n");
        n_mixed += 5;
    }
    let mut g = c.benchmark_group("skip_reply");
    for (name, buf, count) in [
        ("ok_x100k", &oks[..], 100_000usize),
        ("mixed_x100k", &mixed[..], n_mixed),
    ] {
        g.throughput(Throughput::Elements(count as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut pos = 0;
                let mut errors = 0;
                while let Some((head, len)) = resp::skip_reply(&buf[pos..]).expect("valid") {
                    if let ReplyHead::Error(_) = head {
                        errors += 1;
                    }
                    pos += len;
                }
                assert_eq!(pos, buf.len());
                black_box(errors)
            })
        });
    }
    g.throughput(Throughput::Elements(n_mixed as u64));
    g.bench_function("parse_reply_mixed_x100k", |b| {
        b.iter_batched(
            || mixed.clone(),
            |mut buf| {
                while let Some(r) = resp::parse_reply(&mut buf).expect("valid") {
                    black_box(&r);
                }
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("redis_protocol_mixed_x100k", |b| {
        b.iter_batched(
            || mixed.clone(),
            |mut buf| {
                while let Some(r) =
                    redis_protocol::resp2::decode::decode_bytes_mut(&mut buf).expect("valid")
                {
                    black_box(&r);
                }
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench_commands, bench_replies);
criterion_main!(benches);
