//! The token endpoint under abuse: one source address (127.0.0.1) floods `POST /oauth/token`
//! with wrong secrets over many connections while a real client on another address
//! (127.0.0.2) asks for its token. The real client gets it in under a second; the flooder gets
//! `429 slow_down` with `Retry-After` after a bounded number of guesses; the refusals are counted
//! in `gerbang_token_auth_throttled_total`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use gerbang::demo::Kind;
use gerbang_e2e::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const SECRET: &str = "demo-secret-simpus";
/// Connections the flooder keeps busy at once.
const FLOOD_CONNECTIONS: usize = 200;

async fn gateway(auth_extra: &str) -> (TestGateway, Upstream) {
    let echo = backend(Kind::Echo, "echo").await;
    let hash = gerbang_auth::secret::hash_secret(SECRET).unwrap();
    let simpus = format!(
        "[agency]\nid = \"dinkes\"\nname = \"Dinkes\"\n\n[[application]]\nid = \"simpus\"\n\
         name = \"SIMPUS\"\nauth_methods = [\"client_secret\"]\n\
         client_secret_hashes = [\"{hash}\"]\nscopes = [\"read\"]\n"
    );
    let gw = TestGateway::start(
        &[&agency("a", "s", &[echo.url()], ""), &simpus],
        "",
        &format!("[auth]\n{auth_extra}\n"),
    )
    .await;
    (gw, echo)
}

fn token_request(client_id: &str, secret: &str) -> Vec<u8> {
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{client_id}:{secret}"));
    let body = "grant_type=client_credentials";
    format!(
        "POST /oauth/token HTTP/1.1\r\nHost: g\r\nAuthorization: Basic {basic}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// One response on a keep-alive connection: status, `Retry-After`, body; `None` when the
/// connection ended first.
async fn read_one(s: &mut TcpStream) -> Option<(u16, Option<String>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let header = |name: &str| {
        head.split("\r\n").find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let len: usize = header("content-length")?.parse().ok()?;
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some((status, header("retry-after"), body))
}

/// What the flooder saw: (status, Retry-After, OAuth `error`).
type Seen = Arc<Mutex<Vec<(u16, Option<String>, String)>>>;

/// `FLOOD_CONNECTIONS` keep-alive connections from 127.0.0.1, each sending wrong secrets for
/// `client_id` back to back until `stop`.
fn flood(addr: SocketAddr, client_id: &'static str, stop: Arc<AtomicBool>, seen: Seen) {
    for i in 0..FLOOD_CONNECTIONS {
        let (stop, seen) = (Arc::clone(&stop), Arc::clone(&seen));
        tokio::spawn(async move {
            let request = token_request(client_id, &format!("wrong-secret-{i:04}"));
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut s) = TcpStream::connect(addr).await else {
                    continue;
                };
                while !stop.load(Ordering::Relaxed) {
                    if s.write_all(&request).await.is_err() {
                        break;
                    }
                    let Some((status, retry_after, body)) = read_one(&mut s).await else {
                        break;
                    };
                    let error = serde_json::from_slice::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v["error"].as_str().map(str::to_owned))
                        .unwrap_or_default();
                    seen.lock().unwrap().push((status, retry_after, error));
                }
            }
        });
    }
}

/// A correct token request from 127.0.0.2: its status and how long it took.
async fn real_client(addr: SocketAddr) -> (u16, Duration) {
    let started = Instant::now();
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    s.write_all(&token_request("dinkes%2Fsimpus", SECRET))
        .await
        .unwrap();
    let (status, _, body) = tokio::time::timeout(Duration::from_secs(10), read_one(&mut s))
        .await
        .expect("an answer within 10 s")
        .expect("a response");
    if status == 200 {
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(v["access_token"].as_str().is_some_and(|t| t.len() > 100));
    }
    (status, started.elapsed())
}

/// Real token requests at 100 ms, 400 ms and 800 ms into the flood; then the flood goes on
/// until `enough` holds of what it saw (at most 5 s more), and one more real request.
async fn real_clients_during_flood(
    addr: SocketAddr,
    seen: &Seen,
    enough: impl Fn(&[(u16, Option<String>, String)]) -> bool,
) -> Vec<(u16, Duration)> {
    let mut out = Vec::new();
    let start = Instant::now();
    for at in [100, 400, 800] {
        let wait = Duration::from_millis(at).saturating_sub(start.elapsed());
        tokio::time::sleep(wait).await;
        out.push(real_client(addr).await);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !enough(&seen.lock().unwrap()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    out.push(real_client(addr).await);
    eprintln!("token requests of 127.0.0.2 during the flood of 127.0.0.1: {out:?}");
    out
}

/// The two floods run one after the other: on a small machine, two at once would measure each
/// other.
static ONE_FLOOD_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_wrong_secrets_neither_starves_another_source_nor_guesses_unthrottled() {
    let _one = ONE_FLOOD_AT_A_TIME.lock().await;
    // The defaults: 10 failures per source, 30 per client, per minute; 1 check per source.
    let (gw, _echo) = gateway("").await;
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Seen = Arc::default();
    // The flooder guesses at the real client's own secret.
    flood(
        gw.addr,
        "dinkes%2Fsimpus",
        Arc::clone(&stop),
        Arc::clone(&seen),
    );
    let real = real_clients_during_flood(gw.addr, &seen, |s| {
        s.iter().filter(|(status, _, _)| *status == 429).count() > 200
    })
    .await;
    stop.store(true, Ordering::Relaxed);

    for (i, (status, took)) in real.iter().enumerate() {
        assert_eq!(*status, 200, "real request {i}");
        assert!(
            *took < Duration::from_secs(1),
            "real request {i} took {took:?} during the flood"
        );
    }
    let seen = seen.lock().unwrap().clone();
    let checked = seen.iter().filter(|(s, _, _)| *s == 401).count();
    let throttled: Vec<_> = seen.iter().filter(|(s, _, _)| *s == 429).collect();
    // Guessing is bounded: the allowance (10), checked one at a time, then no more.
    assert_eq!(checked, 10, "secrets checked for the flooder");
    assert!(
        throttled.len() > 200,
        "the flooder is refused: {}",
        throttled.len()
    );
    for (_, retry_after, error) in &throttled {
        assert_eq!(error, "slow_down");
        let secs: u64 = retry_after
            .as_deref()
            .expect("Retry-After on 429")
            .parse()
            .unwrap();
        // One failure comes back every 6 s (10 per minute).
        assert!((1..=6).contains(&secs), "Retry-After {secs}");
    }
    assert_eq!(
        seen.len(),
        checked + throttled.len(),
        "only 401 and 429 for the flooder"
    );

    let m =
        String::from_utf8(raw_request_as_is(gw.admin, &get("/metrics", "")).await.body).unwrap();
    let value = |series: &str| -> u64 {
        m.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{series} not in:\n{m}"))
    };
    let by_source = value("gerbang_token_auth_throttled_total{by=\"source\"}");
    assert!(by_source as usize >= throttled.len(), "{by_source}");
    assert_eq!(
        value("gerbang_token_auth_throttled_total{by=\"client\"}"),
        0
    );
    assert!(
        value("gerbang_token_requests_total{result=\"slow_down\"}") as usize >= throttled.len()
    );
    assert_eq!(value("gerbang_token_requests_total{result=\"issued\"}"), 4);
}

/// Without any failure limit, the argon2 slots are still shared: the flooder holds one check at
/// a time, so a request of another source never queues behind its flood.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_failure_limits_one_source_still_gets_only_its_share_of_the_secret_checks() {
    let _one = ONE_FLOOD_AT_A_TIME.lock().await;
    let (gw, _echo) =
        gateway("token_failures_per_source = 0\ntoken_failures_per_client = 0\n").await;
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Seen = Arc::default();
    // Unknown client ids cost a check too (the same as a wrong secret).
    flood(
        gw.addr,
        "dinkes%2Fghost",
        Arc::clone(&stop),
        Arc::clone(&seen),
    );
    let real = real_clients_during_flood(gw.addr, &seen, |s| s.len() >= 20).await;
    stop.store(true, Ordering::Relaxed);
    for (i, (status, took)) in real.iter().enumerate() {
        assert_eq!(*status, 200, "real request {i}");
        assert!(
            *took < Duration::from_secs(1),
            "real request {i} took {took:?} during the flood"
        );
    }
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.len() >= 20,
        "the flood kept checking: {} answers",
        seen.len()
    );
    assert!(
        seen.iter()
            .all(|(s, _, e)| *s == 401 && e == "invalid_client"),
        "no limit: every flood request is checked and refused"
    );
}
