//! The floor of a proxy built on hyper's HTTP/1 server: what `benches/proxy_load.sh` measures
//! as `hyper-floor`, to tell the cost of the gateway's work from the cost of the parts it is
//! built on (and that issue 15 asks it to keep).
//!
//! One thread (a current-thread Tokio runtime, as the gateway runs with `worker_threads = 1`),
//! hyper's HTTP/1 server, and per request the least a reverse proxy can do
//! ([`gerbang_benches::floor`]): take a pooled keep-alive connection to the one upstream, write
//! the client's method, target and header fields to it, read the response head (httparse) and
//! a `Content-Length` body, and answer with the upstream's status, header fields and body. No
//! authentication, no policy, no header rewriting, no metrics, no audit, no timeouts, no
//! request bodies, no chunked responses: it is a measuring stick for GET requests of a
//! benchmark, not a proxy to deploy.
//!
//! ```sh
//! hyper-floor 127.0.0.1:18230 127.0.0.1:18200   # listen, upstream
//! ```

use std::convert::Infallible;
use std::io;

use bytes::Bytes;
use gerbang_benches::floor::{Answer, Pool};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

async fn answer(pool: &Pool, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let answer = pool
        .exchange(req.method(), target, req.headers())
        .await
        .unwrap_or_else(|_| Answer::bad_gateway());
    let mut res = Response::new(Full::new(answer.body));
    *res.status_mut() = answer.status;
    let headers = res.headers_mut();
    for (name, value) in answer.fields {
        headers.append(name, value);
    }
    res
}

fn main() -> io::Result<()> {
    gerbang_benches::floor::run("hyper-floor", |stream, pool| async move {
        let service = service_fn(move |req: Request<Incoming>| {
            let pool = pool.clone();
            async move { Ok::<_, Infallible>(answer(&pool, &req).await) }
        });
        let _ = http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await;
    })
}
