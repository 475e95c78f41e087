//! The tokenizer built from the SmolLM2 GGUF's metadata against
//! transformers' own (`AutoTokenizer.from_pretrained(dir, gguf_file=...)`,
//! fixture written by tests/fixtures/gen_smollm2.py): identical ids for 20
//! varied prompts, identical chat-template text and ids, identical decoding.
//! The model file is fetched on first use, like the MiniLM model.

use std::fs;
use std::path::Path;

use xlayer::gguf::tokenizer::{from_gguf, ChatTemplate};
use xlayer::gguf::GgufFile;

fn fixture() -> serde_json::Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2/tokenizer.json");
    serde_json::from_str(&fs::read_to_string(p).unwrap()).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn model() -> GgufFile {
    let dir = xla_build::ensure_asset(&xla_build::SMOLLM2)
        .expect("the SmolLM2 model (cargo run -p xla-build -- fetch smollm2)");
    GgufFile::open(dir.join(xla_build::SMOLLM2_GGUF)).unwrap()
}

#[test]
fn prompt_ids_match_transformers() {
    let f = model();
    let tok = from_gguf(&f).unwrap();
    assert_eq!(tok.get_vocab_size(true), 49152);
    let fx = fixture();
    let prompts = fx["prompts"].as_array().unwrap();
    assert!(prompts.len() >= 20);
    for p in prompts {
        let text = p["text"].as_str().unwrap();
        let enc = tok.encode(text, true).unwrap();
        assert_eq!(enc.get_ids(), ids(&p["ids"]), "ids of {text:?}");
    }
    for d in fx["decoded"].as_array().unwrap() {
        let text = tok.decode(&ids(&d["ids"]), false).unwrap();
        assert_eq!(text, d["text"].as_str().unwrap());
    }
}

#[test]
fn chat_template_matches_transformers() {
    let f = model();
    let tok = from_gguf(&f).unwrap();
    let tmpl = ChatTemplate::from_gguf(&f).unwrap();
    assert_eq!(
        tmpl.default_system.as_deref(),
        Some("You are a helpful AI assistant named SmolLM, trained by Hugging Face")
    );
    for c in fixture()["chats"].as_array().unwrap() {
        let messages: Vec<(&str, &str)> = c["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
            .collect();
        let text = tmpl.apply(&messages);
        assert_eq!(text, c["text"].as_str().unwrap());
        assert_eq!(tok.encode(text, true).unwrap().get_ids(), ids(&c["ids"]));
    }
    assert!(ChatTemplate::parse(
        "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}"
    )
    .is_none());
}
