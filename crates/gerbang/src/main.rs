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

/// Where an audit command reads the log: a data directory, or the configuration that names it.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct AuditSource {
    /// The gateway's data directory (`paths.data_dir`: the log in `audit/`, keys in `keys/`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The gateway's main configuration file: the log and keys where `serve` would put them.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check every file, link and seal; name the first bad record. Exit 0 when intact, 1 when
    /// tampered with or incomplete.
    Verify {
        #[command(flatten)]
        source: AuditSource,
        /// The seal public key (hex); default: keys/audit-seal.pub in the data directory. Keep
        /// a copy outside the gateway's host: a key read from the same disk as the log proves
        /// less.
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
    /// Create a new signing key for the built-in token issuer in the configured key directory.
    /// The new key signs from the next start; older keys stay published in the JWKS until no
    /// token they signed can still be valid.
    RotateKey {
        #[arg(long, short, default_value = "/etc/gerbang/gerbang.toml")]
        config: PathBuf,
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
        Command::RotateKey { config } => rotate_key(&config),
        Command::Serve {
            config,
            listen,
            admin_listen,
        } => match load(
            &config,
            Overrides {
                listen,
                admin_listen,
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

/// The log's directory and its key directory, from `--data-dir` or `--config`; a directory
/// without an audit log is refused with where it looked and, when a subdirectory has one (the
/// directory given to `gerbang demo --data-dir` holds the gateway's data directory `data/`),
/// which one was probably meant.
fn audit_dirs(source: AuditSource) -> Result<config::AuditDirs, String> {
    let dirs = match (source.data_dir, source.config) {
        (_, Some(file)) => config::audit_dirs_of(&file)?,
        (Some(dir), None) => config::AuditDirs {
            audit_dir: dir.join("audit"),
            keys_dir: dir.join("keys"),
            data_dir: dir,
        },
        (None, None) => return Err("give --data-dir DIR or --config FILE".to_owned()),
    };
    if dirs.audit_dir.is_dir() {
        return Ok(dirs);
    }
    let dir = &dirs.data_dir;
    let mut hint = String::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut subs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("audit").is_dir())
            .collect();
        subs.sort();
        if let Some(sub) = subs.first() {
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
    Err(format!(
        "{} has no audit log: looked for the directory {}, which is missing{hint}",
        dir.display(),
        dirs.audit_dir.display()
    ))
}

/// The seal public key: `public_key`, or the one in the key directory.
fn seal_public_key(dirs: &config::AuditDirs, public_key: Option<PathBuf>) -> Option<Vec<u8>> {
    let key_file = public_key.unwrap_or_else(|| dirs.keys_dir.join(config::SEAL_PUBLIC_FILE));
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

fn audit(command: AuditCommand) -> ExitCode {
    match command {
        AuditCommand::Anchor { source, public_key } => {
            let dirs = match audit_dirs(source) {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
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
            let dirs = match audit_dirs(source) {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            let Some(key) = seal_public_key(&dirs, public_key) else {
                return ExitCode::from(2);
            };
            let mut pinned = Vec::new();
            if let Some(file) = anchors {
                let text = match std::fs::read_to_string(&file) {
                    Ok(t) => t,
                    Err(e) => {
                        eprintln!("cannot read {}: {e}", file.display());
                        return ExitCode::from(2);
                    }
                };
                for (i, line) in text
                    .lines()
                    .enumerate()
                    .filter(|(_, l)| !l.trim().is_empty())
                {
                    match serde_json::from_str::<gerbang_audit::Anchor>(line) {
                        Ok(a) => pinned.push(a),
                        Err(e) => {
                            eprintln!("{}:{}: not an anchor: {e}", file.display(), i + 1);
                            return ExitCode::from(2);
                        }
                    }
                }
            }
            match gerbang_audit::verify_with_anchors(&dirs.audit_dir, &key, &pinned) {
                Ok(v) => {
                    println!(
                        "audit log intact: {} file(s), {} record(s), {} seal(s); {} record(s) after the last seal",
                        v.files, v.records, v.seals, v.unsealed
                    );
                    if !pinned.is_empty() {
                        println!("passes through all {} anchor(s)", pinned.len());
                    }
                    if let Some((file, line)) = v.torn_tail {
                        println!(
                            "note: {}:{line} is an incomplete last line (a crash while writing), not tampering; the gateway cuts it and records a recovery on its next start",
                            file.display()
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    println!("audit log NOT intact: {e}");
                    ExitCode::from(1)
                }
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
            let dirs = match audit_dirs(source) {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            let key_file = dirs.keys_dir.join(config::SUBJECT_KEY_FILE);
            let key = match std::fs::read_to_string(&key_file)
                .ok()
                .and_then(|t| gerbang_audit::SubjectKey::from_hex(&t).ok())
            {
                Some(k) => k,
                None => {
                    eprintln!("cannot read the subject key from {}", key_file.display());
                    return ExitCode::from(2);
                }
            };
            let filter = gerbang_audit::Filter {
                subject,
                consumer,
                service,
                since,
                until,
            };
            let records = match gerbang_audit::query(&dirs.audit_dir, &filter, &key) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("cannot read the audit log: {e}");
                    return ExitCode::from(2);
                }
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
                println!(
                    "{:<24} {:<20} {:<20} {:<24} {:>6} {:<8} {:<30} {:<22}",
                    "time",
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
                        "{:<24} {:<20} {:<20} {:<24} {:>6} {:<8} {:<30} {:<22}",
                        s(r, "time"),
                        s(r, "consumer"),
                        s(r, "service"),
                        s(r, "endpoint"),
                        s(r, "status"),
                        s(r, "decision"),
                        s(r, "agreement"),
                        s(r, "purpose")
                    );
                }
                println!("{} record(s)", records.len());
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

fn rotate_key(file: &std::path::Path) -> ExitCode {
    let dir = match config::keys_dir_of(file) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match config::create_signing_key(&dir) {
        Ok(path) => {
            println!("{}", path.display());
            eprintln!("new signing key written; it signs from the next start");
            match config::ensure_audit_keys(&dir) {
                Ok(created) => {
                    for p in created {
                        eprintln!("audit key created: {}", p.display());
                    }
                }
                Err(e) => {
                    eprintln!("cannot create the audit keys in {}: {e}", dir.display());
                    return ExitCode::from(1);
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cannot write a key in {}: {e}", dir.display());
            ExitCode::from(1)
        }
    }
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
    println!("Audit log (every call; the NIK only as a keyed hash):");
    for c in audit_commands {
        println!("  {c}");
    }
    println!();
    println!("Press Ctrl-C to stop.");
}
