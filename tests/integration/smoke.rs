//! The harness itself works: a real server starts, answers, and is gone after drop.
use crate::support::*;

#[test]
fn harness_starts_and_stops_a_real_server() {
    let port;
    {
        let s = RedisServer::start(&[]);
        port = s.port;
        let mut c = s.client();
        c.ok(&["SET", "k", "v"]);
        assert_eq!(c.ok(&["GET", "k"]).as_string(), "v");
    }
    assert!(
        Client::connect_quiet(port).is_err(),
        "server still answering after drop"
    );
}
