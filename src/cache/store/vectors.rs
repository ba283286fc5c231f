//! The per-partition vector sets: a flat list of scaled i8 vectors searched by brute force
//! while small, a usearch HNSW index (cosine, i8) past [`FLAT_MAX`] vectors.

use std::sync::RwLock;

use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use crate::cache::key::Key;
use crate::embed::DIMENSIONS;

/// Candidates fetched per semantic search: the best few, so a guard rejection of the nearest
/// can still fall back to a verified runner-up.
pub const SEARCH_CANDIDATES: usize = 4;
/// HNSW connectivity. usearch's default (16) doubles graph memory for no recall gain at the
/// partition sizes seen here (measured: 100k vectors, recall@1 unchanged at 12).
pub(super) const CONNECTIVITY: usize = 12;

/// Partitions up to this many vectors are searched by brute force over a flat list; a usearch
/// index costs ~58 KB of RSS even when nearly empty, and requests with unique context (a
/// timestamp in the system prompt) would each create one. Scanning 256 vectors takes ~0.1 ms.
pub const FLAT_MAX: usize = 256;

/// A vector of a flat list: i8 components scaled to the largest one (four times smaller than
/// f32; the cosine it gives is within ~0.001 of the exact one, finer than usearch's fixed
/// ×127 i8 because the scale follows the vector).
pub(super) struct FlatVector {
    pub(super) id: u64,
    /// Euclidean norm of `v` as stored, so a search divides once instead of re-summing.
    pub(super) norm: f32,
    pub(super) v: [i8; DIMENSIONS],
}

impl FlatVector {
    pub(super) fn new(id: u64, x: &[f32]) -> Self {
        let max = x.iter().fold(0f32, |m, c| m.max(c.abs()));
        let scale = if max > 0.0 { 127.0 / max } else { 0.0 };
        let mut v = [0i8; DIMENSIONS];
        for (q, c) in v.iter_mut().zip(x) {
            *q = (c * scale).round().clamp(-127.0, 127.0) as i8;
        }
        let norm = v.iter().map(|&c| f32::from(c) * f32::from(c)).sum::<f32>().sqrt();
        FlatVector { id, norm, v }
    }

    /// Cosine similarity to a unit-length query.
    pub(super) fn cosine(&self, query: &[f32]) -> f32 {
        if self.norm == 0.0 {
            return 0.0;
        }
        let dot: f32 = self.v.iter().zip(query).map(|(&c, q)| f32::from(c) * q).sum();
        dot / self.norm
    }

    /// The vector at unit length, as usearch expects it.
    pub(super) fn unit(&self) -> Vec<f32> {
        let n = if self.norm == 0.0 { 1.0 } else { self.norm };
        self.v.iter().map(|&c| f32::from(c) / n).collect()
    }
}

pub(super) enum Vectors {
    Flat(Vec<FlatVector>),
    Hnsw(Index),
}

/// The vectors of one partition.
pub struct PartitionIndex {
    /// The partition key, so an entry holding its index also knows its partition.
    pub(super) key: Key,
    pub(super) vectors: RwLock<Vectors>,
}

pub(super) fn new_index(capacity: usize) -> Option<Index> {
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
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        match self.vectors.read().as_deref() {
            Ok(Vectors::Flat(list)) => list.len(),
            Ok(Vectors::Hnsw(index)) => index.size(),
            Err(_) => 0,
        }
    }

    pub(super) fn new(key: Key) -> Self {
        PartitionIndex {
            key,
            vectors: RwLock::new(Vectors::Flat(Vec::new())),
        }
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
                // Most partitions hold one or a few vectors: grow by a half, not to 4 at once.
                if list.len() == list.capacity() {
                    list.reserve_exact((list.len() / 2).max(1));
                }
                list.push(FlatVector::new(id, vector));
                true
            }
            Vectors::Flat(list) => {
                let Some(index) = new_index(FLAT_MAX * 2) else {
                    return false;
                };
                for x in list.iter() {
                    let _ = index.add(x.id, &x.unit());
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
                let mut scored: Vec<(u64, f32)> = list.iter().map(|x| (x.id, x.cosine(vector))).collect();
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

    pub(super) fn remove(&self, id: u64) {
        let Ok(mut v) = self.vectors.write() else { return };
        match &mut *v {
            Vectors::Flat(list) => list.retain(|x| x.id != id),
            Vectors::Hnsw(index) => {
                let _ = index.remove(id);
            }
        }
    }

    pub(crate) fn memory_usage(&self) -> usize {
        match self.vectors.read().as_deref() {
            Ok(Vectors::Flat(list)) => list.capacity() * std::mem::size_of::<FlatVector>(),
            Ok(Vectors::Hnsw(index)) => index.memory_usage(),
            Err(_) => 0,
        }
    }
}
