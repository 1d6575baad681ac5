//! `gerbang`: the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gerbang::config::{self, Config, Overrides};
use gerbang::demo;

#[derive(Parser)]
#[command(
    name = "gerbang",
    version,
    about = "Service-integration gateway for regional government agencies (SPBE)",
    after_help = "Exit status: 0 success (valid, intact, allowed); 1 a finding (`validate`: the \
                  configuration has problems; `audit verify`/`anchor`: the log is not intact; a \
                  run that failed); 2 a usage or configuration error (bad arguments, a file or \
                  directory that cannot be read, `serve` refusing an invalid configuration); \
                  3 `explain`: the call would be denied (an unknown application included)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where an audit command reads the log: data directories, or the configuration that names one.
#[derive(clap::Args)]
struct AuditSource {
    /// A gateway's data directory (`paths.data_dir`: the log in `audit/`, its seal key in
    /// `keys/`). Repeat it for the replicas of a cluster, or give one directory that holds one
    /// data directory per replica: each chain is verified on its own, queries are merged by
    /// time.
    #[arg(long)]
    data_dir: Vec<PathBuf>,
    /// The gateway's main configuration file: the log and keys where `serve` would put them.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The keys directory the replicas share (`auth.keys_dir`): the subject key for queries.
    /// Default: the configuration's, else `keys/` of a given directory that has the key.
    #[arg(long)]
    keys_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check every file, link and seal; name the first bad record. Exit 0 when intact, 1 when
    /// tampered with or incomplete.
    Verify {
        #[command(flatten)]
        source: AuditSource,
        /// The seal public key (hex), for one replica's log; default: keys/audit-seal.pub in
        /// each data directory. Keep a copy outside the gateway's host: a key read from the
        /// same disk as the log proves less.
        #[arg(long)]
        public_key: Option<PathBuf>,
        /// Anchors exported earlier with `gerbang audit anchor` (JSON Lines): the chain must
        /// pass through every one, which exposes a log rewritten and re-sealed on the host.
        #[arg(long)]
        anchors: Option<PathBuf>,
    },
    /// Verify the log and print its latest seal as an anchor (one JSON line) to keep outside the
    /// gateway's host, e.g. appended to a file on another machine from cron. Later,
    /// `audit verify --anchors FILE` checks the log still passes through every anchor.
    Anchor {
        #[command(flatten)]
        source: AuditSource,
        #[arg(long)]
        public_key: Option<PathBuf>,
    },
    /// Records of calls, by data subject (hashed with the gateway's key), consumer, service
    /// and time.
    Query {
        #[command(flatten)]
        source: AuditSource,
        /// The data subject's id, e.g. a NIK.
        #[arg(long)]
        subject: Option<String>,
        /// The calling application, agency/app.
        #[arg(long)]
        consumer: Option<String>,
        /// The provider service, agency/service.
        #[arg(long)]
        service: Option<String>,
        /// From this time (RFC 3339, e.g. 2026-11-28T00:00:00Z).
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        /// JSON Lines instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway on a configuration file.
    Serve {
        /// The main configuration file.
        #[arg(
            long,
            short,
            env = "GERBANG_CONFIG",
            default_value = "/etc/gerbang/gerbang.toml"
        )]
        config: PathBuf,
        /// Data-plane address, overriding server.listen.
        #[arg(long)]
        listen: Option<String>,
        /// Admin address, overriding admin.listen.
        #[arg(long)]
        admin_listen: Option<String>,
    },
    /// Check a configuration and its registry files; print every problem and exit non-zero if any.
    Validate {
        #[arg(long, short, default_value = "/etc/gerbang/gerbang.toml")]
        config: PathBuf,
    },
    /// Start fictional agency backends and the gateway in front of them, on the example config.
    Demo {
        /// Where the demo's configuration copy (and later its keys and audit log) lives.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Data-plane address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Admin address.
        #[arg(long, default_value = "127.0.0.1:9080")]
        admin_listen: String,
        /// Overwrite the configuration copy in the data directory with the shipped example.
        #[arg(long)]
        fresh: bool,
    },
    /// Explain the policy decision for a call: the decision, the agreement and the rule that
    /// decided, and every agreement considered with why it did not match. Exit status 0 when
    /// the call would be allowed, 3 when denied (`DENY (unknown application)` when the
    /// registry has no such application), 2 on a usage or configuration error.
    Explain {
        #[arg(long, short, default_value = "/etc/gerbang/gerbang.toml")]
        config: PathBuf,
        /// The calling application, `agency/app`.
        #[arg(long)]
        consumer: String,
        /// The purpose of processing (`X-Gerbang-Purpose`).
        #[arg(long)]
        purpose: Option<String>,
        /// The HTTP method, e.g. GET.
        method: String,
        /// The path as called on the gateway: /{agency}/{service}/{rest}.
        path: String,
    },
    /// Call the admin API of a running gateway: reload, validate, explain, and list, read,
    /// change or delete agencies, applications, services and agreements.
    Admin(gerbang::admin_cli::AdminArgs),
    /// The audit log: verify its chain and seals, or find who accessed a citizen's data.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Print an argon2id hash of a client secret or API key read from standard input (one line),
    /// for the configuration. The secret is never taken from the command line, where shell
    /// history and process listings would keep it.
    HashSecret,
    /// Make a new API key for a legacy application: prints the key (give it to the
    /// application once) and the digest to put in its registry entry (`api_keys`).
    NewApiKey,
    /// Create a new signing key for the built-in token issuer in the configured key directory
    /// (and the audit keys that are missing). Running gateways publish it within
    /// `auth.keys_poll_interval`; it signs from `auth.key_activation_delay` after now (the
    /// first key at once), so every replica publishes it before any signs with it. Older keys
    /// stay published until no token they signed can still be valid.
    RotateKey {
        #[arg(
            long,
            short,
            default_value = "/etc/gerbang/gerbang.toml",
            conflicts_with = "keys_dir"
        )]
        config: PathBuf,
        /// Write to this keys directory instead of the configuration's: the directory the
        /// replicas of a cluster share (mounted as `auth.keys_dir`, e.g. from a Kubernetes
        /// Secret). Creates the signing key and the shared audit subject key; each replica
        /// makes its own seal key on its first start.
        #[arg(long)]
        keys_dir: Option<PathBuf>,
    },
    /// A fixed 1 KiB JSON upstream for the load benchmark (benches/proxy_load.sh).
    #[command(hide = true)]
    BenchUpstream {
        #[arg(long, default_value = "127.0.0.1:18200")]
        listen: std::net::SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { config } => validate(&config),
        Command::BenchUpstream { listen } => bench_upstream(listen),
        Command::HashSecret => hash_secret(),
        Command::NewApiKey => new_api_key(),
        Command::Audit { command } => audit(command),
        Command::Admin(args) => gerbang::admin_cli::run(args),
        Command::Explain {
            config,
            consumer,
            purpose,
            method,
            path,
        } => explain(&config, &consumer, purpose.as_deref(), &method, &path),
        Command::RotateKey { config, keys_dir } => rotate_key(&config, keys_dir),
        Command::Serve {
            config,
            listen,
            admin_listen,
        } => match load(
            &config,
            Overrides {
                listen,
                admin_listen,
                ..Default::default()
            },
        ) {
            Some(cfg) => serve(cfg, false),
            None => ExitCode::from(2),
        },
        Command::Demo {
            data_dir,
            listen,
            admin_listen,
            fresh,
        } => {
            let dir = data_dir.unwrap_or_else(|| std::env::temp_dir().join("gerbang-demo"));
            let file = match demo::prepare_data_dir(&dir, fresh) {
                Ok(f) => f,
                Err(e) => {
                    eprintln!(
                        "cannot prepare the demo data directory {}: {e}",
                        dir.display()
                    );
                    return ExitCode::from(2);
                }
            };
            let overrides = Overrides {
                listen: Some(listen),
                admin_listen: Some(admin_listen),
                ..Default::default()
            };
            match load(&file, overrides) {
                Some(cfg) => serve(cfg, true),
                None => {
                    eprintln!(
                        "the demo configuration in {} is not valid (edited, or from an older \
                         version): `gerbang demo --fresh` copies the shipped example again",
                        dir.display()
                    );
                    ExitCode::from(2)
                }
            }
        }
    }
}

fn hash_secret() -> ExitCode {
    let mut line = String::new();
    if let Err(e) = std::io::stdin().read_line(&mut line) {
        eprintln!("cannot read the secret from standard input: {e}");
        return ExitCode::from(2);
    }
    let secret = line.trim_end_matches(['\r', '\n']);
    match gerbang_auth::secret::hash_secret(secret) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

fn explain(
    file: &std::path::Path,
    consumer: &str,
    purpose: Option<&str>,
    method: &str,
    path: &str,
) -> ExitCode {
    let cfg = match config::load(file, &Overrides::default()) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(2);
        }
    };
    let Some((agency, _)) = consumer.split_once('/') else {
        eprintln!("--consumer must be an application id, agency/app");
        return ExitCode::from(2);
    };
    if cfg
        .registry
        .application(agency, consumer.split_once('/').map_or("", |c| c.1))
        .is_none()
    {
        // Authentication comes before routing and policy: no agreement can allow it.
        println!("decision: DENY (unknown application)");
        println!(
            "  `{consumer}` is not a registered application; the gateway refuses its \
             credentials at authentication (401) before any agreement is considered"
        );
        return ExitCode::from(3);
    }
    let normalized = match gerbang_proxy::path::normalize(path.split('?').next().unwrap_or(path)) {
        Ok(n) => n,
        Err(e) => {
            println!(
                "decision: DENY before policy: the gateway refuses this path ({})",
                e.code()
            );
            return ExitCode::from(3);
        }
    };
    let Some((prov_agency, service, rest)) = normalized.route_parts() else {
        println!("decision: DENY before policy: the path names no /{{agency}}/{{service}}");
        return ExitCode::from(3);
    };
    let service_id = format!("{prov_agency}/{service}");
    if cfg.registry.lookup(prov_agency, service).is_err() {
        println!("decision: DENY before policy: `{service_id}` is not a registered service (404)");
        return ExitCode::from(3);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let req = gerbang_policy::Request {
        application: consumer,
        agency,
        service: &service_id,
        method,
        path: if rest.is_empty() { "/" } else { rest },
        query: path.split_once('?').map(|(_, q)| q),
        purpose,
        now,
    };
    let policy = &cfg.policy;
    let e = policy.explain(&req);
    let name = |i: usize| policy.agreement(i).map_or("?", |a| a.id.as_str());
    let allowed = match e.decision.outcome {
        gerbang_policy::Outcome::Allow { agreement } => {
            println!("decision: ALLOW by agreement `{}`", name(agreement));
            if let Some(a) = policy.agreement(agreement) {
                println!("  title:        {}", a.title);
                println!("  legal basis:  {}", a.legal_basis);
                if !a.fields.is_empty() {
                    let f = &a.fields;
                    let list = |v: &[gerbang_policy::FieldPath]| {
                        v.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", ")
                    };
                    if !f.allow.is_empty() {
                        println!("  fields:       only {}", list(&f.allow));
                    }
                    if !f.deny.is_empty() {
                        println!("  fields:       drop {}", list(&f.deny));
                    }
                    for m in &f.mask {
                        println!(
                            "  fields:       mask {} (keep first {}, last {})",
                            m.path.as_str(),
                            m.keep_first,
                            m.keep_last
                        );
                    }
                }
                if let Some(r) = a.rate {
                    println!(
                        "  rate limit:   {} per {:?}, burst {} (per application)",
                        r.limit, r.per, r.burst
                    );
                }
                if let Some(q) = a.quota {
                    println!("  quota:        {} per {:?} (Asia/Jakarta)", q.limit, q.per);
                }
            }
            true
        }
        gerbang_policy::Outcome::Deny { reason, agreement } => {
            match agreement {
                Some(i) => println!(
                    "decision: DENY {} (agreement `{}`)",
                    reason.as_str(),
                    name(i)
                ),
                None => println!("decision: DENY {}", reason.as_str()),
            }
            println!("  {}", reason.message());
            false
        }
    };
    match e.decision.endpoint {
        Some(ep) => println!(
            "endpoint: {} ({}){}",
            ep.id,
            ep.classification.as_str(),
            ep.subject_param
                .as_deref()
                .map(|s| format!(", data subject `{s}`"))
                .unwrap_or_default()
        ),
        None => println!("endpoint: (the service declares no endpoints)"),
    }
    println!(
        "rule: agreements naming the application, then its agency, then `*`, ties by id; the first \
         that passes every check decides; otherwise the most specific one's reason is given"
    );
    if e.considered.is_empty() {
        println!("considered: none (no agreement of `{service_id}` names `{consumer}`, `{agency}` or `*`)");
    } else {
        println!("considered:");
        for (id, tier, result) in &e.considered {
            match result {
                None => println!("  {id:<32} via {tier:<11} passes"),
                Some(r) => println!("  {id:<32} via {tier:<11} fails: {}", r.as_str()),
            }
        }
    }
    if allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    }
}

/// One replica's log: its name (from its seals, else its directory) and where things are.
struct ReplicaDirs {
    name: String,
    dirs: config::AuditDirs,
}

/// The logs an audit command reads, from `--data-dir` (one or several data directories, or a
/// directory of them) or `--config`, and the directories where the shared subject key may be.
/// A directory without an audit log is refused with where it looked and, when a subdirectory
/// has one (the directory given to `gerbang demo --data-dir` holds the gateway's data directory
/// `data/`), which one was probably meant.
fn audit_dirs(source: AuditSource) -> Result<(Vec<ReplicaDirs>, Vec<PathBuf>), String> {
    let mut key_dirs: Vec<PathBuf> = source.keys_dir.iter().cloned().collect();
    let mut logs = Vec::new();
    let of_data_dir = |dir: PathBuf, keys_dir: &Option<PathBuf>| config::AuditDirs {
        audit_dir: dir.join("audit"),
        keys_dir: keys_dir.clone().unwrap_or_else(|| dir.join("keys")),
        seal_dir: config::seal_dir_of(&dir),
        data_dir: dir,
    };
    match (source.data_dir.is_empty(), source.config) {
        (true, Some(file)) => {
            let dirs = config::audit_dirs_of(&file)?;
            key_dirs.push(dirs.keys_dir.clone());
            logs.push(dirs);
        }
        (false, None) => {
            for dir in source.data_dir {
                key_dirs.push(dir.join("keys"));
                if dir.join("audit").is_dir() {
                    logs.push(of_data_dir(dir, &source.keys_dir));
                    continue;
                }
                // A directory of replicas' data directories: no configuration of its own, or
                // several logs below it.
                let subs = replica_subdirs(&dir);
                if !subs.is_empty() && (subs.len() > 1 || !dir.join("gerbang.toml").is_file()) {
                    for sub in subs {
                        logs.push(of_data_dir(sub, &source.keys_dir));
                    }
                    continue;
                }
                return Err(no_audit_log(&of_data_dir(dir, &source.keys_dir)));
            }
        }
        (false, Some(_)) => return Err("give --data-dir DIR or --config FILE, not both".into()),
        (true, None) => return Err("give --data-dir DIR or --config FILE".to_owned()),
    }
    let mut out: Vec<ReplicaDirs> = Vec::new();
    for dirs in logs {
        if !dirs.audit_dir.is_dir() {
            return Err(no_audit_log(&dirs));
        }
        key_dirs.push(dirs.seal_dir.clone());
        let name = gerbang_audit::replica_of(&dirs.audit_dir)
            .ok()
            .flatten()
            .unwrap_or_else(|| {
                dirs.data_dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| dirs.data_dir.display().to_string())
            });
        if out.iter().any(|o| o.dirs.audit_dir == dirs.audit_dir) {
            continue;
        }
        out.push(ReplicaDirs { name, dirs });
    }
    key_dirs.dedup();
    Ok((out, key_dirs))
}

/// The subdirectories of `dir` that hold an audit log, sorted.
fn replica_subdirs(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut subs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.join("audit").is_dir())
                .collect()
        })
        .unwrap_or_default();
    subs.sort();
    subs
}

/// Why `dirs` has no log, with the directory probably meant.
fn no_audit_log(dirs: &config::AuditDirs) -> String {
    let dir = &dirs.data_dir;
    let mut hint = String::new();
    if dir.is_dir() {
        if let Some(sub) = replica_subdirs(dir).first() {
            hint = format!("; did you mean --data-dir {}?", sub.display());
        }
        if dir.join("gerbang.toml").is_file() {
            hint.push_str(&format!(
                " ({} is a configuration directory: `--config {}` finds its log)",
                dir.display(),
                dir.join("gerbang.toml").display()
            ));
        }
    } else {
        hint = "; it does not exist or cannot be read".to_owned();
    }
    format!(
        "{} has no audit log: looked for the directory {}, which is missing{hint}",
        dir.display(),
        dirs.audit_dir.display()
    )
}

/// A replica's seal public key: `public_key`, else `audit-seal.pub` of its own key directory
/// (`<data_dir>/keys`), else of the shared keys directory (where earlier versions kept it).
fn seal_public_key(dirs: &config::AuditDirs, public_key: Option<PathBuf>) -> Option<Vec<u8>> {
    let key_file = public_key.unwrap_or_else(|| {
        let own = dirs.seal_dir.join(config::SEAL_PUBLIC_FILE);
        let shared = dirs.keys_dir.join(config::SEAL_PUBLIC_FILE);
        if own.is_file() || !shared.is_file() {
            own
        } else {
            shared
        }
    });
    let key = std::fs::read_to_string(&key_file)
        .ok()
        .and_then(|t| hex::decode(t.trim()).ok());
    if key.is_none() {
        eprintln!(
            "cannot read the seal public key (hex) from {} (the log is in {}); give it with \
             --public-key FILE",
            key_file.display(),
            dirs.audit_dir.display()
        );
    }
    key
}

/// The shared subject key: the first `audit-subject.key` of `key_dirs`.
fn subject_key(key_dirs: &[PathBuf]) -> Result<gerbang_audit::SubjectKey, String> {
    for dir in key_dirs {
        let file = dir.join(config::SUBJECT_KEY_FILE);
        if let Ok(text) = std::fs::read_to_string(&file) {
            return gerbang_audit::SubjectKey::from_hex(&text)
                .map_err(|e| format!("{}: {e}", file.display()));
        }
    }
    Err(format!(
        "cannot read the subject key ({}) from {}; give the shared keys directory with \
         --keys-dir DIR",
        config::SUBJECT_KEY_FILE,
        key_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// The one log of `logs`, for commands that read one chain (anchors are per chain).
fn one_log(logs: Vec<ReplicaDirs>, what: &str) -> Result<config::AuditDirs, String> {
    let n = logs.len();
    match logs.into_iter().next() {
        Some(l) if n == 1 => Ok(l.dirs),
        _ => Err(format!(
            "{what} reads one replica's log at a time (anchors are per chain); {n} were given"
        )),
    }
}

/// Reads `--anchors FILE` (JSON Lines).
fn read_anchors(file: &std::path::Path) -> Result<Vec<gerbang_audit::Anchor>, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str::<gerbang_audit::Anchor>(line)
                .map_err(|e| format!("{}:{}: not an anchor: {e}", file.display(), i + 1))
        })
        .collect()
}

/// Verifies one replica's chain and prints the outcome (`prefix` names the replica when several
/// are checked). Returns whether it is intact.
fn verify_one(
    dirs: &config::AuditDirs,
    key: &[u8],
    pinned: &[gerbang_audit::Anchor],
    prefix: &str,
) -> bool {
    match gerbang_audit::verify_with_anchors(&dirs.audit_dir, key, pinned) {
        Ok(v) => {
            println!(
                "{prefix}audit log intact: {} file(s), {} record(s), {} seal(s); {} record(s) after the last seal",
                v.files, v.records, v.seals, v.unsealed
            );
            if !pinned.is_empty() {
                println!("{prefix}passes through all {} anchor(s)", pinned.len());
            }
            if v.replicas.len() > 1 {
                println!(
                    "{prefix}note: the seals name several replicas ({}): the data directory moved to another replica id",
                    v.replicas.join(", ")
                );
            }
            if let Some((file, line)) = v.torn_tail {
                println!(
                    "{prefix}note: {}:{line} is an incomplete last line (a crash while writing), not tampering; the gateway cuts it and records a recovery on its next start",
                    file.display()
                );
            }
            true
        }
        Err(e) => {
            println!("{prefix}audit log NOT intact: {e}");
            false
        }
    }
}

fn audit(command: AuditCommand) -> ExitCode {
    let fail = |e: String| {
        eprintln!("{e}");
        ExitCode::from(2)
    };
    match command {
        AuditCommand::Anchor { source, public_key } => {
            let dirs = match audit_dirs(source).and_then(|(logs, _)| one_log(logs, "anchor")) {
                Ok(d) => d,
                Err(e) => return fail(e),
            };
            let Some(key) = seal_public_key(&dirs, public_key) else {
                return ExitCode::from(2);
            };
            match gerbang_audit::verify(&dirs.audit_dir, &key) {
                Ok(v) => match v.last_seal {
                    Some(a) => {
                        println!("{}", serde_json::to_string(&a).unwrap_or_default());
                        ExitCode::SUCCESS
                    }
                    None => {
                        eprintln!("the log has no seal yet");
                        ExitCode::from(1)
                    }
                },
                Err(e) => {
                    eprintln!("audit log NOT intact: {e}");
                    ExitCode::from(1)
                }
            }
        }
        AuditCommand::Verify {
            source,
            public_key,
            anchors,
        } => {
            let logs = match audit_dirs(source) {
                Ok((logs, _)) => logs,
                Err(e) => return fail(e),
            };
            if logs.len() > 1 && (public_key.is_some() || anchors.is_some()) {
                return fail(
                    "--public-key and --anchors belong to one replica's log: verify that one alone"
                        .into(),
                );
            }
            let pinned = match anchors.as_deref().map(read_anchors).transpose() {
                Ok(p) => p.unwrap_or_default(),
                Err(e) => return fail(e),
            };
            let several = logs.len() > 1;
            let mut intact = 0usize;
            for log in &logs {
                let prefix = if several {
                    format!("replica {} ({}): ", log.name, log.dirs.data_dir.display())
                } else {
                    String::new()
                };
                let Some(key) = seal_public_key(&log.dirs, public_key.clone()) else {
                    if several {
                        println!("{prefix}audit log NOT verified: no seal public key");
                        continue;
                    }
                    return ExitCode::from(2);
                };
                if verify_one(&log.dirs, &key, &pinned, &prefix) {
                    intact += 1;
                }
            }
            if several {
                println!("{intact} of {} replica log(s) intact", logs.len());
            }
            if intact == logs.len() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        AuditCommand::Query {
            source,
            subject,
            consumer,
            service,
            since,
            until,
            json,
        } => {
            let (logs, key_dirs) = match audit_dirs(source) {
                Ok(d) => d,
                Err(e) => return fail(e),
            };
            let key = match subject_key(&key_dirs) {
                Ok(k) => k,
                Err(e) => return fail(e),
            };
            let filter = gerbang_audit::Filter {
                subject,
                consumer,
                service,
                since,
                until,
            };
            let several = logs.len() > 1;
            let result = if several {
                let logs: Vec<gerbang_audit::ReplicaLog> = logs
                    .iter()
                    .map(|l| gerbang_audit::ReplicaLog {
                        replica: l.name.clone(),
                        dir: l.dirs.audit_dir.clone(),
                    })
                    .collect();
                gerbang_audit::query_many(&logs, &filter, &key)
            } else {
                let dir = logs
                    .first()
                    .map(|l| l.dirs.audit_dir.clone())
                    .unwrap_or_default();
                gerbang_audit::query(&dir, &filter, &key)
            };
            let records = match result {
                Ok(r) => r,
                Err(e) => return fail(format!("cannot read the audit log: {e}")),
            };
            let s = |v: &serde_json::Value, k: &str| match &v[k] {
                serde_json::Value::Null => "-".to_owned(),
                serde_json::Value::String(t) => t.clone(),
                other => other.to_string(),
            };
            if json {
                for r in &records {
                    println!("{r}");
                }
            } else {
                let replica = |r: &serde_json::Value| {
                    if several {
                        format!("{:<16} ", s(r, "replica"))
                    } else {
                        String::new()
                    }
                };
                println!(
                    "{:<24} {}{:<20} {:<20} {:<24} {:>6} {:<8} {:<30} {:<22}",
                    "time",
                    if several {
                        format!("{:<16} ", "replica")
                    } else {
                        String::new()
                    },
                    "consumer",
                    "service",
                    "endpoint",
                    "status",
                    "decision",
                    "agreement",
                    "purpose"
                );
                for r in &records {
                    println!(
                        "{:<24} {}{:<20} {:<20} {:<24} {:>6} {:<8} {:<30} {:<22}",
                        s(r, "time"),
                        replica(r),
                        s(r, "consumer"),
                        s(r, "service"),
                        s(r, "endpoint"),
                        s(r, "status"),
                        s(r, "decision"),
                        s(r, "agreement"),
                        s(r, "purpose")
                    );
                }
                if several {
                    println!(
                        "{} record(s) from {} replica log(s)",
                        records.len(),
                        logs.len()
                    );
                } else {
                    println!("{} record(s)", records.len());
                }
            }
            ExitCode::SUCCESS
        }
    }
}

fn new_api_key() -> ExitCode {
    match gerbang_auth::apikey::generate() {
        Some((key, digest)) => {
            println!("key:    {key}");
            println!("digest: {digest}");
            eprintln!(
                "Give the key to the application once (it is not stored anywhere); put the \
                 digest in its registry entry: api_keys = [{{ digest = \"{digest}\" }}]"
            );
            ExitCode::SUCCESS
        }
        None => {
            eprintln!("the system's random number generator failed");
            ExitCode::from(1)
        }
    }
}

fn rotate_key(file: &std::path::Path, shared: Option<PathBuf>) -> ExitCode {
    // Where the keys go: the shared directory alone, or the configuration's keys directory and
    // this node's own seal key.
    let (dir, seal_dir, delay) = match shared {
        Some(dir) => (dir, None, None),
        None => {
            let dirs = match config::audit_dirs_of(file) {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            let delay = match config::key_activation_delay_of(file) {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            // A seal key that earlier versions put in the keys directory stays in use (it
            // verifies the existing log): no second one.
            let legacy = dirs.keys_dir.join(config::SEAL_KEY_FILE).exists();
            let seal_dir = (!legacy).then_some(dirs.seal_dir);
            (dirs.keys_dir, seal_dir, Some(delay))
        }
    };
    let path = match config::create_signing_key(&dir) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("cannot write a key in {}: {e}", dir.display());
            return ExitCode::from(1);
        }
    };
    println!("{}", path.display());
    let shown_delay = delay.unwrap_or(std::time::Duration::from_secs(300));
    match config::newest_key_activation(&dir, shown_delay) {
        Ok(None) => eprintln!("new signing key written; it is the first key: it signs at once"),
        Ok(Some(at)) => eprintln!(
            "new signing key written; running gateways publish it within auth.keys_poll_interval \
             and sign with it from {} (auth.key_activation_delay{} after its creation)",
            gerbang_audit::chain::rfc3339(at),
            if delay.is_some() {
                String::new()
            } else {
                " of 5m, the default; a configuration that sets another delay shifts this".into()
            }
        ),
        Err(e) => eprintln!(
            "new signing key written; cannot read {} back: {e}",
            dir.display()
        ),
    }
    let mut created = Vec::new();
    match config::ensure_subject_key(&dir) {
        Ok(c) => created.extend(c),
        Err(e) => {
            eprintln!(
                "cannot create the audit subject key in {}: {e}",
                dir.display()
            );
            return ExitCode::from(1);
        }
    }
    if let Some(seal_dir) = seal_dir {
        match config::ensure_seal_key(&seal_dir) {
            Ok((_, c)) => created.extend(c),
            Err(e) => {
                eprintln!(
                    "cannot create the audit seal key in {}: {e}",
                    seal_dir.display()
                );
                return ExitCode::from(1);
            }
        }
    }
    for p in created {
        eprintln!("audit key created: {}", p.display());
    }
    ExitCode::SUCCESS
}

fn bench_upstream(listen: std::net::SocketAddr) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("cannot listen on {listen}: {e}");
                return ExitCode::from(1);
            }
        };
        let backend = demo::Backend::new(demo::Kind::Fixed, "bench");
        demo::serve_backend(listener, backend, gerbang::run::termination_signal()).await;
        ExitCode::SUCCESS
    })
}

fn validate(file: &std::path::Path) -> ExitCode {
    match config::load(file, &Overrides::default()) {
        Ok(cfg) => {
            for w in &cfg.warnings {
                eprintln!("warning: {w}");
            }
            let r = &cfg.registry;
            println!(
                "{}: configuration is valid ({} agencies, {} applications, {} services, {} agreements)",
                file.display(),
                r.agencies().count(),
                r.applications().len(),
                r.services().len(),
                cfg.policy.agreements().len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprint!("{e}");
            ExitCode::from(1)
        }
    }
}

fn load(file: &std::path::Path, overrides: Overrides) -> Option<Config> {
    match config::load(file, &overrides) {
        Ok(c) => Some(c),
        Err(e) => {
            eprint!("refusing to start: {e}");
            None
        }
    }
}

fn serve(cfg: Config, with_demo_backends: bool) -> ExitCode {
    gerbang::init_logging(&cfg.log);
    for w in &cfg.warnings {
        tracing::warn!(problem = %w, "configuration warning");
    }
    let mut rt = match cfg.worker_threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if n > 1 {
                b.worker_threads(n);
            }
            b
        }
    };
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async move {
        // Before anything starts: SIGTERM from now on drains instead of killing.
        let terminated = gerbang::run::termination_signal();
        let mut backends = Vec::new();
        if with_demo_backends {
            match start_demo_backends(&cfg).await {
                Ok(b) => backends = b,
                Err(e) => {
                    eprintln!("cannot start the demo backends: {e}");
                    return ExitCode::from(1);
                }
            }
        }
        let file = cfg.file.clone();
        let audit_commands = demo::audit_commands(&cfg);
        let running = match gerbang::start(cfg).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(1);
            }
        };
        if with_demo_backends {
            print_demo_banner(&file, &running, &backends, &audit_commands);
        }
        let outcome = running.run_until(terminated).await;
        tracing::info!(?outcome, "stopped");
        ExitCode::SUCCESS
    })
}

/// (service, instance, address) of each demo backend started.
type BackendList = Vec<(String, String, std::net::SocketAddr)>;

async fn start_demo_backends(cfg: &Config) -> Result<BackendList, String> {
    let mut started = Vec::new();
    for service in cfg.registry.services() {
        let full = service.full_id().to_owned();
        let Some(kind) = demo::Kind::for_service(&full) else {
            continue;
        };
        for instance in &service.instances {
            let addr: std::net::SocketAddr = instance
                .authority
                .as_str()
                .parse()
                .map_err(|_| format!("{full}: instance {} is not an IP:port", instance.name))?;
            if !addr.ip().is_loopback() {
                return Err(format!(
                    "{full}: demo backends only listen on loopback, not {addr}"
                ));
            }
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("{full}: cannot listen on {addr}: {e}"))?;
            let backend = demo::Backend::new(kind, &instance.name);
            tokio::spawn(demo::serve_backend(
                listener,
                backend,
                std::future::pending(),
            ));
            started.push((full.clone(), instance.name.clone(), addr));
        }
    }
    Ok(started)
}

fn print_demo_banner(
    file: &std::path::Path,
    running: &gerbang::Running,
    backends: &BackendList,
    audit_commands: &[String],
) {
    let gw = running.data_addr;
    println!();
    println!("Gerbang demo is running (all data is fictional).");
    println!("  configuration  {}", file.display());
    println!("  data plane     http://{gw}");
    println!(
        "  admin          http://{}/health/ready",
        running.admin_addr
    );
    println!("  backends:");
    for (svc, inst, addr) in backends {
        println!("    {svc:<20} {inst:<12} http://{addr}");
    }
    println!();
    println!(
        "Demo credentials (demo only): client secrets demo-secret-simpus, -esppt, -siak, -portal."
    );
    println!("Try:");
    println!("  TOKEN=$(curl -s -u 'dinkes%2Fsimpus:demo-secret-simpus' -d grant_type=client_credentials \\");
    println!(
        "          http://{gw}/oauth/token | sed -E 's/.*\"access_token\":\"([^\"]+)\".*/\\1/')"
    );
    println!("  curl -i -H \"Authorization: Bearer $TOKEN\" -H 'X-Gerbang-Purpose: pelayanan-kesehatan' \\");
    println!("          http://{gw}/dukcapil/penduduk/penduduk/3603011505900001   # NIK masked by the agreement");
    println!("  curl -s -H \"Authorization: Bearer $TOKEN\" http://{gw}/dinkes/faskes/faskes");
    println!("  curl -s -H \"Authorization: Bearer $TOKEN\" -X POST --data 'halo' 'http://{gw}/diskominfo/echo/apa/saja?x=1'");
    println!("  curl -s -H \"Authorization: Bearer $TOKEN\" http://{gw}/bapenda/pbb/pbb/360301000100200300   # 403 no_agreement");
    println!("  curl -s http://{gw}/diskominfo/echo/x           # no token: 401 JSON error");
    println!("  curl -s http://{gw}/.well-known/jwks.json       # keys to verify tokens and X-Gerbang-Assertion");
    println!(
        "  curl -s http://{}/metrics                # Prometheus metrics",
        running.admin_addr
    );
    println!(
        "Console: http://{}/console/ (the example configuration's admin token: demo-admin-token)",
        running.admin_addr
    );
    println!("Audit log (every call; the NIK only as a keyed hash):");
    for c in audit_commands {
        println!("  {c}");
    }
    println!();
    println!("Press Ctrl-C to stop.");
}
