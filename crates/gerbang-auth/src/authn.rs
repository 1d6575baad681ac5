//! Authentication of one request: from the credentials a request presents (a bearer token, an
//! API key, a verified client certificate) to the [`Principal`] that made it, or a stable
//! [`AuthFailure`].
//!
//! Order: a request with an `Authorization` header is judged by it alone (a bad token is never
//! rescued by another credential); otherwise `X-API-Key`; otherwise the client certificate.
//! When a client certificate that identifies an application comes with a token or key of a
//! different application, the request is refused. Every path ends in a check that the
//! application exists in the current registry and may use that method.
//!
//! An [`Authenticator`] is immutable and belongs to one registry snapshot; a reload builds a new
//! one (its token cache starts empty, so a removed application or method takes effect at once).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::apikey::{ApiKeyEntry, ApiKeyRefusal, ApiKeyStore};
use crate::cache::TokenCache;
use crate::external::{ExternalIssuer, IssuerKeys};
use crate::jwks::JwksSource;
use crate::mtls::{ClientCert, MtlsConfigError, MtlsIdentities};
use crate::token::{peek_issuer, peek_kid, Issuer, Refusal};
use crate::{AuthMethod, Principal};

/// Which methods an application may authenticate with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Methods {
    /// Client credentials at `/oauth/token`, then the gateway's access tokens.
    pub client_secret: bool,
    /// Tokens of a configured external issuer.
    pub external_jwt: bool,
    /// `X-API-Key`.
    pub api_key: bool,
    /// A client certificate.
    pub mtls: bool,
}

impl Methods {
    /// The configuration names of the methods.
    pub const NAMES: [&'static str; 4] = ["client_secret", "external_jwt", "api_key", "mtls"];

    /// Sets the method named `name`; `false` for an unknown name.
    pub fn enable(&mut self, name: &str) -> bool {
        match name {
            "client_secret" => self.client_secret = true,
            "external_jwt" => self.external_jwt = true,
            "api_key" => self.api_key = true,
            "mtls" => self.mtls = true,
            _ => return false,
        }
        true
    }

    fn allows(&self, m: &AuthMethod) -> bool {
        match m {
            AuthMethod::IssuedToken => self.client_secret,
            AuthMethod::ExternalJwt { .. } => self.external_jwt,
            AuthMethod::ApiKey => self.api_key,
            AuthMethod::Mtls => self.mtls,
        }
    }
}

/// The credentials of one application, as configured.
#[derive(Debug, Clone, Default)]
pub struct AppCredentials {
    /// `agency/app`.
    pub application: String,
    pub agency: String,
    pub methods: Methods,
    /// argon2 PHC strings; any one matches (several allow rotating a secret without downtime).
    pub secret_hashes: Vec<String>,
    /// Scopes the application may be granted.
    pub scopes: Vec<String>,
    /// API keys: SHA-256 digest (`sha256:…`) and optional expiry (seconds since the epoch).
    pub api_keys: Vec<(String, Option<u64>)>,
    /// Client certificate pins (`sha256:…`).
    pub cert_fingerprints: Vec<String>,
    /// Client certificate names (DNS/URI SAN or subject CN).
    pub cert_names: Vec<String>,
    /// The external issuer (its `iss`) whose tokens may identify this application; tokens of
    /// any other issuer never do.
    pub external_issuer: Option<String>,
    /// Values of that issuer's client claim that identify this application.
    pub external_client_ids: Vec<String>,
    /// Whether a client claim equal to the application's full id (`agency/app`) identifies it
    /// too (opt-in: otherwise only `external_client_ids` do).
    pub external_client_id_is_registry_id: bool,
}

/// Where an external issuer's keys come from.
pub enum ExternalKeys {
    /// A JWKS URL, refreshed in the background.
    Jwks(Arc<JwksSource>),
    /// PEM files read at start.
    Static(Arc<IssuerKeys>),
}

/// One external issuer with its keys.
pub struct External {
    pub issuer: ExternalIssuer,
    pub keys: ExternalKeys,
}

impl External {
    /// [`crate::external::ExternalIssuer::verify_id_token`] with this issuer's current keys
    /// (a JWKS is fetched again, rate-limited, for a key id it does not know yet).
    pub async fn verify_id_token(
        &self,
        token: &str,
        client_id: &str,
        nonce: &str,
    ) -> Result<serde_json::Value, Refusal> {
        match &self.keys {
            ExternalKeys::Static(keys) => {
                self.issuer.verify_id_token(token, keys, client_id, nonce)
            }
            ExternalKeys::Jwks(source) => {
                match self
                    .issuer
                    .verify_id_token(token, &source.keys(), client_id, nonce)
                {
                    Err(Refusal::UnknownKid) => {}
                    other => return other,
                }
                let kid = peek_kid(token).ok_or(Refusal::Malformed)?;
                if !source.refresh_for_unknown_kid(&kid).await {
                    return Err(Refusal::UnknownKid);
                }
                self.issuer
                    .verify_id_token(token, &source.keys(), client_id, nonce)
            }
        }
    }

    /// The generation of the keys (moves when a JWKS fetch drops or replaces a key).
    fn key_generation(&self) -> u64 {
        match &self.keys {
            ExternalKeys::Jwks(source) => source.generation(),
            ExternalKeys::Static(_) => 0,
        }
    }
}

/// Why a request was not authenticated. `reason` is the stable label for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    #[error("no credentials")]
    Missing,
    #[error("the Authorization header is not a Bearer token")]
    NotBearer,
    #[error("token refused: {0}")]
    Token(Refusal),
    #[error("token of an unknown issuer")]
    UnknownIssuer,
    #[error("API key refused: {0}")]
    ApiKey(ApiKeyRefusal),
    #[error("client certificate identifies no application")]
    UnknownCertificate,
    #[error("the credential names an application that is not registered")]
    UnknownApplication,
    #[error("the application may not authenticate this way")]
    MethodNotAllowed,
    #[error("the client certificate and the token or key name different applications")]
    IdentityMismatch,
    #[error("API key sent more than once")]
    RepeatedApiKey,
}

impl AuthFailure {
    /// The stable reason code (log field and metric label).
    pub fn reason(&self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing_credentials",
            AuthFailure::NotBearer => "not_bearer",
            AuthFailure::Token(r) => r.as_str(),
            AuthFailure::UnknownIssuer => "unknown_issuer",
            AuthFailure::ApiKey(r) => r.as_str(),
            AuthFailure::UnknownCertificate => "unknown_certificate",
            AuthFailure::UnknownApplication => "unknown_application",
            AuthFailure::MethodNotAllowed => "method_not_allowed_for_application",
            AuthFailure::IdentityMismatch => "identity_mismatch",
            AuthFailure::RepeatedApiKey => "api_key_repeated",
        }
    }

    /// Every reason code `reason` can give, each once (metrics export them at 0 from the
    /// start, so that the first refusal of a kind is an increase).
    pub fn reasons() -> Vec<&'static str> {
        let mut all = vec![
            AuthFailure::Missing,
            AuthFailure::NotBearer,
            AuthFailure::UnknownIssuer,
            AuthFailure::UnknownCertificate,
            AuthFailure::UnknownApplication,
            AuthFailure::MethodNotAllowed,
            AuthFailure::IdentityMismatch,
            AuthFailure::RepeatedApiKey,
        ];
        all.extend(Refusal::ALL.map(AuthFailure::Token));
        all.extend(ApiKeyRefusal::ALL.map(AuthFailure::ApiKey));
        all.iter().map(AuthFailure::reason).collect()
    }
}

/// Why the authenticator could not be built from the configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthConfigError {
    #[error("application `{0}`: API key digest `{1}` is malformed or used twice")]
    ApiKey(String, String),
    #[error("application `{0}`: {1}")]
    Certificate(String, MtlsConfigError),
    #[error(
        "application `{0}`: client id `{1}` of external issuer `{3}` already identifies `{2}`"
    )]
    ExternalId(String, String, String, String),
    #[error("external issuer `{0}` is configured twice")]
    DuplicateIssuer(String),
}

struct AppEntry {
    index: u32,
    agency: String,
    methods: Methods,
    /// The one external issuer whose tokens may name this application.
    external_issuer: Option<String>,
    secret_hashes: Vec<String>,
    scopes: Vec<String>,
}

/// See the module documentation.
pub struct Authenticator {
    issuer: Arc<Issuer>,
    cache: Arc<TokenCache>,
    /// What a cached verification depends on (applications with their index, agency, methods,
    /// scopes, external issuer, external client ids and the registry-id opt-in; the issuer and
    /// its keys; the external issuers and their settings): two authenticators with the same
    /// value may share their cache.
    cache_key: [u8; 32],
    externals: HashMap<String, Arc<External>>,
    apps: HashMap<String, AppEntry>,
    api_keys: ApiKeyStore,
    mtls: MtlsIdentities,
    /// Per external issuer (`iss`): client claim value → application. A token is mapped only
    /// within its own issuer's table, so no issuer can name another issuer's applications.
    external_ids: ExternalIds,
    /// A hash of a random secret, verified against when a client id is unknown so that the
    /// token endpoint takes as long for unknown clients as for a wrong secret.
    dummy_hash: String,
}

/// External issuer (`iss`) → client claim value → application (`agency/app`).
type ExternalIds = HashMap<String, HashMap<String, String>>;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The credentials one request presents; header values as received.
#[derive(Debug, Default, Clone, Copy)]
pub struct Presented<'a> {
    /// Every `Authorization` header value.
    pub authorization: Option<&'a [u8]>,
    /// Whether there were several `Authorization` headers (refused).
    pub authorization_repeated: bool,
    pub api_key: Option<&'a [u8]>,
    pub api_key_repeated: bool,
    pub client_cert: Option<&'a ClientCert>,
    /// When the request arrived, in seconds since the Unix epoch, when the caller read the
    /// clock once for the whole request; `None` reads it here.
    pub now: Option<u64>,
}

impl Authenticator {
    pub fn new(
        issuer: Arc<Issuer>,
        apps: &[AppCredentials],
        externals: Vec<Arc<External>>,
        cache_capacity: usize,
    ) -> Result<Self, AuthConfigError> {
        let (api_keys, mtls, external_ids) = Self::indexes(apps)?;
        let entries = apps
            .iter()
            .zip(0u32..)
            .map(|(app, index)| {
                let entry = AppEntry {
                    index,
                    agency: app.agency.clone(),
                    methods: app.methods,
                    external_issuer: app.external_issuer.clone(),
                    secret_hashes: app.secret_hashes.clone(),
                    scopes: app.scopes.clone(),
                };
                (app.application.clone(), entry)
            })
            .collect();
        let mut by_issuer = HashMap::new();
        for e in externals {
            let iss = e.issuer.issuer.clone();
            if iss == issuer.issuer || by_issuer.insert(iss.clone(), e).is_some() {
                return Err(AuthConfigError::DuplicateIssuer(iss));
            }
        }
        let cache_key = {
            let mut text = String::new();
            for (i, app) in apps.iter().enumerate() {
                // The external mapping too: a reload that removes a client id or rebinds the
                // application to another issuer must not leave tokens verified under the old
                // mapping in the cache.
                let mut ids: Vec<&String> = app.external_client_ids.iter().collect();
                ids.sort();
                text.push_str(&format!(
                    "{i}\0{}\0{}\0{:?}\0{:?}\0{:?}\0{ids:?}\0{}\n",
                    app.application,
                    app.agency,
                    app.methods,
                    app.scopes,
                    app.external_issuer,
                    app.external_client_id_is_registry_id
                ));
            }
            // The public keys themselves, not only their ids: a key file replaced under the
            // same name must not leave its predecessor's tokens verified.
            let keys = serde_json::to_string(&issuer.keys.jwks()).unwrap_or_default();
            text.push_str(&format!(
                "{}\0{}\0{:?}\0{:?}\0{keys}\n",
                issuer.issuer, issuer.audience, issuer.ttl, issuer.leeway
            ));
            // Each external issuer with its settings (audiences, algorithms, leeway, claim).
            let mut ext: Vec<String> = by_issuer
                .values()
                .map(|e| format!("{:?}", e.issuer))
                .collect();
            ext.sort();
            text.push_str(&format!("{ext:?}\n{cache_capacity}"));
            let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
            let mut key = [0u8; 32];
            key.copy_from_slice(d.as_ref());
            key
        };
        let dummy_hash =
            crate::secret::hash_secret(&uuid::Uuid::new_v4().to_string()).unwrap_or_default();
        Ok(Self {
            issuer,
            cache: Arc::new(TokenCache::new(cache_capacity)),
            cache_key,
            externals: by_issuer,
            apps: entries,
            api_keys,
            mtls,
            external_ids,
            dummy_hash,
        })
    }

    /// Checks that no credential (API key digest, certificate pin or name, external client id)
    /// belongs to two applications.
    pub fn check_unique(apps: &[AppCredentials]) -> Result<(), AuthConfigError> {
        Self::indexes(apps).map(|_| ())
    }

    fn indexes(
        apps: &[AppCredentials],
    ) -> Result<(ApiKeyStore, MtlsIdentities, ExternalIds), AuthConfigError> {
        let mut api_keys = ApiKeyStore::default();
        let mut mtls = MtlsIdentities::default();
        let mut external_ids = ExternalIds::new();
        for app in apps {
            for (digest, expires_at) in &app.api_keys {
                let entry = ApiKeyEntry {
                    application: app.application.clone(),
                    expires_at: *expires_at,
                };
                if !api_keys.insert(digest, entry) {
                    return Err(AuthConfigError::ApiKey(
                        app.application.clone(),
                        digest.clone(),
                    ));
                }
            }
            for pin in &app.cert_fingerprints {
                mtls.insert(pin, &app.application)
                    .map_err(|e| AuthConfigError::Certificate(app.application.clone(), e))?;
            }
            for name in &app.cert_names {
                mtls.insert_name(name, &app.application)
                    .map_err(|e| AuthConfigError::Certificate(app.application.clone(), e))?;
            }
            // Client ids are indexed under the application's own issuer only; an application
            // that names no issuer is never identified by an external token.
            let Some(iss) = &app.external_issuer else {
                continue;
            };
            let table = external_ids.entry(iss.clone()).or_default();
            let registry_id = app
                .external_client_id_is_registry_id
                .then_some(&app.application);
            for id in app.external_client_ids.iter().chain(registry_id) {
                match table.insert(id.clone(), app.application.clone()) {
                    Some(other) if other != app.application => {
                        return Err(AuthConfigError::ExternalId(
                            app.application.clone(),
                            id.clone(),
                            other,
                            iss.clone(),
                        ));
                    }
                    _ => {}
                }
            }
        }
        Ok((api_keys, mtls, external_ids))
    }

    /// The built-in issuer.
    pub fn issuer(&self) -> &Arc<Issuer> {
        &self.issuer
    }

    /// Authenticates one request.
    pub async fn authenticate(&self, p: Presented<'_>) -> Result<Arc<Principal>, AuthFailure> {
        let cert_app = p.client_cert.and_then(|c| self.mtls.application_for(c));
        let t = p.now.unwrap_or_else(now);
        let principal = if p.authorization.is_some() || p.authorization_repeated {
            if p.authorization_repeated {
                return Err(AuthFailure::Token(Refusal::Malformed));
            }
            let token = p
                .authorization
                .map(bearer_token)
                .unwrap_or(Err(AuthFailure::NotBearer))?;
            self.verify_token(token, t).await?
        } else if p.api_key.is_some() || p.api_key_repeated {
            if p.api_key_repeated {
                return Err(AuthFailure::RepeatedApiKey);
            }
            let key = p
                .api_key
                .and_then(|k| std::str::from_utf8(k).ok())
                .ok_or(AuthFailure::ApiKey(ApiKeyRefusal::Malformed))?;
            let entry = self.api_keys.verify(key, t).map_err(AuthFailure::ApiKey)?;
            self.principal(&entry.application, AuthMethod::ApiKey, None)?
        } else if let Some(cert) = p.client_cert {
            let app = self
                .mtls
                .application_for(cert)
                .ok_or(AuthFailure::UnknownCertificate)?;
            self.principal(app, AuthMethod::Mtls, None)?
        } else {
            return Err(AuthFailure::Missing);
        };
        if let Some(app) = cert_app {
            if app != principal.application {
                return Err(AuthFailure::IdentityMismatch);
            }
        }
        Ok(principal)
    }

    /// A principal for `application` authenticated by `method`, after checking that the
    /// application exists and may use the method.
    fn principal(
        &self,
        application: &str,
        method: AuthMethod,
        scopes: Option<Vec<String>>,
    ) -> Result<Arc<Principal>, AuthFailure> {
        let app = self
            .apps
            .get(application)
            .ok_or(AuthFailure::UnknownApplication)?;
        if !app.methods.allows(&method) {
            return Err(AuthFailure::MethodNotAllowed);
        }
        // The issuer tables guarantee this already; checked again where the principal is made.
        if let AuthMethod::ExternalJwt { issuer } = &method {
            if app.external_issuer.as_deref() != Some(issuer.as_str()) {
                return Err(AuthFailure::UnknownApplication);
            }
        }
        Ok(Arc::new(Principal {
            application: application.to_owned(),
            agency: app.agency.clone(),
            method,
            scopes: scopes.unwrap_or_else(|| app.scopes.clone()),
            index: app.index,
        }))
    }

    async fn verify_token(&self, raw: &[u8], t: u64) -> Result<Arc<Principal>, AuthFailure> {
        if let Some((p, generation)) = self.cache.get_entry_at(raw, t) {
            // An external token is judged again once its issuer dropped or replaced a key.
            let current = match &p.method {
                AuthMethod::ExternalJwt { issuer } => self
                    .externals
                    .get(issuer)
                    .is_some_and(|e| e.key_generation() == generation),
                _ => true,
            };
            if current {
                return Ok(p);
            }
        }
        if raw.len() > crate::token::MAX_TOKEN_BYTES {
            return Err(AuthFailure::Token(Refusal::TooLarge));
        }
        let token = check_b64token(raw)?;
        let iss = peek_issuer(token).ok_or(AuthFailure::Token(Refusal::Malformed))?;
        let mut generation = 0;
        let (principal, exp) = if iss == self.issuer.issuer {
            let claims = self.issuer.verify(token).map_err(AuthFailure::Token)?;
            if claims.agency.is_empty() {
                return Err(AuthFailure::Token(Refusal::MissingClaim));
            }
            let scopes = claims
                .scope
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            let p = self.principal(&claims.sub, AuthMethod::IssuedToken, Some(scopes))?;
            if p.agency != claims.agency {
                return Err(AuthFailure::Token(Refusal::MissingClaim));
            }
            (p, claims.exp)
        } else {
            let ext = self.externals.get(&iss).ok_or(AuthFailure::UnknownIssuer)?;
            // Read before verifying: a key dropped meanwhile makes this entry stale at once.
            generation = ext.key_generation();
            let id = self.verify_external(ext, token).await?;
            // Only this issuer's table: a client id (or registry id) that another issuer's
            // applications use names nothing here.
            let app = self
                .external_ids
                .get(&iss)
                .and_then(|table| table.get(&id.client_id))
                .cloned()
                .ok_or(AuthFailure::UnknownApplication)?;
            let scopes = id.claims.get("scope").and_then(|s| s.as_str()).map(|s| {
                s.split(' ')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            });
            let exp = id.claims.get("exp").and_then(|e| e.as_u64()).unwrap_or(t);
            let p = self.principal(&app, AuthMethod::ExternalJwt { issuer: iss }, scopes)?;
            (p, exp)
        };
        self.cache
            .insert_at_generation(token, Arc::clone(&principal), exp, generation);
        Ok(principal)
    }

    async fn verify_external(
        &self,
        ext: &External,
        token: &str,
    ) -> Result<crate::external::ExternalIdentity, AuthFailure> {
        match &ext.keys {
            ExternalKeys::Static(keys) => {
                ext.issuer.verify(token, keys).map_err(AuthFailure::Token)
            }
            ExternalKeys::Jwks(source) => {
                match ext.issuer.verify(token, &source.keys()) {
                    Err(Refusal::UnknownKid) => {}
                    other => return other.map_err(AuthFailure::Token),
                }
                // The issuer may have rotated: fetch again (rate-limited) and retry once.
                let kid = peek_kid(token).ok_or(AuthFailure::Token(Refusal::Malformed))?;
                if !source.refresh_for_unknown_kid(&kid).await {
                    return Err(AuthFailure::Token(Refusal::UnknownKid));
                }
                ext.issuer
                    .verify(token, &source.keys())
                    .map_err(AuthFailure::Token)
            }
        }
    }

    /// Checks client credentials for the token endpoint and returns the application's
    /// principal. Runs an argon2 verification (tens of milliseconds): call it off the async
    /// workers. Unknown clients cost the same as a wrong secret.
    pub fn check_client_secret(
        &self,
        client_id: &str,
        secret: &str,
    ) -> Result<Arc<Principal>, ClientAuthError> {
        let Some(app) = self.apps.get(client_id) else {
            let _ = crate::secret::verify_secret(&self.dummy_hash, secret);
            return Err(ClientAuthError::InvalidClient);
        };
        let mut ok = false;
        for h in &app.secret_hashes {
            ok |= crate::secret::verify_secret(h, secret);
        }
        if app.secret_hashes.is_empty() {
            let _ = crate::secret::verify_secret(&self.dummy_hash, secret);
        }
        if !ok {
            return Err(ClientAuthError::InvalidClient);
        }
        if !app.methods.client_secret {
            return Err(ClientAuthError::UnauthorizedClient);
        }
        self.principal(client_id, AuthMethod::IssuedToken, None)
            .map_err(|_| ClientAuthError::UnauthorizedClient)
    }

    /// Whether `client_id` is a registered application (the token endpoint keys its limit on
    /// failed authentications per client by registered ids only, so that made-up ids cannot
    /// grow its table).
    pub fn is_application(&self, client_id: &str) -> bool {
        self.apps.contains_key(client_id)
    }

    /// The scopes granted for a request of `requested` (space-separated; empty = all the
    /// application may have).
    pub fn grant_scopes(
        &self,
        principal: &Principal,
        requested: Option<&str>,
    ) -> Result<Vec<String>, ClientAuthError> {
        let allowed = &principal.scopes;
        match requested.map(str::trim).filter(|s| !s.is_empty()) {
            None => Ok(allowed.clone()),
            Some(r) => {
                let mut out: Vec<String> = Vec::new();
                for s in r.split(' ').filter(|s| !s.is_empty()) {
                    if !allowed.iter().any(|a| a == s) {
                        return Err(ClientAuthError::InvalidScope);
                    }
                    if !out.iter().any(|o| o == s) {
                        out.push(s.to_owned());
                    }
                }
                Ok(out)
            }
        }
    }

    /// Verified tokens held in the cache.
    pub fn cached_tokens(&self) -> usize {
        self.cache.len()
    }

    /// Takes over `old`'s verified-token cache when every verification it holds is still what
    /// this authenticator would decide (see `cache_key`): a reload that leaves applications and
    /// keys alone does not make every caller's token be verified again. Returns whether it did.
    pub fn adopt_cache(&mut self, old: &Authenticator) -> bool {
        if self.cache_key == old.cache_key {
            self.cache = Arc::clone(&old.cache);
            true
        } else {
            false
        }
    }

    /// The token lifetime of the built-in issuer.
    pub fn token_ttl(&self) -> Duration {
        self.issuer.ttl
    }
}

/// Why client authentication at the token endpoint failed (RFC 6749 §5.2 codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClientAuthError {
    #[error("client authentication failed")]
    InvalidClient,
    #[error("the client may not use the client credentials grant")]
    UnauthorizedClient,
    #[error("the requested scope is not allowed")]
    InvalidScope,
}

/// The token of an `Authorization: Bearer …` value (scheme case-insensitive, RFC 6750 §2.1),
/// without surrounding spaces; its characters are checked by [`check_b64token`] only when the
/// token is not in the cache (a cached token was verified byte for byte).
fn bearer_token(value: &[u8]) -> Result<&[u8], AuthFailure> {
    let rest = match value.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => &value[7..],
        _ => return Err(AuthFailure::NotBearer),
    };
    let start = rest.iter().position(|b| *b != b' ').unwrap_or(rest.len());
    let end = rest
        .iter()
        .rposition(|b| *b != b' ')
        .map_or(start, |i| i + 1);
    match rest.get(start..end) {
        Some(t) if !t.is_empty() => Ok(t),
        _ => Err(AuthFailure::Token(Refusal::Malformed)),
    }
}

/// `token` as text if it is one RFC 6750 `b64token`: letters, digits, `-._~+/`, then only `=`.
fn check_b64token(token: &[u8]) -> Result<&str, AuthFailure> {
    let body_end = token.iter().position(|b| *b == b'=').unwrap_or(token.len());
    let (body, padding) = token.split_at(body_end);
    let ok = body.iter().all(|&b| {
        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
    }) && padding.iter().all(|&b| b == b'=');
    if !ok {
        return Err(AuthFailure::Token(Refusal::Malformed));
    }
    std::str::from_utf8(token).map_err(|_| AuthFailure::Token(Refusal::Malformed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{generate_pem, KeyRing, SigningKey};

    fn issuer() -> Arc<Issuer> {
        Arc::new(Issuer {
            issuer: "https://gerbang.test".into(),
            audience: "gerbang".into(),
            ttl: Duration::from_secs(300),
            leeway: Duration::from_secs(5),
            keys: KeyRing::new(vec![SigningKey::from_pem(
                "k1",
                generate_pem().unwrap().as_bytes(),
            )
            .unwrap()])
            .unwrap(),
        })
    }

    /// Two applications, and the API key of the second.
    fn apps() -> (Vec<AppCredentials>, String) {
        let (key, digest) = crate::apikey::generate().unwrap();
        let mut token_app = AppCredentials {
            application: "dinkes/simpus".into(),
            agency: "dinkes".into(),
            secret_hashes: vec![crate::secret::hash_secret("demo-secret-simpus").unwrap()],
            scopes: vec!["read".into(), "write".into()],
            ..Default::default()
        };
        token_app.methods.enable("client_secret");
        let mut key_app = AppCredentials {
            application: "bapenda/esppt".into(),
            agency: "bapenda".into(),
            api_keys: vec![(digest, None)],
            cert_names: vec!["esppt.bapenda.test".into()],
            ..Default::default()
        };
        key_app.methods.enable("api_key");
        (vec![token_app, key_app], key)
    }

    #[tokio::test]
    async fn a_new_authenticator_keeps_the_cache_only_when_nothing_it_depends_on_changed() {
        let iss = issuer();
        let (apps, _) = apps();
        let old = Authenticator::new(Arc::clone(&iss), &apps, Vec::new(), 100).unwrap();
        let t = iss.issue("dinkes/simpus", "dinkes", "read").unwrap();
        let auth = format!("Bearer {t}");
        let presented = Presented {
            authorization: Some(auth.as_bytes()),
            ..Default::default()
        };
        let p = old.authenticate(presented).await.unwrap();
        // The same applications and keys (a reload that changed something else): kept.
        let mut same = Authenticator::new(Arc::clone(&iss), &apps, Vec::new(), 100).unwrap();
        assert!(same.adopt_cache(&old));
        assert_eq!(same.cached_tokens(), 1);
        assert!(Arc::ptr_eq(
            &p,
            &same.authenticate(presented).await.unwrap()
        ));
        // An application's scopes changed, an application removed, or other keys: not kept.
        let mut fewer_scopes = apps.clone();
        fewer_scopes[0].scopes = vec!["read".into()];
        let mut removed = apps.clone();
        removed.remove(1);
        for changed in [fewer_scopes, removed] {
            let mut other =
                Authenticator::new(Arc::clone(&iss), &changed, Vec::new(), 100).unwrap();
            assert!(!other.adopt_cache(&old));
            assert_eq!(other.cached_tokens(), 0);
        }
        // Another key under the same id.
        let mut new_keys = Authenticator::new(issuer(), &apps, Vec::new(), 100).unwrap();
        assert!(!new_keys.adopt_cache(&old));
    }

    /// A stand-in external issuer with its own key.
    struct Idp {
        iss: String,
        pem: String,
    }

    impl Idp {
        fn new(iss: &str) -> Self {
            Self {
                iss: iss.into(),
                pem: generate_pem().unwrap(),
            }
        }

        fn external(&self) -> Arc<External> {
            let jwks = KeyRing::new(vec![SigningKey::from_pem("k", self.pem.as_bytes()).unwrap()])
                .unwrap()
                .jwks();
            Arc::new(External {
                issuer: ExternalIssuer::new(
                    self.iss.clone(),
                    vec!["gerbang".into()],
                    vec![jsonwebtoken::Algorithm::ES256],
                    Duration::from_secs(5),
                    "azp".into(),
                )
                .unwrap(),
                keys: ExternalKeys::Static(Arc::new(IssuerKeys::from_jwks(&jwks))),
            })
        }

        fn token(&self, azp: &str) -> String {
            let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
            h.kid = Some("k".into());
            let claims = serde_json::json!({
                "iss": self.iss, "aud": "gerbang", "azp": azp, "exp": now() + 300,
                "jti": uuid::Uuid::new_v4().to_string()
            });
            let k = jsonwebtoken::EncodingKey::from_ec_pem(self.pem.as_bytes()).unwrap();
            format!("Bearer {}", jsonwebtoken::encode(&h, &claims, &k).unwrap())
        }
    }

    fn external_app(id: &str, iss: &str, ids: &[&str], registry_id: bool) -> AppCredentials {
        let mut app = AppCredentials {
            application: format!("diskominfo/{id}"),
            agency: "diskominfo".into(),
            external_issuer: Some(iss.into()),
            external_client_ids: ids.iter().map(|s| s.to_string()).collect(),
            external_client_id_is_registry_id: registry_id,
            ..Default::default()
        };
        app.methods.enable("external_jwt");
        app
    }

    async fn who(a: &Authenticator, authz: &str) -> Result<String, AuthFailure> {
        a.authenticate(Presented {
            authorization: Some(authz.as_bytes()),
            ..Default::default()
        })
        .await
        .map(|p| p.application.clone())
    }

    #[tokio::test]
    async fn external_tokens_name_only_applications_bound_to_their_issuer() {
        let (a, b) = (
            Idp::new("https://sso-a.test"),
            Idp::new("https://sso-b.test"),
        );
        let apps = vec![
            external_app("portal", &a.iss, &["portal-client"], false),
            external_app("kiosk", &b.iss, &["kiosk-client"], true),
            external_app("desk", &a.iss, &["desk-client"], false),
        ];
        let auth =
            Authenticator::new(issuer(), &apps, vec![a.external(), b.external()], 100).unwrap();
        assert_eq!(
            who(&auth, &a.token("portal-client")).await.unwrap(),
            "diskominfo/portal"
        );
        assert_eq!(
            who(&auth, &b.token("kiosk-client")).await.unwrap(),
            "diskominfo/kiosk"
        );
        // Issuer B cannot mint for A's application, by its client id or by its registry id.
        for azp in ["portal-client", "diskominfo/portal", "desk-client"] {
            assert_eq!(
                who(&auth, &b.token(azp)).await,
                Err(AuthFailure::UnknownApplication),
                "{azp}"
            );
        }
        // Nor A for B's (which opted in to its registry id, for B only).
        for azp in ["kiosk-client", "diskominfo/kiosk"] {
            assert_eq!(
                who(&auth, &a.token(azp)).await,
                Err(AuthFailure::UnknownApplication),
                "{azp}"
            );
        }
        // The registry id identifies only an application that opted in.
        assert_eq!(
            who(&auth, &b.token("diskominfo/kiosk")).await.unwrap(),
            "diskominfo/kiosk"
        );
        assert_eq!(
            who(&auth, &a.token("diskominfo/desk")).await,
            Err(AuthFailure::UnknownApplication)
        );
        // An application naming no issuer is named by no external token.
        let mut unbound = external_app("portal", &a.iss, &["portal-client"], true);
        unbound.external_issuer = None;
        let auth = Authenticator::new(issuer(), &[unbound], vec![a.external()], 100).unwrap();
        for azp in ["portal-client", "diskominfo/portal"] {
            assert_eq!(
                who(&auth, &a.token(azp)).await,
                Err(AuthFailure::UnknownApplication)
            );
        }
    }

    #[test]
    fn client_ids_are_unique_per_issuer_only() {
        let (a, b) = ("https://sso-a.test", "https://sso-b.test");
        // The same client id at two issuers names two applications.
        let ok = [
            external_app("portal", a, &["portal"], false),
            external_app("kiosk", b, &["portal"], false),
        ];
        assert!(Authenticator::check_unique(&ok).is_ok());
        // At one issuer it may name one only, registry ids included.
        let twice = [
            external_app("portal", a, &["portal"], false),
            external_app("kiosk", a, &["portal"], false),
        ];
        assert!(matches!(
            Authenticator::check_unique(&twice),
            Err(AuthConfigError::ExternalId(..))
        ));
        let as_registry_id = [
            external_app("portal", a, &[], true),
            external_app("kiosk", a, &["diskominfo/portal"], false),
        ];
        assert!(matches!(
            Authenticator::check_unique(&as_registry_id),
            Err(AuthConfigError::ExternalId(..))
        ));
    }

    #[tokio::test]
    async fn the_cache_is_not_kept_when_an_external_mapping_changed() {
        let (a, b) = (
            Idp::new("https://sso-a.test"),
            Idp::new("https://sso-b.test"),
        );
        let externals = vec![a.external(), b.external()];
        let apps = vec![external_app(
            "portal",
            &a.iss,
            &["portal-client", "legacy"],
            false,
        )];
        let old = Authenticator::new(issuer(), &apps, externals.clone(), 100).unwrap();
        let iss = Arc::clone(old.issuer());
        let token = a.token("legacy");
        assert_eq!(who(&old, &token).await.unwrap(), "diskominfo/portal");
        assert_eq!(old.cached_tokens(), 1);
        // Unchanged (the client ids in another order): kept.
        let mut reordered = apps.clone();
        reordered[0].external_client_ids.reverse();
        let mut same =
            Authenticator::new(Arc::clone(&iss), &reordered, externals.clone(), 100).unwrap();
        assert!(same.adopt_cache(&old));
        // A client id removed, the issuer changed, the registry-id opt-in changed: not kept,
        // and the token verified before is judged again.
        let mut removed = apps.clone();
        removed[0].external_client_ids = vec!["portal-client".into()];
        let mut rebound = apps.clone();
        rebound[0].external_issuer = Some(b.iss.clone());
        let mut opted_in = apps.clone();
        opted_in[0].external_client_id_is_registry_id = true;
        for (what, changed) in [
            ("client id removed", removed),
            ("other issuer", rebound),
            ("registry id opt-in", opted_in),
        ] {
            let mut new =
                Authenticator::new(Arc::clone(&iss), &changed, externals.clone(), 100).unwrap();
            assert!(!new.adopt_cache(&old), "{what}");
            assert_eq!(new.cached_tokens(), 0, "{what}");
            if what != "registry id opt-in" {
                assert_eq!(
                    who(&new, &token).await,
                    Err(AuthFailure::UnknownApplication),
                    "{what}"
                );
            }
        }
        // Another external issuer's settings (its audiences, say): not kept.
        let mut other_aud = a.external().issuer.clone();
        other_aud.audiences = vec!["another".into()];
        let changed_issuer = vec![
            Arc::new(External {
                issuer: other_aud,
                keys: ExternalKeys::Static(Arc::new(IssuerKeys::default())),
            }),
            b.external(),
        ];
        let mut new = Authenticator::new(Arc::clone(&iss), &apps, changed_issuer, 100).unwrap();
        assert!(!new.adopt_cache(&old));
    }

    #[tokio::test]
    async fn each_method_and_its_refusals() {
        let iss = issuer();
        let (apps, key) = apps();
        let a = Authenticator::new(Arc::clone(&iss), &apps, Vec::new(), 100).unwrap();

        let t = iss.issue("dinkes/simpus", "dinkes", "read").unwrap();
        let auth = format!("Bearer {t}");
        let p = a
            .authenticate(Presented {
                authorization: Some(auth.as_bytes()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(p.application, "dinkes/simpus");
        assert_eq!(p.method, AuthMethod::IssuedToken);
        assert_eq!(p.scopes, vec!["read"]);
        assert_eq!(a.cached_tokens(), 1);
        // Cached: the same principal again.
        let again = a
            .authenticate(Presented {
                authorization: Some(auth.as_bytes()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(Arc::ptr_eq(&p, &again));

        // A token for an application that may not use client secrets.
        let t2 = iss.issue("bapenda/esppt", "bapenda", "").unwrap();
        let auth2 = format!("Bearer {t2}");
        let err = a
            .authenticate(Presented {
                authorization: Some(auth2.as_bytes()),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err, AuthFailure::MethodNotAllowed);
        // A token for an application that does not exist.
        let t3 = iss.issue("x/y", "x", "").unwrap();
        let auth3 = format!("Bearer {t3}");
        let err = a
            .authenticate(Presented {
                authorization: Some(auth3.as_bytes()),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err, AuthFailure::UnknownApplication);

        let p = a
            .authenticate(Presented {
                api_key: Some(key.as_bytes()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            (p.application.as_str(), &p.method),
            ("bapenda/esppt", &AuthMethod::ApiKey)
        );

        // A certificate of esppt with simpus's token: refused.
        let cert = ClientCert {
            fingerprint: crate::mtls::fingerprint(b"x"),
            names: vec!["esppt.bapenda.test".into()],
        };
        let err = a
            .authenticate(Presented {
                authorization: Some(auth.as_bytes()),
                client_cert: Some(&cert),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err, AuthFailure::IdentityMismatch);
        // The certificate alone: esppt may not use mTLS.
        let err = a
            .authenticate(Presented {
                client_cert: Some(&cert),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err, AuthFailure::MethodNotAllowed);

        for (authz, want) in [
            ("Basic abc", "not_bearer"),
            ("Bearer", "not_bearer"),
            ("Bearer a b", "malformed"),
            ("bearer x.y.z", "malformed"),
        ] {
            let err = a
                .authenticate(Presented {
                    authorization: Some(authz.as_bytes()),
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_eq!(err.reason(), want, "{authz}");
        }
        let err = a.authenticate(Presented::default()).await.unwrap_err();
        assert_eq!(err, AuthFailure::Missing);
        let err = a
            .authenticate(Presented {
                api_key: Some(key.as_bytes()),
                api_key_repeated: true,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err, AuthFailure::RepeatedApiKey);
    }

    #[test]
    fn client_secrets_and_scopes() {
        let a = Authenticator::new(issuer(), &apps().0, Vec::new(), 100).unwrap();
        let p = a
            .check_client_secret("dinkes/simpus", "demo-secret-simpus")
            .unwrap();
        assert_eq!(p.agency, "dinkes");
        assert_eq!(
            a.check_client_secret("dinkes/simpus", "wrong-secret-simpus"),
            Err(ClientAuthError::InvalidClient)
        );
        assert_eq!(
            a.check_client_secret("dinkes/nope", "demo-secret-simpus"),
            Err(ClientAuthError::InvalidClient)
        );
        assert_eq!(
            a.check_client_secret("bapenda/esppt", "anything-at-all"),
            Err(ClientAuthError::InvalidClient)
        );
        assert_eq!(a.grant_scopes(&p, None).unwrap(), vec!["read", "write"]);
        assert_eq!(
            a.grant_scopes(&p, Some("write write")).unwrap(),
            vec!["write"]
        );
        assert_eq!(
            a.grant_scopes(&p, Some("admin")),
            Err(ClientAuthError::InvalidScope)
        );
    }
}
