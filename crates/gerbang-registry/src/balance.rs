//! Selection: which instance of a service takes a call. Instances that are ejected, failing
//! their checks or already tried by this call are skipped; `None` means no instance can take
//! it (the gateway answers 503 `no_healthy_upstream`).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::health::InstanceHealth;

/// How a service spreads calls over its instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Balancing {
    /// Each instance in turn.
    RoundRobin,
    /// In turn, in proportion to `weight`, interleaved (smooth weighted round robin).
    Weighted,
    /// The less busy of two instances picked at random (power of two choices), in flight
    /// requests divided by weight.
    LeastRequest,
    /// The same value of `header` goes to the same instance while it is available (a ring with
    /// virtual nodes in proportion to weight); calls without the header go round robin.
    ConsistentHash { header: http::HeaderName },
}

impl Balancing {
    pub fn as_str(&self) -> &'static str {
        match self {
            Balancing::RoundRobin => "round_robin",
            Balancing::Weighted => "weighted",
            Balancing::LeastRequest => "least_request",
            Balancing::ConsistentHash { .. } => "consistent_hash",
        }
    }
}

/// Virtual nodes per unit of weight on the hash ring.
const RING_POINTS: u32 = 160;
/// Largest weight honoured (a larger one is clamped): bounds the schedule and the ring.
pub const MAX_WEIGHT: u32 = 100;

/// Precomputed selection tables of a service.
#[derive(Debug)]
pub(crate) struct Selector {
    /// Smooth weighted round-robin order of instance indices (weighted only).
    schedule: Vec<u32>,
    /// (point, instance index), sorted by point (consistent hashing only).
    ring: Vec<(u64, u32)>,
    /// Each instance's weight, clamped to 1..=`MAX_WEIGHT`.
    weights: Vec<u32>,
    cursor: AtomicU64,
}

impl Selector {
    pub(crate) fn new(balancing: &Balancing, weights: &[u32]) -> Self {
        let weights: Vec<u32> = weights.iter().map(|w| (*w).clamp(1, MAX_WEIGHT)).collect();
        let schedule = match balancing {
            Balancing::Weighted => smooth_schedule(&weights),
            _ => Vec::new(),
        };
        let ring = match balancing {
            Balancing::ConsistentHash { .. } => ring(&weights),
            _ => Vec::new(),
        };
        Self {
            schedule,
            ring,
            weights,
            cursor: AtomicU64::new(0),
        }
    }

    /// Picks an instance index.
    pub(crate) fn select(
        &self,
        balancing: &Balancing,
        health: &[std::sync::Arc<InstanceHealth>],
        key: Option<&[u8]>,
        tried: &[usize],
        now: u64,
    ) -> Option<usize> {
        let n = health.len();
        let usable =
            |i: usize| !tried.contains(&i) && health.get(i).is_some_and(|h| h.available(now));
        match balancing {
            Balancing::RoundRobin => self.round_robin(n, usable),
            Balancing::ConsistentHash { .. } => match key {
                Some(k) => self.on_ring(k, usable),
                None => self.round_robin(n, usable),
            },
            Balancing::Weighted => {
                let len = self.schedule.len();
                if len == 0 {
                    return None;
                }
                let start = self.next() as usize;
                (0..len)
                    .map(|k| self.schedule[(start + k) % len] as usize)
                    .find(|&i| usable(i))
            }
            Balancing::LeastRequest => {
                let candidates: Vec<usize> = (0..n).filter(|&i| usable(i)).collect();
                match candidates.len() {
                    0 => None,
                    1 => Some(candidates[0]),
                    len => {
                        let r = splitmix64(self.next());
                        let a = candidates[(r % len as u64) as usize];
                        let mut b = candidates[((r >> 32) % (len as u64 - 1)) as usize];
                        if b == a {
                            b = candidates[len - 1];
                        }
                        // Fewer requests per unit of weight wins: (fa+1)/wa < (fb+1)/wb.
                        let load = |i: usize| u64::from(health[i].in_flight()) + 1;
                        let w = |i: usize| u64::from(self.weights.get(i).copied().unwrap_or(1));
                        Some(if load(a) * w(b) <= load(b) * w(a) {
                            a
                        } else {
                            b
                        })
                    }
                }
            }
        }
    }

    fn next(&self) -> u64 {
        self.cursor.fetch_add(1, Ordering::Relaxed)
    }

    fn round_robin(&self, n: usize, usable: impl Fn(usize) -> bool) -> Option<usize> {
        if n == 0 {
            return None;
        }
        let start = self.next() as usize;
        (0..n).map(|k| (start + k) % n).find(|&i| usable(i))
    }

    fn on_ring(&self, key: &[u8], usable: impl Fn(usize) -> bool) -> Option<usize> {
        if self.ring.is_empty() {
            return None;
        }
        let h = hash(key);
        let start = self.ring.partition_point(|(p, _)| *p < h);
        let len = self.ring.len();
        (0..len)
            .map(|k| self.ring[(start + k) % len].1 as usize)
            .find(|&i| usable(i))
    }
}

/// Nginx's smooth weighted round robin, unrolled once over the total weight: weights 5,1,1 give
/// a a b a c a a rather than a a a a a b c.
fn smooth_schedule(weights: &[u32]) -> Vec<u32> {
    let total: i64 = weights.iter().map(|w| i64::from(*w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(weights) {
            *c += i64::from(*w);
        }
        let Some((best, _)) = current
            .iter()
            .enumerate()
            .max_by(|(i, a), (j, b)| a.cmp(b).then(j.cmp(i)))
        else {
            break;
        };
        current[best] -= total;
        out.push(best as u32);
    }
    out
}

fn ring(weights: &[u32]) -> Vec<(u64, u32)> {
    let mut ring = Vec::new();
    for (i, w) in weights.iter().enumerate() {
        for v in 0..(w * RING_POINTS) {
            let mut key = [0u8; 8];
            key[..4].copy_from_slice(&(i as u32).to_be_bytes());
            key[4..].copy_from_slice(&v.to_be_bytes());
            ring.push((hash(&key), i as u32));
        }
    }
    ring.sort_unstable();
    ring
}

/// FNV-1a, then a SplitMix64 finaliser for spread: stable across builds and platforms, so a
/// restart or a second gateway maps a key to the same instance.
fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    splitmix64(h)
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Arc;

    fn healths(n: usize) -> Vec<Arc<InstanceHealth>> {
        (0..n)
            .map(|_| Arc::new(InstanceHealth::default()))
            .collect()
    }

    fn counts(
        b: &Balancing,
        weights: &[u32],
        health: &[Arc<InstanceHealth>],
        calls: usize,
        key: impl Fn(usize) -> Option<Vec<u8>>,
    ) -> HashMap<usize, usize> {
        let sel = Selector::new(b, weights);
        let mut c = HashMap::new();
        for k in 0..calls {
            let i = sel.select(b, health, key(k).as_deref(), &[], 0).unwrap();
            *c.entry(i).or_insert(0) += 1;
        }
        c
    }

    #[test]
    fn smooth_schedule_interleaves_in_proportion() {
        assert_eq!(smooth_schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_schedule(&[1, 1]), vec![0, 1]);
    }

    #[test]
    fn weighted_follows_the_weights() {
        let h = healths(3);
        let c = counts(&Balancing::Weighted, &[3, 1, 1], &h, 500, |_| None);
        assert_eq!((c[&0], c[&1], c[&2]), (300, 100, 100));
    }

    #[test]
    fn every_algorithm_skips_unavailable_and_tried_instances() {
        let h = healths(3);
        let s = crate::health::OutlierSettings {
            consecutive_failures: 1,
            ..Default::default()
        };
        assert!(h[1].report_failure(0, &s).is_some());
        for b in [
            Balancing::RoundRobin,
            Balancing::Weighted,
            Balancing::LeastRequest,
            Balancing::ConsistentHash {
                header: http::HeaderName::from_static("x-k"),
            },
        ] {
            let sel = Selector::new(&b, &[1, 1, 1]);
            for k in 0..200u32 {
                let key = k.to_be_bytes();
                let i = sel.select(&b, &h, Some(&key), &[2], 1).unwrap();
                assert_eq!(i, 0, "{b:?}");
            }
            assert_eq!(sel.select(&b, &h, None, &[0, 2], 1), None);
        }
    }

    #[test]
    fn least_request_prefers_the_idle_instance() {
        let h = healths(2);
        let _busy: Vec<_> = (0..5).map(|_| h[0].track()).collect();
        let c = counts(&Balancing::LeastRequest, &[1, 1], &h, 200, |_| None);
        assert_eq!(c.get(&1), Some(&200), "{c:?}");
        // With equal load both are used.
        let h = healths(4);
        let c = counts(&Balancing::LeastRequest, &[1, 1, 1, 1], &h, 4000, |_| None);
        assert_eq!(c.len(), 4);
        assert!(c.values().all(|&n| n > 500), "{c:?}");
    }

    #[test]
    fn consistent_hash_is_sticky_spread_and_moves_only_the_lost_instances_keys() {
        let b = Balancing::ConsistentHash {
            header: http::HeaderName::from_static("x-k"),
        };
        let h = healths(4);
        let sel = Selector::new(&b, &[1, 1, 1, 1]);
        let pick = |k: u32, h: &[Arc<InstanceHealth>]| {
            sel.select(&b, h, Some(format!("session-{k}").as_bytes()), &[], 1)
                .unwrap()
        };
        let before: Vec<usize> = (0..4000).map(|k| pick(k, &h)).collect();
        let again: Vec<usize> = (0..4000).map(|k| pick(k, &h)).collect();
        assert_eq!(before, again, "sticky");
        let mut c = [0usize; 4];
        for i in &before {
            c[*i] += 1;
        }
        assert!(c.iter().all(|&n| (700..=1300).contains(&n)), "{c:?}");
        // Instance 2 goes away: only its keys move.
        let s = crate::health::OutlierSettings {
            consecutive_failures: 1,
            ..Default::default()
        };
        assert!(h[2].report_failure(0, &s).is_some());
        let after: Vec<usize> = (0..4000).map(|k| pick(k, &h)).collect();
        for (b4, af) in before.iter().zip(&after) {
            if *b4 != 2 {
                assert_eq!(b4, af);
            } else {
                assert_ne!(*af, 2);
            }
        }
    }
}
