//! Wiring: builds the gateway from a validated [`Config`], binds its listeners and runs them
//! until shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use gerbang_proxy::{serve, Admin, Gateway, Health, ShutdownOutcome};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: io::Error,
    },
}

/// A gateway running in this process.
pub struct Running {
    /// Where the data plane listens (the real port when the config said 0).
    pub data_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub health: Arc<Health>,
    pub gateway: Arc<Gateway>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<ShutdownOutcome>,
}

impl Running {
    /// Begins a graceful shutdown and waits for it: listeners close at once, requests in flight
    /// get the configured grace period.
    pub async fn shutdown(self) -> ShutdownOutcome {
        self.health.set_ready(false);
        let _ = self.shutdown.send(true);
        self.task.await.unwrap_or(ShutdownOutcome::DeadlineExceeded)
    }

    /// A future that starts shutdown when `signal` completes, then waits for it.
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> ShutdownOutcome {
        signal.await;
        tracing::info!("shutting down: no new connections; draining requests in flight");
        self.shutdown().await
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })
}

/// Binds the listeners of `config` and starts serving.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let data = bind("data plane", config.listen).await?;
    let admin = bind("admin", config.admin_listen).await?;
    let data_addr = data.local_addr().unwrap_or(config.listen);
    let admin_addr = admin.local_addr().unwrap_or(config.admin_listen);

    let gateway = Arc::new(Gateway::new(
        config.registry,
        config.limits,
        config.upstream_tls,
        config.pool,
    ));
    let health = Arc::new(Health::new());
    let (tx, rx) = watch::channel(false);
    let stop = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };

    let admin_settings = gerbang_proxy::ListenerSettings {
        tls: None,
        max_connections: 256,
        ..config.listener.clone()
    };
    let admin_task = tokio::spawn(serve(
        admin,
        Arc::new(Admin::new(Arc::clone(&health))),
        admin_settings,
        stop(rx.clone()),
    ));
    let data_task = tokio::spawn(serve(data, Arc::clone(&gateway), config.listener, stop(rx)));
    let task = tokio::spawn(async move {
        let data = data_task.await.unwrap_or(ShutdownOutcome::DeadlineExceeded);
        let _ = admin_task.await;
        data
    });
    health.set_ready(true);
    tracing::info!(%data_addr, %admin_addr, "gateway ready");
    Ok(Running {
        data_addr,
        admin_addr,
        health,
        gateway,
        shutdown: tx,
        task,
    })
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn termination_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = tokio::signal::ctrl_c() => {},
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
