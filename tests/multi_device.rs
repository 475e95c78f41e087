//! The multi-device runtime on the CPU plugin's 4 devices: SPMD compile
//! options, device assignment, per-device execute, and every error case of
//! them (none may reach the plugin).

use anyhow::Result;
use xlayer::{Client, ClientOptions, CompileOptions, Error, Plugin, Program};

/// `jax.jit(lambda x, w: jnp.tanh(x @ w), in_shardings=(P('data', None),
/// P(None, 'model')), out_shardings=P('data', 'model'))` on a 2x2
/// `('data', 'model')` mesh, lowered by JAX 0.12 (text unchanged).
const MATMUL_2X2: &str = r#"module @jit_f attributes {mhlo.num_partitions = 4 : i32, mhlo.num_replicas = 1 : i32} {
  sdy.mesh @mesh = <["data"=2, "model"=2]> {stablehlo.mesh = {axes = [{name = "data", size = 2 : i64}, {name = "model", size = 2 : i64}]}}
  func.func public @main(%arg0: tensor<8x4xf32> {sdy.sharding = #sdy.sharding<@mesh, [{"data"}, {}]>}, %arg1: tensor<4x6xf32> {sdy.sharding = #sdy.sharding<@mesh, [{}, {"model"}]>}) -> (tensor<8x6xf32> {jax.result_info = "result", sdy.sharding = #sdy.sharding<@mesh, [{"data"}, {"model"}]>}) {
    %0 = stablehlo.dot_general %arg0, %arg1, contracting_dims = [1] x [0], precision = [DEFAULT, DEFAULT] : (tensor<8x4xf32>, tensor<4x6xf32>) -> tensor<8x6xf32>
    %1 = stablehlo.tanh %0 : tensor<8x6xf32>
    return %1 : tensor<8x6xf32>
  }
}"#;

/// `x.sum(0)` with `x` sharded over both axes of the mesh (rows split in
/// four) and the result replicated: the partitioner inserts an all-reduce.
const SUM_ROWS: &str = r#"module @jit_h attributes {mhlo.num_partitions = 4 : i32, mhlo.num_replicas = 1 : i32} {
  sdy.mesh @mesh = <["data"=2, "model"=2]> {stablehlo.mesh = {axes = [{name = "data", size = 2 : i64}, {name = "model", size = 2 : i64}]}}
  func.func public @main(%arg0: tensor<8x4xf32> {sdy.sharding = #sdy.sharding<@mesh, [{"data", "model"}, {}]>}) -> (tensor<4xf32> {jax.result_info = "result", sdy.sharding = #sdy.sharding<@mesh, [{}]>}) {
    %cst = stablehlo.constant dense<0.000000e+00> : tensor<f32>
    %0 = stablehlo.reduce(%arg0 init: %cst) applies stablehlo.add across dimensions = [0] : (tensor<8x4xf32>, tensor<f32>) -> tensor<4xf32>
    return %0 : tensor<4xf32>
  }
}"#;

fn client() -> Result<Client> {
    Ok(Client::cpu_devices(4)?)
}

/// Rows `r0..r0+nr`, columns `c0..c0+nc` of a row-major `[_, cols]` matrix.
fn block(m: &[f32], cols: usize, r0: usize, nr: usize, c0: usize, nc: usize) -> Vec<f32> {
    (r0..r0 + nr)
        .flat_map(|r| m[r * cols + c0..r * cols + c0 + nc].to_vec())
        .collect()
}

fn inputs() -> (Vec<f32>, Vec<f32>) {
    let x: Vec<f32> = (0..32).map(|i| (i as f32 - 16.0) / 20.0).collect();
    let w: Vec<f32> = (0..24).map(|i| (i as f32 - 11.0) / 13.0).collect();
    (x, w)
}

#[test]
fn cpu_devices_gives_n_devices_and_cpu_keeps_one() -> Result<()> {
    let c = client()?;
    assert_eq!(c.devices().len(), 4);
    let ids: Vec<i32> = c.devices().iter().map(|d| d.id()).collect();
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(unique.len(), 4, "device ids {ids:?}");
    // Shared while alive.
    let again = Client::cpu_devices(4)?;
    assert_eq!(format!("{again:?}"), format!("{c:?}"));
    assert_eq!(Client::cpu()?.devices().len(), 1);
    // The default plugin's client too (unless another plugin is chosen).
    if std::env::var_os("XLAYER_PJRT_PLUGIN").is_none() {
        assert_eq!(Client::default_plugin()?.devices().len(), 1);
    }
    assert!(matches!(
        Client::cpu_devices(0),
        Err(Error::InvalidSetting { field: "n", .. })
    ));
    Ok(())
}

#[test]
fn spmd_matmul_on_a_2x2_mesh_equals_the_single_device_result() -> Result<()> {
    let c = client()?;
    let program = Program::mlir_text(MATMUL_2X2)?;
    let exe = c.compile_with(&program, &CompileOptions::new().spmd(4))?;
    assert_eq!(exe.devices().len(), 4);
    assert_eq!(exe.devices(), c.devices());
    // Per-device types are the shards; the global ones stay declared.
    assert_eq!(
        exe.signature().to_string(),
        "(f32[4,4], f32[4,3]) -> (f32[4,3])"
    );
    assert_eq!(
        exe.global_signature().to_string(),
        "(f32[8,4], f32[4,6]) -> (f32[8,6])"
    );
    let (x, w) = inputs();
    // Device d = (data index, model index) = (d / 2, d % 2), row-major.
    let mut shards = Vec::new();
    for (d, dev) in c.devices().iter().enumerate() {
        let (i, j) = (d / 2, d % 2);
        let xs = c.buffer_from_host_on(&x[i * 16..i * 16 + 16], &[4, 4], dev)?;
        let ws = c.buffer_from_host_on(&block(&w, 6, 0, 4, j * 3, 3), &[4, 3], dev)?;
        shards.push((xs, ws));
    }
    let lists: Vec<Vec<&xlayer::Buffer>> = shards.iter().map(|(a, b)| vec![a, b]).collect();
    let out = exe.execute_sharded(&lists)?;
    assert_eq!((out.device_count(), out.output_count()), (4, 1));

    // The same function on one device.
    let single = Program::mlir_text(
        r#"func.func public @main(%a: tensor<8x4xf32>, %b: tensor<4x6xf32>) -> tensor<8x6xf32> {
  %0 = stablehlo.dot_general %a, %b, contracting_dims = [1] x [0], precision = [DEFAULT, DEFAULT] : (tensor<8x4xf32>, tensor<4x6xf32>) -> tensor<8x6xf32>
  %1 = stablehlo.tanh %0 : tensor<8x6xf32>
  return %1 : tensor<8x6xf32>
}"#,
    )?;
    let one = c.compile(&single)?;
    let full = one.execute(&[
        &c.buffer_from_host(&x, &[8, 4])?,
        &c.buffer_from_host(&w, &[4, 6])?,
    ])?[0]
        .to_vec::<f32>()?;
    for (d, dev) in c.devices().iter().enumerate() {
        let shard = &out.device(d)[0];
        assert_eq!(shard.device(), dev);
        assert_eq!(shard.dims(), &[4, 3]);
        let (i, j) = (d / 2, d % 2);
        // Same XLA, same per-element work: equal within one ulp of tanh.
        let expected = block(&full, 6, i * 4, 4, j * 3, 3);
        let got = shard.to_vec::<f32>()?;
        for (g, e) in got.iter().zip(&expected) {
            assert!(
                (g - e).abs() <= 2.0 * f32::EPSILON * e.abs().max(1.0),
                "device {d}: {got:?} vs {expected:?}"
            );
        }
    }
    let per_output = out.into_per_output();
    assert_eq!(per_output.len(), 1);
    assert_eq!(per_output[0].len(), 4);
    Ok(())
}

#[test]
fn partitioner_inserted_all_reduce_gives_every_device_the_full_sum() -> Result<()> {
    let c = client()?;
    let exe = c.compile_with(
        &Program::mlir_text(SUM_ROWS)?,
        &CompileOptions::new().spmd(4),
    )?;
    let (x, _) = inputs();
    let shards: Vec<_> = c
        .devices()
        .iter()
        .enumerate()
        .map(|(d, dev)| c.buffer_from_host_on(&x[d * 8..d * 8 + 8], &[2, 4], dev))
        .collect::<xlayer::Result<_>>()?;
    let lists: Vec<[&xlayer::Buffer; 1]> = shards.iter().map(|b| [b]).collect();
    let out = exe.execute_sharded(&lists)?;
    let expected: Vec<f32> = (0..4).map(|j| (0..8).map(|r| x[r * 4 + j]).sum()).collect();
    for d in 0..4 {
        let got = out.device(d)[0].to_vec::<f32>()?;
        for (g, e) in got.iter().zip(&expected) {
            assert!((g - e).abs() <= 1e-6, "device {d}: {got:?} vs {expected:?}");
        }
    }
    Ok(())
}

#[test]
fn a_device_assignment_orders_the_devices() -> Result<()> {
    let c = client()?;
    let order: Vec<_> = [3, 2, 1, 0]
        .iter()
        .map(|&i| c.devices()[i].clone())
        .collect();
    let exe = c.compile_with(
        &Program::mlir_text(SUM_ROWS)?,
        &CompileOptions::new().spmd(4).device_assignment(&order),
    )?;
    assert_eq!(exe.devices(), &order[..]);
    let (x, _) = inputs();
    // List p runs on order[p] and must hold buffers there.
    let shards: Vec<_> = order
        .iter()
        .enumerate()
        .map(|(p, dev)| c.buffer_from_host_on(&x[p * 8..p * 8 + 8], &[2, 4], dev))
        .collect::<xlayer::Result<_>>()?;
    let lists: Vec<[&xlayer::Buffer; 1]> = shards.iter().map(|b| [b]).collect();
    let out = exe.execute_sharded(&lists)?;
    assert_eq!(out.device(0)[0].device(), &order[0]);
    let total: f32 = x.iter().sum();
    let got: f32 = out.device(2)[0].to_vec::<f32>()?.iter().sum();
    assert!((got - total).abs() < 1e-5);
    Ok(())
}

#[test]
fn per_device_argument_errors_are_caught_before_the_plugin() -> Result<()> {
    let c = client()?;
    let exe = c.compile_with(
        &Program::mlir_text(MATMUL_2X2)?,
        &CompileOptions::new().spmd(4),
    )?;
    let devs = c.devices();
    let xs: Vec<_> = devs
        .iter()
        .map(|d| c.buffer_from_host_on(&[0f32; 16], &[4, 4], d))
        .collect::<xlayer::Result<_>>()?;
    let ws: Vec<_> = devs
        .iter()
        .map(|d| c.buffer_from_host_on(&[0f32; 12], &[4, 3], d))
        .collect::<xlayer::Result<_>>()?;
    let good: Vec<Vec<&xlayer::Buffer>> = (0..4).map(|d| vec![&xs[d], &ws[d]]).collect();
    exe.check_sharded_arguments(&good)?;

    // Three lists for four devices.
    assert!(matches!(
        exe.execute_sharded(&good[..3]),
        Err(Error::DeviceListCount {
            expected: 4,
            actual: 3,
            ..
        })
    ));
    // One list too short.
    let mut short = good.clone();
    short[2].pop();
    assert!(matches!(
        exe.execute_sharded(&short),
        Err(Error::ShardArgumentCount {
            device: 2,
            expected: 2,
            actual: 1,
            ..
        })
    ));
    // A full (global) array where a shard is expected.
    let global = c.buffer_from_host_on(&[0f32; 32], &[8, 4], &devs[1])?;
    let mut wrong_shape = good.clone();
    wrong_shape[1][0] = &global;
    let e = exe.execute_sharded(&wrong_shape).unwrap_err();
    assert!(
        matches!(
            e,
            Error::ShardArgumentType {
                device: 1,
                index: 0,
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string().contains("f32[4,4]") && e.to_string().contains("f32[8,4]"),
        "{e}"
    );
    // A shard on the wrong device.
    let mut swapped = good.clone();
    swapped[0][1] = &ws[3];
    assert!(matches!(
        exe.execute_sharded(&swapped),
        Err(Error::ShardArgumentDevice {
            device: 0,
            index: 1,
            ..
        })
    ));
    // A buffer of another client.
    let other = Client::new(&Plugin::cpu()?, &ClientOptions::new().cpu_device_count(4))?;
    let foreign = other.buffer_from_host_on(&[0f32; 16], &[4, 4], &other.devices()[0])?;
    let mut mixed = good.clone();
    mixed[0][0] = &foreign;
    assert!(matches!(
        exe.execute_sharded(&mixed),
        Err(Error::ForeignClient { .. })
    ));
    // Single-device calls are refused.
    assert!(matches!(
        exe.execute(&[&xs[0], &ws[0]]),
        Err(Error::MultiDeviceExecutable { devices: 4, .. })
    ));
    Ok(())
}

#[test]
fn compile_option_errors_are_caught_before_the_plugin() -> Result<()> {
    let c = client()?;
    let p = Program::mlir_text(SUM_ROWS)?;
    let devs = c.devices();
    // Zero partitions or replicas would abort inside XLA.
    assert!(matches!(
        c.compile_with(&p, &CompileOptions::new().spmd(0)),
        Err(Error::InvalidSetting {
            field: "num_partitions",
            ..
        })
    ));
    assert!(matches!(
        c.compile_with(&p, &CompileOptions::new().num_replicas(0)),
        Err(Error::InvalidSetting {
            field: "num_replicas",
            ..
        })
    ));
    // More partitions than devices.
    assert!(matches!(
        c.compile_with(&p, &CompileOptions::new().spmd(8)),
        Err(Error::DeviceCount {
            expected: 8,
            actual: 4,
            ..
        })
    ));
    // An assignment of the wrong length, a duplicate, a foreign device.
    assert!(matches!(
        c.compile_with(
            &p,
            &CompileOptions::new().spmd(4).device_assignment(&devs[..3])
        ),
        Err(Error::DeviceCount {
            expected: 4,
            actual: 3,
            ..
        })
    ));
    let dup = [
        devs[0].clone(),
        devs[1].clone(),
        devs[0].clone(),
        devs[3].clone(),
    ];
    assert!(matches!(
        c.compile_with(&p, &CompileOptions::new().spmd(4).device_assignment(&dup)),
        Err(Error::DuplicateDevice { .. })
    ));
    let other = Client::new(&Plugin::cpu()?, &ClientOptions::new().cpu_device_count(4))?;
    let foreign = [
        devs[0].clone(),
        devs[1].clone(),
        devs[2].clone(),
        other.devices()[3].clone(),
    ];
    assert!(matches!(
        c.compile_with(
            &p,
            &CompileOptions::new().spmd(4).device_assignment(&foreign)
        ),
        Err(Error::ForeignClient { .. })
    ));
    // A single-device target together with four partitions.
    assert!(matches!(
        c.compile_with(&p, &CompileOptions::new().spmd(4).device(1)),
        Err(Error::InvalidSetting {
            field: "device",
            ..
        })
    ));
    Ok(())
}

#[test]
fn the_device_assignment_is_encoded_as_jax_encodes_it() -> Result<()> {
    let c = client()?;
    let bytes = CompileOptions::plugin_defaults()
        .spmd(4)
        .device_assignment(c.devices())
        .to_bytes();
    // DeviceAssignmentProto (field 9 of ExecutableBuildOptionsProto) as
    // jaxlib 0.12 serializes `DeviceAssignment.create([[0, 1, 2, 3]])`:
    // replica_count 1, computation_count 4, one replica id per computation.
    let ids: Vec<u8> = c.devices().iter().map(|d| d.id() as u8).collect();
    let mut expected = vec![0x4a, 0x18, 0x08, 0x01, 0x10, 0x04];
    for id in ids {
        expected.extend([0x1a, 0x03, 0x0a, 0x01, id]);
    }
    assert!(
        bytes.windows(expected.len()).any(|w| w == expected),
        "{bytes:02x?}"
    );
    Ok(())
}

// The child process is the `xlayer` binary, built with the `cli` feature.
#[cfg(feature = "cli")]
#[test]
fn an_isolated_spmd_compile_runs_like_an_in_process_one() -> Result<()> {
    let c = client()?;
    let exe = c.compile_with(
        &Program::mlir_text(SUM_ROWS)?,
        &CompileOptions::new()
            .spmd(4)
            .isolated_as(env!("CARGO_BIN_EXE_xlayer")),
    )?;
    assert_eq!(exe.devices().len(), 4);
    let shards: Vec<_> = c
        .devices()
        .iter()
        .map(|dev| c.buffer_from_host_on(&[1f32; 8], &[2, 4], dev))
        .collect::<xlayer::Result<_>>()?;
    let lists: Vec<[&xlayer::Buffer; 1]> = shards.iter().map(|b| [b]).collect();
    let out = exe.execute_sharded(&lists)?;
    assert_eq!(out.device(3)[0].to_vec::<f32>()?, vec![8.0; 4]);
    Ok(())
}

#[test]
fn a_partitioned_text_program_must_be_compiled_for_its_device_count() -> Result<()> {
    let c = client()?;
    let p = Program::mlir_text(MATMUL_2X2)?;
    assert_eq!(p.device_count(), 4);
    assert!(matches!(
        c.compile(&p),
        Err(Error::DeviceCount {
            expected: 4,
            actual: 1,
            ..
        })
    ));
    assert!(matches!(
        c.compile_with(&p, &CompileOptions::new().spmd(2)),
        Err(Error::DeviceCount {
            expected: 4,
            actual: 2,
            ..
        })
    ));
    Ok(())
}
