//! The data plane's request pipeline as named phases. [`crate::gateway::Gateway::handle`]
//! runs them in this order, each in its own module with its own tests:
//!
//! 1. [`checks`]: what the request itself must satisfy: target and header-block size (414,
//!    431), unambiguous framing, one `Host`, only `Expect: 100-continue`;
//! 2. [`internal`]: the gateway's own endpoints (token issuer, JWKS, metadata, catalogue);
//! 3. [`route`]: the path normalised once (400 on anything ambiguous) and `/{agency}/{service}`
//!    looked up in the registry snapshot (its 404 waits for authentication);
//! 4. [`authenticate`]: bearer token, API key or client certificate → `Principal` (401);
//! 5. [`authorise`]: one purpose, the data-sharing agreement (403, or 400 for a refused
//!    query), its rate limit and quota (429), the service's body limit (413);
//! 6. [`upstream_request`]: the request the provider gets: upstream URI, headers a client may
//!    not pass on removed, forwarding and identity headers, the assertion, trace context, and
//!    on filtered routes no ranges or conditions;
//! 7. [`exchange`]: tries and retries over the service's instances, health feedback;
//! 8. [`filter`]: the agreement's field rules on the response (failing closed), HEAD answers;
//! 9. [`record`]: the audit record, metrics, access log and span of every call.
//!
//! [`context::Call`] carries what the phases learn about a call to the phases after them and
//! to the record.

pub(crate) mod authenticate;
pub(crate) mod authorise;
pub(crate) mod checks;
pub(crate) mod context;
pub(crate) mod exchange;
pub(crate) mod filter;
pub(crate) mod internal;
pub(crate) mod record;
pub(crate) mod route;
pub(crate) mod upstream_request;
