use super::*;
use crate::embed::DIMENSIONS;
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
    let query = "How do I reset my password?";
    let blob = Blob::new(Some(query), answer).unwrap();
    assert!(blob.packed);
    assert!(
        blob.size() * 2 < answer.len(),
        "{} of {} bytes",
        blob.size(),
        answer.len()
    );
    let (a, q) = blob.unpack().unwrap();
    assert_eq!(&q[..], query.as_bytes());
    assert_eq!(&a[..], &answer[..]);
    // Incompressible and tiny answers stay as they are.
    let noise: Vec<u8> = (0..400).map(|_| fastrand::u8(..)).collect();
    assert!(!Blob::new(None, &noise).unwrap().packed);
    assert!(!Blob::new(Some("q"), b"{}").unwrap().packed);
    let (a, q) = Blob::new(Some("q"), b"{}").unwrap().unpack().unwrap();
    assert_eq!((&a[..], &q[..]), (&b"{}"[..], &b"q"[..]));
    // Corrupted packed bytes are a miss, not a panic or a wrong answer.
    let mut bad = Blob::new(Some(query), answer).unwrap();
    bad.data = b"not a zstd frame at all".to_vec().into_boxed_slice();
    assert!(bad.unpack().is_none());

    let s = Store::default();
    let mut e = entry(9, Some(9), "a");
    e.query = Some(query.into());
    e.response = Bytes::from_static(answer);
    let (id, index, _) = s.insert(e, 10, usize::MAX);
    index.unwrap().add(id, &unit(1));
    let hit = s.get_exact(&[9; 32], Instant::now()).unwrap().unwrap();
    assert_eq!(&hit.response[..], &answer[..]);
    let c = s.candidate(id, &[9; 32], Instant::now()).unwrap();
    assert_eq!(&c.response[..], &answer[..]);
    assert_eq!(c.features.unwrap(), Features::of(query));
}

#[test]
fn ids_of_evicted_entries_never_reach_the_entry_reusing_their_slot() {
    let s = Store::default();
    let now = Instant::now();
    let (a, _, _) = s.insert(entry(1, Some(1), "t"), 1, usize::MAX);
    s.insert(entry(2, Some(1), "t"), 1, usize::MAX);
    let (b, _, ev) = s.insert(entry(3, Some(1), "t"), 1, usize::MAX);
    assert_eq!(ev, vec![Eviction::Lru]);
    assert_ne!(a, b);
    assert_eq!(a & 0xffff_ffff, b & 0xffff_ffff, "a's slot is reused");
    assert!(s.candidate(a, &[1; 32], now).is_none());
    assert!(s.tighten(a, 0.9).is_none());
    assert!(s.candidate(b, &[1; 32], now).is_some());
    assert_eq!(s.tighten(b, 0.9), Some(0.9 + LEARNED_MARGIN));
    assert_eq!(
        s.candidate(b, &[1; 32], now).unwrap().min_similarity,
        0.9 + LEARNED_MARGIN
    );
}

#[test]
fn lru_order_follows_use_across_many_entries() {
    let s = Store::default();
    let now = Instant::now();
    for i in 0..50u8 {
        s.insert(entry(i, None, "t"), 50, usize::MAX);
    }
    // Use the even ones: the odd ones are now the least recent, oldest first.
    for i in (0..50u8).step_by(2) {
        assert!(s.get_exact(&[i; 32], now).unwrap().is_some());
    }
    for (n, i) in (50..75u8).enumerate() {
        let (_, _, ev) = s.insert(entry(i, None, "t"), 50, usize::MAX);
        assert_eq!(ev, vec![Eviction::Lru]);
        let victim = 2 * n as u8 + 1;
        assert!(s.get_exact(&[victim; 32], now).unwrap().is_none(), "{victim} evicted");
    }
    for i in (0..50u8).step_by(2) {
        assert!(s.get_exact(&[i; 32], now).unwrap().is_some(), "{i} kept");
    }
    assert_eq!(s.len(), 50);
    // Labels are interned and released with their last entry.
    assert_eq!(s.lock().labels.len(), 1);
    assert_eq!(s.purge(None, None), 50);
    assert!(s.lock().labels.is_empty());
    assert_eq!(s.bytes(), 0);
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

/// What `e` counts against `max_bytes` (its blob is packed: less than it looks).
fn cost_of(e: &NewEntry) -> usize {
    cost(
        &Blob::new(e.query.as_deref(), &e.response).unwrap(),
        if e.partition.is_some() { VECTOR_OVERHEAD } else { 0 },
    )
}

#[test]
fn an_entry_stored_for_semantic_lookups_counts_its_vector() {
    let semantic = cost_of(&entry(1, Some(1), "a"));
    let exact_only = cost_of(&entry(1, None, "a"));
    assert_eq!(semantic - exact_only, VECTOR_OVERHEAD);
    // A budget of three semantic entries holds three of them, or more exact-only ones.
    let s = Store::default();
    for i in 0..10 {
        s.insert(entry(i, Some(1), "a"), 100, 3 * semantic);
    }
    assert_eq!((s.len(), s.bytes()), (3, 3 * semantic));
    let s = Store::default();
    for i in 0..10 {
        s.insert(entry(i, None, "a"), 100, 3 * semantic);
    }
    assert_eq!(s.len(), 3 * semantic / exact_only);
    assert!(s.len() > 3);
    // Replacing a semantic entry by an exact-only one under the same key gives back the
    // vector's share.
    let s = Store::default();
    s.insert(entry(1, Some(1), "a"), 100, usize::MAX);
    s.insert(entry(1, None, "a"), 100, usize::MAX);
    assert_eq!((s.len(), s.bytes()), (1, exact_only));
    // A wider embedder's entries count their wider vectors; entries counted before the
    // change give back what they were counted, not the new width.
    let s = Store::default();
    s.insert(entry(1, Some(1), "a"), 100, usize::MAX);
    s.set_dimensions(1536);
    s.insert(entry(2, Some(1), "a"), 100, usize::MAX);
    assert_eq!(s.bytes(), 2 * semantic + 1536 - DIMENSIONS);
    s.purge(None, None);
    assert_eq!((s.len(), s.bytes()), (0, 0));
}

#[test]
fn clearing_the_vectors_keeps_the_entries_and_refuses_the_old_generation() {
    let s = Store::default();
    let (a, ia, _) = s.insert(entry(1, Some(7), "a"), 100, usize::MAX);
    let ia = ia.unwrap();
    assert!(ia.add_from(0, a, &unit(3)));
    assert_eq!(ia.search_from(0, &unit(3), 4).len(), 1);
    assert_eq!(s.clear_vectors(1), 1);
    // The entry is still an exact hit; its vector is gone, and the old generation's are refused.
    assert!(s.get_exact(&[1; 32], Instant::now()).unwrap().is_some());
    assert!(ia.search_from(1, &unit(3), 4).is_empty());
    assert!(ia.search_from(0, &unit(3), 4).is_empty());
    assert!(
        !ia.add_from(0, a, &unit(3)),
        "a vector of the old embedder, arriving late"
    );
    // A vector of the new one, of another width, is taken; so are new partitions'.
    let wide = vec![0.5f32; 4];
    assert!(ia.add_from(1, a, &wide));
    assert_eq!(ia.search_from(1, &wide, 4)[0].0, a);
    let (b, ib, _) = s.insert(entry(2, Some(8), "a"), 100, usize::MAX);
    assert!(!ib.as_ref().unwrap().add_from(0, b, &unit(1)));
    assert!(ib.unwrap().add_from(1, b, &unit(1)));
}

#[test]
fn byte_bound_evicts() {
    let s = Store::default();
    let budget = 3 * cost_of(&entry(0, None, "a"));
    for i in 0..10 {
        s.insert(entry(i, None, "a"), 100, budget);
    }
    assert_eq!(s.len(), 3);
    // An answer larger than the whole budget is not stored, and flushes nothing.
    let mut big = entry(42, None, "a");
    big.response = (0..budget).map(|_| fastrand::u8(..)).collect();
    let (id, index, ev) = s.insert(big, 100, budget);
    assert_eq!((id, index.is_none(), ev), (0, true, vec![]));
    assert_eq!(s.len(), 3);
    assert!(s.get_exact(&[42; 32], Instant::now()).unwrap().is_none());
}

#[test]
fn a_full_table_reuses_evicted_slots_instead_of_growing() {
    let s = Store::default();
    for i in 0..40u8 {
        s.insert(entry(i, None, "t"), 16, usize::MAX);
    }
    assert_eq!(s.len(), 16);
    let g = s.lock();
    assert_eq!((g.slots.len(), g.slots.capacity()), (16, 16));
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
fn purge_and_sweep_cover_a_table_larger_than_one_slice() {
    let s = Store::default();
    let n = 3 * SWEEP_SLICE as usize + 17;
    for i in 0..n {
        let mut e = entry(0, None, if i % 2 == 0 { "a" } else { "b" });
        e.exact[..8].copy_from_slice(&(i as u64).to_le_bytes());
        if i % 3 == 0 {
            e.expires = Instant::now();
        }
        s.insert(e, usize::MAX, usize::MAX);
    }
    assert_eq!(s.len(), n);
    let expired = (0..n).filter(|i| i % 3 == 0).count();
    assert_eq!(s.sweep(Instant::now() + Duration::from_millis(1)), expired);
    let left_a = (0..n).filter(|i| i % 3 != 0 && i % 2 == 0).count();
    assert_eq!(s.purge(Some("a"), None), left_a);
    assert_eq!(s.len(), n - expired - left_a);
    assert_eq!(s.purge(None, None), n - expired - left_a);
    assert!(s.is_empty());
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
