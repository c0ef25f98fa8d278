//! One link: connect, handshake, RDB, stream, ACKs; reconnect with `PSYNC` after a drop.

use std::convert::Infallible;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::proto::{self, BulkLine, EofScan, ErrorKind, Line, PsyncReply, RdbHeader};
use super::{LinkConfig, LinkError, LinkShared};
use crate::spool::{Record, SpoolWriter};

/// First reconnect delay; doubled after each failed attempt up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Largest `Record::Rdb` chunk.
pub const MAX_RDB_CHUNK: usize = 1 << 20;
/// Read buffer headroom while receiving the RDB (large reads, large chunks).
const RDB_READ: usize = 1 << 20;
/// Read buffer headroom for the stream.
const STREAM_READ: usize = 256 << 10;
/// Below this spare capacity the buffer is grown before a read.
const MIN_SPARE: usize = 16 << 10;

/// How a session ended.
enum End {
    /// The link broke or the master cannot serve us now: reconnect (if configured).
    Broken(String),
    /// Stop with this error.
    Fatal(LinkError),
    /// The peer does not speak the replication protocol: stop with [`LinkError::Protocol`].
    Protocol(String),
}

pub(super) struct Link {
    cfg: LinkConfig,
    /// Name and address for messages (never the password).
    who: String,
    shared: Arc<LinkShared>,
    spool: SpoolWriter,
    /// Where to continue: the master's replication ID and the offset of the last byte we have.
    pos: Option<(String, i64)>,
    /// This session pushed a `FullResync`/`Continue`: its end must be told to the consumer (`LinkDown`).
    opened: bool,
    /// Some session succeeded before (so the next success is a reconnect).
    had_link: bool,
}

impl Link {
    pub(super) fn new(cfg: LinkConfig, shared: Arc<LinkShared>, spool: SpoolWriter) -> Link {
        let hp = cfg.addr.host_port();
        let who = if cfg.name.is_empty() {
            format!("source {}", cfg.addr)
        } else if cfg.name.contains(&hp) {
            cfg.name.clone()
        } else {
            format!("{} ({})", cfg.name, cfg.addr)
        };
        let pos = cfg
            .resume
            .clone()
            .filter(|(id, off)| !id.is_empty() && id != "?" && *off >= 0);
        Link {
            cfg,
            who,
            shared,
            spool,
            pos,
            opened: false,
            had_link: false,
        }
    }

    pub(super) async fn run(mut self, cancel: CancellationToken) -> Result<(), LinkError> {
        let mut backoff = BACKOFF_MIN;
        let mut failures = 0u32;
        loop {
            self.opened = false;
            let end = tokio::select! {
                biased;
                _ = cancel.cancelled() => None,
                end = self.session() => Some(end),
            };
            self.shared.connected.store(false, Relaxed);
            let reason = match end {
                None => {
                    tracing::info!(source = %self.cfg.name, "replication link stopped");
                    return Ok(());
                }
                Some(End::Protocol(detail)) => {
                    let e = LinkError::Protocol {
                        who: self.who.clone(),
                        detail,
                    };
                    tracing::error!(source = %self.cfg.name, error = %e, "replication link failed");
                    return Err(e);
                }
                Some(End::Fatal(e)) => {
                    tracing::error!(source = %self.cfg.name, error = %e, "replication link failed");
                    return Err(e);
                }
                Some(End::Broken(reason)) => reason,
            };
            if self.opened {
                // Tell the consumer: what follows is a Continue (or a FullResync).
                let down = Record::LinkDown {
                    reason: reason.clone(),
                };
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return Ok(()),
                    r = self.spool.push(down) => r.map_err(|source| LinkError::Spool {
                        who: self.who.clone(),
                        source,
                    })?,
                }
                backoff = BACKOFF_MIN;
                failures = 0;
                tracing::warn!(
                    source = %self.cfg.name,
                    reason = %reason,
                    received = self.shared.received.load(Relaxed),
                    reconnect = self.cfg.reconnect,
                    "replication link down"
                );
            } else {
                failures += 1;
                // One WARN for the first failure of a streak, then one a minute or so.
                if failures == 1 || failures % 12 == 0 {
                    tracing::warn!(
                        source = %self.cfg.name,
                        reason = %reason,
                        attempts = failures,
                        retry_in_ms = backoff.as_millis() as u64,
                        reconnect = self.cfg.reconnect,
                        "cannot establish the replication link"
                    );
                } else {
                    tracing::debug!(source = %self.cfg.name, reason = %reason, attempts = failures, "cannot establish the replication link");
                }
            }
            if !self.cfg.reconnect {
                return Err(LinkError::Lost {
                    who: self.who.clone(),
                    reason,
                });
            }
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    tracing::info!(source = %self.cfg.name, "replication link stopped");
                    return Ok(());
                }
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    async fn session(&mut self) -> End {
        match self.session_inner().await {
            Ok(never) => match never {},
            Err(end) => end,
        }
    }

    fn fatal_protocol(&self, detail: impl Into<String>) -> End {
        End::Protocol(detail.into())
    }

    async fn push(&mut self, rec: Record) -> Result<(), End> {
        self.spool.push(rec).await.map_err(|source| {
            End::Fatal(LinkError::Spool {
                who: self.who.clone(),
                source,
            })
        })
    }

    /// The handshake succeeded (a FULLRESYNC, CONTINUE or SYNC payload is coming).
    fn established(&mut self) {
        self.opened = true;
        self.shared.connected.store(true, Relaxed);
        if self.had_link {
            self.shared.reconnects.fetch_add(1, Relaxed);
        }
        self.had_link = true;
    }

    async fn session_inner(&mut self) -> Result<Infallible, End> {
        let mut c = self.connect().await?;
        let name = self.cfg.name.clone();

        if let Some(auth) = self.cfg.addr.auth.clone() {
            let pw = auth.password.expose().as_bytes();
            match &auth.user {
                Some(u) => c.send(&[b"AUTH", u.as_bytes(), pw]).await?,
                None => c.send(&[b"AUTH", pw]).await?,
            }
            match c.reply().await? {
                Line::Ok(_) => {
                    tracing::info!(source = %name, user = auth.user.as_deref().unwrap_or("default"), "authenticated");
                }
                Line::Err(e) => {
                    let who = self.who.clone();
                    return Err(End::Fatal(match proto::classify_error(&e) {
                        ErrorKind::NoPermission => LinkError::NoPermission {
                            who,
                            command: "AUTH",
                            msg: e,
                        },
                        _ => LinkError::AuthRefused { who, msg: e },
                    }));
                }
                Line::Other(l) => return Err(self.fatal_protocol(format!("AUTH answered {l:?}"))),
            }
        }

        c.send(&[b"PING"]).await?;
        match c.reply().await? {
            Line::Ok(_) => {}
            Line::Err(e) => {
                let who = self.who.clone();
                return Err(match proto::classify_error(&e) {
                    ErrorKind::AuthRequired => End::Fatal(LinkError::AuthRequired { who, msg: e }),
                    ErrorKind::AuthRefused => End::Fatal(LinkError::AuthRefused { who, msg: e }),
                    ErrorKind::NoPermission => End::Fatal(LinkError::NoPermission {
                        who,
                        command: "PING",
                        msg: e,
                    }),
                    _ => End::Broken(format!("the master answered PING with an error: {e}")),
                });
            }
            Line::Other(l) => return Err(self.fatal_protocol(format!("PING answered {l:?}"))),
        }

        let port = self.cfg.listening_port.to_string();
        let replconfs: [&[&[u8]]; 2] = [
            &[b"REPLCONF", b"listening-port", port.as_bytes()],
            &[b"REPLCONF", b"capa", b"eof", b"capa", b"psync2"],
        ];
        for args in replconfs {
            c.send(args).await?;
            match c.reply().await? {
                Line::Ok(_) => {}
                Line::Err(e) if proto::classify_error(&e) == ErrorKind::NoPermission => {
                    // Without REPLCONF our ACKs would be refused and the master would drop us every
                    // repl-timeout: say so now.
                    return Err(End::Fatal(LinkError::NoPermission {
                        who: self.who.clone(),
                        command: "REPLCONF",
                        msg: e,
                    }));
                }
                Line::Err(e) => {
                    // Old masters do not know every REPLCONF option; a real replica goes on too.
                    tracing::info!(source = %name, option = %String::from_utf8_lossy(args[1]), error = %e, "the master does not understand this REPLCONF option (not critical)");
                }
                Line::Other(l) => {
                    return Err(self.fatal_protocol(format!("REPLCONF answered {l:?}")))
                }
            }
        }

        let (req_id, req_off) = match &self.pos {
            Some((id, off)) => (id.clone(), off + 1),
            None => ("?".to_string(), -1),
        };
        tracing::info!(source = %name, replid = %req_id, offset = req_off, "handshake done; asking for PSYNC");
        c.send(&[b"PSYNC", req_id.as_bytes(), req_off.to_string().as_bytes()])
            .await?;
        let line = c.line_skipping_keepalives().await?;
        match proto::parse_psync_reply(&line) {
            Err(proto::BadReply(d)) => Err(self.fatal_protocol(format!("PSYNC reply: {d}"))),
            Ok(PsyncReply::FullResync { replid, offset }) => {
                if self.pos.is_some() {
                    tracing::info!(source = %name, asked_replid = %req_id, asked_offset = req_off, "the master cannot continue where we stopped (backlog gone or history differs): full resync");
                }
                self.full_sync(c, Some((replid, offset))).await
            }
            Ok(PsyncReply::Continue { replid }) => {
                let Some((old_id, have)) = self.pos.clone() else {
                    return Err(self.fatal_protocol("+CONTINUE answered PSYNC ? -1"));
                };
                let id = match replid {
                    Some(new) if new != old_id => {
                        tracing::info!(source = %name, old_replid = %old_id, new_replid = %new, "the master's replication ID changed (failover); continuing");
                        new
                    }
                    _ => old_id,
                };
                self.pos = Some((id.clone(), have));
                self.shared.partial_syncs.fetch_add(1, Relaxed);
                self.shared.received.store(have, Relaxed);
                self.push(Record::Continue {
                    replid: id.clone(),
                    offset: have,
                })
                .await?;
                self.established();
                tracing::info!(source = %name, replid = %id, offset = have, "partial resync accepted: the stream continues at offset+1");
                self.stream(c, have, true).await
            }
            Ok(PsyncReply::Error(e)) => match proto::classify_error(&e) {
                ErrorKind::Transient => Err(End::Broken(format!(
                    "the master cannot serve PSYNC now: {e}"
                ))),
                ErrorKind::AuthRequired => Err(End::Fatal(LinkError::AuthRequired {
                    who: self.who.clone(),
                    msg: e,
                })),
                _ => {
                    tracing::info!(source = %name, reply = %e, "the master refused PSYNC; trying SYNC (masters before 2.8)");
                    c.send(&[b"SYNC"]).await?;
                    self.sync_fallback(c, e).await
                }
            },
        }
    }

    async fn connect(&mut self) -> Result<Conn, End> {
        let addr = &self.cfg.addr;
        let t = self.cfg.connect_timeout;
        let stream = match tokio::time::timeout(
            t,
            TcpStream::connect((addr.host.as_str(), addr.port)),
        )
        .await
        {
            Err(_) => return Err(End::Broken(format!("no answer to connect within {t:?}"))),
            Ok(Err(e)) => return Err(End::Broken(format!("cannot connect: {e}"))),
            Ok(Ok(s)) => s,
        };
        if let Err(e) = stream.set_nodelay(true) {
            return Err(End::Broken(format!("cannot set TCP_NODELAY: {e}")));
        }
        let ka = socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(30))
            .with_interval(Duration::from_secs(10));
        if let Err(e) = socket2::SockRef::from(&stream).set_tcp_keepalive(&ka) {
            tracing::debug!(source = %self.cfg.name, error = %e, "cannot enable TCP keepalive");
        }
        tracing::info!(source = %self.cfg.name, "connected; replica handshake");
        let (rd, wr) = stream.into_split();
        Ok(Conn {
            rd,
            wr,
            buf: BytesMut::with_capacity(STREAM_READ),
            read_timeout: self.cfg.read_timeout,
            out: BytesMut::with_capacity(256),
        })
    }

    /// We sent SYNC after PSYNC was refused with `psync_err`: the reply is the RDB, or an error.
    async fn sync_fallback(&mut self, mut c: Conn, psync_err: String) -> Result<Infallible, End> {
        let line = c.line_skipping_keepalives().await?;
        match proto::parse_bulk_line(&line) {
            Ok(BulkLine::Header(h)) => {
                self.shared.sync_only.store(true, Relaxed);
                self.full_sync_header(c, None, h).await
            }
            Ok(BulkLine::Aborted(e)) => {
                let who = self.who.clone();
                Err(match proto::classify_error(&e) {
                    ErrorKind::Transient => {
                        End::Broken(format!("the master cannot serve SYNC now: {e}"))
                    }
                    ErrorKind::NoPermission => End::Fatal(LinkError::NoPermission {
                        who,
                        command: "PSYNC and SYNC",
                        msg: e,
                    }),
                    _ => End::Fatal(LinkError::SyncRefused {
                        who,
                        psync: psync_err,
                        sync: e,
                    }),
                })
            }
            Ok(BulkLine::KeepAlive) => unreachable_keepalive(),
            Err(proto::BadReply(d)) => Err(self.fatal_protocol(format!("SYNC reply: {d}"))),
        }
    }

    /// `+FULLRESYNC` arrived: announce it, wait for the RDB header, receive the RDB, then stream.
    async fn full_sync(
        &mut self,
        mut c: Conn,
        full: Option<(String, i64)>,
    ) -> Result<Infallible, End> {
        self.pos = None;
        self.shared.full_syncs.fetch_add(1, Relaxed);
        self.shared.rdb_bytes.store(0, Relaxed);
        self.shared.rdb_size.store(-1, Relaxed);
        if let Some((replid, offset)) = &full {
            tracing::info!(source = %self.cfg.name, replid = %replid, offset, "full resync: waiting for the master's RDB");
            self.push(Record::FullResync {
                replid: replid.clone(),
                offset: *offset,
            })
            .await?;
            self.established();
        }
        let header = loop {
            let line = c.line().await?;
            match proto::parse_bulk_line(&line) {
                Ok(BulkLine::KeepAlive) => {
                    tracing::trace!(source = %self.cfg.name, "keep-alive while the master prepares the RDB")
                }
                Ok(BulkLine::Header(h)) => break h,
                Ok(BulkLine::Aborted(e)) => {
                    return Err(End::Broken(format!(
                        "the master aborted the RDB transfer: {e}"
                    )))
                }
                Err(proto::BadReply(d)) => return Err(self.fatal_protocol(d)),
            }
        };
        self.full_sync_header(c, full, header).await
    }

    async fn full_sync_header(
        &mut self,
        mut c: Conn,
        full: Option<(String, i64)>,
        header: RdbHeader,
    ) -> Result<Infallible, End> {
        let name = self.cfg.name.clone();
        if full.is_none() {
            // SYNC: no replication ID, no offset. Count from 0 at the end of the RDB.
            self.pos = None;
            self.shared.full_syncs.fetch_add(1, Relaxed);
            self.shared.rdb_bytes.store(0, Relaxed);
            self.shared.rdb_size.store(-1, Relaxed);
            tracing::info!(source = %name, "full sync with SYNC: offsets are unknown, resuming is impossible (every reconnect is a full sync)");
            self.push(Record::FullResync {
                replid: "?".into(),
                offset: 0,
            })
            .await?;
            self.established();
        }
        let started = Instant::now();
        let mut total = 0u64;
        match header {
            RdbHeader::Len(len) => {
                self.shared
                    .rdb_size
                    .store(i64::try_from(len).unwrap_or(i64::MAX), Relaxed);
                tracing::info!(source = %name, bytes = len, "receiving the RDB (disk-backed)");
                let mut left = len;
                while left > 0 {
                    if c.buf.is_empty() {
                        c.read_more(RDB_READ).await?;
                    }
                    let k = usize::try_from(left).unwrap_or(usize::MAX).min(c.buf.len());
                    self.push_rdb(&mut c.buf, k).await?;
                    left -= k as u64;
                    total += k as u64;
                }
            }
            RdbHeader::Eof(mark) => {
                tracing::info!(source = %name, "receiving the RDB (diskless, ends with a 40-byte mark)");
                loop {
                    match proto::scan_eof(&c.buf, &mark) {
                        EofScan::Found(i) => {
                            self.push_rdb(&mut c.buf, i).await?;
                            total += i as u64;
                            proto::drop_mark(&mut c.buf);
                            break;
                        }
                        EofScan::NotYet(k) => {
                            self.push_rdb(&mut c.buf, k).await?;
                            total += k as u64;
                            c.read_more(RDB_READ).await?;
                        }
                    }
                }
            }
        }
        self.push(Record::RdbEnd).await?;
        let secs = started.elapsed().as_secs_f64();
        tracing::info!(
            source = %name,
            bytes = total,
            secs = format!("{secs:.3}"),
            mb_per_s = format!("{:.1}", total as f64 / 1e6 / secs.max(1e-9)),
            "RDB received"
        );
        let (base, ack) = match full {
            Some((replid, offset)) => {
                self.pos = Some((replid, offset));
                (offset, true)
            }
            None => (0, false),
        };
        self.shared.received.store(base, Relaxed);
        self.stream(c, base, ack).await
    }

    /// Push the first `n` bytes of `buf` as RDB chunks.
    async fn push_rdb(&mut self, buf: &mut BytesMut, n: usize) -> Result<(), End> {
        for chunk in proto::split_chunks(buf, n, MAX_RDB_CHUNK) {
            let len = chunk.len() as u64;
            self.push(Record::Rdb(chunk)).await?;
            self.shared.rdb_bytes.fetch_add(len, Relaxed);
        }
        Ok(())
    }

    /// The command stream: every read goes to the spool as is. ACKs go from their own task.
    async fn stream(&mut self, c: Conn, base: i64, ack: bool) -> Result<Infallible, End> {
        let Conn {
            mut rd,
            wr,
            mut buf,
            read_timeout,
            ..
        } = c;
        let mut acker = AckTask(None);
        // Without ACKs, keep the write half open all the same: dropping it would half-close the connection.
        let _idle_wr = if ack {
            acker.0 = Some(tokio::spawn(ack_loop(
                wr,
                self.shared.clone(),
                base,
                self.cfg.ack_interval,
            )));
            None
        } else {
            Some(wr)
        };
        let mut at = base;
        loop {
            if !buf.is_empty() {
                let n = buf.len();
                self.push(Record::Stream(buf.split().freeze())).await?;
                at += n as i64;
                if let Some(p) = &mut self.pos {
                    p.1 = at;
                }
                self.shared.received.store(at, Relaxed);
                self.shared.stream_bytes.fetch_add(n as u64, Relaxed);
            }
            if buf.capacity() - buf.len() < MIN_SPARE {
                buf.reserve(STREAM_READ);
            }
            tokio::select! {
                r = tokio::time::timeout(read_timeout, rd.read_buf(&mut buf)) => {
                    read_outcome(r, read_timeout)?;
                }
                e = acker.failed() => {
                    return Err(End::Broken(format!("cannot send REPLCONF ACK: {e}")));
                }
            }
        }
    }
}

fn unreachable_keepalive() -> Result<Infallible, End> {
    // line_skipping_keepalives never returns an empty line.
    Err(End::Broken("internal: keep-alive line".into()))
}

/// The ACK writer task; aborted when dropped (the session ended).
struct AckTask(Option<JoinHandle<std::io::Error>>);

impl AckTask {
    /// Resolves when the writer failed (never when there is none).
    async fn failed(&mut self) -> String {
        match &mut self.0 {
            Some(h) => match h.await {
                Ok(e) => e.to_string(),
                Err(e) => e.to_string(),
            },
            None => std::future::pending().await,
        }
    }
}

impl Drop for AckTask {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.abort();
        }
    }
}

/// Send `REPLCONF ACK <applied>` (or `base` while nothing is applied) at once, then every `every` and
/// whenever the consumer asks. Returns the write error that ended it.
async fn ack_loop(
    mut wr: OwnedWriteHalf,
    shared: Arc<LinkShared>,
    base: i64,
    every: Duration,
) -> std::io::Error {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut out = BytesMut::with_capacity(64);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.ack_now.notified() => {}
        }
        let applied = shared.applied.load(Relaxed);
        let offset = if applied >= 0 { applied } else { base };
        out.clear();
        proto::encode_ack(&mut out, offset);
        if let Err(e) = wr.write_all(&out).await {
            return e;
        }
    }
}

fn read_outcome(
    r: Result<std::io::Result<usize>, tokio::time::error::Elapsed>,
    t: Duration,
) -> Result<usize, End> {
    match r {
        Err(_) => Err(End::Broken(format!(
            "no data from the master for {t:?} (read timeout)"
        ))),
        Ok(Err(e)) => Err(End::Broken(format!("read failed: {e}"))),
        Ok(Ok(0)) => Err(End::Broken("the master closed the connection".into())),
        Ok(Ok(n)) => Ok(n),
    }
}

/// The connection during the handshake and the RDB transfer.
struct Conn {
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    buf: BytesMut,
    out: BytesMut,
    read_timeout: Duration,
}

impl Conn {
    async fn send(&mut self, args: &[&[u8]]) -> Result<(), End> {
        self.out.clear();
        crate::resp::encode_command(&mut self.out, args);
        self.wr
            .write_all(&self.out)
            .await
            .map_err(|e| End::Broken(format!("write failed: {e}")))
    }

    /// Read more bytes, with at least `headroom` spare capacity.
    async fn read_more(&mut self, headroom: usize) -> Result<usize, End> {
        if self.buf.capacity() - self.buf.len() < MIN_SPARE {
            self.buf.reserve(headroom);
        }
        let t = self.read_timeout;
        read_outcome(
            tokio::time::timeout(t, self.rd.read_buf(&mut self.buf)).await,
            t,
        )
    }

    /// The next line (possibly empty: a keep-alive).
    async fn line(&mut self) -> Result<String, End> {
        loop {
            match proto::take_line(&mut self.buf) {
                Ok(Some(l)) => return Ok(l),
                Ok(None) => {
                    self.read_more(STREAM_READ).await?;
                }
                Err(proto::LineTooLong(n)) => {
                    return Err(End::Protocol(format!(
                        "a reply line of over {n} bytes without a newline"
                    )))
                }
            }
        }
    }

    async fn line_skipping_keepalives(&mut self) -> Result<String, End> {
        loop {
            let l = self.line().await?;
            if !l.is_empty() {
                return Ok(l);
            }
        }
    }

    /// A one-line reply to a handshake command.
    async fn reply(&mut self) -> Result<Line, End> {
        Ok(Line::parse(&self.line().await?))
    }
}
