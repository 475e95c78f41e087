//! Dispatch of a sharded execute next to a single-device one, per device
//! (issue #13; goal <= 1.2x per device).
//!
//! Single: `f(a, b) = a @ b + 1` with a: f32[2,3], b: f32[3,4] on one device.
//! Sharded: the same per-device work as one SPMD program over N devices
//! (a: f32[2N,3] split over mesh axis `d`, b replicated), run with
//! `Executable::execute_sharded` (every argument of every device checked in
//! Rust, one `PJRT_LoadedExecutable_Execute` for all devices). Measured
//! interleaved (rounds of single then sharded), outputs dropped (async
//! dispatch, as `benches/dispatch.rs`). The ratio printed is
//! `t(sharded over N) / (N * t(single))`: the cost per device of a sharded
//! dispatch against a single-device dispatch.
//!
//! `cargo bench --bench sharded_dispatch`

use std::hint::black_box;

use xlayer::{Buffer, Client, CompileOptions, Program};

mod common;

use common::{interleaved, load_average, mean_ns, median, spread};

const SINGLE: &str = r#"module @jit_f attributes {mhlo.num_partitions = 1 : i32, mhlo.num_replicas = 1 : i32} {
  func.func public @main(%arg0: tensor<2x3xf32>, %arg1: tensor<3x4xf32>) -> (tensor<2x4xf32>) {
    %0 = stablehlo.dot_general %arg0, %arg1, contracting_dims = [1] x [0], precision = [DEFAULT, DEFAULT] : (tensor<2x3xf32>, tensor<3x4xf32>) -> tensor<2x4xf32>
    %cst = stablehlo.constant dense<1.000000e+00> : tensor<f32>
    %1 = stablehlo.broadcast_in_dim %cst, dims = [] : (tensor<f32>) -> tensor<2x4xf32>
    %2 = stablehlo.add %0, %1 : tensor<2x4xf32>
    return %2 : tensor<2x4xf32>
  }
}
"#;

fn sharded(n: usize) -> String {
    let rows = 2 * n;
    format!(
        r#"module @jit_f attributes {{mhlo.num_partitions = {n} : i32, mhlo.num_replicas = 1 : i32}} {{
  sdy.mesh @mesh = <["d"={n}]>
  func.func public @main(%arg0: tensor<{rows}x3xf32> {{sdy.sharding = #sdy.sharding<@mesh, [{{"d"}}, {{}}]>}}, %arg1: tensor<3x4xf32> {{sdy.sharding = #sdy.sharding<@mesh, [{{}}, {{}}]>}}) -> (tensor<{rows}x4xf32> {{sdy.sharding = #sdy.sharding<@mesh, [{{"d"}}, {{}}]>}}) {{
    %0 = stablehlo.dot_general %arg0, %arg1, contracting_dims = [1] x [0], precision = [DEFAULT, DEFAULT] : (tensor<{rows}x3xf32>, tensor<3x4xf32>) -> tensor<{rows}x4xf32>
    %cst = stablehlo.constant dense<1.000000e+00> : tensor<f32>
    %1 = stablehlo.broadcast_in_dim %cst, dims = [] : (tensor<f32>) -> tensor<{rows}x4xf32>
    %2 = stablehlo.add %0, %1 : tensor<{rows}x4xf32>
    return %2 : tensor<{rows}x4xf32>
  }}
}}
"#
    )
}

const CALLS: u32 = 2_000;
const ROUNDS: usize = 31;

fn main() {
    println!("load average at start: {}", load_average());
    let client = Client::cpu_devices(4).expect("4 CPU devices");
    let single = client
        .compile(&Program::mlir_text(SINGLE).expect("program"))
        .expect("compile");
    let a = client.buffer_from_host(&[1f32; 6], &[2, 3]).expect("a");
    let b = client.buffer_from_host(&[1f32; 12], &[3, 4]).expect("b");
    let single_call = || {
        drop(black_box(
            single.execute(black_box(&[&a, &b])).expect("run"),
        ))
    };
    for n in [2usize, 4] {
        let exe = client
            .compile_with(
                &Program::mlir_text(sharded(n)).expect("program"),
                &CompileOptions::new().spmd(n),
            )
            .expect("compile sharded");
        let shards: Vec<(Buffer, Buffer)> = exe
            .devices()
            .iter()
            .map(|d| {
                (
                    client
                        .buffer_from_host_on(&[1f32; 6], &[2, 3], d)
                        .expect("a"),
                    client
                        .buffer_from_host_on(&[1f32; 12], &[3, 4], d)
                        .expect("b"),
                )
            })
            .collect();
        let lists: Vec<[&Buffer; 2]> = shards.iter().map(|(x, y)| [x, y]).collect();
        let out = exe.execute_sharded(&lists).expect("run sharded");
        assert_eq!(
            out.device(n - 1)[0].to_vec::<f32>().expect("read"),
            vec![4.0; 8]
        );
        let sharded_call = || {
            drop(black_box(
                exe.execute_sharded(black_box(&lists)).expect("run"),
            ))
        };
        let times = interleaved(
            ROUNDS,
            &mut [&mut || mean_ns(CALLS, single_call), &mut || {
                mean_ns(CALLS, sharded_call)
            }],
        );
        let (s1, sn) = (&times[0], &times[1]);
        let ratios: Vec<f64> = s1
            .iter()
            .zip(sn)
            .map(|(t1, tn)| tn / (n as f64 * t1))
            .collect();
        let (lo, hi) = spread(&ratios);
        println!(
            "N={n}: single-device {:.3} us, sharded over {n} {:.3} us, per device {:.3} us; ratio per device {:.3} [min {:.3} max {:.3}] (goal <= 1.2)",
            median(s1.clone()) / 1e3,
            median(sn.clone()) / 1e3,
            median(sn.clone()) / 1e3 / n as f64,
            median(ratios.clone()),
            lo,
            hi,
        );
    }
    println!("load average at end: {}", load_average());
}
