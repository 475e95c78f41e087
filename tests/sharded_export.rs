//! `jax.export` artifacts exported by JAX 0.12 for 4 devices
//! (tests/fixtures/gen_sharded.py): the recorded mesh and shardings, a run
//! over the CPU plugin's 4 devices through the library and through
//! `xlayer run -o`, outputs equal to JAX's.

use std::path::{Path, PathBuf};

use anyhow::Result;
use xlayer::io::{bind_inputs, read_safetensors};
use xlayer::sharding::ExportPlan;
use xlayer::NamedArray;
use xlayer::{Client, CompileOptions, Error, NamedValue, Program};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/sharded")
        .join(name)
}

fn f32s(t: &NamedArray) -> Vec<f32> {
    t.array
        .bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Same XLA computation on another build of the CPU compiler: equal within
/// a few ulp of the largest magnitude (tanh and the sums of 8 values).
fn assert_close(name: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{name}");
    let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 8.0 * f32::EPSILON * scale,
            "{name}[{i}]: {g} vs JAX {w}"
        );
    }
}

/// Runs artifact `name` through the library; returns the gathered outputs.
fn run_library(name: &str) -> Result<Vec<Vec<f32>>> {
    run_artifact(&format!("{name}.jaxexport"), name)
}

/// Runs the artifact file `artifact` on the inputs of fixture `io`.
fn run_artifact(artifact: &str, io: &str) -> Result<Vec<Vec<f32>>> {
    let name = io;
    let program = Program::from_file(fixture(artifact))?;
    assert_eq!(program.device_count(), 4);
    let client = Client::cpu_devices(4)?;
    let plan = ExportPlan::new(&client, &program)?;
    let tensors = read_safetensors(fixture(&format!("{name}.in.safetensors")))?;
    let bound = bind_inputs(&program, &tensors)?;
    let exe = client.compile_with(&program, &CompileOptions::new().spmd(4))?;
    let host: Vec<_> = bound
        .iter()
        .map(|t| (&t.array.spec, t.array.bytes.as_slice()))
        .collect();
    let out = plan.run(&program, &exe, &host)?;
    out.iter().map(|a| Ok(a.to_vec::<f32>()?)).collect()
}

fn jax_outputs(name: &str) -> Result<Vec<Vec<f32>>> {
    let mut t = read_safetensors(fixture(&format!("{name}.out.safetensors")))?;
    t.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(t.iter().map(f32s).collect())
}

#[test]
fn the_artifact_records_its_mesh_and_shardings() -> Result<()> {
    let program = Program::from_file(fixture("mesh2x2.jaxexport"))?;
    let s = program.export_shardings().expect("shardings");
    let x = s.inputs[0].as_ref().expect("x sharding");
    assert_eq!(x.axis_names, vec!["data", "model"]);
    assert_eq!(x.axis_sizes, vec![2, 2]);
    assert_eq!(x.spec, vec![vec!["data".to_string()], vec![]]);
    let plan = ExportPlan::new(&Client::cpu_devices(4)?, &program)?;
    assert_eq!(plan.inputs[1].spec().to_string(), "P(None, 'model')");
    assert_eq!(plan.outputs[0].spec().to_string(), "P('data', 'model')");
    assert_eq!(plan.outputs[1].spec().to_string(), "P('model')");
    Ok(())
}

#[test]
fn a_2x2_data_model_artifact_equals_jax() -> Result<()> {
    let got = run_library("mesh2x2")?;
    let want = jax_outputs("mesh2x2")?;
    assert_eq!(got.len(), 2);
    assert_close("out0", &got[0], &want[0]);
    assert_close("out1", &got[1], &want[1]);
    Ok(())
}

#[test]
fn a_shard_map_psum_artifact_equals_jax() -> Result<()> {
    let got = run_library("psum")?;
    let want = jax_outputs("psum")?;
    assert_close("psum", &got[0], &want[0]);
    // x * axis_index: exact.
    assert_eq!(got[1], want[1]);
    Ok(())
}

/// The StableHLO version a plugin says it writes and reads
/// (`stablehlo_current_version`), when it says.
fn plugin_stablehlo(client: &Client) -> Option<Vec<i64>> {
    match client.plugin().attribute("stablehlo_current_version")? {
        NamedValue::Int64List(v) => Some(v.clone()),
        _ => None,
    }
}

/// The psum program as JAX 0.12 serializes it by itself (StableHLO newer
/// than the other fixtures' 1.13.3): the default plugin (StableHLO 1.16.1)
/// reads and runs it and equals JAX; a plugin on an older StableHLO
/// (`xla-cpu-pjrt` 0.0.1: 1.13.3) refuses it with an error, not an abort.
#[test]
fn jax_012s_own_serialization_of_a_shard_map_psum_equals_jax() -> Result<()> {
    let client = Client::cpu_devices(4)?;
    let version = plugin_stablehlo(&client).unwrap_or_default();
    match run_artifact("psum.jax012.jaxexport", "psum") {
        Ok(got) => {
            let want = jax_outputs("psum")?;
            assert_close("psum", &got[0], &want[0]);
            assert_eq!(got[1], want[1]);
        }
        Err(e) => {
            assert!(
                version < vec![1, 16],
                "a plugin on StableHLO {version:?} must read JAX 0.12's serialization: {e:#}"
            );
            assert!(
                matches!(
                    e.downcast_ref::<Error>(),
                    Some(Error::Pjrt {
                        function: "PJRT_Client_Compile",
                        ..
                    })
                ),
                "{e:#}"
            );
        }
    }
    Ok(())
}

#[test]
fn a_sharded_artifact_needs_as_many_devices() -> Result<()> {
    let program = Program::from_file(fixture("mesh2x2.jaxexport"))?;
    let two = Client::cpu_devices(2)?;
    assert!(matches!(
        ExportPlan::new(&two, &program),
        Err(Error::DeviceCount {
            expected: 4,
            actual: 2,
            ..
        })
    ));
    let four = Client::cpu_devices(4)?;
    // Compiled for one device: refused before the plugin sees it.
    assert!(matches!(
        four.compile(&program),
        Err(Error::DeviceCount {
            expected: 4,
            actual: 1,
            ..
        })
    ));
    Ok(())
}

// Runs the `xlayer` binary, built with the `cli` feature.
#[cfg(feature = "cli")]
#[test]
fn xlayer_run_scatters_runs_and_gathers_into_safetensors() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("xlayer-sharded-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    for name in ["mesh2x2", "psum"] {
        let out = dir.join(format!("{name}.out.safetensors"));
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_xlayer"))
            .arg("run")
            .arg(fixture(&format!("{name}.jaxexport")))
            .arg("-i")
            .arg(fixture(&format!("{name}.in.safetensors")))
            .arg("-o")
            .arg(&out)
            .output()?;
        assert!(
            status.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&status.stderr)
        );
        let mut got = read_safetensors(&out)?;
        got.sort_by(|a, b| a.name.cmp(&b.name));
        let want = jax_outputs(name)?;
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert_close(&format!("{name} {}", g.name), &f32s(g), w);
        }
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

// Runs the `xlayer` binary, built with the `cli` feature.
#[cfg(feature = "cli")]
#[test]
fn xlayer_devices_and_doctor_show_the_devices() -> Result<()> {
    use std::process::Command;
    // Runs `xlayer ARGS` on the default (CPU) plugin; its stdout once it
    // succeeded.
    let xlayer = |args: &[&str]| -> Result<String> {
        let out = Command::new(env!("CARGO_BIN_EXE_xlayer"))
            .args(args)
            .env_remove("XLAYER_PJRT_PLUGIN")
            .output()?;
        assert!(
            out.status.success(),
            "xlayer {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    };
    let text = xlayer(&["devices", "--cpu-count", "3"])?;
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(
        text.lines().nth(2).is_some_and(|l| l.starts_with("2\t")),
        "{text}"
    );
    // Without --cpu-count: one CPU device, as `Client::cpu()` and JAX.
    let text = xlayer(&["devices"])?;
    assert_eq!(text.lines().count(), 1, "{text}");
    let text = xlayer(&["doctor"])?;
    assert!(
        text.contains("cpu_device_count") && text.contains("Client::cpu_devices(n)"),
        "{text}"
    );
    assert!(text.contains("devices:      1 "), "{text}");
    let out = Command::new(env!("CARGO_BIN_EXE_xlayer"))
        .args(["devices", "--cpu-count", "0"])
        .output()?;
    assert!(!out.status.success());
    Ok(())
}

// Runs the `xlayer` binary, built with the `cli` feature.
#[cfg(feature = "cli")]
#[test]
fn xlayer_hlo_compiles_for_the_artifacts_devices_and_bench_refuses_clearly() -> Result<()> {
    let xlayer = |cmd: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_xlayer"))
            .arg(cmd)
            .arg(fixture("mesh2x2.jaxexport"))
            .output()
    };
    // `hlo`: the per-device program of the 4-device artifact (SPMD
    // partitioned: a collective or a shard-sized parameter).
    let out = xlayer("hlo")?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "xlayer hlo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("HloModule"), "not an HLO module: {text}");
    assert!(
        text.contains("num_partitions=4"),
        "not partitioned for 4 devices: {}",
        text.lines().next().unwrap_or("")
    );
    // `bench`: refused before compiling, naming the program and its
    // device count.
    let out = xlayer("bench")?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("`mesh2x2` is partitioned over 4 devices") && err.contains("xlayer run"),
        "{err}"
    );
    Ok(())
}
