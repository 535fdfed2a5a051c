//! The peer set over time: what a discovery refresh does to it. Pure: no I/O, no clock.
//!
//! - A successful refresh replaces the set (this replica is always in it); an empty answer
//!   means "alone".
//! - A failed refresh keeps the last good set, for up to [`MAX_STALE_REFRESHES`] failures in a
//!   row; after that, or when there was never a good set, the replica is alone. The ceiling
//!   bounds how long a fleet routes to peers that discovery no longer sees; the fill RPC's 409
//!   and connection fallbacks absorb the short disagreements.

/// Failed refreshes in a row after which the last good set is dropped.
pub const MAX_STALE_REFRESHES: u32 = 5;

/// The peer set and the discovery state behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    self_addr: String,
    last_good: Option<Vec<String>>,
    failures: u32,
    current: Vec<String>,
}

/// What a refresh changed, for the log line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    /// Peers that joined.
    pub added: Vec<String>,
    /// Peers that left.
    pub removed: Vec<String>,
}

impl Change {
    /// Whether anything changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

impl Membership {
    /// This replica alone, before any discovery.
    pub fn alone(self_addr: &str) -> Self {
        Self {
            self_addr: self_addr.to_string(),
            last_good: None,
            failures: 0,
            current: vec![self_addr.to_string()],
        }
    }

    /// The current set: sorted, deduplicated, this replica included.
    pub fn peers(&self) -> &[String] {
        &self.current
    }

    /// Failed refreshes in a row.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Applies one refresh's outcome and returns what changed.
    pub fn refresh<E>(&mut self, outcome: Result<Vec<String>, E>) -> Change {
        let next = match outcome {
            Ok(found) => {
                self.failures = 0;
                let set = self.with_self(found);
                self.last_good = Some(set.clone());
                set
            }
            Err(_) => {
                self.failures += 1;
                match &self.last_good {
                    Some(good) if self.failures <= MAX_STALE_REFRESHES => good.clone(),
                    _ => vec![self.self_addr.clone()],
                }
            }
        };
        let change = Change {
            added: next
                .iter()
                .filter(|p| !self.current.contains(p))
                .cloned()
                .collect(),
            removed: self
                .current
                .iter()
                .filter(|p| !next.contains(p))
                .cloned()
                .collect(),
        };
        self.current = next;
        change
    }

    fn with_self(&self, mut found: Vec<String>) -> Vec<String> {
        found.push(self.self_addr.clone());
        found.sort();
        found.dedup();
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn success_replaces_and_includes_self() {
        let mut m = Membership::alone("a:1");
        let c = m.refresh::<()>(Ok(set(&["c:1", "b:1"])));
        assert_eq!(m.peers(), set(&["a:1", "b:1", "c:1"]));
        assert_eq!(c.added, set(&["b:1", "c:1"]));
        let c = m.refresh::<()>(Ok(set(&["b:1"])));
        assert_eq!(m.peers(), set(&["a:1", "b:1"]));
        assert_eq!(c.removed, set(&["c:1"]));
        assert!(m.refresh::<()>(Ok(set(&["b:1", "a:1"]))).is_empty());
    }

    #[test]
    fn empty_answer_means_alone() {
        let mut m = Membership::alone("a:1");
        m.refresh::<()>(Ok(set(&["b:1"])));
        m.refresh::<()>(Ok(vec![]));
        assert_eq!(m.peers(), set(&["a:1"]));
        assert_eq!(m.failures(), 0);
    }

    #[test]
    fn failures_keep_the_last_good_set_five_times_then_alone() {
        let mut m = Membership::alone("a:1");
        m.refresh::<()>(Ok(set(&["b:1", "c:1"])));
        for _ in 0..MAX_STALE_REFRESHES {
            assert!(m.refresh(Err("dns down")).is_empty());
            assert_eq!(m.peers(), set(&["a:1", "b:1", "c:1"]));
        }
        let c = m.refresh(Err("dns down"));
        assert_eq!(m.peers(), set(&["a:1"]));
        assert_eq!(c.removed, set(&["b:1", "c:1"]));
        // Discovery recovers: the set comes back at once.
        m.refresh::<()>(Ok(set(&["b:1"])));
        assert_eq!(m.peers(), set(&["a:1", "b:1"]));
    }

    #[test]
    fn failing_from_the_start_is_alone() {
        let mut m = Membership::alone("a:1");
        m.refresh(Err("nope"));
        assert_eq!(m.peers(), set(&["a:1"]));
    }
}
