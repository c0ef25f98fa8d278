//! The fault-injection relay itself, against a real redis-server: it relays, and every fault does what
//! its documentation says at the socket level (a reset, held bytes, lost replies of executed commands…).
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::fault_proxy::FaultProxy;
use crate::support::*;

/// A command in RESP, as a client sends it.
fn resp(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn raw(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Read until EOF (`Ok`) or an error (`Err`): what arrived, and how it ended.
fn read_until_end(mut s: TcpStream) -> (Vec<u8>, io::Result<()>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, Ok(())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return (got, Err(e)),
        }
    }
}

/// A PING through `port` on a fresh raw connection: `Ok` on `+PONG`, else how it failed.
fn ping_through(port: u16) -> io::Result<()> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(&resp(&[b"PING"]))?;
    let mut got = [0u8; 7];
    s.read_exact(&mut got)?;
    assert_eq!(&got, b"+PONG\r\n");
    Ok(())
}

/// A failure that is a closed connection, not a silent one (a read timeout).
fn assert_closed(e: &io::Error) {
    assert!(
        !matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ),
        "the connection hung instead of closing: {e}"
    );
}

fn connected_clients(server: &RedisServer) -> i64 {
    server
        .client()
        .info_field("clients", "connected_clients")
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn relays_several_connections_both_ways_and_is_gone_after_drop() {
    let server = RedisServer::start(&[]);
    let proxy = FaultProxy::start(server.port);
    let (mut a, mut b) = (proxy.client(), proxy.client());
    a.ok(&["SET", "k", "v"]);
    assert_eq!(b.ok(&["GET", "k"]).as_string(), "v");
    assert_eq!(
        server.client().ok(&["GET", "k"]).as_string(),
        "v",
        "the write went to the upstream"
    );
    let up = resp(&[b"SET", b"k", b"v"]).len() + resp(&[b"GET", b"k"]).len();
    let down = b"+OK\r\n".len() + b"$1\r\nv\r\n".len();
    wait_until(
        "the counters to account every byte",
        Duration::from_secs(5),
        || proxy.bytes_up() == up as u64 && proxy.bytes_down() == down as u64,
    );
    assert_eq!(proxy.connections_accepted(), 2);
    assert_eq!(proxy.active_connections(), 2);
    assert_eq!(proxy.cuts(), 0);

    // A big value crosses in several chunks, intact.
    let big = vec![b'x'; 300_000];
    a.ok(&[b"SET".as_slice(), b"big", &big]);
    assert_eq!(b.ok(&["GET", "big"]).as_bytes().unwrap(), &big[..]);

    // A client that leaves is relayed as such: the server sees its connection go.
    drop(b);
    wait_until(
        "the proxy to drop the finished connection",
        Duration::from_secs(5),
        || proxy.active_connections() == 1,
    );
    wait_until(
        "the server to see one proxied client",
        Duration::from_secs(5),
        || {
            connected_clients(&server) == 2 // `a` through the proxy, and this INFO connection
        },
    );

    let port = proxy.port();
    let t = Instant::now();
    drop(proxy);
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "drop took {:?}",
        t.elapsed()
    );
    assert_closed(&a.read().unwrap_err());
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the proxy's port still accepts after drop"
    );
}

#[test]
fn upstream_down_closes_the_client_at_once() {
    let mut server = RedisServer::start(&[]);
    let proxy = FaultProxy::start(server.port);
    ping_through(proxy.port()).unwrap();
    let mut kept = proxy.client();
    kept.ok(&["PING"]);

    server.kill();
    assert_closed(&kept.read().unwrap_err());
    let t = Instant::now();
    let e = ping_through(proxy.port()).unwrap_err();
    assert_closed(&e);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(proxy.connections_accepted(), 3);
    drop(kept);
    wait_until("no relayed connection left", Duration::from_secs(5), || {
        proxy.active_connections() == 0
    });
}

#[test]
fn cut_resets_every_connection_on_both_sides_and_new_ones_work() {
    let server = RedisServer::start(&[]);
    let proxy = FaultProxy::start(server.port);
    let (mut a, mut b) = (proxy.client(), proxy.client());
    a.ok(&["PING"]);
    b.ok(&["PING"]);
    wait_until("two relayed connections", Duration::from_secs(5), || {
        proxy.active_connections() == 2
    });
    assert_eq!(connected_clients(&server), 3);

    assert_eq!(proxy.cut(), 2);
    for c in [&mut a, &mut b] {
        let e = c.read().unwrap_err();
        assert_eq!(
            e.kind(),
            io::ErrorKind::ConnectionReset,
            "the client should see a reset, got {e}"
        );
    }
    assert_eq!(proxy.cuts(), 2);
    assert_eq!(proxy.active_connections(), 0);
    wait_until(
        "the server to lose both proxied clients",
        Duration::from_secs(5),
        || connected_clients(&server) == 1,
    );

    let mut c = proxy.client();
    assert_eq!(c.ok(&["PING"]).as_string(), "PONG");
    assert_eq!(proxy.connections_accepted(), 3);
    assert_eq!(proxy.cut(), 1);
    assert_eq!(proxy.cuts(), 3);
    assert_eq!(proxy.cut(), 0, "nothing left to cut");
}

#[test]
fn stall_holds_bytes_both_ways_and_release_delivers_them() {
    let server = RedisServer::start(&[]);
    let proxy = FaultProxy::start(server.port);
    let mut c = proxy.client();
    c.ok(&["SET", "k", "v"]);
    let mut direct = server.client();
    wait_until(
        "the SET reply to be counted",
        Duration::from_secs(5),
        || proxy.bytes_down() == 5,
    );

    // client → server held: the server never sees the GET while stalled.
    proxy.stall(true);
    let up_before = proxy.bytes_up();
    let (tx, rx) = mpsc::channel();
    let h = thread::spawn(move || {
        let r = c.cmd(&["GET", "k"]).as_string();
        tx.send(r).unwrap();
        c
    });
    assert_eq!(
        rx.recv_timeout(Duration::from_millis(300)),
        Err(mpsc::RecvTimeoutError::Timeout),
        "a GET was answered through a stalled proxy"
    );
    assert_eq!(proxy.bytes_up(), up_before);
    assert_eq!(
        direct.info_field("commandstats", "cmdstat_get"),
        None,
        "the server executed the held GET"
    );
    proxy.stall(false);
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), "v");
    let mut c = h.join().unwrap();

    // server → client held: a BLPOP answered by the server while stalled reaches the client later.
    let (tx, rx) = mpsc::channel();
    let h = thread::spawn(move || {
        let r = c.cmd(&["BLPOP", "list", "0"]);
        tx.send(r.as_array()[1].as_string()).unwrap();
        c
    });
    wait_until(
        "the BLPOP to block on the server",
        Duration::from_secs(5),
        || direct.info_field("clients", "blocked_clients").as_deref() == Some("1"),
    );
    proxy.stall(true);
    let down_before = proxy.bytes_down();
    direct.ok(&["LPUSH", "list", "x"]);
    assert_eq!(
        direct.ok(&["LLEN", "list"]).as_int(),
        0,
        "the server served the BLPOP"
    );
    assert_eq!(
        rx.recv_timeout(Duration::from_millis(300)),
        Err(mpsc::RecvTimeoutError::Timeout),
        "a reply went through a stalled proxy"
    );
    assert_eq!(proxy.bytes_down(), down_before);
    proxy.stall(false);
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), "x");

    let mut c = h.join().unwrap();
    assert_eq!(
        c.ok(&["PING"]).as_string(),
        "PONG",
        "the connection stayed open"
    );
    assert_eq!(proxy.cuts(), 0);
    assert_eq!(proxy.connections_accepted(), 1);
}

#[test]
fn refuse_makes_the_server_look_down_for_new_connections_only() {
    let server = RedisServer::start(&[]);
    let proxy = FaultProxy::start(server.port);
    let mut kept = proxy.client();
    kept.ok(&["PING"]);

    proxy.refuse(true);
    for _ in 0..3 {
        assert_closed(&ping_through(proxy.port()).unwrap_err());
    }
    assert_eq!(proxy.connections_accepted(), 4);
    assert_eq!(proxy.active_connections(), 1);
    assert_eq!(
        kept.ok(&["PING"]).as_string(),
        "PONG",
        "an existing connection was touched"
    );

    proxy.refuse(false);
    ping_through(proxy.port()).unwrap();
}

/// The fault the exactness tests need: replies lost for commands the server did execute.
#[test]
fn drop_replies_after_execution_loses_replies_of_executed_commands() {
    let server = RedisServer::start(&[]);
    let proxy = FaultProxy::start(server.port);
    let s = raw(proxy.port());

    // A writer pipelines `INCR c` without waiting (until the connection breaks, or 60 s).
    const BATCH: u64 = 1000;
    let batch: Vec<u8> = resp(&[b"INCR", b"c"]).repeat(BATCH as usize);
    let sent = Arc::new(AtomicU64::new(0));
    let mut w = s.try_clone().unwrap();
    let sent_w = sent.clone();
    let writer = thread::spawn(move || {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(60) {
            if let Err(e) = w.write_all(&batch) {
                return Some(e);
            }
            sent_w.fetch_add(BATCH, Ordering::SeqCst);
        }
        None
    });
    // A reader checks that reply i is `:i` (only this client touches `c`) and counts them.
    let got = Arc::new(AtomicU64::new(0));
    let got_r = got.clone();
    let reader = thread::spawn(move || {
        let mut r = io::BufReader::new(s);
        let mut line = String::new();
        let mut n = 0u64;
        loop {
            line.clear();
            match io::BufRead::read_line(&mut r, &mut line) {
                Ok(_) if line.ends_with("\r\n") => {
                    n += 1;
                    assert_eq!(line, format!(":{n}\r\n"), "reply {n}");
                    got_r.store(n, Ordering::SeqCst);
                }
                Ok(_) => return (n, None),
                Err(e) => return (n, Some(e)),
            }
        }
    });

    wait_until(
        "2000 replies through the proxy",
        Duration::from_secs(10),
        || got.load(Ordering::SeqCst) >= 2000,
    );
    let lost = proxy.drop_replies_after_execution();
    let (replies, err) = reader.join().unwrap();
    let write_err = writer
        .join()
        .unwrap()
        .expect("the writer never saw the connection break");
    // The reset is reported once per socket: to whichever of the two threads looked first (the other
    // then sees EOF or a broken pipe).
    let reset =
        |e: &Option<io::Error>| matches!(e, Some(e) if e.kind() == io::ErrorKind::ConnectionReset);
    assert!(
        reset(&err) || reset(&Some(write_err)),
        "the client was not reset (read ended with {err:?})"
    );

    assert!(lost > 0, "no reply was discarded");
    assert_eq!(proxy.bytes_discarded(), lost);
    assert_eq!(proxy.cuts(), 1);
    let sent = sent.load(Ordering::SeqCst);
    assert!(
        replies < sent,
        "the client got every reply ({replies} of {sent})"
    );
    let executed = server.client().ok(&["GET", "c"]).as_int() as u64;
    assert!(
        executed > replies,
        "the server executed {executed} INCRs, the client got {replies} replies"
    );
    // The reply stream the server wrote was at least what was forwarded and discarded: `:1\r\n:2\r\n…`.
    let produced = proxy.bytes_down() + lost;
    let (mut k, mut len) = (0u64, 0u64);
    while len + format!(":{}\r\n", k + 1).len() as u64 <= produced {
        k += 1;
        len += format!(":{k}\r\n").len() as u64;
    }
    assert!(
        executed >= k && k > replies,
        "{produced} reply bytes = {k} replies; executed {executed}, client got {replies}"
    );
}

#[test]
fn slow_delays_every_chunk_both_ways() {
    let server = RedisServer::start(&[]);
    let proxy = FaultProxy::start(server.port);
    let mut c = proxy.client();
    c.ok(&["PING"]);
    let delay = Duration::from_millis(300);

    proxy.slow(Some(delay));
    let t = Instant::now();
    c.ok(&["PING"]);
    let slow = t.elapsed();
    assert!(slow >= 2 * delay, "a round trip took {slow:?}");

    proxy.slow(None);
    let t = Instant::now();
    c.ok(&["PING"]);
    let fast = t.elapsed();
    assert!(fast < delay, "a round trip after slow(None) took {fast:?}");
}

#[test]
fn cut_after_client_bytes_cuts_in_the_middle_of_a_pipeline() {
    let server = RedisServer::start(&[]);
    let proxy = FaultProxy::start(server.port);
    let set_a = resp(&[b"SET", b"a", b"1"]);
    let set_b = resp(&[b"SET", b"b", b"2"]);
    let n = set_a.len() + 5;

    let mut s = raw(proxy.port());
    proxy.cut_after_client_bytes(n as u64);
    s.write_all(&[set_a, set_b].concat()).unwrap();
    let (_, end) = read_until_end(s);
    assert_eq!(end.unwrap_err().kind(), io::ErrorKind::ConnectionReset);
    assert_eq!(proxy.bytes_up(), n as u64);
    assert_eq!(proxy.cuts(), 1);

    wait_until(
        "the server to drop the cut connection",
        Duration::from_secs(5),
        || connected_clients(&server) == 1,
    );
    let mut direct = server.client();
    assert_eq!(direct.ok(&["GET", "a"]).as_string(), "1");
    assert_eq!(
        direct.ok(&["EXISTS", "b"]).as_int(),
        0,
        "a torn command ran"
    );

    // Disarmed once fired.
    ping_through(proxy.port()).unwrap();
}

#[test]
fn cut_after_upstream_bytes_cuts_in_the_middle_of_a_reply() {
    let server = RedisServer::start(&[]);
    let proxy = FaultProxy::start(server.port);
    server
        .client()
        .ok(&[b"SET".as_slice(), b"big", &vec![b'x'; 100_000]]);

    let mut s = raw(proxy.port());
    proxy.cut_after_upstream_bytes(1000);
    s.write_all(&resp(&[b"GET", b"big"])).unwrap();
    let (got, end) = read_until_end(s);
    assert_eq!(end.unwrap_err().kind(), io::ErrorKind::ConnectionReset);
    assert_eq!(got.len(), 1000, "the client got a different cut");
    assert!(got.starts_with(b"$100000\r\nxxxx"));
    assert_eq!(proxy.bytes_down(), 1000);
    assert_eq!(proxy.cuts(), 1);
    ping_through(proxy.port()).unwrap();
}
