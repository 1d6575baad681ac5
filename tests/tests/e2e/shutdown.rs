use std::time::{Duration, Instant};

use gerbang_e2e::*;
use gerbang_proxy::ShutdownOutcome;

fn slow(delay: Duration) -> RawBehaviour {
    RawBehaviour::RespondAfter(
        delay,
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone".to_vec(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_request_finishes_and_new_connections_are_refused() {
    let up = raw_upstream(slow(Duration::from_millis(1200))).await;
    let mut gw = TestGateway::start(
        &[&agency("a", "s", &[up.url()], "")],
        "shutdown_grace = \"10s\"",
        "",
    )
    .await;
    let addr = gw.addr;
    let health = gw.running.as_ref().unwrap().health.clone();
    let in_flight = tokio::spawn(async move { raw_request(addr, &get("/a/s/slow", "")).await });
    assert!(
        eventually(Duration::from_secs(5), || up.accepted() == 1).await,
        "the call reached the upstream"
    );

    let t = Instant::now();
    let running = gw.running.take().unwrap();
    let shutdown = tokio::spawn(running.shutdown());
    assert!(
        eventually(Duration::from_secs(2), || !health.is_ready()).await,
        "not ready while draining"
    );
    assert!(
        eventually_async(Duration::from_secs(2), || async {
            tokio::net::TcpStream::connect(addr).await.is_err()
        })
        .await,
        "the listener is closed once shutdown begins"
    );

    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"done");
    assert_eq!(shutdown.await.unwrap(), ShutdownOutcome::Drained);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "drained soon after the last request: {:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_gives_up_after_the_grace_period() {
    let up = raw_upstream(slow(Duration::from_secs(20))).await;
    let mut gw = TestGateway::start(
        &[&agency("a", "s", &[up.url()], "")],
        "shutdown_grace = \"400ms\"",
        "",
    )
    .await;
    let addr = gw.addr;
    let _in_flight = tokio::spawn(async move {
        let _ = tokio::time::timeout(
            Duration::from_secs(30),
            raw_request(addr, &get("/a/s/slow", "")),
        )
        .await;
    });
    assert!(
        eventually(Duration::from_secs(5), || up.accepted() == 1).await,
        "the call reached the upstream"
    );
    let t = Instant::now();
    assert_eq!(gw.shutdown().await, ShutdownOutcome::DeadlineExceeded);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[tokio::test]
async fn idle_gateway_drains_at_once() {
    let up = raw_upstream(slow(Duration::from_millis(1))).await;
    let mut gw = TestGateway::start(&[&agency("a", "s", &[up.url()], "")], "", "").await;
    let t = Instant::now();
    assert_eq!(gw.shutdown().await, ShutdownOutcome::Drained);
    assert!(t.elapsed() < Duration::from_secs(1));
}
