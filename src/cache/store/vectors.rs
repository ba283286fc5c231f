//! The per-partition vector sets: a flat list of scaled i8 vectors searched by brute force
//! while small, a usearch HNSW index (cosine, i8) past [`FLAT_MAX`] vectors. A set takes the
//! width of its first vector (384 for the local model, whatever a remote embedder answers)
//! and refuses vectors of any other width, so a query from another embedder finds nothing
//! instead of a meaningless neighbour. Each set also belongs to one embedder generation (an
//! epoch, bumped when a reload changes the vector space): vectors and queries of another
//! generation are refused, even of the same width.

use std::sync::RwLock;

use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use crate::cache::key::Key;

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

/// The flat list: i8 components scaled to each vector's largest one (four times smaller than
/// f32; the cosine it gives is within ~0.001 of the exact one, finer than usearch's fixed
/// ×127 i8 because the scale follows the vector), all vectors in one allocation.
#[derive(Default)]
pub(super) struct Flat {
    pub(super) ids: Vec<u64>,
    /// Euclidean norm of each stored vector, so a search divides once instead of re-summing.
    pub(super) norms: Vec<f32>,
    /// `ids.len() × dims` components, row after row.
    pub(super) data: Vec<i8>,
}

/// One vector scaled to i8 and its norm.
pub(super) fn quantize(x: &[f32], out: &mut Vec<i8>) -> f32 {
    let max = x.iter().fold(0f32, |m, c| m.max(c.abs()));
    let scale = if max > 0.0 { 127.0 / max } else { 0.0 };
    let start = out.len();
    out.extend(x.iter().map(|c| (c * scale).round().clamp(-127.0, 127.0) as i8));
    out[start..]
        .iter()
        .map(|&c| f32::from(c) * f32::from(c))
        .sum::<f32>()
        .sqrt()
}

/// Cosine similarity of a stored i8 row (with its norm) to a unit-length query.
pub(super) fn row_cosine(row: &[i8], norm: f32, query: &[f32]) -> f32 {
    if norm == 0.0 {
        return 0.0;
    }
    let dot: f32 = row.iter().zip(query).map(|(&c, q)| f32::from(c) * q).sum();
    dot / norm
}

impl Flat {
    fn row(&self, i: usize, dims: usize) -> &[i8] {
        &self.data[i * dims..(i + 1) * dims]
    }

    /// Row `i` at unit length, as usearch expects it.
    pub(super) fn unit(&self, i: usize, dims: usize) -> Vec<f32> {
        let n = if self.norms[i] == 0.0 { 1.0 } else { self.norms[i] };
        self.row(i, dims).iter().map(|&c| f32::from(c) / n).collect()
    }

    pub(super) fn push(&mut self, id: u64, x: &[f32]) {
        // Most partitions hold one or a few vectors: grow by a half, not to 4 at once.
        if self.ids.len() == self.ids.capacity() {
            let more = (self.ids.len() / 2).max(1);
            self.ids.reserve_exact(more);
            self.norms.reserve_exact(more);
            self.data.reserve_exact(more * x.len());
        }
        self.ids.push(id);
        let norm = quantize(x, &mut self.data);
        self.norms.push(norm);
    }

    fn remove(&mut self, id: u64, dims: usize) {
        let Some(i) = self.ids.iter().position(|&x| x == id) else {
            return;
        };
        let last = self.ids.len() - 1;
        self.ids.swap_remove(i);
        self.norms.swap_remove(i);
        if i != last {
            self.data.copy_within(last * dims..(last + 1) * dims, i * dims);
        }
        self.data.truncate(last * dims);
    }

    #[cfg(any(test, feature = "internals"))]
    fn memory(&self) -> usize {
        self.ids.capacity() * 12 + self.data.capacity()
    }
}

pub(super) enum Set {
    Flat(Flat),
    Hnsw(Index),
}

/// A partition's vectors, their width (0 until the first one) and their generation.
pub(super) struct Vectors {
    pub(super) dims: usize,
    pub(super) epoch: u64,
    pub(super) set: Set,
}

impl Vectors {
    fn empty(epoch: u64) -> Self {
        Vectors {
            dims: 0,
            epoch,
            set: Set::Flat(Flat::default()),
        }
    }
}

/// The vectors of one partition.
pub struct PartitionIndex {
    /// The partition key, so an entry holding its index also knows its partition.
    pub(super) key: Key,
    pub(super) vectors: RwLock<Vectors>,
}

pub(super) fn new_index(dims: usize, capacity: usize) -> Option<Index> {
    let options = IndexOptions {
        dimensions: dims,
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
            Ok(Vectors { set: Set::Flat(f), .. }) => f.ids.len(),
            Ok(Vectors {
                set: Set::Hnsw(index), ..
            }) => index.size(),
            Err(_) => 0,
        }
    }

    pub(super) fn new(key: Key, epoch: u64) -> Self {
        PartitionIndex {
            key,
            vectors: RwLock::new(Vectors::empty(epoch)),
        }
    }

    /// Drops every vector; the set now belongs to generation `epoch`.
    pub(super) fn clear(&self, epoch: u64) -> usize {
        let Ok(mut v) = self.vectors.write() else { return 0 };
        let n = match &v.set {
            Set::Flat(f) => f.ids.len(),
            Set::Hnsw(index) => index.size(),
        };
        *v = Vectors::empty(epoch);
        n
    }

    /// [`Self::add_from`] in the set's own generation (benches and tests).
    #[cfg(any(test, feature = "internals"))]
    pub fn add(&self, id: u64, vector: &[f32]) -> bool {
        let epoch = self.vectors.read().map_or(0, |v| v.epoch);
        self.add_from(epoch, id, vector)
    }

    /// [`Self::search_from`] in the set's own generation (benches and tests).
    #[cfg(any(test, feature = "internals"))]
    pub fn search(&self, vector: &[f32], count: usize) -> Vec<(u64, f32)> {
        let epoch = self.vectors.read().map_or(0, |v| v.epoch);
        self.search_from(epoch, vector, count)
    }

    /// Adds a vector made by embedder generation `epoch` (blocking: call off the event
    /// loop). `false` for an empty vector, one of another width or another generation.
    pub fn add_from(&self, epoch: u64, id: u64, vector: &[f32]) -> bool {
        if vector.is_empty() {
            return false;
        }
        {
            let Ok(v) = self.vectors.read() else { return false };
            if v.epoch != epoch || (v.dims != 0 && v.dims != vector.len()) {
                return false;
            }
            if let Set::Hnsw(index) = &v.set
                && index.size() < index.capacity()
            {
                return index.add(id, vector).is_ok();
            }
        }
        // Growing (or leaving the flat list) is not safe alongside other operations.
        let Ok(mut v) = self.vectors.write() else { return false };
        if v.epoch != epoch {
            return false;
        }
        if v.dims == 0 {
            v.dims = vector.len();
        } else if v.dims != vector.len() {
            return false;
        }
        let dims = v.dims;
        match &mut v.set {
            Set::Flat(flat) if flat.ids.len() < FLAT_MAX => {
                flat.push(id, vector);
                true
            }
            Set::Flat(flat) => {
                let Some(index) = new_index(dims, FLAT_MAX * 2) else {
                    return false;
                };
                for (i, &x) in flat.ids.iter().enumerate() {
                    let _ = index.add(x, &flat.unit(i, dims));
                }
                let ok = index.add(id, vector).is_ok();
                v.set = Set::Hnsw(index);
                ok
            }
            Set::Hnsw(index) => {
                // Grow by a quarter: doubling would leave up to half of a large index unused.
                let capacity = index.capacity() + (index.capacity() / 4).max(64);
                index.reserve(capacity).is_ok() && index.add(id, vector).is_ok()
            }
        }
    }

    /// The nearest entries to a query embedded by generation `epoch`: (id, cosine
    /// similarity), best first (blocking). Nothing for a query of another width or generation.
    pub fn search_from(&self, epoch: u64, vector: &[f32], count: usize) -> Vec<(u64, f32)> {
        let Ok(v) = self.vectors.read() else { return Vec::new() };
        if v.dims != vector.len() || v.epoch != epoch {
            return Vec::new();
        }
        match &v.set {
            Set::Flat(flat) => {
                let dims = v.dims;
                let mut scored: Vec<(u64, f32)> = flat
                    .ids
                    .iter()
                    .enumerate()
                    .map(|(i, &id)| (id, row_cosine(flat.row(i, dims), flat.norms[i], vector)))
                    .collect();
                scored.sort_by(|a, b| b.1.total_cmp(&a.1));
                scored.truncate(count);
                scored
            }
            Set::Hnsw(index) => match index.search(vector, count) {
                Ok(m) => m.keys.into_iter().zip(m.distances).map(|(k, d)| (k, 1.0 - d)).collect(),
                Err(_) => Vec::new(),
            },
        }
    }

    pub(super) fn remove(&self, id: u64) {
        let Ok(mut v) = self.vectors.write() else { return };
        let dims = v.dims;
        match &mut v.set {
            Set::Flat(flat) => flat.remove(id, dims),
            Set::Hnsw(index) => {
                let _ = index.remove(id);
            }
        }
    }

    #[cfg(any(test, feature = "internals"))]
    pub(crate) fn memory_usage(&self) -> usize {
        match self.vectors.read().as_deref() {
            Ok(Vectors { set: Set::Flat(f), .. }) => f.memory(),
            Ok(Vectors {
                set: Set::Hnsw(index), ..
            }) => index.memory_usage(),
            Err(_) => 0,
        }
    }
}
