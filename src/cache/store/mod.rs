//! Where cached answers live: entries with TTL and LRU eviction, bounded by count and bytes;
//! an exact-key map; and per-partition vector sets of the embedded queries. One set per
//! partition means a search can only ever see candidates of the same partition, with no
//! filtering pass. A small partition is a flat list searched by brute force; past
//! [`FLAT_MAX`] vectors it becomes a usearch index (cosine, i8 scalars). A partition is
//! dropped when its last entry goes, and usearch reuses the slots of removed vectors for new
//! ones, so evictions do not leak index memory.
//!
//! The store's lock is only held for map updates; usearch searches and inserts run outside it
//! on the embedder thread (or the blocking pool), never on the event loop.
//!
//! - `vectors` — the flat lists and usearch indexes, per partition.
//! - `pack` — an entry's query and answer as one zstd-packed block.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;

use super::guard::Features;
use super::key::Key;

mod pack;
mod vectors;

use self::pack::*;
#[cfg(any(test, feature = "internals"))]
pub use self::vectors::FLAT_MAX;
pub use self::vectors::{PartitionIndex, SEARCH_CANDIDATES};

/// What is stored for one answer.
pub struct NewEntry {
    pub exact: Key,
    pub partition: Option<Key>,
    pub tenant: Arc<str>,
    pub route: Arc<str>,
    pub query: Option<String>,
    /// The answer as a complete (non-streaming) JSON response.
    pub response: Bytes,
    pub model: Arc<str>,
    pub expires: Instant,
}

/// A cached answer, as handed to the server.
pub struct Cached {
    pub(crate) id: u64,
    pub(crate) response: Bytes,
    pub(crate) model: Arc<str>,
    /// The entry's learned threshold (see `tighten`).
    pub(crate) min_similarity: f32,
    /// Guard features of the cached query (semantic candidates only).
    pub(crate) features: Option<Features>,
    /// The cached query's text (semantic candidates only, UTF-8 checked), for token alignment
    /// and the pair verifier: a slice of the unpacked block, not a copy.
    pub(crate) query: Option<Bytes>,
}

/// What an entry is filed under: shared by every entry with the same three, so an entry pays
/// one pointer for them instead of three.
#[derive(PartialEq, Eq, Hash)]
struct Labels {
    tenant: Arc<str>,
    route: Arc<str>,
    model: Arc<str>,
}

/// Marks the end of a list of slots (LRU order, free slots).
const NIL: u32 = u32::MAX;

/// One cached answer; 96 bytes of bookkeeping (with its slot) beside its blob. Ids handed out (and used as
/// usearch keys) are `generation << 32 | slot`, so an id of an evicted entry never reaches
/// the entry that reuses its slot.
struct Entry {
    exact: ExactTag,
    blob: Blob,
    labels: Arc<Labels>,
    /// Milliseconds after the store's epoch.
    expires: u64,
    /// The vectors of the entry's partition, if it was stored for semantic lookups.
    partition: Option<Arc<PartitionIndex>>,
    /// Learned by online verification: a semantic hit on this entry needs at least this
    /// similarity (0 until a verification found it served a wrong answer).
    min_similarity: f32,
    /// What its vector was counted as against `max_bytes` (0 for exact-only), kept so that a
    /// change of embedder width never unbalances the count (fits in the padding).
    vector_cost: u32,
}

struct Slot {
    generation: u32,
    /// LRU neighbours while occupied (towards the most and the least recent); `older` links the
    /// free list while empty.
    newer: u32,
    older: u32,
    entry: Option<Entry>,
}

struct Partition {
    index: Arc<PartitionIndex>,
    live: usize,
}

struct Inner {
    slots: Vec<Slot>,
    free: u32,
    len: usize,
    /// Most and least recently used occupied slots.
    newest: u32,
    oldest: u32,
    /// Exact key → slot; keys are SHA-256 digests, so their first bytes are the hash.
    exact: hashbrown::HashTable<u32>,
    partitions: HashMap<Key, Partition>,
    labels: HashSet<Arc<Labels>>,
    bytes: usize,
    epoch: Instant,
}

/// An exact key as an entry holds it: the first half of its SHA-256. Telling two requests
/// apart by 128 bits takes ~2^64 of them to meet a collision, and it saves 16 bytes an entry.
type ExactTag = [u8; 16];

fn tag(key: &Key) -> ExactTag {
    let mut t = [0u8; 16];
    t.copy_from_slice(&key[..16]);
    t
}

/// Exact keys (and tags) are digests, so their first bytes are the hash.
fn key_hash(key: &[u8]) -> u64 {
    let mut h = [0u8; 8];
    h.copy_from_slice(&key[..8]);
    u64::from_le_bytes(h)
}

fn id_of(slot: u32, generation: u32) -> u64 {
    u64::from(generation) << 32 | u64::from(slot)
}

impl Inner {
    fn new() -> Self {
        Inner {
            slots: Vec::new(),
            free: NIL,
            len: 0,
            newest: NIL,
            oldest: NIL,
            exact: hashbrown::HashTable::new(),
            partitions: HashMap::new(),
            labels: HashSet::new(),
            bytes: 0,
            epoch: Instant::now(),
        }
    }

    fn millis(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// The occupied slot an id names, if that entry is still there.
    fn slot_of(&self, id: u64) -> Option<u32> {
        let slot = (id & u64::from(u32::MAX)) as u32;
        let s = self.slots.get(slot as usize)?;
        (id_of(slot, s.generation) == id && s.entry.is_some()).then_some(slot)
    }

    fn entry(&self, slot: u32) -> Option<&Entry> {
        self.slots.get(slot as usize)?.entry.as_ref()
    }

    fn find_exact(&self, key: &Key) -> Option<u32> {
        let slots = &self.slots;
        let t = tag(key);
        self.exact
            .find(key_hash(key), |&s| {
                slots[s as usize].entry.as_ref().is_some_and(|e| e.exact == t)
            })
            .copied()
    }

    fn unlink(&mut self, slot: u32) {
        let (newer, older) = {
            let s = &self.slots[slot as usize];
            (s.newer, s.older)
        };
        match newer {
            NIL => self.newest = older,
            n => self.slots[n as usize].older = older,
        }
        match older {
            NIL => self.oldest = newer,
            o => self.slots[o as usize].newer = newer,
        }
    }

    /// A slot for `entry`: a free one, else a new one at the end of the table.
    fn take_slot(&mut self, entry: Entry, max_entries: usize, max_bytes: usize) -> u32 {
        match self.free {
            NIL => {
                self.reserve_for(max_entries, max_bytes);
                self.slots.push(Slot {
                    generation: 1,
                    newer: NIL,
                    older: NIL,
                    entry: Some(entry),
                });
                (self.slots.len() - 1) as u32
            }
            free => {
                let s = &mut self.slots[free as usize];
                self.free = s.older;
                s.entry = Some(entry);
                free
            }
        }
    }

    fn push_newest(&mut self, slot: u32) {
        let old_newest = self.newest;
        {
            let s = &mut self.slots[slot as usize];
            s.newer = NIL;
            s.older = old_newest;
        }
        match old_newest {
            NIL => self.oldest = slot,
            n => self.slots[n as usize].newer = slot,
        }
        self.newest = slot;
    }

    /// Marks an entry used.
    fn touch(&mut self, slot: u32) {
        if self.newest != slot {
            self.unlink(slot);
            self.push_newest(slot);
        }
    }

    /// Room for the entries the bounds allow, reserved before it is needed: the slots are
    /// written in order, so untouched capacity costs address space, not memory; growing by
    /// doubling would instead leave up to half of a large table allocated and copied.
    fn reserve_for(&mut self, max_entries: usize, max_bytes: usize) {
        if self.slots.len() < self.slots.capacity() {
            return;
        }
        let bound = max_entries.min(max_bytes / ENTRY_OVERHEAD).min(RESERVE_MAX);
        if bound > self.slots.len() {
            self.slots.reserve_exact(bound - self.slots.len());
        }
    }

    fn intern(&mut self, tenant: Arc<str>, route: Arc<str>, model: Arc<str>) -> Arc<Labels> {
        let labels = Labels { tenant, route, model };
        if let Some(l) = self.labels.get(&labels) {
            return l.clone();
        }
        let l = Arc::new(labels);
        self.labels.insert(l.clone());
        l
    }

    /// The index of a partition, created on first use, counting one more entry in it.
    fn partition_for(&mut self, key: Key, epoch: u64) -> Arc<PartitionIndex> {
        let part = self.partitions.entry(key).or_insert_with(|| Partition {
            index: Arc::new(PartitionIndex::new(key, epoch)),
            live: 0,
        });
        part.live += 1;
        part.index.clone()
    }

    fn remove(&mut self, slot: u32, removals: &mut Removals) {
        let Some(e) = self.slots.get_mut(slot as usize).and_then(|s| s.entry.take()) else {
            return;
        };
        let id = id_of(slot, self.slots[slot as usize].generation);
        self.unlink(slot);
        {
            let s = &mut self.slots[slot as usize];
            s.generation = s.generation.wrapping_add(1);
            s.newer = NIL;
            s.older = self.free;
        }
        self.free = slot;
        self.len -= 1;
        if let Ok(found) = self.exact.find_entry(key_hash(&e.exact), |&s| s == slot) {
            found.remove();
        }
        self.bytes = self.bytes.saturating_sub(cost(&e.blob, e.vector_cost as usize));
        // The interning set and this entry hold the last two references.
        if Arc::strong_count(&e.labels) == 2 {
            self.labels.remove(&*e.labels);
        }
        if let Some(index) = e.partition
            && let Some(part) = self.partitions.get_mut(&index.key)
        {
            part.live -= 1;
            if part.live == 0 {
                // Dropping the index frees all of its memory at once.
                self.partitions.remove(&index.key);
            } else {
                removals.push((index, id));
            }
        }
    }

    /// The entry in `slot` as handed out, with its query; the LRU is updated.
    /// Returns a copy of its blob (a few hundred bytes): unpack it outside the lock.
    fn hand_out(&mut self, slot: u32) -> Option<(Cached, Blob)> {
        self.touch(slot);
        let s = &self.slots[slot as usize];
        let e = s.entry.as_ref()?;
        let cached = Cached {
            id: id_of(slot, s.generation),
            response: Bytes::new(),
            model: e.labels.model.clone(),
            min_similarity: e.min_similarity,
            features: None,
            query: None,
        };
        Some((cached, e.blob.clone()))
    }
}

/// Why entries left the cache (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    Lru,
    Expired,
}

impl Eviction {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Eviction::Lru => "lru",
            Eviction::Expired => "expired",
        }
    }
}

/// Index removals to do once the store lock is released.
type Removals = Vec<(Arc<PartitionIndex>, u64)>;

pub struct Store {
    inner: Mutex<Inner>,
    /// What a new semantic entry's vector counts against `max_bytes`: follows the embedder's
    /// width ([`Store::set_dimensions`]).
    vector_cost: AtomicUsize,
    /// The embedder generation new partitions belong to ([`Store::clear_vectors`]).
    epoch: AtomicU64,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            inner: Mutex::new(Inner::new()),
            vector_cost: AtomicUsize::new(VECTOR_OVERHEAD),
            epoch: AtomicU64::new(0),
        }
    }
}

/// How far above a wrongly served similarity an entry's learned threshold is set.
pub(crate) const LEARNED_MARGIN: f32 = 0.005;

/// What an entry costs beyond its blob, as counted against `max_bytes` so that the bound follows
/// the memory really held: its slot in the slab, its bucket in the exact table, the allocator's
/// header and the heap's slack around the blob. Measured in a serving sidecar filled with 100k
/// entries (`benches/cache-rss.sh`): exact-only, 525 resident bytes per entry for 320-byte
/// blobs.
const ENTRY_OVERHEAD: usize = 208;
/// And for an entry stored for semantic lookups: its i8 vector (384 bytes), its HNSW node and
/// links, usearch's key table and growth headroom. Measured as above: 1,216 resident bytes per
/// entry for 417-byte blobs. Another width (a remote embedder) changes the vector's share
/// byte for byte.
const VECTOR_OVERHEAD: usize = 592;
const VECTOR_OVERHEAD_WIDTH: usize = crate::embed::DIMENSIONS;

/// What an entry counts against `max_bytes`.
fn cost(blob: &Blob, vector_cost: usize) -> usize {
    blob.size() + ENTRY_OVERHEAD + vector_cost
}

/// Slots examined per lock by sweeps and purges.
const SWEEP_SLICE: u32 = 4096;

/// Slots reserved ahead at most (~100 MB of address space, none of it touched until used).
const RESERVE_MAX: usize = 1 << 20;

impl Store {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len
    }

    /// The embedder's vectors are `dims` wide: what a semantic entry counts from now on.
    pub(crate) fn set_dimensions(&self, dims: usize) {
        let cost = (VECTOR_OVERHEAD - VECTOR_OVERHEAD_WIDTH + dims).min(u32::MAX as usize);
        self.vector_cost.store(cost, Ordering::Relaxed);
    }

    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Memory held by all partition indexes.
    #[cfg(any(test, feature = "internals"))]
    pub fn index_memory(&self) -> usize {
        let indexes: Vec<_> = self.lock().partitions.values().map(|p| p.index.clone()).collect();
        indexes.iter().map(|i| i.memory_usage()).sum()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn get_exact(&self, key: &Key, now: Instant) -> Result<Option<Cached>, Vec<Eviction>> {
        let mut removals = Removals::new();
        let hit = {
            let mut g = self.lock();
            let inner = &mut *g;
            let now = inner.millis(now);
            match inner.find_exact(key) {
                None => Ok(None),
                Some(slot) if inner.entry(slot).is_some_and(|e| e.expires <= now) => {
                    inner.remove(slot, &mut removals);
                    Err(vec![Eviction::Expired])
                }
                Some(slot) => Ok(inner.hand_out(slot)),
            }
        };
        finish_removals(removals);
        // Outside the lock: unpacking.
        hit.map(|h| {
            h.and_then(|(mut cached, blob)| {
                cached.response = blob.unpack()?.0;
                Some(cached)
            })
        })
    }

    /// The index of a partition, if it has entries.
    pub(crate) fn partition(&self, key: &Key) -> Option<Arc<PartitionIndex>> {
        self.lock().partitions.get(key).map(|p| p.index.clone())
    }

    /// A semantic candidate, if it is still live and in `partition`.
    pub(crate) fn candidate(&self, id: u64, partition: &Key, now: Instant) -> Option<Cached> {
        let (mut cached, blob) = {
            let mut g = self.lock();
            let slot = g.slot_of(id)?;
            let now = g.millis(now);
            let e = g.entry(slot)?;
            if e.partition.as_ref().map(|p| &p.key) != Some(partition) || e.expires <= now {
                return None;
            }
            g.hand_out(slot)?
        };
        // Outside the lock: unpacking and feature extraction.
        let (answer, query) = blob.unpack()?;
        cached.response = answer;
        cached.features = Some(Features::of(std::str::from_utf8(&query).ok()?));
        cached.query = Some(query);
        Some(cached)
    }

    /// Adds an entry, evicting the least recently used beyond the bounds. Returns the new id
    /// and the partition index its vector goes into, and what was evicted.
    pub fn insert(
        &self,
        new: NewEntry,
        max_entries: usize,
        max_bytes: usize,
    ) -> (u64, Option<Arc<PartitionIndex>>, Vec<Eviction>) {
        let mut removals = Removals::new();
        let mut evicted = Vec::new();
        // Packed before the lock: compression is the slow part of an insert. An answer over
        // 4 GiB cannot be held (nor would it fit any sane `max_bytes`).
        let Some(blob) = Blob::new(new.query.as_deref(), &new.response) else {
            return (0, None, evicted);
        };
        let vector_cost = if new.partition.is_some() {
            self.vector_cost.load(Ordering::Relaxed)
        } else {
            0
        };
        let bytes = cost(&blob, vector_cost);
        // One answer larger than the whole budget would only flush the cache to be evicted next.
        if bytes > max_bytes {
            return (0, None, evicted);
        }
        let result = {
            let mut g = self.lock();
            let inner = &mut *g;
            // A newer answer for the same exact key replaces the old one.
            if let Some(old) = inner.find_exact(&new.exact) {
                inner.remove(old, &mut removals);
            }
            // Room is made before the entry takes a slot, so a full table reuses an evicted
            // slot instead of growing (a push at capacity would double it).
            while inner.len >= max_entries || inner.bytes + bytes > max_bytes {
                if inner.oldest == NIL {
                    break;
                }
                inner.remove(inner.oldest, &mut removals);
                evicted.push(Eviction::Lru);
            }
            let epoch = self.epoch.load(Ordering::Relaxed);
            let index = new.partition.map(|key| inner.partition_for(key, epoch));
            let labels = inner.intern(new.tenant, new.route, new.model);
            let entry = Entry {
                exact: tag(&new.exact),
                blob,
                labels,
                expires: inner.millis(new.expires),
                partition: index.clone(),
                min_similarity: 0.0,
                vector_cost: vector_cost as u32,
            };
            let slot = inner.take_slot(entry, max_entries, max_bytes);
            inner.push_newest(slot);
            inner.len += 1;
            inner.bytes += bytes;
            let slots = &inner.slots;
            inner.exact.insert_unique(key_hash(&new.exact), slot, |&s| {
                slots[s as usize].entry.as_ref().map_or(0, |e| key_hash(&e.exact))
            });
            (id_of(slot, inner.slots[slot as usize].generation), index)
        };
        finish_removals(removals);
        (result.0, result.1, evicted)
    }

    /// Raises an entry's learned threshold above `similarity`: verification found that a hit
    /// at that similarity served a wrong answer. Returns the new threshold.
    pub(crate) fn tighten(&self, id: u64, similarity: f32) -> Option<f32> {
        let mut g = self.lock();
        let slot = g.slot_of(id)?;
        let e = g.slots[slot as usize].entry.as_mut()?;
        e.min_similarity = e.min_similarity.max((similarity + LEARNED_MARGIN).min(1.0));
        Some(e.min_similarity)
    }

    /// Removes expired entries; returns how many.
    pub(crate) fn sweep(&self, now: Instant) -> usize {
        let now = self.lock().millis(now);
        self.remove_where(|e| e.expires <= now)
    }

    /// Empties every partition's vectors, which came from an embedder that is gone: from now
    /// on they take vectors of generation `epoch` only. The entries stay, for exact lookups
    /// (a new answer to a question replaces its entry, vector and all). Returns how many
    /// vectors were dropped.
    pub(crate) fn clear_vectors(&self, epoch: u64) -> usize {
        let indexes: Vec<Arc<PartitionIndex>> = {
            let inner = self.lock();
            // Set under the lock: a partition created from now on is of the new generation.
            self.epoch.store(epoch, Ordering::Relaxed);
            inner.partitions.values().map(|p| p.index.clone()).collect()
        };
        indexes.iter().map(|i| i.clear(epoch)).sum()
    }

    /// Removes entries of a tenant and/or route (all when both are `None`).
    pub(crate) fn purge(&self, tenant: Option<&str>, route: Option<&str>) -> usize {
        self.remove_where(|e| {
            tenant.is_none_or(|t| *e.labels.tenant == *t) && route.is_none_or(|r| *e.labels.route == *r)
        })
    }

    fn remove_where(&self, pred: impl Fn(&Entry) -> bool) -> usize {
        let mut removals = Removals::new();
        let mut n = 0;
        let mut doomed = Vec::new();
        let mut start = 0u32;
        // A slice of the table per lock: a sweep of 100k slots held the lock (and every
        // lookup behind it) for ~0.3 ms in one go.
        loop {
            let mut g = self.lock();
            let inner = &mut *g;
            let len = inner.slots.len() as u32;
            if start >= len {
                break;
            }
            let end = start.saturating_add(SWEEP_SLICE).min(len);
            doomed.clear();
            doomed.extend((start..end).filter(|&s| inner.entry(s).is_some_and(&pred)));
            for &slot in &doomed {
                inner.remove(slot, &mut removals);
            }
            n += doomed.len();
            start = end;
        }
        finish_removals(removals);
        n
    }
}

fn finish_removals(removals: Removals) {
    for (index, id) in removals {
        index.remove(id);
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod partition_tests;
