//! SmolLM2-135M-Instruct (Q4_1 GGUF, weights quantized on the device)
//! against transformers on the same file, dequantized to f32
//! (tests/fixtures/gen_smollm2.py): logits at the last prompt position,
//! greedy continuations; the KV-cache decode against a full recompute;
//! seeded sampling; and the error cases. The model file is fetched on first
//! use, like the MiniLM model.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use xlayer::models::llm::{Finish, GenerateOptions, Generation, Llm};
use xlayer::models::sampling::Sampling;
use xlayer::{Client, CompileCache, Error};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2")
}

fn model() -> &'static Llm {
    static MODEL: OnceLock<Llm> = OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = xla_build::ensure_asset(&xla_build::SMOLLM2)
            .expect("the SmolLM2 model (cargo run -p xla-build -- fetch smollm2)");
        let client = Client::cpu().unwrap();
        Llm::load_file(
            &client,
            &dir.join(xla_build::SMOLLM2_GGUF),
            256,
            CompileCache::from_env().unwrap(),
        )
        .unwrap()
    })
}

fn greedy(ids: &[u32], n: usize) -> Generation {
    model()
        .generate_with_logits(ids, &GenerateOptions::new(n), &mut |_, _| true)
        .unwrap()
}

fn argmax(x: &[f32]) -> usize {
    (0..x.len()).fold(0, |b, i| if x[i] > x[b] { i } else { b })
}

#[test]
fn last_position_logits_match_transformers() {
    let bytes = fs::read(fixture_dir().join("logits.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for i in 0..2 {
        let want: Vec<f32> = st
            .tensor(&format!("logits_{i}"))
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let ids: Vec<u32> = st
            .tensor(&format!("ids_{i}"))
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as u32)
            .collect();
        let g = greedy(&ids, 1);
        let got = &g.logits[0];
        assert_eq!(got.len(), want.len());
        let max_diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let scale = want.iter().map(|x| x.abs()).fold(0f32, f32::max);
        eprintln!("prompt {i}: max |logit diff| {max_diff:.2e} (max |logit| {scale:.1})");
        assert!(max_diff < 2e-3 * scale.max(1.0), "max diff {max_diff}");
        assert_eq!(argmax(got), argmax(&want));
    }
}
