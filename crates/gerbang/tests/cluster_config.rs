//! Cluster mode (issue 13): configuration changes reach every replica through Redis
//! revisions. Three `gerbang serve` processes share one Redis, one keys directory and one set of
//! bootstrap files; each has its own data directory.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;

/// The harness itself: replicas share the bootstrap configuration and the keys directory, so a
/// token that one issued is accepted by another (no Redis needed for that).
#[test]
fn replicas_share_configuration_and_keys() {
    let cluster = Cluster::start(2, ClusterOptions::default());
    let a = &cluster.replicas[0];
    let b = &cluster.replicas[1];
    let t = token(a.data_addr, CLIENT_ID, CLIENT_SECRET);
    let (status, _, body) = get(b.data_addr, &format!("{ECHO}/x"), &t);
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = get_with_api_key(a.data_addr, &format!("{ECHO}/y"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        cluster
            .echo
            .requests
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}
