//! A model folder whose `config.json` is out of bounds or contradicts its
//! checkpoint is refused with `Error::ModelConfig` naming the field, before
//! anything is allocated from the config (a `num_hidden_layers` of 1e8 once
//! built 1.6e9 parameter entries and was OOM-killed: that case runs in a
//! child process, so a regression fails this test alone).

mod isolated;

use std::fs;
use std::path::{Path, PathBuf};

use xlayer::models::bert::BertConfig;
use xlayer::models::minilm::MiniLm;
use xlayer::{Client, CompileCache, Error};

fn model_dir() -> PathBuf {
    xla_build::ensure_asset(&xla_build::MINILM)
        .expect("the MiniLM model (cargo run -p xla-build -- fetch minilm)")
}

/// A model folder whose `config.json` has `field` set to `value` (the
/// tokenizer and checkpoint are links to the pinned model's).
fn folder_with(tag: &str, field: &str, value: serde_json::Value) -> PathBuf {
    let src = model_dir();
    let dir = std::env::temp_dir().join(format!("xlayer-cfg-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg[field] = value;
    fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    for f in ["tokenizer.json", "model.safetensors"] {
        std::os::unix::fs::symlink(src.join(f), dir.join(f)).unwrap();
    }
    dir
}

/// Loads `dir`, which must fail with `Error::ModelConfig` on `field`;
/// returns the message.
fn config_error(dir: &Path, field: &str) -> String {
    let client = Client::cpu().unwrap();
    let err = MiniLm::load_from_dir(&client, dir, CompileCache::disabled()).unwrap_err();
    let msg = err.to_string();
    match err {
        Error::ModelConfig { file, field: f, .. } => {
            assert_eq!(file, dir.join("config.json"));
            assert_eq!(f, field, "{msg}");
        }
        other => panic!("expected Error::ModelConfig on `{field}`, got {other:?}"),
    }
    fs::remove_dir_all(dir).unwrap();
    msg
}

#[test]
fn huge_layer_count_is_refused_before_allocating() {
    isolated::isolated("huge_layer_count_is_refused_before_allocating", || {
        let dir = folder_with("huge", "num_hidden_layers", 100_000_000.into());
        let msg = config_error(&dir, "num_hidden_layers");
        assert!(
            msg.contains("100000000") && msg.contains("between 1 and"),
            "{msg}"
        );
    });
}

#[test]
fn layer_count_is_checked_against_the_checkpoint() {
    let dir = folder_with("layers", "num_hidden_layers", 12.into());
    let msg = config_error(&dir, "num_hidden_layers");
    assert!(
        msg.contains("holds 6 encoder layer(s)") && msg.contains("model.safetensors"),
        "{msg}"
    );
}

#[test]
fn sizes_are_checked_against_the_checkpoint() {
    let dir = folder_with("width", "hidden_size", 768.into());
    let msg = config_error(&dir, "hidden_size");
    assert!(msg.contains("word_embeddings"), "{msg}");
    let dir = folder_with("vocab", "vocab_size", 1000.into());
    let msg = config_error(&dir, "vocab_size");
    assert!(msg.contains("f32[30522,384]"), "{msg}");
    let dir = folder_with("mlp", "intermediate_size", 1024.into());
    config_error(&dir, "intermediate_size");
}

#[test]
fn malformed_values_name_the_field() {
    let dir = folder_with("neg", "vocab_size", (-3).into());
    let msg = config_error(&dir, "vocab_size");
    assert!(msg.contains("-3"), "{msg}");
    let dir = folder_with("heads", "num_attention_heads", 7.into());
    config_error(&dir, "num_attention_heads");
    let dir = folder_with("zero", "type_vocab_size", 0.into());
    config_error(&dir, "type_vocab_size");
}

#[test]
fn the_pinned_config_fits_its_checkpoint() {
    let dir = model_dir();
    let cfg = BertConfig::from_json_file(dir.join("config.json")).unwrap();
    assert_eq!(cfg, BertConfig::minilm_l6());
    let file = xlayer::weights::SafetensorsFile::open(dir.join("model.safetensors")).unwrap();
    cfg.check_checkpoint(&dir.join("config.json"), &file)
        .unwrap();
}
