//! `target::client::Client`, the one connection type for everything but the data path (prechecks, the
//! writer pool's handshake, `ferry verify`), against a real redis-server behind a fault proxy: a pipeline
//! of reads is sent again after its connection is cut, in the db it was meant for; a pipeline of writes
//! whose replies were lost is never sent twice; a connection that failed is not used again silently.

use std::time::Duration;

use ferry::endpoint::RedisAddr;
use ferry::resp::Reply;
use ferry::target::client::{Client as FerryClient, Pipeline, Role};
use ferry::target::TargetError;

use crate::support::fault_proxy::FaultProxy;
use crate::support::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn addr(url: &str) -> RedisAddr {
    url.parse().unwrap()
}

fn bulk(r: &Reply) -> Vec<u8> {
    r.as_bytes().map(<[u8]>::to_vec).unwrap_or_default()
}

#[test]
fn reads_are_sent_again_after_a_cut_in_the_db_chosen() {
    let server = RedisServer::start(&[]);
    let proxy = FaultProxy::start(server.port);
    let mut s = server.client();
    s.ok(&["SELECT", "3"]);
    s.ok(&["SET", "k", "in-db3"]);
    s.ok(&["SELECT", "0"]);
    s.ok(&["SET", "k", "in-db0"]);
    runtime().block_on(async {
        let mut c =
            FerryClient::connect_as(&addr(&proxy.url()), Role::Source, Duration::from_secs(5))
                .await
                .unwrap();
        assert_eq!(c.role(), Role::Source);
        c.use_db(3);
        let mut p = Pipeline::reads();
        p.push(&[b"GET", b"k"]);
        p.push(&[b"EXISTS", b"k"]);
        let r = c.run(&p).await.unwrap();
        assert_eq!(bulk(&r[0]), b"in-db3");
        assert_eq!(r[1].as_int(), Some(1));
        assert!(proxy.cut() >= 1, "the proxy had no connection to cut");
        // Reopened, db 3 selected again, the whole pipeline sent again.
        let r = c.run(&p).await.unwrap();
        assert_eq!(bulk(&r[0]), b"in-db3");
        assert!(c.last_reply_bytes() > 0);
        // A SELECT sent as a command moves the client's db too, across a reconnect.
        c.cmd_ok(&[b"SELECT", b"0"]).await.unwrap();
        proxy.cut();
        let r = c.read_ok(&[b"GET", b"k"]).await.unwrap();
        assert_eq!(bulk(&r), b"in-db0");
    });
}

#[test]
fn writes_whose_replies_were_lost_are_not_sent_twice() {
    let server = RedisServer::start(&[]);
    let proxy = FaultProxy::start(server.port);
    let rt = runtime();
    let mut c = rt
        .block_on(FerryClient::connect_as(
            &addr(&proxy.url()),
            Role::Target,
            Duration::from_secs(5),
        ))
        .unwrap();
    let mut p = Pipeline::writes();
    p.push(&[b"INCR", b"counter"]);
    // The proxy has registered the client's connection (the fault applies to current connections).
    crate::support::wait_until(
        "the proxy to hold the connection",
        Duration::from_secs(10),
        || proxy.active_connections() == 1,
    );
    // The server executes the INCR; its reply is discarded and the connection cut.
    let (discarded, result) = std::thread::scope(|scope| {
        let dropping =
            scope.spawn(|| proxy.drop_replies_after_execution_within(Duration::from_secs(10)));
        crate::support::wait_until("the fault to be armed", Duration::from_secs(10), || {
            proxy.discarding()
        });
        let r = rt.block_on(c.run(&p));
        (dropping.join().unwrap(), r)
    });
    assert!(
        discarded > 0,
        "no reply was discarded: the fault did not fire"
    );
    let err = result.expect_err("a write whose reply was lost must fail, not be sent again");
    assert!(matches!(err, TargetError::Io { .. }), "{err}");
    // The failed connection is not used again by a plain command either.
    let again = rt
        .block_on(c.cmd(&[b"PING"]))
        .expect_err("a failed connection was used again");
    assert!(again.to_string().contains("failed earlier"), "{again}");
    let mut s = server.client();
    assert_eq!(
        s.cmd(&["GET", "counter"]).as_string(),
        "1",
        "INCR applied once"
    );
}
