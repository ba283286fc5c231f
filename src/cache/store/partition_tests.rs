use super::vectors::*;
use super::*;
use crate::embed::DIMENSIONS;

/// Distinct random unit vectors.
fn unit(i: usize) -> Vec<f32> {
    let mut rng = fastrand::Rng::with_seed(i as u64 + 1);
    let v: Vec<f32> = (0..DIMENSIONS).map(|_| rng.f32() - 0.5).collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / n).collect()
}

#[test]
fn small_partitions_are_flat_and_grow_into_an_index_with_the_same_answers() {
    let p = PartitionIndex::new([0; 32]);
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
fn flat_i8_vectors_keep_the_cosine_within_a_thousandth() {
    let mut worst = 0f32;
    for i in 0..200 {
        let (a, b) = (unit(i), unit(i + 1000));
        // A near neighbour too, where thresholds are decided.
        let near: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + 0.35 * y).collect();
        let n = near.iter().map(|x| x * x).sum::<f32>().sqrt();
        let near: Vec<f32> = near.iter().map(|x| x / n).collect();
        let stored = FlatVector::new(7, &a);
        for q in [&b, &near, &a] {
            worst = worst.max((stored.cosine(q) - crate::embed::cosine(&a, q)).abs());
        }
        let back = stored.unit();
        assert!(crate::embed::cosine(&back, &a) > 0.9999);
    }
    assert!(worst < 1e-3, "worst error {worst}");
    assert_eq!(FlatVector::new(1, &[0.0; DIMENSIONS]).cosine(&unit(1)), 0.0);
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
