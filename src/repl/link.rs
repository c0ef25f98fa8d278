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
use crate::endpoint::RedisAddr;
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

/// Why a session ends when the consumer asked for a full resync (not a fault: logged at INFO).
const RESYNC_REQUESTED: &str = "a full resync was requested";

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
    /// Sessions started so far (the first connects where it was told; later ones ask `locate` first).
    attempts: u64,
}

/// The link's name for messages: its configured name, with the address when the name does not show it.
fn who_of(cfg: &LinkConfig) -> String {
    let hp = cfg.addr.host_port();
    if cfg.name.is_empty() {
        format!("source {}", cfg.addr)
    } else if cfg.name.contains(&hp) {
        cfg.name.clone()
    } else {
        format!("{} ({})", cfg.name, cfg.addr)
    }
}

impl Link {
    pub(super) fn new(cfg: LinkConfig, shared: Arc<LinkShared>, spool: SpoolWriter) -> Link {
        let who = who_of(&cfg);
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
            attempts: 0,
        }
    }

    /// Before a reconnect: ask where the master is now, and move there when it is another server.
    async fn relocate(&mut self) -> Result<(), End> {
        let Some(locate) = self.cfg.locate.clone() else {
            return Ok(());
        };
        let limit = self.cfg.connect_timeout * 3;
        let found =
            match tokio::time::timeout(limit, locate.locate(&self.cfg.addr, &self.shared)).await {
                Err(_) => {
                    return Err(End::Broken(format!(
                        "cannot tell where the master is now: no answer within {limit:?}"
                    )))
                }
                Ok(Err(why)) => {
                    return Err(End::Broken(format!(
                        "cannot tell where the master is now: {why}"
                    )))
                }
                Ok(Ok(a)) => a,
            };
        if found.host_port() != self.cfg.addr.host_port() {
            tracing::info!(source = %self.cfg.name, from = %self.cfg.addr, to = %found,
                "the master's role moved to another server (a failover): continuing the replication there");
            self.shared.set_master(found.clone());
            self.cfg.addr = found;
            self.who = who_of(&self.cfg);
        }
        Ok(())
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
                if reason == RESYNC_REQUESTED {
                    tracing::info!(source = %self.cfg.name, "reconnecting for the full resync that was asked for");
                } else {
                    tracing::warn!(
                        source = %self.cfg.name,
                        reason = %reason,
                        received = self.shared.received.load(Relaxed),
                        reconnect = self.cfg.reconnect,
                        "replication link down"
                    );
                }
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
        self.attempts += 1;
        if self.attempts > 1 {
            self.relocate().await?;
        }
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

        if self.shared.want_full.swap(false, Relaxed) {
            tracing::info!(source = %name, "asking the master for a full resync");
            self.pos = None;
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
                self.stream(c, have, Acks::Steady).await
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
        let (base, acks) = match full {
            Some((replid, offset)) => {
                self.pos = Some((replid, offset));
                (offset, Acks::EagerUntilStream)
            }
            None => (0, Acks::None),
        };
        self.shared.received.store(base, Relaxed);
        self.push(Record::RdbEnd).await?;
        let secs = started.elapsed().as_secs_f64();
        tracing::info!(
            source = %name,
            bytes = total,
            secs = format!("{secs:.3}"),
            mb_per_s = format!("{:.1}", total as f64 / 1e6 / secs.max(1e-9)),
            "RDB received"
        );
        self.stream(c, base, acks).await
    }

    /// Push the first `n` bytes of `buf` as RDB chunks.
    async fn push_rdb(&mut self, buf: &mut BytesMut, n: usize) -> Result<(), End> {
        for chunk in proto::split_chunks(buf, n, MAX_RDB_CHUNK) {
            self.shared.rdb_bytes.fetch_add(chunk.len() as u64, Relaxed);
            self.push(Record::Rdb(chunk)).await?;
        }
        Ok(())
    }

    /// The command stream: every read goes to the spool as is. ACKs go from their own task.
    async fn stream(&mut self, c: Conn, base: i64, acks: Acks) -> Result<Infallible, End> {
        let Conn {
            mut rd,
            wr,
            mut buf,
            read_timeout,
            ..
        } = c;
        let mut acker = AckTask(None);
        let mut watcher = WatchTask(None);
        if let (Some(locate), Some(every)) = (
            self.cfg.locate.clone(),
            self.cfg.locate.as_ref().and_then(|l| l.every()),
        ) {
            watcher.0 = Some(tokio::spawn(watch_master(
                locate,
                self.cfg.addr.clone(),
                self.shared.clone(),
                every,
                self.cfg.connect_timeout * 3,
            )));
        }
        // Without ACKs, keep the write half open all the same: dropping it would half-close the connection.
        let _idle_wr = if acks == Acks::None {
            Some(wr)
        } else {
            acker.0 = Some(tokio::spawn(ack_loop(
                wr,
                self.shared.clone(),
                self.shared.full_syncs.load(Relaxed),
                self.cfg.ack_interval,
                acks == Acks::EagerUntilStream,
            )));
            None
        };
        let mut at = base;
        loop {
            if !buf.is_empty() {
                let n = buf.len();
                at += n as i64;
                if let Some(p) = &mut self.pos {
                    p.1 = at;
                }
                self.shared.received.store(at, Relaxed);
                self.shared.stream_bytes.fetch_add(n as u64, Relaxed);
                self.push(Record::Stream(buf.split().freeze())).await?;
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
                _ = self.shared.resync_now.notified() => {
                    return Err(End::Broken(RESYNC_REQUESTED.into()));
                }
                moved = watcher.moved() => {
                    return Err(End::Broken(format!(
                        "the master's role moved to {moved} (a failover); this server no longer serves its slots"
                    )));
                }
            }
        }
    }
}

fn unreachable_keepalive() -> Result<Infallible, End> {
    // line_skipping_keepalives never returns an empty line.
    Err(End::Broken("internal: keep-alive line".into()))
}

/// How a streaming connection acknowledges.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Acks {
    /// Never: a master that only speaks `SYNC` does not know `REPLCONF ACK`.
    None,
    /// At once, then every ACK interval and on demand.
    Steady,
    /// After a full sync: every [`EAGER_ACK_EVERY`] until the first stream byte arrives (for at most
    /// [`EAGER_ACK_FOR`]), then as `Steady`. A Redis 7+ master that fed us a diskless snapshot puts us
    /// online from its cron and starts the stream only at the next ACK it reads from us
    /// (`repl_start_cmd_stream_on_ack`), so with a 1 s ACK interval every change made meanwhile (a cutover
    /// waiting for its last writes, say) would wait up to a second more.
    EagerUntilStream,
}

/// How often to acknowledge while a master may be waiting for an ACK to start the stream.
const EAGER_ACK_EVERY: Duration = Duration::from_millis(10);
/// How long to do so at most (a master with nothing to send stays silent however often we ACK).
const EAGER_ACK_FOR: Duration = Duration::from_secs(2);

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

/// The task that asks, while streaming, whether the master moved; aborted when dropped.
struct WatchTask(Option<JoinHandle<RedisAddr>>);

impl WatchTask {
    /// Resolves with the master's new address when it moved (never when there is no watcher, or it failed).
    async fn moved(&mut self) -> RedisAddr {
        match &mut self.0 {
            Some(h) => match h.await {
                Ok(a) => a,
                Err(_) => {
                    self.0 = None;
                    std::future::pending().await
                }
            },
            None => std::future::pending().await,
        }
    }
}

impl Drop for WatchTask {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.abort();
        }
    }
}

/// Every `every`, ask `locate` where the master is; return when it names another server than `current`.
/// An unanswered or failed question changes nothing (the stream goes on; a reconnect asks again).
async fn watch_master(
    locate: Arc<dyn super::Locate>,
    current: RedisAddr,
    shared: Arc<LinkShared>,
    every: Duration,
    limit: Duration,
) -> RedisAddr {
    loop {
        tokio::time::sleep(every).await;
        match tokio::time::timeout(limit, locate.locate(&current, &shared)).await {
            Ok(Ok(a)) if a.host_port() != current.host_port() => return a,
            Ok(Ok(_)) => {}
            Ok(Err(why)) => {
                tracing::debug!(master = %current, reason = %why, "cannot tell whether the master moved")
            }
            Err(_) => {
                tracing::debug!(master = %current, "cannot tell whether the master moved (no answer)")
            }
        }
    }
}

/// One `REPLCONF ACK` with what the consumer has applied (see [`ack_offset`]).
async fn send_ack(
    wr: &mut OwnedWriteHalf,
    shared: &LinkShared,
    epoch: u64,
    out: &mut BytesMut,
) -> std::io::Result<()> {
    let offset = ack_offset(shared.applied(), epoch, shared.received.load(Relaxed));
    out.clear();
    proto::encode_ack(out, offset);
    wr.write_all(out).await
}

/// Send `REPLCONF ACK <applied>` at once, then every `every` and whenever the consumer asks; when `eager`,
/// every [`EAGER_ACK_EVERY`] until the first stream byte (see [`Acks::EagerUntilStream`]). Returns the
/// write error that ended it. `epoch` is the number of full syncs this link had started when this
/// connection began streaming.
async fn ack_loop(
    mut wr: OwnedWriteHalf,
    shared: Arc<LinkShared>,
    epoch: u64,
    every: Duration,
    eager: bool,
) -> std::io::Error {
    let mut out = BytesMut::with_capacity(64);
    if eager {
        let start = shared.received.load(Relaxed);
        let until = Instant::now() + EAGER_ACK_FOR;
        loop {
            if let Err(e) = send_ack(&mut wr, &shared, epoch, &mut out).await {
                return e;
            }
            if shared.received.load(Relaxed) != start || Instant::now() >= until {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(EAGER_ACK_EVERY) => {}
                _ = shared.ack_now.notified() => {}
            }
        }
    }
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.ack_now.notified() => {}
        }
        if let Err(e) = send_ack(&mut wr, &shared, epoch, &mut out).await {
            return e;
        }
    }
}

/// What to acknowledge: what every target has applied when that belongs to this link's epoch, never more
/// than was received; else 0, which claims nothing (the consumer is behind a full resync, or the new
/// snapshot is not applied yet). A master only keeps the largest ACK of a connection, so a low value
/// after a reconnect is harmless, and `WAIT` and `INFO replication` never count what is not on the targets.
fn ack_offset((applied_epoch, applied): (u64, i64), epoch: u64, received: i64) -> i64 {
    if applied_epoch == epoch && applied >= 0 {
        applied.min(received.max(0))
    } else {
        0
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

/// Against scripted fake masters: the protocol corners real servers do not produce on demand.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::RedisAddr;
    use crate::spool::{SpoolConfig, SpoolReader};
    use bytes::Bytes;
    use tokio::net::TcpListener;

    const ID: &str = "0123456789abcdef0123456789abcdef01234567";
    const ID2: &str = "fedcba9876543210fedcba9876543210fedcba98";

    /// The master side of one connection.
    struct Peer {
        s: TcpStream,
        buf: BytesMut,
        dec: crate::resp::CommandDecoder,
    }

    impl Peer {
        async fn cmd(&mut self) -> Vec<String> {
            loop {
                if let Some(n) = self.dec.decode(&self.buf).unwrap() {
                    let args = self
                        .dec
                        .args()
                        .iter()
                        .map(|r| String::from_utf8_lossy(&self.buf[r.clone()]).into_owned())
                        .collect();
                    let _ = self.buf.split_to(n);
                    return args;
                }
                let n =
                    tokio::time::timeout(Duration::from_secs(10), self.s.read_buf(&mut self.buf))
                        .await
                        .expect("the link sent nothing for 10 s")
                        .unwrap();
                assert!(n > 0, "the link closed the connection");
            }
        }

        async fn expect(&mut self, want: &[&str]) {
            let got = self.cmd().await;
            assert_eq!(got, want);
        }

        async fn send(&mut self, b: &[u8]) {
            self.s.write_all(b).await.unwrap();
        }

        /// PING, the two REPLCONFs answered with `replconf`; returns the PSYNC arguments.
        async fn handshake(&mut self, replconf: &str) -> Vec<String> {
            self.expect(&["PING"]).await;
            self.send(b"+PONG\r\n").await;
            self.expect(&["REPLCONF", "listening-port", "0"]).await;
            self.send(replconf.as_bytes()).await;
            self.expect(&["REPLCONF", "capa", "eof", "capa", "psync2"])
                .await;
            self.send(replconf.as_bytes()).await;
            self.cmd().await
        }
    }

    struct Fake {
        listener: TcpListener,
    }

    impl Fake {
        async fn new() -> Fake {
            Fake {
                listener: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            }
        }
        fn port(&self) -> u16 {
            self.listener.local_addr().unwrap().port()
        }
        async fn accept(&self) -> Peer {
            let (s, _) = tokio::time::timeout(Duration::from_secs(10), self.listener.accept())
                .await
                .expect("the link did not connect")
                .unwrap();
            s.set_nodelay(true).unwrap();
            Peer {
                s,
                buf: BytesMut::new(),
                dec: crate::resp::CommandDecoder::new(),
            }
        }
    }

    struct Running {
        shared: Arc<LinkShared>,
        reader: SpoolReader,
        cancel: CancellationToken,
        task: JoinHandle<Result<(), LinkError>>,
        dir: std::path::PathBuf,
    }

    impl Running {
        async fn next(&mut self) -> Record {
            tokio::time::timeout(Duration::from_secs(10), self.reader.next())
                .await
                .expect("no record within 10 s")
                .unwrap()
                .expect("the spool ended")
        }
    }

    impl Drop for Running {
        fn drop(&mut self) {
            self.cancel.cancel();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn start(port: u16, tweak: impl FnOnce(&mut LinkConfig)) -> Running {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ferry-link-{}-{}",
            std::process::id(),
            N.fetch_add(1, Relaxed)
        ));
        let mut cfg = LinkConfig::new(RedisAddr {
            host: "127.0.0.1".into(),
            port,
            auth: None,
        });
        cfg.ack_interval = Duration::from_millis(50);
        tweak(&mut cfg);
        let (w, reader) = crate::spool::open(SpoolConfig::new(&dir, "fake")).unwrap();
        let shared = LinkShared::new();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(super::super::run(cfg, shared.clone(), w, cancel.clone()));
        Running {
            shared,
            reader,
            cancel,
            task,
            dir,
        }
    }

    async fn rdb_until_end(r: &mut Running) -> Vec<u8> {
        let mut v = Vec::new();
        loop {
            match r.next().await {
                Record::Rdb(b) => v.extend_from_slice(&b),
                Record::RdbEnd => return v,
                other => panic!("expected Rdb, got {other:?}"),
            }
        }
    }

    #[test]
    fn ack_offset_never_claims_more_than_applied() {
        assert_eq!(
            ack_offset((1, -1), 1, 150),
            0,
            "the snapshot is not applied yet"
        );
        assert_eq!(ack_offset((1, 120), 1, 150), 120);
        assert_eq!(ack_offset((1, 150), 1, 150), 150);
        // A +CONTINUE in the same epoch while the spool still holds a backlog: applied, not received.
        assert_eq!(ack_offset((0, 90), 0, 5000), 90);
        assert_eq!(
            ack_offset((0, 5000), 1, 150),
            0,
            "applied is from before a full resync (another history)"
        );
        assert_eq!(ack_offset((1, 200), 1, 150), 150, "never above received");
    }

    #[tokio::test]
    async fn sync_fallback_for_a_master_without_psync() {
        let fake = Fake::new().await;
        let mut r = start(fake.port(), |c| c.reconnect = false);
        let mut p = fake.accept().await;
        let psync = p.handshake("-ERR unknown command 'REPLCONF'\r\n").await;
        assert_eq!(psync, ["PSYNC", "?", "-1"]);
        p.send(b"-ERR unknown command 'PSYNC'\r\n").await;
        p.expect(&["SYNC"]).await;
        p.send(b"\n\n$9\r\nREDIS0006*1\r\n$4\r\nPING\r\n").await;
        assert_eq!(
            r.next().await,
            Record::FullResync {
                replid: "?".into(),
                offset: 0
            }
        );
        assert_eq!(rdb_until_end(&mut r).await, b"REDIS0006");
        assert_eq!(
            r.next().await,
            Record::Stream(Bytes::from_static(b"*1\r\n$4\r\nPING\r\n"))
        );
        assert!(r.shared.sync_only.load(Relaxed));
        assert_eq!(r.shared.received.load(Relaxed), 14);
        // No REPLCONF ACK to a master that does not know it: nothing arrives within a few ACK periods.
        let mut b = [0u8; 64];
        let got = tokio::time::timeout(Duration::from_millis(300), p.s.read(&mut b)).await;
        assert!(got.is_err(), "the link sent {got:?} to a SYNC master");
        drop(p);
        assert!(matches!(r.next().await, Record::LinkDown { .. }));
        let err = (&mut r.task).await.unwrap().unwrap_err();
        assert!(matches!(err, LinkError::Lost { .. }), "{err}");
    }

    #[tokio::test]
    async fn psync_and_sync_both_refused_is_fatal() {
        let fake = Fake::new().await;
        let mut r = start(fake.port(), |_| {});
        let mut p = fake.accept().await;
        p.handshake("+OK\r\n").await;
        p.send(b"-ERR unknown command 'PSYNC'\r\n").await;
        p.expect(&["SYNC"]).await;
        p.send(b"-ERR unknown command 'SYNC'\r\n").await;
        let err = (&mut r.task).await.unwrap().unwrap_err();
        assert!(matches!(err, LinkError::SyncRefused { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("source redis://127.0.0.1:"), "{msg}");
        assert!(msg.contains("unknown command 'SYNC'"), "{msg}");
    }

    /// Keep-alives before the PSYNC reply and before `$EOF:`, the RDB and its mark written a few bytes at a
    /// time, the first ACK at once with the FULLRESYNC offset, then `applied` on demand.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn diskless_in_small_writes_then_acks() {
        let fake = Fake::new().await;
        let mut r = start(fake.port(), |c| c.ack_interval = Duration::from_secs(3600));
        let mut p = fake.accept().await;
        let psync = p.handshake("+OK\r\n").await;
        assert_eq!(psync, ["PSYNC", "?", "-1"]);
        p.send(b"\n").await;
        p.send(format!("+FULLRESYNC {ID} 100\r\n").as_bytes()).await;
        p.send(b"\n\n").await;
        let mark = ID2;
        p.send(format!("$EOF:{mark}\r\n").as_bytes()).await;
        let mut rdb = b"REDIS0011".to_vec();
        rdb.extend_from_slice(&mark.as_bytes()[..39]); // a near miss inside the RDB
        rdb.extend((0..3000u32).map(|i| (i % 251) as u8));
        let mut wire = rdb.clone();
        wire.extend_from_slice(mark.as_bytes());
        for (i, piece) in wire.chunks(7).enumerate() {
            p.send(piece).await;
            if i % 50 == 0 {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(
            r.next().await,
            Record::FullResync {
                replid: ID.into(),
                offset: 100
            }
        );
        assert_eq!(rdb_until_end(&mut r).await, rdb);
        // The first ACK comes at once (a diskless master waits for it before streaming); nothing is applied
        // yet, so it claims nothing. Until the stream starts, more follow every EAGER_ACK_EVERY, not every
        // ACK interval (an hour here).
        p.expect(&["REPLCONF", "ACK", "0"]).await;
        tokio::time::timeout(Duration::from_secs(1), p.expect(&["REPLCONF", "ACK", "0"]))
            .await
            .expect("a second ACK well before the ACK interval, while the stream has not started");
        p.send(b"*1\r\n$4\r\nPING\r\n").await;
        assert_eq!(
            r.next().await,
            Record::Stream(Bytes::from_static(b"*1\r\n$4\r\nPING\r\n"))
        );
        assert_eq!(r.shared.received.load(Relaxed), 114);
        // Once the stream has started, no more eager ACKs: the ones already sent are drained, then silence
        // until asked.
        let mut eager = 0;
        while let Ok(c) = tokio::time::timeout(Duration::from_millis(200), p.cmd()).await {
            assert_eq!(c, ["REPLCONF", "ACK", "0"]);
            eager += 1;
            assert!(eager < 5, "eager ACKs go on after the stream started");
        }
        r.shared.set_applied(1, 114);
        r.shared.ack_now.notify_one();
        p.expect(&["REPLCONF", "ACK", "114"]).await;
        assert_eq!(r.shared.rdb_bytes.load(Relaxed), rdb.len() as u64);
        let t = Instant::now();
        r.cancel.cancel();
        assert!((&mut r.task).await.unwrap().is_ok());
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "{:?}",
            t.elapsed()
        );
    }

    /// A silent master: the read timeout drops the link; the reconnect asks PSYNC replid offset+1 and a
    /// +CONTINUE with a new replication ID is followed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn read_timeout_then_psync_continue_with_new_id() {
        let fake = Fake::new().await;
        let mut r = start(fake.port(), |c| c.read_timeout = Duration::from_millis(300));
        let mut p = fake.accept().await;
        p.handshake("+OK\r\n").await;
        p.send(format!("+FULLRESYNC {ID} 5\r\n$3\r\nabcxyz").as_bytes())
            .await;
        assert!(matches!(
            r.next().await,
            Record::FullResync { offset: 5, .. }
        ));
        assert_eq!(rdb_until_end(&mut r).await, b"abc");
        assert_eq!(r.next().await, Record::Stream(Bytes::from_static(b"xyz")));
        // Silence (our ACKs keep flowing, the master sends nothing).
        match r.next().await {
            Record::LinkDown { reason } => assert!(reason.contains("timeout"), "{reason}"),
            other => panic!("expected LinkDown, got {other:?}"),
        }
        let mut p2 = fake.accept().await;
        let psync = p2.handshake("+OK\r\n").await;
        assert_eq!(psync, ["PSYNC", ID, "9"]);
        p2.send(format!("+CONTINUE {ID2}\r\n").as_bytes()).await;
        assert_eq!(
            r.next().await,
            Record::Continue {
                replid: ID2.into(),
                offset: 8
            }
        );
        p2.send(b"\r\n").await;
        assert_eq!(r.next().await, Record::Stream(Bytes::from_static(b"\r\n")));
        let s = r.shared.snapshot();
        assert_eq!(
            (s.received, s.full_syncs, s.partial_syncs, s.reconnects),
            (10, 1, 1, 1)
        );
        drop(p);
        let t = Instant::now();
        r.cancel.cancel();
        assert!((&mut r.task).await.unwrap().is_ok());
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "{:?}",
            t.elapsed()
        );
    }

    /// A link broken in the middle of the RDB cannot continue: the next PSYNC asks for a full sync.
    #[tokio::test]
    async fn broken_rdb_means_full_sync_again() {
        let fake = Fake::new().await;
        let mut r = start(fake.port(), |_| {});
        let mut p = fake.accept().await;
        p.handshake("+OK\r\n").await;
        p.send(format!("+FULLRESYNC {ID} 5\r\n$10\r\nabc").as_bytes())
            .await;
        assert!(matches!(r.next().await, Record::FullResync { .. }));
        assert_eq!(r.next().await, Record::Rdb(Bytes::from_static(b"abc")));
        drop(p);
        assert!(matches!(r.next().await, Record::LinkDown { .. }));
        let mut p2 = fake.accept().await;
        assert_eq!(p2.handshake("+OK\r\n").await, ["PSYNC", "?", "-1"]);
        // A master that cannot serve now: transient, the link retries.
        p2.send(b"-LOADING Redis is loading the dataset in memory\r\n")
            .await;
        let mut p3 = fake.accept().await;
        assert_eq!(p3.handshake("+OK\r\n").await, ["PSYNC", "?", "-1"]);
        assert_eq!(r.shared.full_syncs.load(Relaxed), 1);
    }

    /// Where the master is, as a test says (and how often the link asked).
    #[derive(Debug)]
    struct MovableMaster {
        at: std::sync::Mutex<u16>,
        asked: std::sync::atomic::AtomicU64,
    }

    impl super::super::Locate for MovableMaster {
        fn locate<'a>(
            &'a self,
            _current: &'a RedisAddr,
            _shared: &'a Arc<LinkShared>,
        ) -> super::super::Located<'a> {
            self.asked.fetch_add(1, Relaxed);
            let port = *self.at.lock().unwrap();
            Box::pin(async move {
                Ok(RedisAddr {
                    host: "127.0.0.1".into(),
                    port,
                    auth: None,
                })
            })
        }
        fn every(&self) -> Option<Duration> {
            Some(Duration::from_millis(50))
        }
    }

    /// A master that moves (a cluster failover): when its connection drops, the link asks where it is and
    /// continues on the new server with PSYNC replid offset+1; while streaming, the periodic question moves
    /// it too, from a connection that still works.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn follows_a_master_that_moved() {
        let (old, new, newer) = (Fake::new().await, Fake::new().await, Fake::new().await);
        let locate = Arc::new(MovableMaster {
            at: std::sync::Mutex::new(old.port()),
            asked: std::sync::atomic::AtomicU64::new(0),
        });
        let l = locate.clone();
        let mut r = start(old.port(), move |c| c.locate = Some(l));
        let mut p = old.accept().await;
        assert_eq!(p.handshake("+OK\r\n").await, ["PSYNC", "?", "-1"]);
        assert_eq!(
            locate.asked.load(Relaxed),
            0,
            "the first connection goes where it was told"
        );
        p.send(format!("+FULLRESYNC {ID} 5\r\n$3\r\nabcxyz").as_bytes())
            .await;
        assert!(matches!(r.next().await, Record::FullResync { .. }));
        assert_eq!(rdb_until_end(&mut r).await, b"abc");
        assert_eq!(r.next().await, Record::Stream(Bytes::from_static(b"xyz")));
        // Streaming: the link asks every 50 ms and stays while the answer is where it is.
        let before = locate.asked.load(Relaxed);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(locate.asked.load(Relaxed) > before, "asked while streaming");
        // The old master dies; a replica serves its slots now.
        *locate.at.lock().unwrap() = new.port();
        drop(p);
        assert!(matches!(r.next().await, Record::LinkDown { .. }));
        let mut p2 = new.accept().await;
        assert_eq!(p2.handshake("+OK\r\n").await, ["PSYNC", ID, "9"]);
        p2.send(format!("+CONTINUE {ID2}\r\n").as_bytes()).await;
        assert_eq!(
            r.next().await,
            Record::Continue {
                replid: ID2.into(),
                offset: 8
            }
        );
        p2.send(b"\r\n").await;
        assert_eq!(r.next().await, Record::Stream(Bytes::from_static(b"\r\n")));
        // A manual failover: the connection still works, but the role moved.
        *locate.at.lock().unwrap() = newer.port();
        match r.next().await {
            Record::LinkDown { reason } => assert!(reason.contains("moved"), "{reason}"),
            other => panic!("expected LinkDown, got {other:?}"),
        }
        let mut p3 = newer.accept().await;
        assert_eq!(p3.handshake("+OK\r\n").await, ["PSYNC", ID2, "11"]);
        drop(p2);
        assert_eq!(r.shared.full_syncs.load(Relaxed), 1);
    }

    #[tokio::test]
    async fn not_redis_is_a_protocol_error() {
        let fake = Fake::new().await;
        let mut r = start(fake.port(), |_| {});
        let mut p = fake.accept().await;
        p.expect(&["PING"]).await;
        p.send(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        let err = (&mut r.task).await.unwrap().unwrap_err();
        assert!(matches!(err, LinkError::Protocol { .. }), "{err}");
        assert!(err.to_string().contains("check the host and port"), "{err}");
    }
}
