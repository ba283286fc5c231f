//! How an entry's query and answer are held: one block, zstd-packed together against a
//! dictionary of OpenAI's envelope when that saves enough.

use std::cell::RefCell;
use std::sync::LazyLock;

use bytes::Bytes;

/// OpenAI's response JSON around the parts that vary, as a zstd dictionary: a cached answer's
/// keys and boilerplate then cost a few bytes each, and its text compresses against itself.
/// Answers are held packed (they are most of the cache's memory) and unpacked on a hit (an
/// exact hit end to end stays at p50 70 µs, `benches/load.sh`).
pub(super) const PACK_DICT: &[u8] = br#"{"id":"msg_01","type":"message","role":"assistant","content":[{"type":"text","text":""}],"stop_reason":"end_turn","tool_calls":[{"id":"call_","type":"function","function":{"name":"","arguments":"{\""}}],"object":"text_completion","choices":[{"text":"","index":0,"logprobs":null,"finish_reason":"length"}],"usage":{"prompt_tokens":12,"completion_tokens":10,"total_tokens":22,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_"}
 the of and to in is that for it with as on this are be you can by or your from which will an at if not have more can use also when each their one other into how the following The This In To For It You is a are the and the of the to the in the"},{"id":"chatcmpl-","object":"chat.completion","created":17,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":"#;

/// The embedded query and the answer of an entry, as one allocation: the query bytes, then
/// the answer, zstd-packed together when that saves at least an eighth (tiny or
/// incompressible ones stay plain). Holding both in one block saves a pointer and an
/// allocation per entry, and the query's words often recur in the answer.
#[derive(Clone)]
pub(super) struct Blob {
    pub(super) data: Box<[u8]>,
    pub(super) query_len: u32,
    pub(super) answer_len: u32,
    pub(super) packed: bool,
}

impl Blob {
    pub(super) fn new(query: Option<&str>, answer: &[u8]) -> Option<Blob> {
        let query = query.unwrap_or_default().as_bytes();
        let query_len = u32::try_from(query.len()).ok()?;
        let answer_len = u32::try_from(answer.len()).ok()?;
        // Either way the block is allocated at its final size: a buffer shrunk after the fact
        // leaves its freed tail as a hole beside a long-lived entry, one per entry.
        let (data, packed) = match zstd_pack(query, answer) {
            Some(packed) => (packed, true),
            None => {
                let mut plain = Vec::with_capacity(query.len() + answer.len());
                plain.extend_from_slice(query);
                plain.extend_from_slice(answer);
                (plain.into_boxed_slice(), false)
            }
        };
        Some(Blob {
            data,
            query_len,
            answer_len,
            packed,
        })
    }

    pub(super) fn size(&self) -> usize {
        self.data.len()
    }

    /// The answer and the query; `None` only if the packed bytes were corrupted. Takes the
    /// blob (a copy made under the store's lock) so a plain one is handed on without a copy.
    pub(super) fn unpack(self) -> Option<(Bytes, Bytes)> {
        let len = self.query_len as usize + self.answer_len as usize;
        let both = if self.packed {
            Bytes::from(zstd_unpack(&self.data, len).filter(|v| v.len() == len)?)
        } else {
            Bytes::from(self.data)
        };
        let q = self.query_len as usize;
        Some((both.slice(q..), both.slice(..q)))
    }
}

/// zstd level for cached answers: 3 packs prose to ~47 % (LZ4 with the same dictionary: ~63 %)
/// in a few microseconds; higher levels gain ~2 % more at several times the cost.
pub(super) const PACK_LEVEL: i32 = 3;

pub(super) static PACK_CDICT: LazyLock<zstd::dict::EncoderDictionary<'static>> =
    LazyLock::new(|| zstd::dict::EncoderDictionary::copy(PACK_DICT, PACK_LEVEL));
pub(super) static PACK_DDICT: LazyLock<zstd::dict::DecoderDictionary<'static>> =
    LazyLock::new(|| zstd::dict::DecoderDictionary::copy(PACK_DICT));

/// A packer's work buffers are kept between calls up to this size; a larger answer's are
/// released after it.
pub(super) const PACK_SCRATCH_MAX: usize = 256 * 1024;

/// One thread's zstd context and work buffers: the query and answer side by side, and the
/// frame before it is copied out at its exact size.
pub(super) struct Packer {
    pub(super) zstd: zstd::bulk::Compressor<'static>,
    pub(super) plain: Vec<u8>,
    pub(super) frame: Vec<u8>,
}

thread_local! {
    // One context per thread that packs or unpacks (the event loop, the fleet inserter): making
    // one per call would allocate its tables every time.
    static PACKER: RefCell<Option<Packer>> = const { RefCell::new(None) };
    static UNPACKER: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// `query` then `answer` as a bare zstd frame against [`PACK_DICT`] (no checksum, size or
/// dictionary id: the entry keeps the size, and memory is not a channel that corrupts), if
/// that saves at least an eighth; `None` for tiny or incompressible texts.
pub(super) fn zstd_pack(query: &[u8], answer: &[u8]) -> Option<Box<[u8]>> {
    use zstd::zstd_safe::CParameter;
    let len = query.len() + answer.len();
    if len < 64 {
        return None;
    }
    PACKER.with(|cell| {
        let mut slot = cell.try_borrow_mut().ok()?;
        if slot.is_none() {
            let mut zstd = zstd::bulk::Compressor::with_prepared_dictionary(&PACK_CDICT).ok()?;
            for p in [
                CParameter::ChecksumFlag(false),
                CParameter::ContentSizeFlag(false),
                CParameter::DictIdFlag(false),
            ] {
                zstd.set_parameter(p).ok()?;
            }
            *slot = Some(Packer {
                zstd,
                plain: Vec::new(),
                frame: Vec::new(),
            });
        }
        let p = slot.as_mut()?;
        p.plain.clear();
        p.plain.extend_from_slice(query);
        p.plain.extend_from_slice(answer);
        p.frame.clear();
        p.frame.reserve(zstd::zstd_safe::compress_bound(len));
        let packed = match p.zstd.compress_to_buffer(&p.plain, &mut p.frame) {
            Ok(n) if n * 8 <= len * 7 => Some(Box::<[u8]>::from(&p.frame[..n])),
            _ => None,
        };
        if p.plain.capacity() > PACK_SCRATCH_MAX {
            p.plain = Vec::new();
        }
        if p.frame.capacity() > PACK_SCRATCH_MAX {
            p.frame = Vec::new();
        }
        packed
    })
}

pub(super) fn zstd_unpack(packed: &[u8], len: usize) -> Option<Vec<u8>> {
    UNPACKER.with(|cell| {
        let mut slot = cell.try_borrow_mut().ok()?;
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::with_prepared_dictionary(&PACK_DDICT).ok()?);
        }
        slot.as_mut()?.decompress(packed, len).ok()
    })
}
