//! A fault-injection TCP relay for tests, placed between ferry (the *client* side) and a Redis server
//! (the *server* or *upstream* side), driven from the test thread to break the link on purpose.
//!
//! Plain std threads and blocking sockets: one accept thread, and per relayed connection two pump
//! threads, `up` (client → server) and `down` (server → client), each reading a chunk of up to 64 KiB
//! and writing it to the other side. Every chunk passes one gate (a mutex and a condvar shared by all
//! connections) where the faults act: `slow` delays it, `stall` holds it, `drop_replies_after_execution`
//! discards it (server → client only), `cut_after_*` trims it and fires a cut.
//!
//! What a fault does on the wire (Linux):
//! - **cut** (`cut`, `drop_replies_after_execution`, `cut_after_*`): the client-side socket gets
//!   `SO_LINGER 0` and is closed, so the client receives a **RST** (its reads fail with
//!   `ConnectionReset` once it has read what had already arrived; bytes still queued in the proxy's send
//!   buffer are lost, as in a real fault). The server-side socket is `shutdown(Both)` then closed: the
//!   server sees a FIN after every byte already forwarded (a RST instead if it still had replies on
//!   their way to the proxy, as the kernel decides). The call returns once the connection's pump threads
//!   have exited and both sockets are closed. Note that the kernel reports a reset once per socket: a
//!   client with one thread reading and another writing sees `ConnectionReset` in one of them and EOF
//!   or `BrokenPipe` in the other.
//! - **refuse**: new connections are accepted and closed at once with a RST (a connect succeeds, the
//!   first read or write fails); existing connections are untouched.
//! - **upstream down**: when the proxy cannot connect to the upstream port, the client is closed at
//!   once with a RST, like `refuse`.
//! - A normal end is relayed as such: EOF from one side becomes `shutdown(Write)` (a FIN) on the
//!   other, a read or write error on either side closes both (the client with a RST).
//!
//! Dropping the proxy closes the listener (the port refuses connections once `drop` returns), closes
//! every connection as a cut does (not counted in [`FaultProxy::cuts`]) and joins every thread.
//!
//! Limitations: faults act per chunk as read (up to 64 KiB), so `slow` also caps throughput at one chunk
//! per delay and direction; `stall(true)` lets a write already under way finish (it waits up to 5 s
//! for those); the byte counters and `cut_after_*` budgets are shared by all connections; reply bytes
//! are discarded as read, whether stalled or slowed or not. IPv4 loopback only.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use socket2::SockRef;

use super::Client;

/// Largest chunk a pump reads and forwards at once.
const CHUNK: usize = 64 * 1024;
/// How often a pump blocked writing to a peer that does not read checks whether it was cut.
const WRITE_POLL: Duration = Duration::from_millis(50);
/// How long `drop_replies_after_execution` waits for a reply to discard before it cuts anyway.
const DROP_REPLIES_WAIT: Duration = Duration::from_millis(200);
/// How long `stall(true)` waits for writes already under way.
const STALL_DRAIN_MAX: Duration = Duration::from_secs(5);
/// Connecting to the upstream (loopback: refused or accepted at once).
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Direction of a pump.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dir {
    /// client → server
    Up = 0,
    /// server → client
    Down = 1,
}

/// What every chunk consults, under one lock.
#[derive(Default)]
struct Gate {
    stalled: bool,
    slow: Option<Duration>,
    /// Chunks admitted and being written right now (`stall(true)` waits for them).
    in_flight: usize,
    /// Bytes still to forward before a cut fires, per [`Dir`].
    cut_after: [Option<u64>; 2],
}

struct Shared {
    /// Where new connections go (a failover behind one address changes it).
    upstream: Mutex<SocketAddr>,
    /// The proxy is being dropped.
    closing: AtomicBool,
    refuse: AtomicBool,
    gate: Mutex<Gate>,
    /// Signalled on every gate change, discard and close.
    cv: Condvar,
    /// Live relayed connections.
    conns: Mutex<Vec<Arc<Conn>>>,
    next_id: AtomicU64,
    accepted: AtomicU64,
    cuts: AtomicU64,
    up: AtomicU64,
    down: AtomicU64,
    discarded: AtomicU64,
}

/// One relayed connection. Its sockets are closed when the last `Arc` goes: the pumps' and the list's.
struct Conn {
    id: u64,
    client: TcpStream,
    server: TcpStream,
    closed: AtomicBool,
    discard_replies: AtomicBool,
    discarded: AtomicU64,
    pumps: Mutex<Vec<JoinHandle<()>>>,
    pumps_done: AtomicUsize,
}

impl Conn {
    /// Close both sides (see the module doc); true if this call closed it. Wakes the pumps blocked in
    /// a read (shutdown) or a write (EPIPE on the server side, the write poll on the client side); the
    /// last `Arc` dropped then closes the descriptors, the client's with a RST.
    fn abort(&self) -> bool {
        let first = !self.closed.swap(true, Ordering::SeqCst);
        let _ = SockRef::from(&self.client).set_linger(Some(Duration::ZERO));
        // SHUT_RD sends nothing on the wire (a FIN would tell the client "orderly close", not a reset).
        let _ = self.client.shutdown(Shutdown::Read);
        let _ = self.server.shutdown(Shutdown::Both);
        first
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

/// Close a socket with a RST (SO_LINGER 0).
fn reset(s: TcpStream) {
    let _ = SockRef::from(&s).set_linger(Some(Duration::ZERO));
    drop(s);
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

enum Admit {
    Closed,
    Discarded,
    Forward { len: usize, then_cut: bool },
}

impl Shared {
    /// Wake everything waiting on the gate; taking the lock first means a waiter has either seen the
    /// new state or is already waiting.
    fn wake(&self) {
        drop(lock(&self.gate));
        self.cv.notify_all();
    }

    /// Pass a chunk of `n` bytes read at `got` through the faults.
    fn admit(&self, conn: &Conn, dir: Dir, n: usize, got: Instant) -> Admit {
        let mut g = lock(&self.gate);
        loop {
            if conn.is_closed() || self.closing.load(Ordering::SeqCst) {
                return Admit::Closed;
            }
            if dir == Dir::Down && conn.discard_replies.load(Ordering::SeqCst) {
                conn.discarded.fetch_add(n as u64, Ordering::SeqCst);
                self.discarded.fetch_add(n as u64, Ordering::SeqCst);
                self.cv.notify_all();
                return Admit::Discarded;
            }
            if let Some(d) = g.slow {
                let now = Instant::now();
                if now < got + d {
                    g = self
                        .cv
                        .wait_timeout(g, got + d - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                    continue;
                }
            }
            if g.stalled {
                g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            break;
        }
        let (mut len, mut then_cut) = (n, false);
        if let Some(rest) = g.cut_after[dir as usize] {
            if n as u64 >= rest {
                len = rest as usize;
                then_cut = true;
                g.cut_after[dir as usize] = None;
            } else {
                g.cut_after[dir as usize] = Some(rest - n as u64);
            }
        }
        g.in_flight += 1;
        Admit::Forward { len, then_cut }
    }

    fn release(&self) {
        lock(&self.gate).in_flight -= 1;
        self.cv.notify_all();
    }

    /// Cut `conns` (see [`Conn::abort`]), wait for their pumps (except the calling thread, when a pump
    /// fires a cut) and take them off the list. Returns how many this call closed.
    fn cut_conns(&self, conns: Vec<Arc<Conn>>, count: bool) -> usize {
        let closed = conns.iter().filter(|c| c.abort()).count();
        self.wake();
        let me = thread::current().id();
        for c in &conns {
            let pumps = std::mem::take(&mut *lock(&c.pumps));
            for p in pumps {
                if p.thread().id() != me {
                    let _ = p.join();
                }
            }
        }
        lock(&self.conns).retain(|c| !conns.iter().any(|x| x.id == c.id));
        if count {
            self.cuts.fetch_add(closed as u64, Ordering::SeqCst);
        }
        closed
    }

    fn cut_all(&self, count: bool) -> usize {
        let all = std::mem::take(&mut *lock(&self.conns));
        self.cut_conns(all, count)
    }
}

/// Write all of `buf`, giving up when the connection is cut meanwhile.
fn write_all_unless_cut(to: &TcpStream, mut buf: &[u8], conn: &Conn) -> bool {
    while !buf.is_empty() {
        match (&*to).write(buf) {
            Ok(0) => return false,
            Ok(k) => buf = &buf[k..],
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                if conn.is_closed() {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
    true
}

fn pump(shared: Arc<Shared>, conn: Arc<Conn>, dir: Dir) {
    let (from, to, counter) = match dir {
        Dir::Up => (&conn.client, &conn.server, &shared.up),
        Dir::Down => (&conn.server, &conn.client, &shared.down),
    };
    let mut buf = vec![0u8; CHUNK];
    // Some(true): orderly EOF; Some(false): an error; None: cut by a fault.
    let end = loop {
        let n = match (&*from).read(&mut buf) {
            Ok(0) => break Some(true),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break Some(false),
        };
        match shared.admit(&conn, dir, n, Instant::now()) {
            Admit::Closed => break None,
            Admit::Discarded => continue,
            Admit::Forward { len, then_cut } => {
                let ok = write_all_unless_cut(to, &buf[..len], &conn);
                shared.release();
                if ok {
                    counter.fetch_add(len as u64, Ordering::SeqCst);
                }
                if then_cut {
                    shared.cut_all(true);
                    break None;
                }
                if !ok {
                    break Some(false);
                }
            }
        }
    };
    if !conn.is_closed() {
        match end {
            Some(true) => {
                let _ = to.shutdown(Shutdown::Write);
            }
            Some(false) => {
                conn.abort();
                shared.wake();
            }
            None => {}
        }
    }
    if conn.pumps_done.fetch_add(1, Ordering::SeqCst) == 1 {
        lock(&shared.conns).retain(|c| c.id != conn.id);
    }
}

fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    for client in listener.incoming() {
        if shared.closing.load(Ordering::SeqCst) {
            break;
        }
        let client = match client {
            Ok(c) => c,
            Err(_) => {
                // e.g. EMFILE: do not spin.
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        if shared.refuse.load(Ordering::SeqCst) {
            reset(client);
            continue;
        }
        let upstream = *shared.upstream.lock().unwrap();
        let server = match TcpStream::connect_timeout(&upstream, UPSTREAM_CONNECT_TIMEOUT) {
            Ok(s) => s,
            Err(_) => {
                reset(client);
                continue;
            }
        };
        for s in [&client, &server] {
            let _ = s.set_nodelay(true);
            let _ = s.set_write_timeout(Some(WRITE_POLL));
        }
        let conn = Arc::new(Conn {
            id: shared.next_id.fetch_add(1, Ordering::SeqCst),
            client,
            server,
            closed: AtomicBool::new(false),
            discard_replies: AtomicBool::new(false),
            discarded: AtomicU64::new(0),
            pumps: Mutex::new(Vec::new()),
            pumps_done: AtomicUsize::new(0),
        });
        // Registered with its pumps' handles under the list lock, so a cut sees both or neither.
        let mut conns = lock(&shared.conns);
        let mut pumps = lock(&conn.pumps);
        for dir in [Dir::Up, Dir::Down] {
            let (s, c) = (shared.clone(), conn.clone());
            pumps.push(
                thread::Builder::new()
                    .name(format!("fault-proxy-{dir:?}"))
                    .spawn(move || pump(s, c, dir))
                    .expect("spawn fault proxy pump"),
            );
        }
        drop(pumps);
        conns.push(conn);
    }
}

/// A TCP relay on a free loopback port in front of `127.0.0.1:upstream_port`, with faults to inject.
/// See the module documentation for what each fault does at the socket level.
pub struct FaultProxy {
    port: u16,
    shared: Arc<Shared>,
    /// A handle on the listening socket, to stop the accept thread.
    listener: TcpListener,
    accept: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Listen on a free loopback port and relay every connection to `127.0.0.1:upstream_port`. The
    /// socket is bound and listening when this returns (connects succeed from then on).
    pub fn start(upstream_port: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fault proxy");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            upstream: Mutex::new(SocketAddr::from(([127, 0, 0, 1], upstream_port))),
            closing: AtomicBool::new(false),
            refuse: AtomicBool::new(false),
            gate: Mutex::new(Gate::default()),
            cv: Condvar::new(),
            conns: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            cuts: AtomicU64::new(0),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            discarded: AtomicU64::new(0),
        });
        let handle = listener.try_clone().expect("clone fault proxy listener");
        let s = shared.clone();
        let accept = thread::Builder::new()
            .name("fault-proxy-accept".into())
            .spawn(move || accept_loop(s, listener))
            .expect("spawn fault proxy accept thread");
        FaultProxy {
            port,
            shared,
            listener: handle,
            accept: Some(accept),
        }
    }

    /// The proxy's own port (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`: the proxy as a ferry source or target.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A test client connected through the proxy.
    pub fn client(&self) -> Client {
        Client::connect(self.port)
    }

    /// Close every current connection, both sides, at once (client side with a RST). New connections
    /// are still accepted. Returns how many connections were cut.
    pub fn cut(&self) -> usize {
        self.shared.cut_all(true)
    }

    /// While on, new connections are accepted and reset at once: the server looks down. Existing
    /// connections are not touched (combine with [`cut`](Self::cut) for a full outage).
    pub fn refuse(&self, on: bool) {
        self.shared.refuse.store(on, Ordering::SeqCst);
    }

    /// While on, no byte is forwarded in either direction on any connection: chunks already read are
    /// held (not dropped) and flow again, in order, when released. Connections stay open. Turning it on
    /// returns once writes already under way have finished (at most 5 s).
    pub fn stall(&self, on: bool) {
        let mut g = lock(&self.shared.gate);
        g.stalled = on;
        self.shared.cv.notify_all();
        if on {
            let deadline = Instant::now() + STALL_DRAIN_MAX;
            while g.in_flight > 0 {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                g = self
                    .shared
                    .cv
                    .wait_timeout(g, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
    }

    /// Delay every forwarded chunk, both directions, by `delay` after it was read (`None`: no delay).
    /// Applies to chunks already waiting too.
    pub fn slow(&self, delay: Option<Duration>) {
        lock(&self.shared.gate).slow = delay;
        self.shared.cv.notify_all();
    }

    /// On every current connection: discard server → client bytes from now on while client → server
    /// bytes keep flowing, wait until some reply bytes were discarded (or 200 ms), then cut those
    /// connections. The server has then executed commands whose replies the client never received.
    /// Returns the number of reply bytes discarded (0 if nothing came back within 200 ms, or no
    /// connection was open).
    pub fn drop_replies_after_execution(&self) -> u64 {
        self.drop_replies_after_execution_within(DROP_REPLIES_WAIT)
    }

    /// As [`FaultProxy::drop_replies_after_execution`], waiting up to `wait` for a reply to discard (a
    /// test that sends its command only once [`FaultProxy::discarding`] says the fault is armed).
    pub fn drop_replies_after_execution_within(&self, wait: Duration) -> u64 {
        let conns: Vec<Arc<Conn>> = lock(&self.shared.conns).clone();
        if conns.is_empty() {
            return 0;
        }
        {
            let mut g = lock(&self.shared.gate);
            for c in &conns {
                c.discard_replies.store(true, Ordering::SeqCst);
            }
            self.shared.cv.notify_all();
            let deadline = Instant::now() + wait;
            while conns
                .iter()
                .all(|c| c.discarded.load(Ordering::SeqCst) == 0)
            {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                g = self
                    .shared
                    .cv
                    .wait_timeout(g, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
        let counted: Vec<Arc<Conn>> = conns.clone();
        self.shared.cut_conns(conns, true);
        // The pumps have exited: nothing is discarded any more.
        counted
            .iter()
            .map(|c| c.discarded.load(Ordering::SeqCst))
            .sum()
    }

    /// Whether [`FaultProxy::drop_replies_after_execution`] is discarding replies now (on some connection):
    /// a test polls this before it sends what must lose its reply.
    pub fn discarding(&self) -> bool {
        lock(&self.shared.conns)
            .iter()
            .any(|c| c.discard_replies.load(Ordering::SeqCst))
    }

    /// Arm a cut of every connection that fires once `n` more bytes went client → server (over all
    /// connections): exactly `n` bytes are forwarded, the rest of that chunk is not. `n == 0` cuts now.
    /// Arming again replaces the budget.
    pub fn cut_after_client_bytes(&self, n: u64) {
        self.arm(Dir::Up, n)
    }

    /// Send new connections to `127.0.0.1:port` from now on (existing ones are left alone: `cut()` them to
    /// move everyone), e.g. a failover behind one address.
    pub fn set_upstream(&self, port: u16) {
        *self.shared.upstream.lock().unwrap() = SocketAddr::from(([127, 0, 0, 1], port));
    }

    /// Arm a cut of every connection that fires once `n` more bytes went server → client (over all
    /// connections), e.g. in the middle of an RDB transfer: exactly `n` bytes are forwarded.
    pub fn cut_after_upstream_bytes(&self, n: u64) {
        self.arm(Dir::Down, n)
    }

    fn arm(&self, dir: Dir, n: u64) {
        if n == 0 {
            lock(&self.shared.gate).cut_after[dir as usize] = None;
            self.cut();
        } else {
            lock(&self.shared.gate).cut_after[dir as usize] = Some(n);
        }
    }

    /// Client connections accepted so far (including those refused or whose upstream was down).
    pub fn connections_accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections being relayed right now.
    pub fn active_connections(&self) -> usize {
        lock(&self.shared.conns).len()
    }

    /// Connections closed by a fault (`cut`, `drop_replies_after_execution`, `cut_after_*`).
    pub fn cuts(&self) -> u64 {
        self.shared.cuts.load(Ordering::SeqCst)
    }

    /// Bytes forwarded client → server.
    pub fn bytes_up(&self) -> u64 {
        self.shared.up.load(Ordering::SeqCst)
    }

    /// Bytes forwarded server → client (not counting discarded ones).
    pub fn bytes_down(&self) -> u64 {
        self.shared.down.load(Ordering::SeqCst)
    }

    /// Server → client bytes discarded by `drop_replies_after_execution`, over the proxy's life.
    pub fn bytes_discarded(&self) -> u64 {
        self.shared.discarded.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        // On Linux, shutting a listening socket down stops listening and wakes accept() with EINVAL.
        let _ = SockRef::from(&self.listener).shutdown(Shutdown::Both);
        if let Some(a) = self.accept.take() {
            // Elsewhere, a connection wakes it (the loop sees `closing` and leaves). Only then: on Linux
            // the port is already released, and another test's server or proxy may have taken it.
            let deadline = Instant::now() + Duration::from_secs(1);
            while !a.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(1));
            }
            if !a.is_finished() {
                let _ = TcpStream::connect_timeout(
                    &SocketAddr::from(([127, 0, 0, 1], self.port)),
                    Duration::from_millis(200),
                );
            }
            let _ = a.join();
        }
        self.shared.cut_all(false);
        self.shared.wake();
    }
}
