//! The fleet's L2 cache in Redis. Each new entry (its exact key, partition, query, vector,
//! answer, model) is written to Redis with the cache's TTL and announced on a Redis Stream;
//! every sidecar follows the stream and inserts other sidecars' entries into its own L1, so
//! a paraphrase answered in one pod is a hit in another without a Redis round trip on the
//! request path. A new pod loads the stream's most recent entries (`warm_entries`) at start.
//!
//! Redis down or slow: publications are dropped (counted), the follower reconnects with
//! backoff and resumes from where it was; requests never wait.
//!
//! With `cache.encryption`, an entry is sealed (AES-256-GCM, `ring`) before it is written:
//! `enc1:<key id>:<base64 of nonce, ciphertext and tag>`, the Redis key as associated data, so an
//! entry moved to another key does not open. Prompts and answers never reach Redis in plaintext;
//! an entry this pod cannot open (another key, tampered, or plaintext while sealing is on) is a
//! miss, counted as `refused`. Entries carry their cache
//! version inside their keys (the key scope includes `cache.version`), so pods on different
//! versions never serve each other's answers.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::Cache;
use super::key::Key;
use crate::config::{CacheConfig, CacheKeys, RedisConfig};
use crate::limits::ledger::now_ms;
use crate::redis_link::{BACKOFF_MAX, BACKOFF_MIN, Link, connect, prefix};
use crate::telemetry::{Metrics, ResultLabels};

/// Publications waiting for Redis; beyond this they are dropped (Redis is slow or down).
pub(crate) const OUTBOX: usize = 1024;
/// How long one stream read blocks in Redis before looping.
const BLOCK_MS: usize = 1000;

/// A cache entry as it travels between sidecars: published when this sidecar stores an
/// answer, received when another did.
#[derive(Debug)]
pub struct Entry {
    pub(crate) exact: Key,
    pub(crate) partition: Option<Key>,
    pub(crate) tenant: Arc<str>,
    pub(crate) route: Arc<str>,
    pub(crate) query: Option<String>,
    pub(crate) response: Bytes,
    pub(crate) model: Arc<str>,
    /// Time left to live.
    pub(crate) ttl: Duration,
    pub(crate) vector: Option<Vec<f32>>,
    /// The identity of the embedder that made `vector` (see `Embedder::identity`).
    pub(crate) embedder: Option<Arc<str>>,
}

pub type Outgoing = Entry;
pub type Incoming = Entry;

/// What is stored in Redis (JSON).
#[derive(Serialize, Deserialize)]
struct Wire {
    exact: String,
    partition: Option<String>,
    tenant: String,
    route: String,
    query: Option<String>,
    /// Little-endian f32s, base64.
    vector: Option<String>,
    /// Which embedder made the vector; absent from entries of sidecars before remote
    /// embedders (the local model's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    embedder: Option<String>,
    response: String,
    model: String,
    expires_ms: u64,
}

fn encode(o: &Outgoing) -> Option<String> {
    let vector = o.vector.as_ref().map(|v| {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        base64::engine::general_purpose::STANDARD.encode(bytes)
    });
    let w = Wire {
        exact: hex::encode(o.exact),
        partition: o.partition.map(hex::encode),
        tenant: o.tenant.to_string(),
        route: o.route.to_string(),
        query: o.query.clone(),
        vector,
        embedder: o.embedder.as_deref().map(str::to_owned),
        response: String::from_utf8(o.response.to_vec()).ok()?,
        model: o.model.to_string(),
        expires_ms: now_ms() + o.ttl.as_millis() as u64,
    };
    serde_json::to_string(&w).ok()
}

/// The prefix of a sealed payload (its format's version).
const SEALED: &str = "enc1:";

/// `payload` sealed with the first key, bound to the Redis key it is written under.
fn seal(keys: &CacheKeys, redis_key: &str, payload: &str) -> Option<String> {
    use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    use ring::rand::{SecureRandom, SystemRandom};
    let (id, key) = keys.keys.first()?;
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).ok()?);
    let mut nonce = [0u8; 12];
    SystemRandom::new().fill(&mut nonce).ok()?;
    let mut buf = Vec::with_capacity(12 + payload.len() + AES_256_GCM.tag_len());
    buf.extend_from_slice(&nonce);
    buf.extend_from_slice(payload.as_bytes());
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(redis_key.as_bytes()),
            &mut buf[12..],
        )
        .ok()?;
    buf.extend_from_slice(tag.as_ref());
    Some(format!(
        "{SEALED}{id}:{}",
        base64::engine::general_purpose::STANDARD.encode(&buf)
    ))
}

/// The entry's Redis key. Sealed, its name is a keyed hash (HMAC-SHA-256) of the exact key, not
/// the exact key itself: that is a plain SHA-256 of the request, and whoever can list Redis
/// could otherwise test a guessed prompt against it. Followers take names from the stream, so
/// the name need not be computable without the key.
fn entry_key(prefix: &str, exact: &Key, keys: Option<&CacheKeys>) -> String {
    match keys.and_then(|k| k.keys.first()) {
        Some((_, key)) => {
            let tag = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), exact);
            format!("{prefix}:cache:entry:{}", hex::encode(tag.as_ref()))
        }
        None => format!("{prefix}:cache:entry:{}", hex::encode(exact)),
    }
}

/// Why a payload read from Redis was not used.
#[derive(Debug, PartialEq)]
enum Refused {
    /// Sealed with a key id this pod does not have, or not opening with it (tampered, moved).
    Key,
    /// Plaintext while this pod seals: not trusted (anyone with Redis access could write it).
    Plaintext,
    /// Sealed while this pod has no keys.
    NoKeys,
}

/// The payload's JSON: opened with the key its id names, or as is when nothing is sealed.
fn open<'a>(keys: Option<&CacheKeys>, redis_key: &str, payload: &'a str) -> Result<std::borrow::Cow<'a, str>, Refused> {
    use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    let Some(sealed) = payload.strip_prefix(SEALED) else {
        return match keys {
            Some(_) => Err(Refused::Plaintext),
            None => Ok(std::borrow::Cow::Borrowed(payload)),
        };
    };
    let keys = keys.ok_or(Refused::NoKeys)?;
    let (id, data) = sealed.split_once(':').ok_or(Refused::Key)?;
    let (_, key) = keys.keys.iter().find(|(k, _)| **k == *id).ok_or(Refused::Key)?;
    let mut buf = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|_| Refused::Key)?;
    if buf.len() < 12 + AES_256_GCM.tag_len() {
        return Err(Refused::Key);
    }
    let nonce = Nonce::try_assume_unique_for_key(&buf[..12]).map_err(|_| Refused::Key)?;
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).map_err(|_| Refused::Key)?);
    let plain = key
        .open_in_place(nonce, Aad::from(redis_key.as_bytes()), &mut buf[12..])
        .map_err(|_| Refused::Key)?;
    String::from_utf8(plain.to_vec())
        .map(std::borrow::Cow::Owned)
        .map_err(|_| Refused::Key)
}

fn key_of(hex_str: &str) -> Option<Key> {
    let mut k = [0u8; 32];
    hex::decode_to_slice(hex_str, &mut k).ok()?;
    Some(k)
}

fn decode(payload: &str) -> Option<Incoming> {
    let w: Wire = serde_json::from_str(payload).ok()?;
    let now = now_ms();
    if w.expires_ms <= now {
        return None;
    }
    let vector = match w.vector {
        Some(b) => {
            let bytes = base64::engine::general_purpose::STANDARD.decode(b).ok()?;
            if bytes.len() % 4 != 0 {
                return None;
            }
            Some(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            )
        }
        None => None,
    };
    Some(Incoming {
        exact: key_of(&w.exact)?,
        partition: match w.partition {
            Some(p) => Some(key_of(&p)?),
            None => None,
        },
        tenant: w.tenant.into(),
        route: w.route.into(),
        query: w.query,
        response: Bytes::from(w.response),
        model: w.model.into(),
        ttl: Duration::from_millis(w.expires_ms - now),
        vector,
        embedder: w.embedder.map(Into::into),
    })
}

/// Starts publishing and following, as background tasks. `settings` reads the cache settings
/// of the current config snapshot.
pub(crate) fn spawn(
    background: &crate::tasks::Background,
    cache: Arc<Cache>,
    redis: RedisConfig,
    settings: Arc<dyn Fn() -> CacheConfig + Send + Sync>,
    metrics: Arc<Metrics>,
) {
    let origin: Arc<str> = format!("{:016x}", fastrand::u64(..)).into();
    let (tx, rx) = mpsc::channel(OUTBOX);
    cache.attach_l2(tx);
    background.spawn(publish(
        rx,
        redis.clone(),
        origin.clone(),
        settings.clone(),
        metrics.clone(),
    ));
    background.spawn(follow(cache, redis, origin, settings, metrics));
}

fn count(metrics: &Metrics, result: &'static str, n: u64) {
    if n > 0 {
        metrics.l2_entries.get_or_create(&ResultLabels { result }).inc_by(n);
    }
}

async fn publish(
    mut rx: mpsc::Receiver<Outgoing>,
    cfg: RedisConfig,
    origin: Arc<str>,
    settings: Arc<dyn Fn() -> CacheConfig + Send + Sync>,
    metrics: Arc<Metrics>,
) {
    let p = prefix(&cfg);
    let stream = format!("{p}:cache:stream");
    let mut link = Link::new(metrics.clone(), "cache-publish");
    let mut conn = None;
    let mut backoff = BACKOFF_MIN;
    while let Some(out) = rx.recv().await {
        // The keys of the current config: a rotation applies from the next entry on.
        let keys = settings().encryption;
        let key = entry_key(&p, &out.exact, keys.as_ref());
        let Some(json) = encode(&out) else { continue };
        let payload = match &keys {
            Some(keys) => match seal(keys, &key, &json) {
                Some(sealed) => sealed,
                None => {
                    count(&metrics, "dropped", 1);
                    continue;
                }
            },
            None => json,
        };
        if conn.is_none() {
            match connect(&cfg).await {
                Ok(c) => {
                    conn = Some(c);
                    backoff = BACKOFF_MIN;
                }
                Err(e) => {
                    link.failed("connect", &e);
                    count(&metrics, "dropped", 1);
                    // Don't retry per entry while Redis is down: drain what waits, then pause.
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let ttl_ms = out.ttl.as_millis().max(1) as u64;
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(&key)
            .arg(&payload)
            .arg("PX")
            .arg(ttl_ms)
            .ignore()
            .cmd("XADD")
            .arg(&stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(cfg.stream_max_len)
            .arg("*")
            .arg("k")
            .arg(&key)
            .arg("o")
            .arg(&*origin)
            .ignore();
        match tokio::time::timeout(cfg.timeout.max(Duration::from_millis(200)), pipe.query_async::<()>(c)).await {
            Ok(Ok(())) => {
                link.ok();
                count(&metrics, "published", 1);
            }
            Ok(Err(e)) => {
                link.failed("publish", &e);
                count(&metrics, "dropped", 1);
                conn = None;
            }
            Err(_) => {
                link.failed("publish", &"timed out");
                count(&metrics, "dropped", 1);
                conn = None;
            }
        }
    }
}

/// One stream entry: its id and its fields.
type StreamEntry = (String, Vec<(String, String)>);
type StreamReply = Vec<(String, Vec<StreamEntry>)>;

async fn follow(
    cache: Arc<Cache>,
    cfg: RedisConfig,
    origin: Arc<str>,
    settings: Arc<dyn Fn() -> CacheConfig + Send + Sync>,
    metrics: Arc<Metrics>,
) {
    let p = prefix(&cfg);
    let stream = format!("{p}:cache:stream");
    let mut link = Link::new(metrics.clone(), "cache-follow");
    let mut last_id: Option<String> = None;
    loop {
        let mut conn = link.connect(&cfg).await;
        if last_id.is_none() {
            // Warm start: the most recent entries, oldest first. Also where a follower that
            // never got going starts; after an outage it resumes from its last id instead.
            let recent: Result<Vec<StreamEntry>, _> = redis::cmd("XREVRANGE")
                .arg(&stream)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(cfg.warm_entries)
                .query_async(&mut conn)
                .await;
            match recent {
                Ok(entries) => {
                    last_id = Some(entries.first().map_or_else(|| "0-0".to_owned(), |(id, _)| id.clone()));
                    let keys: Vec<StreamEntry> = entries.into_iter().rev().collect();
                    let n = load(&cache, &mut conn, &keys, &origin, &settings, &metrics, true).await;
                    count(&metrics, "warmed", n);
                    if n > 0 {
                        tracing::info!(entries = n, "cache warmed from the fleet's recent entries");
                    }
                }
                Err(e) => {
                    link.failed("warm", &e);
                    continue;
                }
            }
        }
        loop {
            let from = last_id.clone().unwrap_or_else(|| "$".into());
            let read: Result<Option<StreamReply>, _> = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(256)
                .arg("BLOCK")
                .arg(BLOCK_MS)
                .arg("STREAMS")
                .arg(&stream)
                .arg(&from)
                .query_async(&mut conn)
                .await;
            let entries = match read {
                Ok(Some(streams)) => streams.into_iter().flat_map(|(_, e)| e).collect::<Vec<_>>(),
                Ok(None) => continue,
                Err(e) => {
                    link.failed("consume", &e);
                    break;
                }
            };
            link.ok();
            if let Some((id, _)) = entries.last() {
                last_id = Some(id.clone());
            }
            let n = load(&cache, &mut conn, &entries, &origin, &settings, &metrics, false).await;
            count(&metrics, "received", n);
        }
    }
}

/// Fetches and inserts the entries a stream batch points at (skipping this sidecar's own).
async fn load(
    cache: &Cache,
    conn: &mut redis::aio::MultiplexedConnection,
    entries: &[StreamEntry],
    origin: &str,
    settings: &Arc<dyn Fn() -> CacheConfig + Send + Sync>,
    metrics: &Metrics,
    warming: bool,
) -> u64 {
    let field =
        |fields: &[(String, String)], name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let keys: Vec<String> = entries
        .iter()
        .filter(|(_, f)| warming || field(f, "o").as_deref() != Some(origin))
        .filter_map(|(_, f)| field(f, "k"))
        .collect();
    if keys.is_empty() {
        return 0;
    }
    let payloads: Vec<Option<String>> = match conn.mget(&keys).await {
        Ok(p) => p,
        Err(_) => return 0,
    };
    let config = settings();
    let mut n = 0;
    let mut refused = 0;
    for (key, payload) in keys.iter().zip(payloads) {
        let Some(payload) = payload else { continue };
        let json = match open(config.encryption.as_ref(), key, &payload) {
            Ok(j) => j,
            Err(why) => {
                if refused == 0 {
                    tracing::debug!(?why, key = %key, "a cache entry from Redis was refused");
                }
                refused += 1;
                continue;
            }
        };
        if let Some(e) = decode(&json) {
            cache.insert_remote(e, &config);
            n += 1;
        }
    }
    count(metrics, "refused", refused);
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(list: &[(&str, u8)]) -> CacheKeys {
        CacheKeys {
            keys: list.iter().map(|(id, b)| (Arc::from(*id), [*b; 32])).collect(),
        }
    }

    #[test]
    fn sealed_entries_open_only_with_their_key_under_their_name() {
        let json = r#"{"query":"my secret prompt","response":"the secret answer"}"#;
        let k1 = keys(&[("k1", 1)]);
        let sealed = seal(&k1, "p:cache:entry:aa", json).unwrap();
        assert!(sealed.starts_with("enc1:k1:"), "{sealed}");
        assert!(!sealed.contains("secret"), "no plaintext in {sealed}");
        assert_ne!(
            seal(&k1, "p:cache:entry:aa", json).unwrap(),
            sealed,
            "a fresh nonce each time"
        );
        assert_eq!(open(Some(&k1), "p:cache:entry:aa", &sealed).unwrap(), json);
        // Rotation: the new key seals, the old one still opens what it sealed.
        let rotated = keys(&[("k2", 2), ("k1", 1)]);
        assert_eq!(open(Some(&rotated), "p:cache:entry:aa", &sealed).unwrap(), json);
        assert!(seal(&rotated, "x", json).unwrap().starts_with("enc1:k2:"));
        // Another key, another name, a flipped byte, plaintext while sealing, sealed without keys.
        assert_eq!(
            open(Some(&keys(&[("k1", 9)])), "p:cache:entry:aa", &sealed),
            Err(Refused::Key)
        );
        assert_eq!(
            open(Some(&keys(&[("k3", 1)])), "p:cache:entry:aa", &sealed),
            Err(Refused::Key)
        );
        assert_eq!(open(Some(&k1), "p:cache:entry:bb", &sealed), Err(Refused::Key));
        let mut tampered = sealed.clone().into_bytes();
        let last = tampered.len() - 3;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert_eq!(open(Some(&k1), "p:cache:entry:aa", &tampered), Err(Refused::Key));
        assert_eq!(open(Some(&k1), "k", json), Err(Refused::Plaintext));
        assert_eq!(open(None, "k", &sealed), Err(Refused::NoKeys));
        assert_eq!(open(None, "k", json).unwrap(), json);
        assert_eq!(open(Some(&k1), "k", "enc1:k1:not base64!"), Err(Refused::Key));
        assert_eq!(open(Some(&k1), "k", "enc1:k1:AAAA"), Err(Refused::Key));
    }

    #[test]
    fn sealed_entry_names_are_keyed_hashes() {
        let exact = [7u8; 32];
        let plain = entry_key("p", &exact, None);
        assert_eq!(plain, format!("p:cache:entry:{}", hex::encode(exact)));
        let a = entry_key("p", &exact, Some(&keys(&[("k1", 1)])));
        let b = entry_key("p", &exact, Some(&keys(&[("k2", 2)])));
        assert!(a != plain && a != b && a.starts_with("p:cache:entry:"));
        assert_eq!(a, entry_key("p", &exact, Some(&keys(&[("k1", 1), ("k0", 0)]))));
    }

    #[test]
    fn entries_round_trip_through_the_wire_format() {
        let o = Outgoing {
            exact: [7; 32],
            partition: Some([9; 32]),
            tenant: "t".into(),
            route: "r".into(),
            query: Some("how do I reset my password".into()),
            response: Bytes::from_static(br#"{"choices":[]}"#),
            model: "m".into(),
            ttl: Duration::from_secs(60),
            vector: Some(vec![0.25, -1.5, 3.0]),
            embedder: Some("remote:http://e/v1#m#3".into()),
        };
        let e = decode(&encode(&o).unwrap()).unwrap();
        assert_eq!(e.embedder, o.embedder);
        assert_eq!((e.exact, e.partition), (o.exact, o.partition));
        assert_eq!(e.vector, o.vector);
        assert_eq!(e.response, o.response);
        assert!(e.ttl <= Duration::from_secs(60) && e.ttl > Duration::from_secs(58));
        // Expired or garbage payloads are skipped, not errors.
        let mut w: serde_json::Value = serde_json::from_str(&encode(&o).unwrap()).unwrap();
        w["expires_ms"] = 1.into();
        assert!(decode(&w.to_string()).is_none());
        assert!(decode("not json").is_none());
    }

    #[test]
    fn a_broken_answer_from_redis_is_never_stored() {
        let config = crate::config::Config::load("cache: { semantic: { enabled: false } }", &|_: &str| None)
            .unwrap()
            .cache;
        let metrics = Arc::new(Metrics::new());
        let cache = Cache::new(&config, false, metrics.clone(), Default::default());
        let entry = |exact: u8, response: &'static [u8]| Outgoing {
            exact: [exact; 32],
            partition: None,
            tenant: "t".into(),
            route: "r".into(),
            query: None,
            response: Bytes::from_static(response),
            model: "m".into(),
            ttl: Duration::from_secs(60),
            vector: None,
            embedder: None,
        };
        for broken in [
            &b"{\"choices\":[{\"mess"[..],
            b"<html>502</html>",
            b"",
            b"{\"error\":{}}",
        ] {
            cache.insert_remote(decode(&encode(&entry(1, broken)).unwrap()).unwrap(), &config);
        }
        assert_eq!(metrics.cache_entries.get(), 0);
        cache.insert_remote(
            decode(&encode(&entry(2, br#"{"choices":[]}"#)).unwrap()).unwrap(),
            &config,
        );
        assert_eq!(metrics.cache_entries.get(), 1);
        let text = metrics.encode();
        assert!(
            text.contains(r#"llm_sidecar_cache_l2_entries_total{result="malformed"} 4"#),
            "{text}"
        );
    }
}
