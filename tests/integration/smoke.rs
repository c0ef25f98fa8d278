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

/// Every provisioned server version starts on a free port, is the version it is named after and DUMPs
/// with the RDB version it is known to write (an absent one is a counted skip, or a failure under
/// `FERRY_REQUIRE_VERSIONS`).
#[test]
fn every_provisioned_version_is_what_its_name_says() {
    crate::support::versions::check_every_version();
}

/// The nutcracker harness spreads keys over its servers, honours `redis_auth` and `hash_tag`, and is gone
/// after drop.
#[test]
fn harness_starts_a_nutcracker_pool() {
    crate::support::check_nutcracker();
}
