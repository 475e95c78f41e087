//! The PJRT runtime against the real CPU plugin: uploads and downloads of
//! every dtype, compile and execute, donation, devices, threads, and every
//! error path (none of which may abort the process).

use std::sync::{Arc, OnceLock};

use anyhow::Result;
use xlayer::{
    bf16, f16, Arg, ArraySpec, Client, ClientOptions, CompileOptions, DType, Error, NativeType,
    Plugin, Program, XlaFlag,
};

/// One client for the whole test binary, with two CPU devices.
fn client() -> &'static Client {
    static CLIENT: OnceLock<Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let plugin = Plugin::cpu().expect("CPU plugin");
        Client::new(&plugin, &ClientOptions::new().cpu_device_count(2)).expect("CPU client")
    })
}

const MATMUL: &str = r#"module @jit_f attributes {mhlo.num_partitions = 1 : i32, mhlo.num_replicas = 1 : i32} {
  func.func public @main(%arg0: tensor<2x3xf32>, %arg1: tensor<3x4xf32>) -> (tensor<2x4xf32>) {
    %0 = stablehlo.dot_general %arg0, %arg1, contracting_dims = [1] x [0], precision = [DEFAULT, DEFAULT] : (tensor<2x3xf32>, tensor<3x4xf32>) -> tensor<2x4xf32>
    %cst = stablehlo.constant dense<1.000000e+00> : tensor<f32>
    %1 = stablehlo.broadcast_in_dim %cst, dims = [] : (tensor<f32>) -> tensor<2x4xf32>
    %2 = stablehlo.add %0, %1 : tensor<2x4xf32>
    return %2 : tensor<2x4xf32>
  }
}"#;

fn matmul_reference(a: &[f32], b: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; 8];
    for i in 0..2 {
        for j in 0..4 {
            out[i * 4 + j] = (0..3).map(|k| a[i * 3 + k] * b[k * 4 + j]).sum::<f32>() + 1.0;
        }
    }
    out
}

fn matmul_exe() -> &'static xlayer::Executable {
    static EXE: OnceLock<xlayer::Executable> = OnceLock::new();
    EXE.get_or_init(|| {
        client()
            .compile(&Program::mlir_text(MATMUL).unwrap())
            .unwrap()
    })
}

#[test]
fn matmul_plus_one_matches_reference() -> Result<()> {
    let a: Vec<f32> = (0..6).map(|i| i as f32 * 0.5 - 1.0).collect();
    let b: Vec<f32> = (0..12).map(|i| (i as f32).sin()).collect();
    let c = client();
    let out = matmul_exe().execute(&[
        &c.buffer_from_host(&a, &[2, 3])?,
        &c.buffer_from_host(&b, &[3, 4])?,
    ])?;
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].spec(), &ArraySpec::of::<f32>([2, 4]));
    let got = out[0].to_vec::<f32>()?;
    for (g, w) in got.iter().zip(matmul_reference(&a, &b)) {
        assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "{g} vs {w}");
    }
    Ok(())
}

/// Uploads `data` as a 2x3 array, runs identity + reverse along dim 1, and
/// checks both outputs element by element.
fn round_trip<T: NativeType>(data: [T; 6]) -> Result<()> {
    let ty = ArraySpec::of::<T>([2, 3]).mlir_type();
    let text = format!(
        "func.func public @main(%a: {ty}) -> ({ty}, {ty}) {{\n  %r = stablehlo.reverse %a, dims = [1] : {ty}\n  return %a, %r : {ty}, {ty}\n}}"
    );
    let c = client();
    let exe = c.compile(&Program::mlir_text(text)?)?;
    let buf = c.buffer_from_host(&data, &[2, 3])?;
    assert_eq!(buf.dtype(), T::DTYPE);
    assert_eq!(
        buf.to_vec::<T>()?,
        data.to_vec(),
        "upload/download of {}",
        T::DTYPE
    );
    let out = exe.execute(&[&buf])?;
    assert_eq!(out.len(), 2);
    assert_eq!(
        out[0].to_vec::<T>()?,
        data.to_vec(),
        "identity of {}",
        T::DTYPE
    );
    let reversed = vec![data[2], data[1], data[0], data[5], data[4], data[3]];
    assert_eq!(out[1].to_vec::<T>()?, reversed, "reverse of {}", T::DTYPE);
    Ok(())
}

#[test]
fn every_dtype_round_trips_through_an_executable() -> Result<()> {
    round_trip([true, false, false, true, true, false])?;
    round_trip([i8::MIN, -1, 0, 1, 2, i8::MAX])?;
    round_trip([i16::MIN, -300, 0, 1, 300, i16::MAX])?;
    round_trip([i32::MIN, -70000, 0, 1, 70000, i32::MAX])?;
    round_trip([i64::MIN, -(1 << 40), 0, 1, 1 << 40, i64::MAX])?;
    round_trip([0u8, 1, 2, 127, 128, 255])?;
    round_trip([0u16, 1, 2, 300, 40000, u16::MAX])?;
    round_trip([0u32, 1, 2, 70000, 1 << 31, u32::MAX])?;
    round_trip([0u64, 1, 2, 1 << 40, 1 << 63, u64::MAX])?;
    round_trip([-2.5f32, -0.0, 0.0, 1e-30, f32::MAX, f32::INFINITY])?;
    round_trip([-2.5f64, -0.0, 0.0, 1e-300, f64::MAX, f64::NEG_INFINITY])?;
    round_trip([-2.5, 0.0, 1.0, 65504.0, 1e-3, 3.0].map(f16::from_f32))?;
    round_trip([-2.5, 0.0, 1.0, 3e38, 1e-3, 3.0].map(bf16::from_f32))?;
    Ok(())
}

#[test]
fn multiple_outputs_in_order() -> Result<()> {
    let text = r#"func.func public @main(%a: tensor<4xi32>, %b: tensor<4xi32>) -> (tensor<4xi32>, tensor<4xi32>, tensor<i32>) {
  %s = stablehlo.add %a, %b : tensor<4xi32>
  %p = stablehlo.multiply %a, %b : tensor<4xi32>
  %z = stablehlo.constant dense<0> : tensor<i32>
  %t = stablehlo.reduce(%s init: %z) applies stablehlo.add across dimensions = [0] : (tensor<4xi32>, tensor<i32>) -> tensor<i32>
  return %s, %p, %t : tensor<4xi32>, tensor<4xi32>, tensor<i32>
}"#;
    let c = client();
    let exe = c.compile(&Program::mlir_text(text)?)?;
    let a = c.buffer_from_host(&[1, 2, 3, 4], &[4])?;
    let b = c.buffer_from_host(&[10, -20, 30, -40], &[4])?;
    let out = exe.execute(&[&a, &b])?;
    assert_eq!(out.len(), 3);
    assert_eq!(out[0].to_vec::<i32>()?, vec![11, -18, 33, -36]);
    assert_eq!(out[1].to_vec::<i32>()?, vec![10, -40, 90, -160]);
    assert_eq!(out[2].to_scalar::<i32>()?, -10);
    assert_eq!(exe.signature().outputs[2], ArraySpec::of::<i32>([]));
    Ok(())
}

#[test]
fn donated_buffer_is_consumed_and_result_correct() -> Result<()> {
    let text = r#"func.func public @main(%a: tensor<3xf32> {jax.buffer_donor = true}, %b: tensor<3xf32>) -> tensor<3xf32> {
  %0 = stablehlo.add %a, %b : tensor<3xf32>
  return %0 : tensor<3xf32>
}"#;
    let c = client();
    let exe = c.compile(&Program::mlir_text(text)?)?;
    assert_eq!(exe.signature().donors, vec![true, false]);
    let a = c.buffer_from_host(&[1f32, 2.0, 3.0], &[3])?;
    let b = c.buffer_from_host(&[0.5f32, 0.5, 0.5], &[3])?;
    // Borrowed: `a` stays readable afterwards.
    let out = exe.execute(&[&a, &b])?;
    assert_eq!(out[0].to_vec::<f32>()?, vec![1.5, 2.5, 3.5]);
    assert_eq!(a.to_vec::<f32>()?, vec![1.0, 2.0, 3.0]);
    // Donated: `a` is moved in.
    let out = exe.execute_args(vec![Arg::Donated(a), Arg::Borrowed(&b)])?;
    assert_eq!(out[0].to_vec::<f32>()?, vec![1.5, 2.5, 3.5]);
    Ok(())
}

#[test]
fn copy_between_devices_and_compile_for_a_device() -> Result<()> {
    let c = client();
    assert_eq!(c.platform_name(), "cpu");
    assert_eq!(c.devices().len(), 2);
    let d1 = c.device(1)?;
    let x = c.buffer_from_host(&[1f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3])?;
    let y = x.copy_to_device(d1)?;
    assert_eq!(y.device(), d1);
    assert_eq!(y.to_vec::<f32>()?, x.to_vec::<f32>()?);
    let b = c.buffer_from_host_on(&[1f32; 12], &[3, 4], d1)?;
    let exe = c.compile_with(
        &Program::mlir_text(MATMUL)?,
        &CompileOptions::new().device(1),
    )?;
    assert_eq!(exe.device(), d1);
    let out = exe.execute(&[&y, &b])?;
    assert_eq!(out[0].device(), d1);
    assert_eq!(
        out[0].to_vec::<f32>()?,
        vec![7.0, 7.0, 7.0, 7.0, 16.0, 16.0, 16.0, 16.0]
    );
    Ok(())
}

#[test]
fn serialized_executable_loads_and_runs() -> Result<()> {
    let c = client();
    let exe = matmul_exe();
    let bytes = exe.serialize()?;
    assert!(!bytes.is_empty());
    let back = c.deserialize_executable(&bytes, exe.name(), exe.signature().clone())?;
    let a = c.buffer_from_host(&[1f32; 6], &[2, 3])?;
    let b = c.buffer_from_host(&[2f32; 12], &[3, 4])?;
    assert_eq!(back.execute(&[&a, &b])?[0].to_vec::<f32>()?, vec![7.0; 8]);
    Ok(())
}

#[test]
fn plugin_reports_version_and_attributes() -> Result<()> {
    let p = client().plugin();
    assert_eq!(p.api_version().0, 0);
    assert!(p.api_version().1 >= 60);
    assert!(
        p.attribute("stablehlo_current_version").is_some(),
        "{:?}",
        p.attributes()
    );
    Ok(())
}

#[test]
fn eight_threads_share_one_executable() -> Result<()> {
    let c = client();
    let exe = Arc::new(c.compile(&Program::mlir_text(MATMUL)?)?);
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let exe = exe.clone();
            let c = c.clone();
            std::thread::spawn(move || -> Result<()> {
                let a: Vec<f32> = (0..6).map(|i| (i + t) as f32).collect();
                let b: Vec<f32> = (0..12).map(|i| (i * t) as f32 * 0.25).collect();
                let want = matmul_reference(&a, &b);
                let (ba, bb) = (
                    c.buffer_from_host(&a, &[2, 3])?,
                    c.buffer_from_host(&b, &[3, 4])?,
                );
                for _ in 0..1000 {
                    let out = exe.execute(&[&ba, &bb])?;
                    assert_eq!(out[0].to_vec::<f32>()?, want, "thread {t}");
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread panicked")?;
    }
    Ok(())
}

// ---- error paths: each returns an error naming the culprit, none aborts ----

#[test]
fn missing_plugin_file_is_named() {
    let err = Plugin::load("/nonexistent/dir/libnothing.so").unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::PluginLoad { .. }), "{msg}");
    assert!(msg.contains("/nonexistent/dir/libnothing.so"), "{msg}");
}

#[test]
fn file_that_is_not_a_library_is_rejected() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("xlayer-notaplugin-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("garbage.so");
    std::fs::write(&path, b"this is not an ELF file")?;
    let err = Plugin::load(&path).unwrap_err();
    assert!(matches!(err, Error::PluginLoad { .. }), "{err}");
    assert!(err.to_string().contains("garbage.so"), "{err}");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[test]
fn shared_library_without_pjrt_api_is_not_a_plugin() {
    // libm is on every Linux machine and exports no GetPjrtApi.
    let candidates = [
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/usr/lib/x86_64-linux-gnu/libm.so.6",
        "/lib64/libm.so.6",
        "/usr/lib64/libm.so.6",
    ];
    let path = candidates
        .iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("libm.so.6 not found");
    let err = Plugin::load(path).unwrap_err();
    assert!(matches!(err, Error::NotAPlugin { .. }), "{err}");
    assert!(err.to_string().contains("GetPjrtApi"), "{err}");
}

#[test]
fn malformed_stablehlo_surfaces_the_compiler_message() {
    let text = "func.func public @main(%a: tensor<2xf32>) -> tensor<2xf32> {\n  %0 = stablehlo.add %a, %nope : tensor<2xf32>\n  return %0 : tensor<2xf32>\n}";
    let err = client()
        .compile(&Program::mlir_text(text).unwrap())
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            Error::Pjrt {
                function: "PJRT_Client_Compile",
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains("undeclared SSA value") || msg.contains("nope"),
        "{msg}"
    );
}

#[test]
fn wrong_argument_count_is_caught_before_the_plugin() -> Result<()> {
    let c = client();
    let a = c.buffer_from_host(&[0f32; 6], &[2, 3])?;
    let err = matmul_exe().execute(&[&a]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::ArgumentCount {
                expected: 2,
                actual: 1,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("jit_f"), "{err}");
    Ok(())
}

#[test]
fn wrong_dtype_is_named_with_both_types() -> Result<()> {
    let c = client();
    let a = c.buffer_from_host(&[0f64; 6], &[2, 3])?;
    let b = c.buffer_from_host(&[0f32; 12], &[3, 4])?;
    let err = matmul_exe().execute(&[&a, &b]).unwrap_err().to_string();
    assert!(
        err.contains("argument 0") && err.contains("f32[2,3]") && err.contains("f64[2,3]"),
        "{err}"
    );
    Ok(())
}

#[test]
fn wrong_shape_is_named_with_both_shapes() -> Result<()> {
    let c = client();
    let a = c.buffer_from_host(&[0f32; 6], &[2, 3])?;
    let b = c.buffer_from_host(&[0f32; 12], &[4, 3])?;
    let err = matmul_exe().execute(&[&a, &b]).unwrap_err().to_string();
    assert!(
        err.contains("argument 1") && err.contains("f32[3,4]") && err.contains("f32[4,3]"),
        "{err}"
    );
    Ok(())
}

#[test]
fn buffer_on_another_device_is_rejected() -> Result<()> {
    let c = client();
    let a = c.buffer_from_host_on(&[0f32; 6], &[2, 3], c.device(1)?)?;
    let b = c.buffer_from_host(&[0f32; 12], &[3, 4])?;
    let err = matmul_exe().execute(&[&a, &b]).unwrap_err();
    assert!(
        matches!(err, Error::ArgumentDevice { index: 0, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("cpu:1") && err.to_string().contains("cpu:0"),
        "{err}"
    );
    Ok(())
}

#[test]
fn buffer_from_another_client_is_rejected() -> Result<()> {
    let other = Client::new(client().plugin(), &ClientOptions::new().cpu_device_count(1))?;
    let a = other.buffer_from_host(&[0f32; 6], &[2, 3])?;
    let b = client().buffer_from_host(&[0f32; 12], &[3, 4])?;
    let err = matmul_exe().execute(&[&a, &b]).unwrap_err();
    assert!(matches!(err, Error::ForeignClient { .. }), "{err}");
    assert!(err.to_string().contains("argument 0"), "{err}");
    // A device of another client is refused too.
    let err = client()
        .buffer_from_host_on(&[1f32], &[], other.default_device())
        .unwrap_err();
    assert!(matches!(err, Error::ForeignClient { .. }), "{err}");
    Ok(())
}

#[test]
fn host_data_of_the_wrong_size_is_rejected() {
    let err = client()
        .buffer_from_host(&[1f32, 2.0, 3.0], &[2, 2])
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::HostDataSize {
                expected: 4,
                actual: 3,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("f32[2,2]"), "{err}");
    let spec = ArraySpec::new(DType::Bool, [2]);
    let err = client()
        .buffer_from_bytes(&[0, 7], &spec, client().default_device())
        .unwrap_err();
    assert!(err.to_string().contains("bool"), "{err}");
}

#[test]
fn reading_as_the_wrong_type_is_an_error() -> Result<()> {
    let b = client().buffer_from_host(&[1u8, 2], &[2])?;
    let err = b.to_vec::<i8>().unwrap_err();
    assert!(
        matches!(
            err,
            Error::DType {
                expected: DType::I8,
                actual: DType::U8,
                ..
            }
        ),
        "{err}"
    );
    Ok(())
}

#[test]
fn unknown_device_index_is_an_error() {
    let err = client().device(7).unwrap_err();
    assert!(
        matches!(err, Error::NoSuchDevice { index: 7, count: 2 }),
        "{err}"
    );
    let err = client()
        .compile_with(
            &Program::mlir_text(MATMUL).unwrap(),
            &CompileOptions::new().device(9),
        )
        .unwrap_err();
    assert!(matches!(err, Error::NoSuchDevice { index: 9, .. }), "{err}");
}

/// Resident memory of this process in bytes (Linux).
fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// 100,000 executions with uploads and downloads; resident memory must not
/// grow by more than a few MB once warm. Slow-ish, so opt-in:
/// `cargo test --release --test runtime -- --ignored`.
#[test]
#[ignore]
fn no_leak_over_100k_executions() -> Result<()> {
    let c = client();
    let exe = matmul_exe();
    let run = |n: usize| -> Result<()> {
        for i in 0..n {
            let a = c.buffer_from_host(&[i as f32; 6], &[2, 3])?;
            let b = c.buffer_from_host(&[1f32; 12], &[3, 4])?;
            let out = exe.execute(&[&a, &b])?;
            assert_eq!(out[0].to_vec::<f32>()?[0], 3.0 * i as f32 + 1.0);
        }
        Ok(())
    };
    run(10_000)?;
    let before = rss_bytes();
    run(100_000)?;
    let after = rss_bytes();
    let growth = after.saturating_sub(before);
    assert!(
        growth < 8 << 20,
        "resident memory grew by {growth} bytes over 100k executions"
    );
    Ok(())
}

/// XLA flags are checked by the plugin at compile time; a name it does not
/// know and a value it refuses come back as typed errors naming the flag.
#[test]
fn unknown_and_refused_xla_flags_are_typed_errors() -> Result<()> {
    let c = client();
    let p = Program::mlir_text(MATMUL)?;
    let e = c
        .compile_with(
            &p,
            &CompileOptions::new().xla_flag("xla_no_such_flag", true),
        )
        .unwrap_err();
    assert!(
        matches!(&e, Error::UnknownXlaFlag { name, plugin } if name == "xla_no_such_flag" && plugin == c.plugin().path()),
        "{e:?}"
    );
    assert!(e.to_string().contains("`xla_no_such_flag`"), "{e}");
    // A repeated enum flag takes the enum's full name, not `dot`.
    let opts = CompileOptions::new().xla_flag("xla_cpu_experimental_ynn_fusion_type", "dot");
    let e = c.compile_with(&p, &opts).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidXlaFlag { name, value: XlaFlag::String(v), .. } if name == "xla_cpu_experimental_ynn_fusion_type" && v == "dot"),
        "{e:?}"
    );
    // A known flag with a valid value compiles.
    c.compile_with(
        &p,
        &CompileOptions::new().xla_flag("xla_cpu_enable_fast_math", false),
    )?;
    Ok(())
}
