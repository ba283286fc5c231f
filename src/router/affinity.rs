//! Which provider holds a stored response. The Responses API keeps conversation state at the
//! provider: a request naming `previous_response_id` works only at the provider (and account)
//! that made that response, so a weighted draw, a cheaper target or a failover to another
//! provider would turn a good request into "previous response not found". The sidecar
//! remembers the provider of each response it relayed (a bounded table, the oldest forgotten
//! first) and sends follow-ups, and reads of a stored response, there.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// Responses remembered per sidecar: ~100 bytes each, so at most a few MiB. A conversation
/// older than this many responses in one pod goes wherever the route sends it.
pub(crate) const REMEMBERED: usize = 32_768;

#[derive(Debug)]
pub struct ResponseOwners {
    capacity: usize,
    inner: Mutex<Owners>,
}

#[derive(Debug, Default)]
struct Owners {
    provider: HashMap<Arc<str>, Arc<str>>,
    /// Insertion order, for forgetting the oldest.
    order: VecDeque<Arc<str>>,
}

impl Default for ResponseOwners {
    fn default() -> Self {
        Self::new(REMEMBERED)
    }
}

impl ResponseOwners {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::default(),
        }
    }

    /// `id` was made by `provider`.
    pub(crate) fn remember(&self, id: &str, provider: &Arc<str>) {
        if id.is_empty() {
            return;
        }
        let Ok(mut o) = self.inner.lock() else { return };
        if let Some(p) = o.provider.get_mut(id) {
            *p = provider.clone();
            return;
        }
        if o.order.len() >= self.capacity
            && let Some(oldest) = o.order.pop_front()
        {
            o.provider.remove(&oldest);
        }
        let id: Arc<str> = Arc::from(id);
        o.order.push_back(id.clone());
        o.provider.insert(id, provider.clone());
    }

    /// The provider that made `id`, when this sidecar relayed it.
    pub(crate) fn owner(&self, id: &str) -> Option<Arc<str>> {
        self.inner.lock().ok()?.provider.get(id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_owners_and_forgets_the_oldest_first() {
        let owners = ResponseOwners::new(2);
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        owners.remember("resp_1", &a);
        owners.remember("resp_2", &b);
        owners.remember("resp_1", &b);
        assert_eq!(owners.owner("resp_1").as_deref(), Some("b"), "the latest word wins");
        owners.remember("resp_3", &a);
        assert_eq!(owners.owner("resp_1"), None, "the oldest is forgotten");
        assert_eq!(owners.owner("resp_2").as_deref(), Some("b"));
        assert_eq!(owners.owner("resp_3").as_deref(), Some("a"));
        owners.remember("", &a);
        assert_eq!(owners.owner(""), None);
    }
}
