//! all-MiniLM-L6-v2 end to end against sentence-transformers' own output
//! (fixture written by tests/fixtures/gen_minilm.py): identical token ids,
//! cosine >= 0.9999 per sentence; and loader errors on corrupted copies of
//! the checkpoint. The model is fetched on first use, like the plugin.

use std::fs;
use std::path::{Path, PathBuf};

use xlayer::models::bert::{checkpoint_names, param_tree, BertConfig};
use xlayer::models::minilm::{cosine, MiniLm};
use xlayer::weights::{load_tree, SafetensorsFile};
use xlayer::{Client, CompileCache, Error};

struct Item {
    text: String,
    ids: Vec<u32>,
    truncated: bool,
    embedding: Vec<f32>,
}

fn fixture() -> Vec<Item> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minilm/expected.json");
    let v: serde_json::Value = serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| Item {
            text: i["text"].as_str().unwrap().to_string(),
            ids: i["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect(),
            truncated: i["truncated"].as_bool().unwrap(),
            embedding: i["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect(),
        })
        .collect()
}

fn model_dir() -> PathBuf {
    xla_build::ensure_asset(&xla_build::MINILM)
        .expect("the MiniLM model (cargo run -p xla-build -- fetch minilm)")
}

#[test]
fn matches_sentence_transformers() {
    let items = fixture();
    assert!(items.len() >= 8 && items.iter().any(|i| i.truncated));
    let client = Client::cpu().unwrap();
    let model =
        MiniLm::load_from_dir(&client, &model_dir(), CompileCache::from_env().unwrap()).unwrap();
    // sentence-transformers does not use BERT's pooler either.
    assert_eq!(
        model.load_info().unused,
        [
            "embeddings.position_ids",
            "pooler.dense.bias",
            "pooler.dense.weight"
        ]
    );
    let texts: Vec<&str> = items.iter().map(|i| i.text.as_str()).collect();
    let tokens = model.tokenize(&texts).unwrap();
    for (t, i) in tokens.iter().zip(&items) {
        assert_eq!(t.ids, i.ids, "token ids of {:?}", i.text);
        assert_eq!(t.truncated, i.truncated, "truncation of {:?}", i.text);
    }
    // One call: all sentences in one bucket (16 x 256), as a user would.
    let emb = model.embed(&texts).unwrap();
    let worst = emb
        .iter()
        .zip(&items)
        .map(|(e, i)| cosine(e, &i.embedding))
        .fold(1f32, f32::min);
    eprintln!("worst cosine vs sentence-transformers: {worst:.7}");
    for (e, i) in emb.iter().zip(&items) {
        assert_eq!(e.len(), 384);
        let c = cosine(e, &i.embedding);
        assert!(c >= 0.9999, "cosine {c} for {:?}", i.text);
        let norm: f32 = e.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
    }
    // A single short sentence goes through another (1 x 8) bucket and
    // must give the same vector: padding and masking are exact.
    let one = model.embed(&[texts[0]]).unwrap();
    assert!(cosine(&one[0], &emb[0]) >= 0.99999);
}

/// A private copy of the checkpoint in a temp folder, modified by `edit`.
fn corrupted_copy(tag: &str, edit: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xlayer-minilm-{tag}-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let src = model_dir();
    for f in ["config.json", "tokenizer.json"] {
        fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let mut bytes = fs::read(src.join("model.safetensors")).unwrap();
    edit(&mut bytes);
    fs::write(dir.join("model.safetensors"), bytes).unwrap();
    dir
}

fn load_err(dir: &Path) -> String {
    let client = Client::cpu().unwrap();
    let err = MiniLm::load_from_dir(&client, dir, CompileCache::disabled()).unwrap_err();
    let msg = err.to_string();
    fs::remove_dir_all(dir).unwrap();
    assert!(msg.contains("model.safetensors"), "names the file: {msg}");
    msg
}

#[test]
fn truncated_checkpoint_is_refused() {
    let dir = corrupted_copy("trunc", |b| b.truncate(b.len() / 2));
    let msg = load_err(&dir);
    assert!(msg.contains("truncated"), "{msg}");
}

#[test]
fn bad_header_is_refused() {
    let dir = corrupted_copy("header", |b| b[8..20].copy_from_slice(b"not json!!!!"));
    let msg = load_err(&dir);
    assert!(msg.contains("header is not valid JSON"), "{msg}");
    let dir = corrupted_copy("hlen", |b| b[..8].copy_from_slice(&u64::MAX.to_le_bytes()));
    let msg = load_err(&dir);
    assert!(msg.contains("header claims"), "{msg}");
}

#[test]
fn wrong_dtype_is_named_and_nothing_is_uploaded() {
    let name = "encoder.layer.3.output.dense.bias";
    let dir = corrupted_copy("dtype", |b| {
        let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
        let header = std::str::from_utf8(&b[8..8 + n]).unwrap();
        let at = header.find(&format!("\"{name}\"")).unwrap();
        let f32_at = at + header[at..].find("\"F32\"").unwrap();
        b[8 + f32_at..8 + f32_at + 5].copy_from_slice(b"\"I32\"");
    });
    // Validation happens before any upload: the error names the tensor.
    let file = SafetensorsFile::open(dir.join("model.safetensors")).unwrap();
    let client = Client::cpu().unwrap();
    let cfg = BertConfig::minilm_l6();
    match load_tree(
        &client,
        &file,
        &param_tree(&cfg).unwrap(),
        &checkpoint_names(),
    ) {
        Err(Error::Weights {
            tensor,
            reason,
            more,
            ..
        }) => {
            assert!(more.is_empty(), "one problem only: {more:?}");
            assert_eq!(tensor, name);
            assert!(reason.contains("dtype i32"), "{reason}");
        }
        other => panic!("expected Error::Weights, got {other:?}"),
    }
    drop(file);
    let msg = load_err(&dir);
    assert!(
        msg.contains(name) && msg.contains("does not match"),
        "{msg}"
    );
}

/// Every problem of a failed load, as `tensor: reason` lines.
fn problems(err: Error) -> Vec<String> {
    let Error::Weights {
        tensor,
        reason,
        more,
        ..
    } = err
    else {
        panic!("expected Error::Weights, got {err:?}");
    };
    std::iter::once((tensor, reason))
        .chain(more)
        .map(|(t, r)| format!("{t}: {r}"))
        .collect()
}

#[test]
fn wrong_shape_config_lists_every_problem() {
    let client = Client::cpu().unwrap();
    let file = SafetensorsFile::open(model_dir().join("model.safetensors")).unwrap();
    let cfg = BertConfig {
        num_layers: 7,
        intermediate_size: 1024,
        ..BertConfig::minilm_l6()
    };
    let err = load_tree(
        &client,
        &file,
        &param_tree(&cfg).unwrap(),
        &checkpoint_names(),
    )
    .unwrap_err();
    let problems = problems(err);
    // All 16 tensors of layer 6 missing; in each of the 6 layers present,
    // the MLP's kernels and inner bias of the wrong shape.
    assert_eq!(problems.len(), 16 + 6 * 3, "{problems:#?}");
    assert!(problems
        .iter()
        .any(|p| p.contains("encoder.layer.6.") && p.contains("missing")));
    assert!(problems
        .iter()
        .any(|p| p.contains("intermediate.dense.weight") && p.contains("[1536, 384]")));
}

/// Length-aware batching: a long paragraph among short sentences runs in
/// its own execution; every embedding comes back in the caller's order and
/// equals the sentence embedded alone (padding is masked; only rounding
/// may differ between shapes).
#[test]
fn batched_embeddings_equal_each_sentence_embedded_alone() {
    let client = Client::cpu().unwrap();
    let model =
        MiniLm::load_from_dir(&client, &model_dir(), CompileCache::from_env().unwrap()).unwrap();
    let long = "Modern processors execute many instructions at once by splitting them into \
        small steps, predicting which way branches will go, and reordering independent \
        operations, while large caches keep frequently used data close to the cores; \
        compilers help by scheduling instructions and vectorizing arithmetic.";
    let texts = [
        "Coffee or tea?",
        long,
        "A cat sits on the mat.",
        "The quick brown fox jumps over the lazy dog near the river bank.",
        "Please send me the report before Friday.",
        "Rain is expected tomorrow afternoon across most of the northern region.",
    ];
    let lens: Vec<usize> = model
        .tokenize(&texts)
        .unwrap()
        .iter()
        .map(|t| t.ids.len())
        .collect();
    assert!(
        lens[1] > 40 && lens.iter().enumerate().all(|(i, &n)| i == 1 || n <= 20),
        "{lens:?}"
    );
    let plan = model.plan(&lens);
    assert!(plan.len() >= 2, "{plan:?}");
    let last = plan.last().unwrap();
    assert_eq!(last.0, [1], "the paragraph runs alone: {plan:?}");
    let all: Vec<usize> = plan.iter().flat_map(|(rows, _, _)| rows.clone()).collect();
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(sorted, (0..texts.len()).collect::<Vec<_>>(), "{plan:?}");
    let batched = model.embed(&texts).unwrap();
    let mut worst = 1f32;
    let mut worst_abs = 0f32;
    for (t, b) in texts.iter().zip(&batched) {
        let alone = model.embed(&[t]).unwrap();
        worst = worst.min(cosine(b, &alone[0]));
        for (x, y) in b.iter().zip(&alone[0]) {
            worst_abs = worst_abs.max((x - y).abs());
        }
    }
    eprintln!("batched vs alone: worst cosine {worst:.8}, worst |difference| {worst_abs:e}");
    assert!(worst >= 0.99999, "worst cosine {worst}");
    assert!(worst_abs <= 1e-4, "worst |difference| {worst_abs}");
    // The caller's order, whatever it is.
    let reversed: Vec<&str> = texts.iter().rev().copied().collect();
    let back = model.embed(&reversed).unwrap();
    for (i, b) in back.iter().rev().enumerate() {
        let c = cosine(b, &batched[i]);
        assert!(c >= 0.99999, "input {i} in reversed order: cosine {c}");
    }
}
