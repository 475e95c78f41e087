//! `jax.export` artifacts in JAX 0.12's own serialization (StableHLO newer
//! than the default plugin's; tests/fixtures/gen_jax012_exports.py), one
//! per kind of op or dtype: read, bound to their inputs, compiled, run, and
//! compared with JAX's outputs.
//!
//! A plugin on an older StableHLO (`xla-cpu-pjrt` 0.0.1) may refuse the
//! few that use ops it cannot parse; the default build reads them all.
//!
//! Integers, booleans and data movement must match exactly; floats within
//! 8 ulp of the array's largest magnitude (transcendentals and reordered
//! sums differ by a few ulp between CPU kinds and XLA builds, as the ops
//! tests' bounds say).

use std::path::PathBuf;

use anyhow::{ensure, Context, Result};
use half::{bf16, f16};
use xlayer::io::{bind_inputs, read_safetensors, upload};
use xlayer::{Client, DType, Error, HostArray, NamedValue, Program};

/// Every case the generator writes.
const CASES: [&str; 36] = [
    "bf16",
    "f16",
    "int8",
    "u8",
    "u32_bitcast",
    "bool_out",
    "popcount",
    "f16_sum",
    "bf16_dot_f32",
    "scalar_input",
    "pytree_out",
    "while",
    "cond",
    "scan",
    "sort",
    "argsort",
    "argmax",
    "top_k",
    "take",
    "scatter_add",
    "dynamic_update_slice",
    "cumsum",
    "cumprod",
    "clip_round",
    "erf",
    "logsumexp",
    "norm",
    "nan_select",
    "reduce_window_max",
    "einsum",
    "conv_grouped",
    "dot_product_attention",
    "rfft_abs",
    "fft_abs",
    "random_normal",
    "random_bits",
];

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/jax012")
        .join(name)
}

/// The array's elements as f64, and the dtype's machine epsilon (0 for
/// integers and booleans: compared exactly).
fn values(a: &HostArray) -> Result<(Vec<f64>, f64)> {
    Ok(match a.spec.dtype {
        DType::F32 => (
            a.to_vec::<f32>()?.into_iter().map(f64::from).collect(),
            f64::from(f32::EPSILON),
        ),
        DType::F64 => (a.to_vec::<f64>()?, f64::EPSILON),
        DType::F16 => (
            a.to_vec::<f16>()?.into_iter().map(f64::from).collect(),
            f64::from(f16::EPSILON),
        ),
        DType::BF16 => (
            a.to_vec::<bf16>()?.into_iter().map(f64::from).collect(),
            f64::from(bf16::EPSILON),
        ),
        DType::I8 => (a.to_vec::<i8>()?.into_iter().map(f64::from).collect(), 0.0),
        DType::U8 => (a.to_vec::<u8>()?.into_iter().map(f64::from).collect(), 0.0),
        DType::I32 => (a.to_vec::<i32>()?.into_iter().map(f64::from).collect(), 0.0),
        DType::U32 => (a.to_vec::<u32>()?.into_iter().map(f64::from).collect(), 0.0),
        DType::Bool => (
            a.to_vec::<bool>()?
                .into_iter()
                .map(|b| f64::from(u8::from(b)))
                .collect(),
            0.0,
        ),
        other => anyhow::bail!("no comparison for {other}"),
    })
}

fn run_case(client: &Client, name: &str) -> Result<()> {
    let program = Program::from_file(fixture(&format!("{name}.jaxexport")))?;
    let inputs = read_safetensors(fixture(&format!("{name}.in.safetensors")))?;
    let mut expected = read_safetensors(fixture(&format!("{name}.out.safetensors")))?;
    expected.sort_by_key(|t| {
        t.name
            .trim_start_matches("out")
            .parse::<usize>()
            .unwrap_or(0)
    });
    let bound = bind_inputs(&program, &inputs)?;
    let buffers = upload(client, &bound)?;
    let exe = client.compile(&program)?;
    let outs = exe.execute(&buffers.iter().collect::<Vec<_>>())?;
    ensure!(
        outs.len() == expected.len(),
        "{} outputs, JAX has {}",
        outs.len(),
        expected.len()
    );
    for (o, e) in outs.iter().zip(&expected) {
        let what = format!("{name} {}", e.name);
        ensure!(
            o.spec() == &e.array.spec,
            "{what}: {} vs JAX {}",
            o.spec(),
            e.array.spec
        );
        let got = HostArray {
            spec: o.spec().clone(),
            bytes: o.to_bytes()?,
        };
        let (g, eps) = values(&got).context(what.clone())?;
        let (w, _) = values(&e.array)?;
        let scale = w.iter().fold(1f64, |m, v| m.max(v.abs()));
        for (i, (g, w)) in g.iter().zip(&w).enumerate() {
            let same = (g.is_nan() && w.is_nan()) || (g - w).abs() <= 8.0 * eps * scale;
            ensure!(same, "{what}[{i}]: {g} vs JAX {w}");
        }
    }
    Ok(())
}

/// Whether `e` is a plugin on a StableHLO older than JAX 0.12's failing to
/// parse an op it does not know (`xla-cpu-pjrt` 0.0.1, StableHLO 1.13.3,
/// reads no `vhlo.composite_v2`: top_k and erf): a limit of that build, not
/// a wrong result.
fn too_new_for(client: &Client, e: &anyhow::Error) -> bool {
    let old = match client.plugin().attribute("stablehlo_current_version") {
        Some(NamedValue::Int64List(v)) => v.as_slice() < [1, 16].as_slice(),
        _ => false,
    };
    old && matches!(
        e.downcast_ref::<Error>(),
        Some(Error::Pjrt { function: "PJRT_Client_Compile", message, .. })
            if message.contains("unregistered operation 'vhlo.")
    )
}

#[test]
fn jax_012_artifacts_equal_jax() {
    let client = Client::cpu().unwrap();
    let mut ran = 0;
    let mut failures = Vec::new();
    for name in CASES {
        match run_case(&client, name) {
            Ok(()) => ran += 1,
            Err(e) if too_new_for(&client, &e) => {}
            Err(e) => failures.push(format!("{name}: {e:#}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        ran >= CASES.len() - 4,
        "only {ran} of {} cases ran",
        CASES.len()
    );
}

#[test]
fn every_fixture_is_a_case() {
    let mut on_disk: Vec<String> = std::fs::read_dir(fixture(""))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".jaxexport").map(str::to_string)
        })
        .collect();
    on_disk.sort();
    let mut cases: Vec<String> = CASES.iter().map(|s| s.to_string()).collect();
    cases.sort();
    assert_eq!(on_disk, cases);
}
