//! `gerbang admin …`: the admin API from the command line (reqwest), for scripts and operators.
//! Prints the API's JSON answer; exit status 0 on success, 1 when the API refused (its error is
//! printed), 2 on a usage or connection problem.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::Value;

/// Connection settings and the command.
#[derive(Args)]
pub struct AdminArgs {
    /// The admin listener.
    #[arg(
        long,
        default_value = "http://127.0.0.1:9080",
        env = "GERBANG_ADMIN_URL"
    )]
    pub url: String,
    /// An admin token (better: the GERBANG_ADMIN_TOKEN environment variable, which process
    /// listings do not show).
    #[arg(long, env = "GERBANG_ADMIN_TOKEN", hide_env_values = true)]
    pub token: String,
    #[command(subcommand)]
    pub command: AdminCommand,
}

/// The kinds of resources.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Kind {
    #[value(alias = "agencies")]
    Agency,
    #[value(alias = "applications")]
    Application,
    #[value(alias = "services")]
    Service,
    #[value(alias = "agreements")]
    Agreement,
}

impl Kind {
    fn collection(self) -> &'static str {
        match self {
            Kind::Agency => "agencies",
            Kind::Application => "applications",
            Kind::Service => "services",
            Kind::Agreement => "agreements",
        }
    }
}

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Read the configuration files again and apply them.
    Reload,
    /// Check the configuration files without applying them.
    Validate,
    /// Which agreement decides a call, and why.
    Explain {
        #[arg(long)]
        consumer: String,
        #[arg(long)]
        purpose: Option<String>,
        method: String,
        path: String,
    },
    /// List resources of a kind.
    List { kind: Kind },
    /// Show one resource (ids: agency, agency/application, agency/service, agreement).
    Get { kind: Kind, id: String },
    /// Create or replace a resource from a JSON file (`-` for standard input). The current
    /// version is read first and sent as If-Match, so a concurrent change is refused (412)
    /// instead of overwritten.
    Put {
        kind: Kind,
        id: String,
        #[arg(long, short)]
        file: PathBuf,
    },
    /// Delete a resource (If-Match as for put).
    Delete { kind: Kind, id: String },
    /// Configuration revisions, newest first (cluster mode).
    Revisions,
    /// One revision with its files and diff (`current`: the one in force).
    Revision { id: String },
    /// Publish an earlier revision again as the newest; every replica applies it.
    Restore { id: u64 },
    /// Write the configuration in force (the newest revision in cluster mode) as files into
    /// DIR (`registry/*.toml`, `agreements/*.toml`), for Git. Files of DIR's `registry/` and
    /// `agreements/` that the revision does not hold are removed.
    Export {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Make a new client secret for an application (printed once).
    RotateSecret {
        /// `agency/app`.
        application: String,
        /// Keep the old secrets valid too, for a changeover.
        #[arg(long)]
        keep_previous: bool,
    },
}

/// Runs `args`; prints the answer.
pub fn run(args: AdminArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start: {e}");
            return ExitCode::from(2);
        }
    };
    rt.block_on(run_async(args))
}

async fn run_async(args: AdminArgs) -> ExitCode {
    let client = match reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot build the HTTP client: {e}");
            return ExitCode::from(2);
        }
    };
    let base = args.url.trim_end_matches('/').to_owned();
    let call =
        |method: reqwest::Method, path: String, body: Option<Value>, if_match: Option<String>| {
            let mut req = client
                .request(method, format!("{base}{path}"))
                .bearer_auth(&args.token);
            if let Some(b) = body {
                req = req.json(&b);
            }
            if let Some(tag) = if_match {
                req = req.header(reqwest::header::IF_MATCH, tag);
            }
            req.send()
        };
    let path_of = |kind: Kind, id: &str| format!("/admin/{}/{id}", kind.collection());
    let result = match args.command {
        AdminCommand::Reload => {
            call(reqwest::Method::POST, "/admin/reload".into(), None, None).await
        }
        AdminCommand::Validate => {
            call(reqwest::Method::POST, "/admin/validate".into(), None, None).await
        }
        AdminCommand::Explain {
            consumer,
            purpose,
            method,
            path,
        } => {
            let body = serde_json::json!({ "consumer": consumer, "purpose": purpose, "method": method, "path": path });
            call(
                reqwest::Method::POST,
                "/admin/explain".into(),
                Some(body),
                None,
            )
            .await
        }
        AdminCommand::List { kind } => {
            call(
                reqwest::Method::GET,
                format!("/admin/{}", kind.collection()),
                None,
                None,
            )
            .await
        }
        AdminCommand::Get { kind, id } => {
            call(reqwest::Method::GET, path_of(kind, &id), None, None).await
        }
        AdminCommand::Put { kind, id, file } => {
            let text = if file.as_os_str() == "-" {
                let mut s = String::new();
                match std::io::Read::read_to_string(&mut std::io::stdin(), &mut s) {
                    Ok(_) => s,
                    Err(e) => {
                        eprintln!("cannot read standard input: {e}");
                        return ExitCode::from(2);
                    }
                }
            } else {
                match std::fs::read_to_string(&file) {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("cannot read {}: {e}", file.display());
                        return ExitCode::from(2);
                    }
                }
            };
            let body: Value = match serde_json::from_str(&text) {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("{} is not JSON: {e}", file.display());
                    return ExitCode::from(2);
                }
            };
            let tag = current_etag(&call, path_of(kind, &id)).await;
            call(reqwest::Method::PUT, path_of(kind, &id), Some(body), tag).await
        }
        AdminCommand::Delete { kind, id } => {
            let tag = current_etag(&call, path_of(kind, &id)).await;
            call(reqwest::Method::DELETE, path_of(kind, &id), None, tag).await
        }
        AdminCommand::Revisions => {
            call(reqwest::Method::GET, "/admin/revisions".into(), None, None).await
        }
        AdminCommand::Revision { id } => {
            call(
                reqwest::Method::GET,
                format!("/admin/revisions/{id}"),
                None,
                None,
            )
            .await
        }
        AdminCommand::Restore { id } => {
            call(
                reqwest::Method::POST,
                format!("/admin/revisions/{id}/restore"),
                None,
                None,
            )
            .await
        }
        AdminCommand::Export { dir } => {
            let res = match call(
                reqwest::Method::GET,
                "/admin/revisions/current".into(),
                None,
                None,
            )
            .await
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("cannot reach the admin API at {base}: {e}");
                    return ExitCode::from(2);
                }
            };
            return export(res, &dir).await;
        }
        AdminCommand::RotateSecret {
            application,
            keep_previous,
        } => {
            let body = serde_json::json!({ "keep_previous": keep_previous });
            call(
                reqwest::Method::POST,
                format!("/admin/applications/{application}/rotate-secret"),
                Some(body),
                None,
            )
            .await
        }
    };
    let res = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot reach the admin API at {base}: {e}");
            return ExitCode::from(2);
        }
    };
    let ok = res.status().is_success();
    let status = res.status();
    let text = res.text().await.unwrap_or_default();
    let pretty = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or(text);
    if ok {
        println!("{pretty}");
        ExitCode::SUCCESS
    } else {
        eprintln!("{status}\n{pretty}");
        ExitCode::from(1)
    }
}

/// The resource's current ETag, when it exists.
async fn current_etag<F, Fut>(call: &F, path: String) -> Option<String>
where
    F: Fn(reqwest::Method, String, Option<Value>, Option<String>) -> Fut,
    Fut: std::future::Future<Output = reqwest::Result<reqwest::Response>>,
{
    let res = call(reqwest::Method::GET, path, None, None).await.ok()?;
    if !res.status().is_success() {
        return None;
    }
    res.headers()
        .get(reqwest::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Writes the files of a `GET /admin/revisions/current` answer into `dir`.
async fn export(res: reqwest::Response, dir: &std::path::Path) -> ExitCode {
    let status = res.status();
    let text = res.text().await.unwrap_or_default();
    if !status.is_success() {
        eprintln!("{status}\n{text}");
        return ExitCode::from(1);
    }
    let v: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("the admin API's answer is not JSON: {e}");
            return ExitCode::from(1);
        }
    };
    let mut files = gerbang_cluster::revisions::Files::new();
    for (name, text) in v["files"].as_object().into_iter().flatten() {
        let Some(text) = text.as_str() else { continue };
        files.insert(name.clone(), text.to_owned());
    }
    let (registry, agreements) = (dir.join("registry"), dir.join("agreements"));
    if let Err(e) = gerbang_cluster::revisions::write_files(&registry, &agreements, &files) {
        eprintln!("cannot write into {}: {e}", dir.display());
        return ExitCode::from(1);
    }
    let revision = v["id"]
        .as_u64()
        .map_or("the files in force".to_owned(), |id| {
            format!("revision {id}")
        });
    println!(
        "wrote {} files of {revision} (hash {}) into {}",
        files.len(),
        v["hash"].as_str().unwrap_or("?"),
        dir.display()
    );
    ExitCode::SUCCESS
}
