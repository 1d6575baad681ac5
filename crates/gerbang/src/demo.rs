//! `gerbang demo`: fictional agency (OPD) backends in this process, and the gateway in front of
//! them on the example configuration. Every record is made up, and says so.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_lc_rs::digest::{digest, Context, SHA256};
use bytes::Bytes;
use gerbang_proxy::response_body::{self, ResponseBody};
use gerbang_proxy::server::Handler;
use gerbang_proxy::{ConnInfo, ListenerSettings};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// The example configuration shipped in `config/`, copied into the demo's data directory.
pub const EXAMPLE_FILES: &[(&str, &str)] = &[
    ("gerbang.toml", include_str!("../../../config/gerbang.toml")),
    (
        "registry/dukcapil.toml",
        include_str!("../../../config/registry/dukcapil.toml"),
    ),
    (
        "registry/dinkes.toml",
        include_str!("../../../config/registry/dinkes.toml"),
    ),
    (
        "registry/bapenda.toml",
        include_str!("../../../config/registry/bapenda.toml"),
    ),
    (
        "registry/diskominfo.toml",
        include_str!("../../../config/registry/diskominfo.toml"),
    ),
    (
        "agreements/bapenda.toml",
        include_str!("../../../config/agreements/bapenda.toml"),
    ),
    (
        "agreements/dinkes.toml",
        include_str!("../../../config/agreements/dinkes.toml"),
    ),
    (
        "agreements/diskominfo.toml",
        include_str!("../../../config/agreements/diskominfo.toml"),
    ),
    (
        "agreements/dukcapil.toml",
        include_str!("../../../config/agreements/dukcapil.toml"),
    ),
];

/// Writes the example configuration into `dir` unless it already holds one (then the admin's
/// earlier changes are kept). Returns the path of `gerbang.toml`.
pub fn prepare_data_dir(dir: &Path, fresh: bool) -> std::io::Result<PathBuf> {
    let main = dir.join("gerbang.toml");
    if main.exists() && !fresh {
        ensure_signing_key(&main)?;
        return Ok(main);
    }
    for (name, text) in EXAMPLE_FILES {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, text)?;
    }
    ensure_signing_key(&main)?;
    Ok(main)
}

/// Creates the built-in issuer's first signing key when the configured key directory has none
/// (the demo's "generate on first start"; `gerbang serve` refuses to start instead).
pub fn ensure_signing_key(main: &Path) -> std::io::Result<()> {
    let dir = crate::config::keys_dir_of(main).map_err(std::io::Error::other)?;
    let has_key = std::fs::read_dir(&dir).is_ok_and(|entries| {
        entries
            .filter_map(|e| e.ok())
            .any(|e| e.path().extension().is_some_and(|x| x == "pem"))
    });
    if !has_key {
        crate::config::create_signing_key(&dir)?;
    }
    crate::config::ensure_audit_keys(&dir)?;
    Ok(())
}

/// The `gerbang audit` commands for the log of the configuration `cfg`, as a user types them
/// (the demo prints them): by configuration file, which finds the log wherever `audit.dir`
/// and `auth.keys_dir` put it, and by data directory when the log and keys are in its
/// `audit/` and `keys/`. Empty when the audit log is off.
pub fn audit_commands(cfg: &crate::config::Config) -> Vec<String> {
    let Some(audit) = &cfg.audit else {
        return Vec::new();
    };
    let file = shell_word(&cfg.file);
    let mut out = vec![
        format!("gerbang audit verify --config {file}      # every link and seal checked"),
        format!(
            "gerbang audit query --config {file} --subject 3603011505900001   # who saw this NIK"
        ),
        format!("gerbang audit anchor --config {file}      # the latest seal, to keep elsewhere"),
    ];
    if audit.dir == cfg.data_dir.join("audit") && cfg.keys_dir == cfg.data_dir.join("keys") {
        out.push(format!(
            "gerbang audit verify --data-dir {}",
            shell_word(&cfg.data_dir)
        ));
    }
    out
}

/// `path` as one shell word: as is when it is plain, else in single quotes.
fn shell_word(path: &Path) -> String {
    let s = path.display().to_string();
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:=@%,".contains(&b))
    {
        s
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Which fictional backend a demo service runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `dukcapil/penduduk`: population registry.
    Penduduk,
    /// `dinkes/faskes`: public list of health facilities.
    Faskes,
    /// `bapenda/pbb`: property tax.
    Pbb,
    /// `diskominfo/echo`: describes the request it received.
    Echo,
    /// A fixed 1 KiB JSON answer to anything: the upstream of the load benchmark.
    Fixed,
}

impl Kind {
    /// The backend for a demo service id (`agency/service`).
    pub fn for_service(full_id: &str) -> Option<Kind> {
        match full_id {
            "dukcapil/penduduk" => Some(Kind::Penduduk),
            "dinkes/faskes" => Some(Kind::Faskes),
            "bapenda/pbb" => Some(Kind::Pbb),
            "diskominfo/echo" => Some(Kind::Echo),
            _ => None,
        }
    }
}

/// One fictional backend instance.
pub struct Backend {
    kind: Kind,
    instance: HeaderValue,
}

impl Backend {
    pub fn new(kind: Kind, instance: &str) -> Self {
        Self {
            kind,
            instance: HeaderValue::from_str(instance)
                .unwrap_or_else(|_| HeaderValue::from_static("demo")),
        }
    }

    async fn respond(&self, req: Request<Incoming>) -> Response<ResponseBody> {
        if req.uri().path() == "/health" && self.kind != Kind::Fixed {
            // The target of the gateway's active health checks.
            let mut res = Response::new(response_body::full(Bytes::from_static(
                b"{\"status\":\"ok\"}",
            )));
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            res.headers_mut()
                .insert("x-demo-instance", self.instance.clone());
            return res;
        }
        if self.kind == Kind::Fixed {
            // `/penduduk/...`: a 1 KiB citizen record (for the masked route's benchmark).
            let body = if req.uri().path().starts_with("/penduduk/") {
                FIXED_RECORD
            } else {
                FIXED_BODY
            };
            let mut res = Response::new(response_body::full(Bytes::from_static(body)));
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return res;
        }
        let (status, value) = match self.kind {
            Kind::Fixed => (StatusCode::OK, Value::Null),
            Kind::Echo => echo(req).await,
            Kind::Penduduk => penduduk(&req),
            Kind::Faskes => faskes(&req),
            Kind::Pbb => pbb(&req),
        };
        let mut res = Response::new(response_body::full(Bytes::from(value.to_string())));
        *res.status_mut() = status;
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        res.headers_mut()
            .insert("x-demo-instance", self.instance.clone());
        res
    }
}

impl Handler for Backend {
    async fn call(
        self: Arc<Self>,
        req: Request<Incoming>,
        _conn: ConnInfo,
    ) -> Response<ResponseBody> {
        self.respond(req).await
    }
}

/// Serves `backend` on `listener` until `shutdown` completes.
pub async fn serve_backend(
    listener: TcpListener,
    backend: Backend,
    shutdown: impl Future<Output = ()>,
) {
    let settings = ListenerSettings {
        shutdown_grace: std::time::Duration::from_secs(1),
        ..ListenerSettings::default()
    };
    serve(listener, Arc::new(backend), settings, shutdown).await;
}

use gerbang_proxy::serve;

/// `head` (JSON up to an open string value) padded with `x` to 1024 bytes and closed.
const fn padded_1_kib(head: &[u8]) -> [u8; 1024] {
    let mut out = [b'x'; 1024];
    let mut i = 0;
    while i < head.len() {
        out[i] = head[i];
        i += 1;
    }
    out[1022] = b'"';
    out[1023] = b'}';
    out
}

/// Exactly 1024 bytes of JSON, like the reference benchmark's upstream.
const FIXED_BODY: &[u8] = &padded_1_kib(br#"{"status":"ok","service":"upstream","data":""#);

/// Exactly 1024 bytes of JSON: a fictional citizen record with the fields the demo's agreement
/// masks (`nik`) and denies (`status_perkawinan`), padded in `keterangan`.
const FIXED_RECORD: &[u8] = &padded_1_kib(
    br#"{"nik":"3603015505900001","nama":"SITI AMINAH (FIKTIF)","tempat_lahir":"TANGERANG","tanggal_lahir":"1990-05-15","jenis_kelamin":"P","alamat":{"jalan":"JL. MERDEKA NO. 17","rt":"003","rw":"005","kelurahan":"SUKAMAJU","kecamatan":"CIKUPA","kabupaten":"TANGERANG"},"agama":"ISLAM","status_perkawinan":"KAWIN","pekerjaan":"WIRASWASTA","kewarganegaraan":"WNI","keterangan":""#,
);

const NOTICE: &str = "FIKTIF: data contoh untuk demo Gerbang, bukan data warga sebenarnya";

fn not_found(what: &str) -> (StatusCode, Value) {
    (
        StatusCode::NOT_FOUND,
        json!({ "error": { "code": "not_found", "message": what } }),
    )
}

fn method_not_allowed() -> (StatusCode, Value) {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        json!({ "error": { "code": "method_not_allowed", "message": "only GET" } }),
    )
}

/// A number derived from `s`, to pick fictional values deterministically.
fn seed(s: &str) -> u64 {
    let h = digest(&SHA256, s.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_ref()[..8]);
    u64::from_be_bytes(b)
}

fn pick<'a>(list: &[&'a str], n: u64) -> &'a str {
    list.get((n % list.len() as u64) as usize)
        .copied()
        .unwrap_or("")
}

const GIVEN: &[&str] = &[
    "Siti", "Budi", "Ayu", "Agus", "Dewi", "Rudi", "Ratna", "Hendra", "Wulan", "Joko",
];
const FAMILY: &[&str] = &[
    "Rahmawati",
    "Santoso",
    "Lestari",
    "Saputra",
    "Handayani",
    "Wijaya",
    "Purnama",
    "Hidayat",
];
const PLACES: &[&str] = &[
    "Serang",
    "Pandeglang",
    "Lebak",
    "Tangerang",
    "Cilegon",
    "Rangkasbitung",
];
const STREETS: &[&str] = &[
    "Jl. Veteran",
    "Jl. Ahmad Yani",
    "Jl. Diponegoro",
    "Jl. Sudirman",
    "Jl. Kartini",
];
const JOBS: &[&str] = &[
    "Pegawai Swasta",
    "Wiraswasta",
    "Petani",
    "Guru",
    "Pelajar/Mahasiswa",
    "Nelayan",
];
const MARITAL: &[&str] = &["BELUM KAWIN", "KAWIN", "CERAI HIDUP"];

fn penduduk(req: &Request<Incoming>) -> (StatusCode, Value) {
    if req.method() != Method::GET {
        return method_not_allowed();
    }
    let Some(nik) = req.uri().path().strip_prefix("/penduduk/") else {
        return not_found("use GET /penduduk/{nik}");
    };
    if nik.len() != 16 || !nik.bytes().all(|b| b.is_ascii_digit()) {
        return not_found("no citizen with this NIK (a NIK has 16 digits)");
    }
    let n = seed(nik);
    // A NIK holds the birth date as DDMMYY at positions 7–12; women add 40 to the day.
    let day: u32 = nik[6..8].parse().unwrap_or(1);
    let month: u32 = nik[8..10].parse().unwrap_or(1);
    let year: u32 = nik[10..12].parse().unwrap_or(0);
    let (day, female) = if day > 40 {
        (day - 40, true)
    } else {
        (day, false)
    };
    let full_year = if year > 30 { 1900 + year } else { 2000 + year };
    let tanggal_lahir = if (1..=31).contains(&day) && (1..=12).contains(&month) {
        format!("{full_year:04}-{month:02}-{day:02}")
    } else {
        format!("{:04}-{:02}-{:02}", 1960 + n % 45, 1 + n % 12, 1 + n % 28)
    };
    let nama = format!("{} {}", pick(GIVEN, n), pick(FAMILY, n >> 8));
    (
        StatusCode::OK,
        json!({
            "nik": nik,
            "nama": nama,
            "jenis_kelamin": if female { "PEREMPUAN" } else { "LAKI-LAKI" },
            "tempat_lahir": pick(PLACES, n >> 16),
            "tanggal_lahir": tanggal_lahir,
            "alamat": format!("{} No. {}, {}", pick(STREETS, n >> 24), 1 + (n >> 32) % 120, pick(PLACES, n >> 40)),
            "status_perkawinan": pick(MARITAL, n >> 44),
            "pekerjaan": pick(JOBS, n >> 48),
            "keterangan": NOTICE,
        }),
    )
}

fn faskes(req: &Request<Incoming>) -> (StatusCode, Value) {
    if req.method() != Method::GET {
        return method_not_allowed();
    }
    if req.uri().path().trim_end_matches('/') != "/faskes" {
        return not_found("use GET /faskes");
    }
    (
        StatusCode::OK,
        json!({
            "keterangan": "FIKTIF: data contoh untuk demo Gerbang",
            "data": [
                { "kode": "P3601010101", "nama": "Puskesmas Serang Kota", "jenis": "puskesmas", "alamat": "Jl. Veteran No. 3", "telepon": "0254-000101" },
                { "kode": "P3601020202", "nama": "Puskesmas Ciruas", "jenis": "puskesmas", "alamat": "Jl. Raya Ciruas No. 12", "telepon": "0254-000202" },
                { "kode": "R3601000001", "nama": "RSUD Kabupaten (fiktif)", "jenis": "rumah_sakit", "alamat": "Jl. Ahmad Yani No. 1", "telepon": "0254-000001" },
                { "kode": "K3601000417", "nama": "Klinik Pratama Sehat Bersama", "jenis": "klinik", "alamat": "Jl. Kartini No. 17", "telepon": "0254-000417" }
            ]
        }),
    )
}

fn pbb(req: &Request<Incoming>) -> (StatusCode, Value) {
    if req.method() != Method::GET {
        return method_not_allowed();
    }
    let Some(nop) = req.uri().path().strip_prefix("/pbb/") else {
        return not_found("use GET /pbb/{nop}");
    };
    if nop.len() != 18 || !nop.bytes().all(|b| b.is_ascii_digit()) {
        return not_found("no tax object with this NOP (a NOP has 18 digits)");
    }
    let n = seed(nop);
    let land = 60 + n % 500;
    let building = (n >> 12) % 300;
    let njop = land * 1_250_000 + building * 3_400_000;
    (
        StatusCode::OK,
        json!({
            "nop": nop,
            "tahun_pajak": 2026,
            "nama_wajib_pajak": format!("{} {}", pick(GIVEN, n >> 20), pick(FAMILY, n >> 28)),
            "letak_objek": format!("{}, {}", pick(STREETS, n >> 36), pick(PLACES, n >> 40)),
            "luas_tanah_m2": land,
            "luas_bangunan_m2": building,
            "njop": njop,
            "pbb_terutang": njop / 1000,
            "status_bayar": if (n >> 50).is_multiple_of(3) { "BELUM LUNAS" } else { "LUNAS" },
            "keterangan": NOTICE,
        }),
    )
}

async fn echo(req: Request<Incoming>) -> (StatusCode, Value) {
    let (parts, mut incoming) = req.into_parts();
    let mut headers = serde_json::Map::new();
    for name in parts.headers.keys() {
        let joined = parts
            .headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(", ");
        headers.insert(name.as_str().to_owned(), Value::String(joined));
    }
    let mut hasher = Context::new(&SHA256);
    let mut bytes: u64 = 0;
    while let Some(frame) = incoming.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    bytes += data.len() as u64;
                    hasher.update(data);
                }
            }
            Err(e) => {
                return (
                    StatusCode::BAD_REQUEST,
                    json!({ "error": { "code": "body_failed", "message": e.to_string() } }),
                )
            }
        }
    }
    (
        StatusCode::OK,
        json!({
            "method": parts.method.as_str(),
            "path": parts.uri.path(),
            "query": parts.uri.query(),
            "headers": headers,
            "body_bytes": bytes,
            "body_sha256": hex::encode(hasher.finish()),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixed_bodies_are_1_kib_of_json() {
        for body in [FIXED_BODY, FIXED_RECORD] {
            assert_eq!(body.len(), 1024);
            assert!(serde_json::from_slice::<Value>(body).is_ok());
        }
        let record: Value = serde_json::from_slice(FIXED_RECORD).unwrap_or_default();
        assert_eq!(record["nik"], "3603015505900001");
        assert_eq!(record["status_perkawinan"], "KAWIN");
    }
}
