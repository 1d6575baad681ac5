//! Criterion benchmarks live in `benches/`; run them with `cargo bench -p gerbang-benches`.
//! [`floor`] is the upstream side of the two floors that `proxy_load.sh` measures.

pub mod floor;
