//! Shared rate limits and quotas (to be written).
