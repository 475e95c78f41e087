//! xlayer's measured CPU compile flags (`pjrt::cpu_tuning`): YNNPACK
//! fusion types chosen for a program with a convolution only, part of the
//! compile cache's key, and not changing the results beyond rounding.

use anyhow::Result;
use xlayer::cache::CompileCache;
use xlayer::pjrt::cpu_tuning::{has_convolution, CPU_CONV_LIBRARY_FUSION, CPU_LIBRARY_FUSION_FLAG};
use xlayer::{Client, CompileOptions, Program};

/// A valid 3x3 convolution of f32[2,6,6,2] to 4 features, flattened and
/// multiplied by f32[64,3]: a CNN's last layers in miniature.
const CONV_DENSE: &str = r#"func.func @main(%x: tensor<2x6x6x2xf32>, %k: tensor<3x3x2x4xf32>, %w: tensor<64x3xf32>) -> tensor<2x3xf32> {
  %0 = stablehlo.convolution(%x, %k) dim_numbers = [b, 0, 1, f]x[0, 1, i, o]->[b, 0, 1, f], window = {} {batch_group_count = 1 : i64, feature_group_count = 1 : i64} : (tensor<2x6x6x2xf32>, tensor<3x3x2x4xf32>) -> tensor<2x4x4x4xf32>
  %1 = stablehlo.reshape %0 : (tensor<2x4x4x4xf32>) -> tensor<2x64xf32>
  %2 = stablehlo.dot_general %1, %w, contracting_dims = [1] x [0] : (tensor<2x64xf32>, tensor<64x3xf32>) -> tensor<2x3xf32>
  return %2 : tensor<2x3xf32>
}"#;

const DENSE: &str = r#"func.func @main(%x: tensor<2x64xf32>, %w: tensor<64x3xf32>) -> tensor<2x3xf32> {
  %0 = stablehlo.dot_general %x, %w, contracting_dims = [1] x [0] : (tensor<2x64xf32>, tensor<64x3xf32>) -> tensor<2x3xf32>
  return %0 : tensor<2x3xf32>
}"#;

fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919 + seed * 104_729) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

/// The program's result in f64, straight from the definitions.
fn conv_dense_reference(x: &[f32], k: &[f32], w: &[f32]) -> Vec<f64> {
    let mut flat = vec![0f64; 2 * 64];
    for b in 0..2 {
        for i in 0..4 {
            for j in 0..4 {
                for o in 0..4 {
                    let mut s = 0f64;
                    for di in 0..3 {
                        for dj in 0..3 {
                            for c in 0..2 {
                                let xv = x[((b * 6 + i + di) * 6 + j + dj) * 2 + c] as f64;
                                s += xv * k[((di * 3 + dj) * 2 + c) * 4 + o] as f64;
                            }
                        }
                    }
                    flat[b * 64 + (i * 4 + j) * 4 + o] = s;
                }
            }
        }
    }
    let mut out = vec![0f64; 2 * 3];
    for b in 0..2 {
        for n in 0..3 {
            out[b * 3 + n] = (0..64)
                .map(|m| flat[b * 64 + m] * w[m * 3 + n] as f64)
                .sum();
        }
    }
    out
}

#[test]
fn the_added_flags_follow_the_program_and_the_cache_keys_them() -> Result<()> {
    let client = Client::cpu()?;
    let dir = std::env::temp_dir().join(format!("xlayer-cpu-tuning-{}", std::process::id()));
    let cache = CompileCache::at(&dir);
    let conv = Program::mlir_text(CONV_DENSE)?;
    let dense = Program::mlir_text(DENSE)?;
    assert!(has_convolution(&conv));
    assert!(!has_convolution(&dense));
    let ours = CompileOptions::new();
    let theirs = CompileOptions::new().cpu_tuning(false);
    // The convolution compiles with xlayer's fusion types: another entry.
    assert_ne!(
        cache.key(&client, &conv, &ours)?,
        cache.key(&client, &conv, &theirs)?
    );
    // The same entry as the flag set by hand to xlayer's value, which the
    // build takes as it is (set by hand, a refusal would be an error, not
    // a silent compile without it).
    let by_hand = CompileOptions::new()
        .cpu_tuning(false)
        .xla_flag(CPU_LIBRARY_FUSION_FLAG, CPU_CONV_LIBRARY_FUSION);
    assert_eq!(
        cache.key(&client, &conv, &ours)?.options_sha256,
        cache.key(&client, &conv, &by_hand)?.options_sha256
    );
    client.compile_with(&conv, &by_hand)?;
    // A program without one compiles as before.
    assert_eq!(
        cache.key(&client, &dense, &ours)?,
        cache.key(&client, &dense, &theirs)?
    );
    // Nor does a compile for several devices.
    assert_eq!(
        cache
            .key(&client, &conv, &ours.clone().spmd(2))?
            .options_sha256,
        cache
            .key(&client, &conv, &theirs.clone().spmd(2))?
            .options_sha256
    );
    // A flag the caller set is kept as set.
    let own = CompileOptions::new().xla_flag(
        CPU_LIBRARY_FUSION_FLAG,
        "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
    );
    assert_eq!(
        cache.key(&client, &conv, &own)?,
        cache.key(&client, &conv, &own.clone().cpu_tuning(false))?
    );
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

#[test]
fn the_added_flags_change_kernels_not_results() -> Result<()> {
    let client = Client::cpu()?;
    let conv = Program::mlir_text(CONV_DENSE)?;
    let (x, k, w) = (
        values(2 * 6 * 6 * 2, 1),
        values(3 * 3 * 2 * 4, 2),
        values(64 * 3, 3),
    );
    let args = [
        client.buffer_from_host(&x, &[2, 6, 6, 2])?,
        client.buffer_from_host(&k, &[3, 3, 2, 4])?,
        client.buffer_from_host(&w, &[64, 3])?,
    ];
    let args: Vec<_> = args.iter().collect();
    let want = conv_dense_reference(&x, &k, &w);
    for options in [
        CompileOptions::new(),
        CompileOptions::new().cpu_tuning(false),
    ] {
        let exe = client.compile_with(&conv, &options)?;
        let got = exe.execute(&args)?[0].to_vec::<f32>()?;
        for (g, r) in got.iter().zip(&want) {
            // 18 products into each of 64 terms, f32: well inside 1e-4.
            assert!(
                ((*g as f64) - r).abs() <= 1e-4 * (1.0 + r.abs()),
                "{got:?} vs {want:?}"
            );
        }
    }
    Ok(())
}
