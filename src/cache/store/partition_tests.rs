use super::vectors::*;
use super::*;
use crate::embed::DIMENSIONS;

/// Distinct random unit vectors.
fn unit(i: usize) -> Vec<f32> {
    unit_of(i, DIMENSIONS)
}

fn unit_of(i: usize, dims: usize) -> Vec<f32> {
    let mut rng = fastrand::Rng::with_seed(i as u64 + 1);
    let v: Vec<f32> = (0..dims).map(|_| rng.f32() - 0.5).collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / n).collect()
}

#[test]
fn small_partitions_are_flat_and_grow_into_an_index_with_the_same_answers() {
    let p = PartitionIndex::new([0; 32], 0);
    for i in 0..FLAT_MAX + 50 {
        assert!(p.add(i as u64, &unit(i)));
        if i == FLAT_MAX - 1 {
            assert!(matches!(p.vectors.read().unwrap().set, Set::Flat(_)));
            assert_eq!(p.search(&unit(5), 1)[0].0, 5);
        }
    }
    assert!(matches!(p.vectors.read().unwrap().set, Set::Hnsw(_)));
    assert_eq!(p.len(), FLAT_MAX + 50);
    assert_eq!(p.search(&unit(5), 1)[0].0, 5);
    assert_eq!(p.search(&unit(FLAT_MAX + 10), 1)[0].0, (FLAT_MAX + 10) as u64);
}

#[test]
fn flat_i8_vectors_keep_the_cosine_within_a_thousandth() {
    let mut worst = 0f32;
    for i in 0..200 {
        let (a, b) = (unit(i), unit(i + 1000));
        // A near neighbour too, where thresholds are decided.
        let near: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + 0.35 * y).collect();
        let n = near.iter().map(|x| x * x).sum::<f32>().sqrt();
        let near: Vec<f32> = near.iter().map(|x| x / n).collect();
        let mut stored = Flat::default();
        stored.push(7, &a);
        for q in [&b, &near, &a] {
            let c = row_cosine(&stored.data, stored.norms[0], q);
            worst = worst.max((c - crate::embed::cosine(&a, q)).abs());
        }
        let back = stored.unit(0, DIMENSIONS);
        assert!(crate::embed::cosine(&back, &a) > 0.9999);
    }
    assert!(worst < 1e-3, "worst error {worst}");
    let mut zero = Vec::new();
    let norm = quantize(&[0.0; DIMENSIONS], &mut zero);
    assert_eq!(row_cosine(&zero, norm, &unit(1)), 0.0);
}

#[test]
fn a_partition_takes_the_width_of_its_first_vector_and_refuses_others() {
    let p = PartitionIndex::new([0; 32], 0);
    let wide = unit_of(1, 1536);
    assert!(p.add(1, &wide));
    assert!(!p.add(2, &unit(2)), "a 384-wide vector in a 1536-wide partition");
    assert!(!p.add(3, &[]));
    let found = p.search(&wide, 4);
    assert_eq!((found.len(), found[0].0), (1, 1));
    assert!(found[0].1 > 0.999);
    assert!(
        p.search(&unit(2), 4).is_empty(),
        "a query of another width finds nothing"
    );
    // Past the flat list, the usearch index is made with the partition's width.
    for i in 0..FLAT_MAX + 5 {
        assert!(p.add(10 + i as u64, &unit_of(10 + i, 1536)));
    }
    assert!(matches!(p.vectors.read().unwrap().set, Set::Hnsw(_)));
    assert_eq!(p.search(&wide, 1)[0].0, 1);
    assert_eq!(p.search(&unit_of(100, 1536), 1)[0].0, 100);
    // Removing from the middle of a flat list keeps the others' rows intact.
    let f = PartitionIndex::new([1; 32], 0);
    for i in 0..5 {
        f.add(i, &unit(i as usize));
    }
    f.remove(1);
    for i in [0, 2, 3, 4] {
        assert_eq!(f.search(&unit(i as usize), 1)[0].0, i);
    }
    assert_eq!(f.len(), 4);
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
    // ~400 bytes per single-vector partition, not a usearch index (~58 KB RSS) each.
    assert!(s.index_memory() < 2000 * 512, "{}", s.index_memory());
}
