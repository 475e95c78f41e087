//! The persistent compilation cache against the real CPU plugin: a first
//! compile writes an entry, a fresh cache over the same folder (as a second
//! process would) loads it without compiling, and a truncated or corrupted
//! entry is detected, recompiled and replaced.

use std::fs;
use std::path::PathBuf;

use xlayer::{Client, CompileCache, CompileOptions, Program};

fn program(scale: f32) -> Program {
    Program::mlir_text(format!(
        r#"func.func public @main(%a: tensor<3xf32>) -> tensor<3xf32> {{
  %c = stablehlo.constant dense<{scale:.1}> : tensor<3xf32>
  %0 = stablehlo.multiply %a, %c : tensor<3xf32>
  return %0 : tensor<3xf32>
}}"#
    ))
    .unwrap()
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("xlayer-cache-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    d
}

fn run(client: &Client, cache: &CompileCache, p: &Program) -> Vec<f32> {
    let exe = cache.compile(client, p, &CompileOptions::new()).unwrap();
    let x = client.buffer_from_host(&[1f32, 2.0, 3.0], &[3]).unwrap();
    exe.execute(&[&x]).unwrap()[0].to_vec::<f32>().unwrap()
}

fn entries(dir: &PathBuf) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[test]
fn second_run_compiles_nothing_and_corrupt_entries_are_replaced() {
    let client = Client::cpu().unwrap();
    let dir = temp_dir("roundtrip");
    let p = program(2.0);

    let first = CompileCache::at(&dir);
    assert_eq!(run(&client, &first, &p), vec![2.0, 4.0, 6.0]);
    let s = first.stats();
    assert_eq!((s.compiles, s.hits, s.writes), (1, 0, 1), "{s:?}");
    let files = entries(&dir);
    assert_eq!(files.len(), 1, "one entry, no temp files: {files:?}");

    // A new cache over the same folder: what a second process sees.
    let second = CompileCache::at(&dir);
    assert_eq!(run(&client, &second, &p), vec![2.0, 4.0, 6.0]);
    let s = second.stats();
    assert_eq!((s.compiles, s.hits, s.writes), (0, 1, 0), "{s:?}");

    // Another program gets another entry.
    assert_eq!(run(&client, &second, &program(3.0)), vec![3.0, 6.0, 9.0]);
    assert_eq!(entries(&dir).len(), 2);

    // Truncate the first entry: detected, recompiled, replaced.
    let bytes = fs::read(&files[0]).unwrap();
    fs::write(&files[0], &bytes[..bytes.len() / 2]).unwrap();
    let third = CompileCache::at(&dir);
    assert_eq!(run(&client, &third, &p), vec![2.0, 4.0, 6.0]);
    let s = third.stats();
    assert_eq!(
        (s.compiles, s.hits, s.writes, s.rejected),
        (1, 0, 1, 1),
        "{s:?}"
    );
    // (Serialization is not byte-for-byte deterministic: compare sizes only.)
    let rewritten = fs::read(&files[0]).unwrap().len();
    assert!(rewritten > bytes.len() / 2, "entry rewritten whole");

    // A payload bit flip (valid length, wrong checksum): same.
    let mut flipped = bytes.clone();
    let n = flipped.len();
    flipped[n - 100] ^= 0x55;
    fs::write(&files[0], &flipped).unwrap();
    let fourth = CompileCache::at(&dir);
    assert_eq!(run(&client, &fourth, &p), vec![2.0, 4.0, 6.0]);
    assert_eq!(fourth.stats().rejected, 1);

    // And the rewritten entry loads again.
    let fifth = CompileCache::at(&dir);
    assert_eq!(run(&client, &fifth, &p), vec![2.0, 4.0, 6.0]);
    assert_eq!(fifth.stats().hits, 1);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn disabled_cache_always_compiles() {
    let client = Client::cpu().unwrap();
    let cache = CompileCache::disabled();
    assert!(cache.dir().is_none());
    let before = xlayer::compile_count();
    run(&client, &cache, &program(5.0));
    run(&client, &cache, &program(5.0));
    assert_eq!(cache.stats().compiles, 2);
    assert!(xlayer::compile_count() >= before + 2);
}

#[test]
fn key_depends_on_program_and_options() {
    let client = Client::cpu().unwrap();
    let o = CompileOptions::new();
    let k1 = CompileCache::key(&client, &program(2.0), &o);
    assert_eq!(k1, CompileCache::key(&client, &program(2.0), &o));
    assert_ne!(k1, CompileCache::key(&client, &program(4.0), &o));
    let fast = CompileOptions::new().xla_flag("xla_cpu_enable_fast_math", true);
    assert_ne!(k1, CompileCache::key(&client, &program(2.0), &fast));
}
