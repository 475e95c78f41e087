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

fn u32s(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Largest top-2 logit gap counted as a near-tie: 100x the largest logit
/// difference measured against transformers (3.7e-5).
const NEAR_TIE: f32 = 4e-3;

#[test]
fn greedy_continuations_match_transformers() {
    let p = fixture_dir().join("generate.json");
    let fx: serde_json::Value = serde_json::from_str(&fs::read_to_string(p).unwrap()).unwrap();
    let runs = fx["runs"].as_array().unwrap();
    assert!(runs.len() >= 6);
    let stops = model().stop_tokens().to_vec();
    for r in runs {
        let prompt = u32s(&r["prompt_ids"]);
        let mut want = u32s(&r["ids"]);
        let gaps: Vec<f32> = r["top2_gaps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        let stopped = want.last().is_some_and(|t| stops.contains(t));
        if stopped {
            want.pop();
        }
        let g = greedy(&prompt, 32);
        let same = g.ids.iter().zip(&want).take_while(|(a, b)| a == b).count();
        if same < want.len().min(g.ids.len()) || g.ids.len() != want.len() {
            let gap = gaps[same.min(gaps.len() - 1)];
            eprintln!(
                "{:?}: diverges at step {same} after a top-2 gap of {gap:.2e}",
                r["prompt"].as_str().unwrap()
            );
            assert!(
                gap < NEAR_TIE,
                "diverged at step {same} without a near-tie (gap {gap})"
            );
        } else {
            assert_eq!(
                g.finish,
                if stopped {
                    Finish::Stop
                } else {
                    Finish::Length
                }
            );
        }
        let min_gap = gaps.iter().fold(f32::MAX, |a, &b| a.min(b));
        eprintln!(
            "{} tokens identical, smallest top-2 gap {min_gap:.2e}",
            same
        );
    }
}

#[test]
fn kv_cache_decode_equals_full_recompute() {
    let prompt = model().encode("The capital of France is").unwrap();
    let g = greedy(&prompt, 6);
    assert_eq!(g.logits.len(), 6);
    let mut worst = 0f32;
    for i in 1..6 {
        let mut ids = prompt.clone();
        ids.extend(&g.ids[..i]);
        let full = greedy(&ids, 1);
        let d = full.logits[0]
            .iter()
            .zip(&g.logits[i])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        worst = worst.max(d);
        assert_eq!(
            argmax(&full.logits[0]),
            g.ids.get(i).map_or(argmax(&g.logits[i]), |&t| t as usize)
        );
    }
    eprintln!("decode vs recompute: max |logit diff| {worst:.2e}");
    assert!(worst < 1e-3, "{worst}");
}

/// A prompt longer than one prefill chunk: its first 256 tokens attend over
/// themselves only (`Attention::Chunk`), the rest is a second chunk that
/// reads the cache (`Attention::Cache` with 64 tokens at a time). The logits
/// that chunk gives for a position equal the decode step's for the same
/// position.
#[test]
fn chunked_prefill_equals_decode() {
    let dir = xla_build::ensure_asset(&xla_build::SMOLLM2).unwrap();
    let client = Client::cpu().unwrap();
    let m = Llm::load_file(
        &client,
        &dir.join(xla_build::SMOLLM2_GGUF),
        512,
        CompileCache::from_env().unwrap(),
    )
    .unwrap();
    let mut prompt = Vec::new();
    while prompt.len() < 299 {
        let text = "Rivers carry water from the hills to the sea, and towns grow along them. ";
        prompt.extend(m.encode(text).unwrap());
    }
    prompt.truncate(299);
    let run = |ids: &[u32], n: usize| {
        m.generate_with_logits(
            ids,
            &GenerateOptions {
                stop: Some(vec![]),
                ..GenerateOptions::new(n)
            },
            &mut |_, _| true,
        )
        .unwrap()
    };
    // 299 tokens: chunks of 256 and 43 (a 64-token program), then one
    // decode step at position 299.
    let g = run(&prompt, 2);
    let mut longer = prompt.clone();
    longer.push(g.ids[0]);
    // 300 tokens: position 299 computed by the second prefill chunk.
    let full = run(&longer, 1);
    let d = full.logits[0]
        .iter()
        .zip(&g.logits[1])
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!("chunked prefill vs decode at position 299: max |logit diff| {d:.2e}");
    assert!(d < 1e-3, "{d}");
    assert_eq!(argmax(&full.logits[0]), argmax(&g.logits[1]));
}

#[test]
fn seeded_sampling_is_reproducible() {
    let m = model();
    let prompt = m.encode("Once upon a time").unwrap();
    let run = |sampling: Sampling| {
        let opts = GenerateOptions {
            sampling,
            ..GenerateOptions::new(16)
        };
        m.generate(&prompt, &opts, |_, _| {}).unwrap().ids
    };
    let hot = Sampling {
        temperature: 1.5,
        top_k: 50,
        top_p: 0.95,
        repetition_penalty: 1.1,
        seed: 7,
    };
    let a = run(hot);
    assert_eq!(a, run(hot), "same seed, same tokens");
    assert_ne!(
        a,
        run(Sampling { seed: 8, ..hot }),
        "another seed, other tokens"
    );
    // Filters that leave one candidate make sampling greedy.
    let greedy_ids = run(Sampling::greedy());
    let top1 = Sampling {
        temperature: 1.0,
        top_k: 1,
        repetition_penalty: 1.0,
        ..hot
    };
    assert_eq!(run(top1), greedy_ids);
    let tiny_p = Sampling {
        temperature: 1.0,
        top_k: 0,
        top_p: 1e-6,
        repetition_penalty: 1.0,
        seed: 3,
    };
    assert_eq!(run(tiny_p), greedy_ids);
}

#[test]
fn streaming_yields_the_text() {
    let m = model();
    let prompt = m
        .encode(&m.chat_prompt("What is the capital of France?").unwrap())
        .unwrap();
    let (mut ids, mut text) = (vec![], String::new());
    let g = m
        .generate(&prompt, &GenerateOptions::new(32), |id, t| {
            ids.push(id);
            text.push_str(t);
        })
        .unwrap();
    assert_eq!(ids, g.ids);
    assert_eq!(text, g.text);
    assert!(g.text.contains("Paris"), "{}", g.text);
    assert_eq!(g.finish, Finish::Stop);
}

#[test]
fn bad_requests_are_errors() {
    let m = model();
    let opts = GenerateOptions::new(4);
    let err = |r: Result<Generation, Error>| r.unwrap_err().to_string();
    assert!(err(m.generate(&[], &opts, |_, _| {})).contains("no tokens"));
    assert!(err(m.generate(&[49152], &opts, |_, _| {})).contains("below the vocabulary size"));
    let long = vec![504u32; 256];
    let e = err(m.generate(&long, &opts, |_, _| {}));
    assert!(e.contains("context limit") && e.contains("256"), "{e}");
    let bad = GenerateOptions {
        sampling: Sampling {
            temperature: -1.0,
            ..Sampling::default()
        },
        ..GenerateOptions::new(4)
    };
    assert!(err(m.generate(&[504], &bad, |_, _| {})).contains("temperature"));
    // Generation that fills the cache stops there (a 60-token prompt uses
    // the 64-token prefill program the chat prompts compile anyway).
    let fill = GenerateOptions {
        stop: Some(vec![]),
        ..GenerateOptions::new(1000)
    };
    let g = m.generate(&vec![504u32; 60], &fill, |_, _| {}).unwrap();
    // The prefill gives one token, then positions 60..=255 are decoded.
    assert_eq!((g.finish, g.ids.len()), (Finish::Context, 197));
}
