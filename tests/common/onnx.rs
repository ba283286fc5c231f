//! A tiny pair-classification ONNX model, written byte by byte (protobuf) so the tests need no
//! Python and no download: it proves the verifier's plumbing (loading, pair encoding, segment
//! ids, the logit), not any quality. Its one logit is the number of tokens in segment B
//! (`token_type_ids` = 1: the second text and its `[SEP]`) minus `offset`, so its score
//! `sigmoid(len(B) + 1 - offset)` is known in advance for any pair.

/// Protobuf wire format: field key, varint, length-delimited.
fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(field: u32, wire: u8, out: &mut Vec<u8>) {
    varint(u64::from(field) << 3 | u64::from(wire), out);
}

fn int(field: u32, v: i64, out: &mut Vec<u8>) {
    key(field, 0, out);
    varint(v as u64, out);
}

fn bytes(field: u32, b: &[u8], out: &mut Vec<u8>) {
    key(field, 2, out);
    varint(b.len() as u64, out);
    out.extend_from_slice(b);
}

fn string(field: u32, s: &str, out: &mut Vec<u8>) {
    bytes(field, s.as_bytes(), out);
}

/// `NodeProto`: inputs, outputs, op type, and INT attributes.
fn node(inputs: &[&str], outputs: &[&str], op: &str, ints: &[(&str, i64)]) -> Vec<u8> {
    let mut n = Vec::new();
    for i in inputs {
        string(1, i, &mut n);
    }
    for o in outputs {
        string(2, o, &mut n);
    }
    string(3, &format!("{op}_{}", outputs[0]), &mut n);
    string(4, op, &mut n);
    for (name, v) in ints {
        let mut a = Vec::new();
        string(1, name, &mut a);
        int(3, *v, &mut a);
        int(20, 2, &mut a); // AttributeType INT
        bytes(5, &a, &mut n);
    }
    n
}

/// `ValueInfoProto` of a tensor: element type (1 float, 7 int64) and dims (0: symbolic).
fn value_info(name: &str, elem: i64, dims: &[i64]) -> Vec<u8> {
    let mut shape = Vec::new();
    for (i, &d) in dims.iter().enumerate() {
        let mut dim = Vec::new();
        if d > 0 {
            int(1, d, &mut dim);
        } else {
            string(2, &format!("d{i}"), &mut dim);
        }
        bytes(1, &dim, &mut shape);
    }
    let mut tensor = Vec::new();
    int(1, elem, &mut tensor);
    bytes(2, &shape, &mut tensor);
    let mut ty = Vec::new();
    bytes(1, &tensor, &mut ty);
    let mut v = Vec::new();
    string(1, name, &mut v);
    bytes(2, &ty, &mut v);
    v
}

/// The model's bytes (IR 8, opset 13).
pub fn pair_model(offset: f32) -> Vec<u8> {
    let mut graph = Vec::new();
    bytes(
        1,
        &node(&["token_type_ids"], &["types"], "Cast", &[("to", 1)]),
        &mut graph,
    );
    bytes(
        1,
        &node(&["types"], &["segment_b"], "ReduceSum", &[("keepdims", 1)]),
        &mut graph,
    );
    bytes(1, &node(&["segment_b", "offset"], &["logits"], "Sub", &[]), &mut graph);
    string(2, "pair", &mut graph);
    // The offset: a float scalar initializer.
    let mut init = Vec::new();
    int(2, 1, &mut init); // FLOAT
    bytes(4, &offset.to_le_bytes(), &mut init); // packed float_data
    string(8, "offset", &mut init);
    bytes(5, &init, &mut graph);
    for name in ["input_ids", "attention_mask", "token_type_ids"] {
        bytes(11, &value_info(name, 7, &[0, 0]), &mut graph);
    }
    bytes(12, &value_info("logits", 1, &[0, 1]), &mut graph);
    let mut model = Vec::new();
    int(1, 8, &mut model);
    string(2, "llm-sidecar-tests", &mut model);
    bytes(7, &graph, &mut model);
    let mut opset = Vec::new();
    string(1, "", &mut opset);
    int(2, 13, &mut opset);
    bytes(8, &opset, &mut model);
    model
}

/// Writes the model to a fresh temporary folder; returns its path (the folder lives as long
/// as the returned guard).
pub fn write_pair_model(offset: f32) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("pair.onnx");
    std::fs::write(&path, pair_model(offset)).expect("write the model");
    (dir, path)
}
