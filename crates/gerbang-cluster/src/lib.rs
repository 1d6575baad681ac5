//! Cluster mode: what N replicas share through Redis so that they behave as one gateway.
//!
//! - [`limits`]: agreement rate limits (GCRA) and quotas, atomic in Redis, one round trip per
//!   limited call, with a local fallback or a closed failure mode while Redis is away;
//! - [`quota_file`]: one node's quota use, kept in the data directory across restarts;
//! - [`revisions`]: configuration revisions (the registry and agreement files as validated),
//!   published by the replica that made a change and applied by every other.

pub mod limits;
pub mod quota_file;
pub mod revisions;
pub mod sessions;

#[cfg(test)]
mod test_redis;
