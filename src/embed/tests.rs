use super::*;

/// The assets folder for tests: `$LLM_SIDECAR_ASSETS` or `<crate>/assets`.
pub(crate) fn assets() -> PathBuf {
    std::env::var_os("LLM_SIDECAR_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("assets"))
}

#[test]
fn real_model_embeds_and_ranks_paraphrases_above_different_questions() {
    let mut m = Model::load(&assets(), 1).expect("assets present (run scripts/fetch-assets)");
    let v = m
        .embed(&[
            "translate 'hello' to German",
            "translate 'hello' to Spanish",
            "reset my password",
            "change password procedure",
            "what is the capital of France",
        ])
        .unwrap();
    assert!(v.iter().all(|x| x.len() == DIMENSIONS));
    assert!((cosine(&v[0], &v[0]) - 1.0).abs() < 1e-4);
    let de_es = cosine(&v[0], &v[1]);
    let pw = cosine(&v[2], &v[3]);
    // Reference values from Python onnxruntime 1.31.1 on the shipped model with the same
    // pooling: 0.787 and 0.627 (the quantized model is within ±0.02 of them).
    assert!((de_es - 0.787).abs() < 0.025, "{de_es}");
    assert!((pw - 0.627).abs() < 0.025, "{pw}");
    assert!(cosine(&v[2], &v[4]) < 0.3);
    // A batch gives the same vectors as one at a time, up to the dynamic quantization of
    // activations (per batch) in model-q8: padding must not leak in.
    let single = m.embed(&["reset my password"]).unwrap();
    assert!(cosine(&single[0], &v[2]) > 0.98);
}

#[test]
fn a_text_fits_the_window_up_to_its_last_token() {
    let mut m = Model::load(&assets(), 1).expect("assets present (run scripts/fetch-assets)");
    // "a" is one token; [CLS] and [SEP] take two places of the window.
    let words = |n: usize| vec!["a"; n].join(" ");
    let fits = |m: &mut Model, text: &str| {
        let pushed = m.push(text, Fit::Whole);
        let rows = m.embed_pushed().unwrap().len();
        assert_eq!(rows, usize::from(pushed), "{text:?}");
        pushed
    };
    assert!(fits(&mut m, &words(MAX_TOKENS - 2)));
    assert!(!fits(&mut m, &words(MAX_TOKENS - 1)));
    assert!(!fits(&mut m, &words(10 * MAX_TOKENS)));
    assert!(fits(&mut m, ""));
    // A cut text still embeds (routing uses its start), as its first MAX_TOKENS tokens.
    let cut = m.embed(&[&words(10 * MAX_TOKENS)]).unwrap();
    assert_eq!(cut[0].len(), DIMENSIONS);
    let start = m.embed(&[&words(MAX_TOKENS - 2)]).unwrap();
    assert_eq!(cut, start);
    // A batch mixes whole and cut rows, and a refused row leaves the others in place.
    assert!(m.push("reset my password", Fit::Whole));
    assert!(!m.push(&words(MAX_TOKENS), Fit::Whole));
    assert!(m.push(&words(10 * MAX_TOKENS), Fit::Start));
    assert_eq!(m.embed_pushed().unwrap().len(), 2);
}

#[test]
fn missing_assets_are_an_error_not_a_panic() {
    // (A present but broken library is not tried here: ONNX Runtime is loaded once per
    // process, and a failed load would be remembered for the other tests.)
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(Model::load(dir.path(), 1), Err(EmbedError::Missing(p)) if p.ends_with(LIBRARY_FILE)));
    std::fs::write(dir.path().join(LIBRARY_FILE), b"x").unwrap();
    assert!(matches!(Model::load(dir.path(), 1), Err(EmbedError::Missing(p)) if p.ends_with(MODEL_FILE)));
}

struct Quiet;
impl EmbedObserver for Quiet {
    fn batch(&self, _: usize, _: Duration) {}
    fn expired(&self) {}
    fn failed(&self, _: &EmbedError) {}
}

#[test]
fn request_jobs_overtake_queued_background_jobs() {
    let settings = EmbedderSettings {
        verifier: None,
        queue: 256,
        max_batch: Some(1),
        intra_threads: 1,
    };
    let e = Embedder::start(&assets(), settings, Arc::new(Quiet)).expect("assets present");
    let order = Arc::new(Mutex::new(Vec::new()));
    let deadline = Instant::now() + Duration::from_secs(60);
    let job = |name: String| {
        let order = order.clone();
        Box::new(move |v: Result<&[f32], Unembedded>| {
            assert!(v.is_ok());
            if let Ok(mut o) = order.lock() {
                o.push(name);
            }
        }) as Then
    };
    for i in 0..40 {
        let text = format!("background insert number {i} about gardening");
        e.submit(text, Fit::Whole, deadline, Lane::Background, job(format!("b{i}")))
            .unwrap();
    }
    e.submit(
        "a lookup someone waits for".into(),
        Fit::Whole,
        deadline,
        Lane::Request,
        job("lookup".into()),
    )
    .unwrap();
    while order.lock().map(|o| o.len()).unwrap_or(0) < 41 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let o = order.lock().unwrap();
    let at = o.iter().position(|n| n == "lookup").unwrap();
    // At most the background job already being embedded goes before it.
    assert!(at <= 2, "the lookup came {at}th: {o:?}");
    // A full lane is refused at once, per lane.
    let small = EmbedderSettings {
        verifier: None,
        queue: 1,
        max_batch: Some(1),
        intra_threads: 1,
    };
    let e = Embedder::start(&assets(), small, Arc::new(Quiet)).unwrap();
    let far = Instant::now() + Duration::from_secs(60);
    let mut refused = 0;
    for i in 0..20 {
        if e.submit(format!("text {i}"), Fit::Whole, far, Lane::Background, Box::new(|_| {}))
            .is_err()
        {
            refused += 1;
        }
    }
    assert!(refused > 0);
    assert!(
        e.submit("lookup".into(), Fit::Whole, far, Lane::Request, Box::new(|_| {}))
            .is_ok()
    );
}
