//! Authentication building blocks of Gerbang, free of HTTP-server code and of file I/O (the
//! binary reads key files and passes their bytes; the only network use is `jwks`, an HTTP
//! client fetching external issuers' keys):
//!
//! - [`secret`]: client secrets and API keys stored only as argon2id hashes;
//! - [`keys`]: the built-in issuer's ES256 signing keys, rotation, and the public JWKS;
//! - [`token`]: access tokens issued by the gateway and their verification (algorithm pinned,
//!   issuer, audience, expiry, `typ`), with a stable reason for every refusal;
//! - [`apikey`]: API keys made by the gateway, stored as SHA-256 digests, with expiry;
//! - [`cache`]: verified tokens remembered until `exp`, so repeated calls skip the signature;
//! - [`external`]: tokens of external issuers (Keycloak) against their JWKS keys;
//! - [`mtls`]: client certificates pinned by SHA-256 fingerprint to applications;
//! - [`jwk`]: PEM public keys (external issuers' key files) as JWKs;
//! - [`jwks`]: fetching, refreshing and rate-limited refetching of an external JWKS;
//! - [`Principal`]: who called, as the later pipeline steps see it.
//!
//! - [`authn`]: the [`authn::Authenticator`] that turns a request's credentials into a
//!   [`Principal`] (bearer tokens of either issuer, API keys, client certificates);
//! - [`oauth`]: the token endpoint's request parsing and RFC 6749 error codes.
//!
//! Invariant: nothing here logs or formats a token, a secret or a key.

pub mod apikey;
pub mod authn;
pub mod cache;
pub mod external;
pub mod jwk;
pub mod jwks;
pub mod keys;
pub mod mtls;
pub mod oauth;
pub mod secret;
pub mod token;

/// How the caller of a request proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMethod {
    /// An access token from the gateway's own issuer.
    IssuedToken,
    /// A JWT from a configured external issuer (its `iss`).
    ExternalJwt { issuer: String },
    /// An API key (`X-API-Key`).
    ApiKey,
    /// A TLS client certificate.
    Mtls,
}

/// The authenticated caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The application, `agency/app`.
    pub application: String,
    /// The application's agency.
    pub agency: String,
    pub method: AuthMethod,
    pub scopes: Vec<String>,
    /// Dense index of the application in the authenticator that verified it (stable within
    /// one configuration snapshot): lets per-application tables avoid hashing its name.
    pub index: u32,
}
