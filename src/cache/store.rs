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

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Instant;

use bytes::Bytes;
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use super::guard::Features;
use super::key::Key;
use crate::embed::DIMENSIONS;

/// Candidates fetched per semantic search: the best few, so a guard rejection of the nearest
/// can still fall back to a verified runner-up.
pub const SEARCH_CANDIDATES: usize = 4;
/// HNSW connectivity. usearch's default (16) doubles graph memory for no recall gain at the
/// partition sizes seen here (measured: 100k vectors, recall@1 unchanged at 12).
const CONNECTIVITY: usize = 12;

/// Partitions up to this many vectors are searched by brute force over a flat list; a usearch
/// index costs ~58 KB of RSS even when nearly empty, and requests with unique context (a
/// timestamp in the system prompt) would each create one. Scanning 256 vectors takes ~0.1 ms.
pub const FLAT_MAX: usize = 256;

enum Vectors {
    Flat(Vec<(u64, Box<[f32]>)>),
    Hnsw(Index),
}

/// The vectors of one partition.
pub struct PartitionIndex {
    vectors: RwLock<Vectors>,
}

fn new_index(capacity: usize) -> Option<Index> {
    let options = IndexOptions {
        dimensions: DIMENSIONS,
        metric: MetricKind::Cos,
        quantization: ScalarKind::I8,
        connectivity: CONNECTIVITY,
        ..Default::default()
    };
    let index = Index::new(&options).ok()?;
    index.reserve(capacity).ok()?;
    Some(index)
}

impl PartitionIndex {
    fn new() -> Option<Self> {
        Some(PartitionIndex {
            vectors: RwLock::new(Vectors::Flat(Vec::new())),
        })
    }

    /// Adds a vector (blocking: call off the event loop).
    pub fn add(&self, id: u64, vector: &[f32]) -> bool {
        if vector.len() != DIMENSIONS {
            return false;
        }
        {
            let Ok(v) = self.vectors.read() else { return false };
            if let Vectors::Hnsw(index) = &*v
                && index.size() < index.capacity()
            {
                return index.add(id, vector).is_ok();
            }
        }
        // Growing (or leaving the flat list) is not safe alongside other operations.
        let Ok(mut v) = self.vectors.write() else { return false };
        match &mut *v {
            Vectors::Flat(list) if list.len() < FLAT_MAX => {
                list.push((id, vector.into()));
                true
            }
            Vectors::Flat(list) => {
                let Some(index) = new_index(FLAT_MAX * 2) else {
                    return false;
                };
                for (k, x) in list.iter() {
                    let _ = index.add(*k, x);
                }
                let ok = index.add(id, vector).is_ok();
                *v = Vectors::Hnsw(index);
                ok
            }
            Vectors::Hnsw(index) => {
                // Grow by a quarter: doubling would leave up to half of a large index unused.
                let capacity = index.capacity() + (index.capacity() / 4).max(64);
                index.reserve(capacity).is_ok() && index.add(id, vector).is_ok()
            }
        }
    }

    /// The nearest entries: (id, cosine similarity), best first (blocking).
    pub fn search(&self, vector: &[f32], count: usize) -> Vec<(u64, f32)> {
        let Ok(v) = self.vectors.read() else { return Vec::new() };
        match &*v {
            Vectors::Flat(list) => {
                let mut scored: Vec<(u64, f32)> = list
                    .iter()
                    .map(|(id, x)| (*id, crate::embed::cosine(vector, x)))
                    .collect();
                scored.sort_by(|a, b| b.1.total_cmp(&a.1));
                scored.truncate(count);
                scored
            }
            Vectors::Hnsw(index) => match index.search(vector, count) {
                Ok(m) => m.keys.into_iter().zip(m.distances).map(|(k, d)| (k, 1.0 - d)).collect(),
                Err(_) => Vec::new(),
            },
        }
    }

    fn remove(&self, id: u64) {
        let Ok(mut v) = self.vectors.write() else { return };
        match &mut *v {
            Vectors::Flat(list) => list.retain(|(k, _)| *k != id),
            Vectors::Hnsw(index) => {
                let _ = index.remove(id);
            }
        }
    }

    pub fn memory_usage(&self) -> usize {
        match self.vectors.read().as_deref() {
            Ok(Vectors::Flat(list)) => list.capacity() * 24 + list.len() * DIMENSIONS * 4,
            Ok(Vectors::Hnsw(index)) => index.memory_usage(),
            Err(_) => 0,
        }
    }

    pub fn len(&self) -> usize {
        match self.vectors.read().as_deref() {
            Ok(Vectors::Flat(list)) => list.len(),
            Ok(Vectors::Hnsw(index)) => index.size(),
            Err(_) => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

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

struct Entry {
    exact: Key,
    partition: Option<Key>,
    tenant: Arc<str>,
    route: Arc<str>,
    /// The embedded query, for the guard. Its features are computed when it is a candidate
    /// (a few per lookup), not stored: that would cost ~2 KB per entry.
    query: Option<Box<str>>,
    response: Packed,
    model: Arc<str>,
    expires: Instant,
    tick: u64,
    bytes: usize,
    /// Learned by online verification: a semantic hit on this entry needs at least this
    /// similarity (0 until a verification found it served a wrong answer).
    min_similarity: f32,
}

/// A cached answer, as handed to the server.
pub struct Cached {
    pub id: u64,
    pub response: Bytes,
    pub model: Arc<str>,
    /// The entry's learned threshold (see `tighten`).
    pub min_similarity: f32,
    /// Guard features of the cached query (semantic candidates only).
    pub features: Option<Features>,
}

/// OpenAI's response JSON around the parts that vary, as an LZ4 dictionary: a cached answer's
/// keys and boilerplate then cost a few bytes each, and its text compresses against itself.
/// Answers are held packed (they are most of the cache's memory) and unpacked outside the lock
/// on a hit, in well under a microsecond.
const PACK_DICT: &[u8] = br#"{"id":"msg_01","type":"message","role":"assistant","content":[{"type":"text","text":""}],"stop_reason":"end_turn","tool_calls":[{"id":"call_","type":"function","function":{"name":"","arguments":"{\""}}],"object":"text_completion","choices":[{"text":"","index":0,"logprobs":null,"finish_reason":"length"}],"usage":{"prompt_tokens":12,"completion_tokens":10,"total_tokens":22,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_"}
 the of and to in is that for it with as on this are be you can by or your from which will an at if not have more can use also when each their one other into how the following The This In To For It You is a are the and the of the to the in the"},{"id":"chatcmpl-","object":"chat.completion","created":17,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":"#;

/// A cached answer as held in memory.
#[derive(Clone)]
enum Packed {
    Plain(Bytes),
    Lz4 { data: Bytes, len: u32 },
}

impl Packed {
    /// Packs when it saves at least an eighth (tiny or incompressible answers stay plain).
    fn new(answer: Bytes) -> Packed {
        let Ok(len) = u32::try_from(answer.len()) else {
            return Packed::Plain(answer);
        };
        if answer.len() < 64 {
            return Packed::Plain(answer);
        }
        let packed = lz4_flex::block::compress_with_dict(&answer, PACK_DICT);
        if packed.len() * 8 > answer.len() * 7 {
            return Packed::Plain(answer);
        }
        Packed::Lz4 {
            data: Bytes::from(packed.into_boxed_slice()),
            len,
        }
    }

    fn size(&self) -> usize {
        match self {
            Packed::Plain(b) => b.len(),
            Packed::Lz4 { data, .. } => data.len(),
        }
    }

    /// The answer; `None` only if the packed bytes were corrupted in memory.
    fn unpack(self) -> Option<Bytes> {
        match self {
            Packed::Plain(b) => Some(b),
            Packed::Lz4 { data, len } => lz4_flex::block::decompress_with_dict(&data, len as usize, PACK_DICT)
                .ok()
                .filter(|v| v.len() == len as usize)
                .map(Bytes::from),
        }
    }
}

struct Partition {
    index: Arc<PartitionIndex>,
    live: usize,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<u64, Entry>,
    exact: HashMap<Key, u64>,
    lru: BTreeMap<u64, u64>,
    partitions: HashMap<Key, Partition>,
    next_id: u64,
    tick: u64,
    bytes: usize,
}

/// Why entries left the cache (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    Lru,
    Expired,
    Purge,
}

impl Eviction {
    pub fn label(self) -> &'static str {
        match self {
            Eviction::Lru => "lru",
            Eviction::Expired => "expired",
            Eviction::Purge => "purge",
        }
    }
}

/// Index removals to do once the store lock is released.
type Removals = Vec<(Arc<PartitionIndex>, u64)>;

#[derive(Default)]
pub struct Store {
    inner: Mutex<Inner>,
}

/// How far above a wrongly served similarity an entry's learned threshold is set.
pub const LEARNED_MARGIN: f32 = 0.005;

/// Per-entry overhead beyond the response bytes: maps, LRU node, vector slot (i8 + graph).
const ENTRY_OVERHEAD: usize = 1024;

impl Store {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Memory held by all partition indexes.
    pub fn index_memory(&self) -> usize {
        let indexes: Vec<_> = self.lock().partitions.values().map(|p| p.index.clone()).collect();
        indexes.iter().map(|i| i.memory_usage()).sum()
    }

    pub fn get_exact(&self, key: &Key, now: Instant) -> Result<Option<Cached>, Vec<Eviction>> {
        let mut evicted = Vec::new();
        let mut removals = Removals::new();
        let hit = {
            let mut g = self.lock();
            let inner = &mut *g;
            match inner.exact.get(key).copied() {
                None => None,
                Some(id) => {
                    if inner.entries.get(&id).is_some_and(|e| e.expires <= now) {
                        remove(inner, id, &mut removals);
                        evicted.push(Eviction::Expired);
                        None
                    } else {
                        touch(inner, id).map(|(c, p, _)| (c, p))
                    }
                }
            }
        };
        finish_removals(removals);
        let hit = hit.and_then(|(c, p)| unpacked(c, p));
        if evicted.is_empty() { Ok(hit) } else { Err(evicted) }
    }

    /// The index of a partition, if it has entries.
    pub fn partition(&self, key: &Key) -> Option<Arc<PartitionIndex>> {
        self.lock().partitions.get(key).map(|p| p.index.clone())
    }

    /// A semantic candidate, if it is still live and in `partition`.
    pub fn candidate(&self, id: u64, partition: &Key, now: Instant) -> Option<Cached> {
        let (cached, packed, query) = {
            let mut g = self.lock();
            let e = g.entries.get(&id)?;
            if e.partition.as_ref() != Some(partition) || e.expires <= now {
                return None;
            }
            touch(&mut g, id)?
        };
        // Outside the lock: unpacking and feature extraction.
        let mut cached = unpacked(cached, packed)?;
        cached.features = query.as_deref().map(Features::of);
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
        // Packed before the lock: compression is the slow part of an insert.
        let response = Packed::new(new.response);
        let bytes = response.size() + new.query.as_ref().map_or(0, String::len) + ENTRY_OVERHEAD;
        let mut removals = Removals::new();
        let mut evicted = Vec::new();
        let result = {
            let mut g = self.lock();
            let inner = &mut *g;
            // A newer answer for the same exact key replaces the old one.
            if let Some(old) = inner.exact.get(&new.exact).copied() {
                remove(inner, old, &mut removals);
            }
            inner.next_id += 1;
            inner.tick += 1;
            let id = inner.next_id;
            let index = match new.partition {
                Some(p) => {
                    let part = match inner.partitions.get_mut(&p) {
                        Some(part) => Some(part),
                        None => PartitionIndex::new().map(|index| {
                            inner.partitions.entry(p).or_insert(Partition {
                                index: Arc::new(index),
                                live: 0,
                            })
                        }),
                    };
                    part.map(|part| {
                        part.live += 1;
                        part.index.clone()
                    })
                }
                None => None,
            };
            inner.exact.insert(new.exact, id);
            inner.lru.insert(inner.tick, id);
            inner.bytes += bytes;
            inner.entries.insert(
                id,
                Entry {
                    exact: new.exact,
                    partition: if index.is_some() { new.partition } else { None },
                    tenant: new.tenant,
                    route: new.route,
                    query: new.query.map(String::into_boxed_str),
                    response,
                    model: new.model,
                    expires: new.expires,
                    tick: inner.tick,
                    bytes,
                    min_similarity: 0.0,
                },
            );
            while inner.entries.len() > max_entries || inner.bytes > max_bytes {
                let Some((_, &oldest)) = inner.lru.iter().next() else {
                    break;
                };
                if oldest == id {
                    break;
                }
                remove(inner, oldest, &mut removals);
                evicted.push(Eviction::Lru);
            }
            (id, index)
        };
        finish_removals(removals);
        (result.0, result.1, evicted)
    }

    /// Raises an entry's learned threshold above `similarity`: verification found that a hit
    /// at that similarity served a wrong answer. Returns the new threshold.
    pub fn tighten(&self, id: u64, similarity: f32) -> Option<f32> {
        let mut g = self.lock();
        let e = g.entries.get_mut(&id)?;
        e.min_similarity = e.min_similarity.max((similarity + LEARNED_MARGIN).min(1.0));
        Some(e.min_similarity)
    }

    /// Removes expired entries; returns how many.
    pub fn sweep(&self, now: Instant) -> usize {
        self.remove_where(|e| e.expires <= now)
    }

    /// Removes entries of a tenant and/or route (all when both are `None`).
    pub fn purge(&self, tenant: Option<&str>, route: Option<&str>) -> usize {
        self.remove_where(|e| tenant.is_none_or(|t| *e.tenant == *t) && route.is_none_or(|r| *e.route == *r))
    }

    fn remove_where(&self, pred: impl Fn(&Entry) -> bool) -> usize {
        let mut removals = Removals::new();
        let n = {
            let mut g = self.lock();
            let inner = &mut *g;
            let ids: Vec<u64> = inner
                .entries
                .iter()
                .filter(|(_, e)| pred(e))
                .map(|(id, _)| *id)
                .collect();
            for id in &ids {
                remove(inner, *id, &mut removals);
            }
            ids.len()
        };
        finish_removals(removals);
        n
    }
}

/// Marks an entry used. Returns it with its answer still packed: unpack outside the lock.
fn touch(inner: &mut Inner, id: u64) -> Option<(Cached, Packed, Option<Box<str>>)> {
    inner.tick += 1;
    let tick = inner.tick;
    let e = inner.entries.get_mut(&id)?;
    inner.lru.remove(&e.tick);
    e.tick = tick;
    inner.lru.insert(tick, id);
    let cached = Cached {
        id,
        response: Bytes::new(),
        model: e.model.clone(),
        min_similarity: e.min_similarity,
        features: None,
    };
    Some((cached, e.response.clone(), e.query.clone()))
}

fn unpacked(mut cached: Cached, packed: Packed) -> Option<Cached> {
    cached.response = packed.unpack()?;
    Some(cached)
}

fn remove(inner: &mut Inner, id: u64, removals: &mut Removals) {
    let Some(e) = inner.entries.remove(&id) else { return };
    inner.lru.remove(&e.tick);
    if inner.exact.get(&e.exact) == Some(&id) {
        inner.exact.remove(&e.exact);
    }
    inner.bytes = inner.bytes.saturating_sub(e.bytes);
    if let Some(p) = e.partition
        && let Some(part) = inner.partitions.get_mut(&p)
    {
        part.live -= 1;
        if part.live == 0 {
            // Dropping the index frees all of its memory at once.
            inner.partitions.remove(&p);
        } else {
            removals.push((part.index.clone(), id));
        }
    }
}

fn finish_removals(removals: Removals) {
    for (index, id) in removals {
        index.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn entry(exact: u8, partition: Option<u8>, tenant: &str) -> NewEntry {
        NewEntry {
            exact: [exact; 32],
            partition: partition.map(|p| [p; 32]),
            tenant: tenant.into(),
            route: "r".into(),
            query: Some(format!("query {exact}")),
            response: Bytes::from(vec![b'x'; 100]),
            model: "m".into(),
            expires: Instant::now() + Duration::from_secs(60),
        }
    }

    fn unit(i: usize) -> Vec<f32> {
        let mut v = vec![0.01f32; DIMENSIONS];
        v[i % DIMENSIONS] = 1.0;
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    }

    #[test]
    fn answers_are_held_packed_and_served_whole() {
        let answer = br#"{"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion","created":1741569952,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"To reset your password, open Settings, choose Security, then Reset password. You will receive a code by e-mail; enter it within ten minutes. If the e-mail does not arrive, check your spam folder or contact support.","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":19,"completion_tokens":45,"total_tokens":64,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_06737a9306"}"#;
        let packed = Packed::new(Bytes::from_static(answer));
        assert!(matches!(packed, Packed::Lz4 { .. }));
        assert!(
            packed.size() * 2 < answer.len(),
            "{} of {} bytes",
            packed.size(),
            answer.len()
        );
        assert_eq!(&packed.unpack().unwrap()[..], &answer[..]);
        // Incompressible and tiny answers stay as they are.
        let noise: Vec<u8> = (0..400).map(|_| fastrand::u8(..)).collect();
        assert!(matches!(Packed::new(Bytes::from(noise)), Packed::Plain(_)));
        assert!(matches!(Packed::new(Bytes::from_static(b"{}")), Packed::Plain(_)));

        let s = Store::default();
        let mut e = entry(9, None, "a");
        e.response = Bytes::from_static(answer);
        s.insert(e, 10, usize::MAX);
        let hit = s.get_exact(&[9; 32], Instant::now()).unwrap().unwrap();
        assert_eq!(&hit.response[..], &answer[..]);
    }

    #[test]
    fn exact_hits_expire_and_lru_bounds_hold() {
        let s = Store::default();
        let now = Instant::now();
        s.insert(entry(1, None, "a"), 2, usize::MAX);
        s.insert(entry(2, None, "a"), 2, usize::MAX);
        assert!(s.get_exact(&[1; 32], now).unwrap().is_some()); // 1 is now most recent
        let (_, _, ev) = s.insert(entry(3, None, "a"), 2, usize::MAX);
        assert_eq!(ev, vec![Eviction::Lru]);
        assert!(
            s.get_exact(&[2; 32], now).unwrap().is_none(),
            "2 was least recently used"
        );
        assert!(s.get_exact(&[1; 32], now).unwrap().is_some());
        let later = now + Duration::from_secs(120);
        assert_eq!(s.get_exact(&[1; 32], later).err(), Some(vec![Eviction::Expired]));
        assert_eq!(s.sweep(later), 1);
        assert!(s.is_empty());
        assert_eq!(s.bytes(), 0);
    }

    #[test]
    fn byte_bound_evicts() {
        let s = Store::default();
        for i in 0..10 {
            s.insert(entry(i, None, "a"), 100, 3 * (100 + 7 + ENTRY_OVERHEAD));
        }
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn semantic_search_stays_in_its_partition_and_purge_by_tenant() {
        let s = Store::default();
        let now = Instant::now();
        let (a, ia, _) = s.insert(entry(1, Some(7), "a"), 100, usize::MAX);
        let (_b, ib, _) = s.insert(entry(2, Some(8), "b"), 100, usize::MAX);
        ia.as_ref().unwrap().add(a, &unit(3));
        ib.as_ref().unwrap().add(_b, &unit(3));
        let found = s.partition(&[7; 32]).unwrap().search(&unit(3), SEARCH_CANDIDATES);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, a);
        assert!(found[0].1 > 0.99);
        assert!(s.candidate(a, &[7; 32], now).is_some());
        assert!(s.candidate(a, &[8; 32], now).is_none(), "never across partitions");
        assert_eq!(s.purge(Some("a"), None), 1);
        assert!(s.partition(&[7; 32]).is_none(), "an empty partition drops its index");
        assert!(s.partition(&[8; 32]).is_some());
    }

    #[test]
    fn evicted_vectors_do_not_grow_index_memory() {
        let s = Store::default();
        let cap = 500;
        let mut peak = 0;
        for round in 0..4 {
            for i in 0..cap {
                let n = (round * cap + i) as u8;
                let mut e = entry(n, Some(9), "a");
                e.exact = {
                    let mut k = [0u8; 32];
                    k[..8].copy_from_slice(&((round * cap + i) as u64).to_le_bytes());
                    k
                };
                let (id, index, _) = s.insert(e, cap, usize::MAX);
                index.unwrap().add(id, &unit(round * cap + i));
            }
            let mem = s.index_memory();
            if round == 1 {
                peak = mem;
            }
            if round > 1 {
                assert!(mem <= peak + peak / 4, "round {round}: {mem} vs {peak}");
            }
        }
        assert_eq!(s.len(), cap);
        assert_eq!(s.partition(&[9; 32]).unwrap().len(), cap);
    }
}

#[cfg(test)]
mod partition_tests {
    use super::*;

    /// Distinct random unit vectors.
    fn unit(i: usize) -> Vec<f32> {
        let mut rng = fastrand::Rng::with_seed(i as u64 + 1);
        let v: Vec<f32> = (0..DIMENSIONS).map(|_| rng.f32() - 0.5).collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    }

    #[test]
    fn small_partitions_are_flat_and_grow_into_an_index_with_the_same_answers() {
        let p = PartitionIndex::new().unwrap();
        for i in 0..FLAT_MAX + 50 {
            assert!(p.add(i as u64, &unit(i)));
            if i == FLAT_MAX - 1 {
                assert!(matches!(*p.vectors.read().unwrap(), Vectors::Flat(_)));
                assert_eq!(p.search(&unit(5), 1)[0].0, 5);
            }
        }
        assert!(matches!(*p.vectors.read().unwrap(), Vectors::Hnsw(_)));
        assert_eq!(p.len(), FLAT_MAX + 50);
        assert_eq!(p.search(&unit(5), 1)[0].0, 5);
        assert_eq!(p.search(&unit(FLAT_MAX + 10), 1)[0].0, (FLAT_MAX + 10) as u64);
    }

    #[test]
    fn many_tiny_partitions_stay_cheap() {
        let s = Store::default();
        for i in 0..2000u64 {
            let mut k = [0u8; 32];
            k[..8].copy_from_slice(&i.to_le_bytes());
            let new = NewEntry {
                exact: k,
                partition: Some(k),
                tenant: "t".into(),
                route: "r".into(),
                query: Some("q".into()),
                response: Bytes::from_static(b"{}"),
                model: "m".into(),
                expires: Instant::now() + std::time::Duration::from_secs(60),
            };
            let (id, index, _) = s.insert(new, usize::MAX, usize::MAX);
            index.unwrap().add(id, &unit(i as usize));
        }
        // ~1.6 KB per single-vector partition, not a usearch index (~58 KB RSS) each.
        assert!(s.index_memory() < 2000 * 2048, "{}", s.index_memory());
    }
}
