//! Dispatch of a sharded execute next to a single-device one, per device
//! (issue #13; goal <= 1.2x per device), each next to its floor.
//!
//! Single: `f(a, b) = a @ b + 1` with a: f32[2,3], b: f32[3,4] on one device.
//! Sharded: the same per-device work as one SPMD program over N devices
//! (a: f32[2N,3] split over mesh axis `d`, b replicated), run with
//! `Executable::execute_sharded` (every argument of every device checked in
//! Rust, one `PJRT_LoadedExecutable_Execute` for all devices). Each is also
//! run straight through the plugin's C table (`RawDispatch`,
//! `RawShardedDispatch`: the plugin's own cost, nothing of xlayer's).
//! Measured interleaved (rounds of the four calls), outputs dropped (async
//! dispatch, as `benches/dispatch.rs`). Printed ratios, medians of per-round
//! ratios:
//! - `per device, xlayer`: `t(sharded over N) / (N * t(single))`, the
//!   issue's figure;
//! - `per device, C floor`: the same for the raw calls: what the plugin
//!   itself costs per device of a multi-device execute;
//! - `xlayer/floor, sharded`: xlayer's own overhead on a sharded execute.
//!
//! `cargo bench --bench sharded_dispatch`

use std::hint::black_box;

use xlayer::pjrt::bench_support::{RawDispatch, RawShardedDispatch};
use xlayer::{Buffer, Client, CompileOptions, Program};

mod common;
use common::interleaved::{line_ratio, line_us, load_average, ratios, rounds};

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
    let mut single_call = || {
        drop(black_box(
            single.execute(black_box(&[&a, &b])).expect("run"),
        ))
    };
    let raw_single = RawDispatch::new(&single, &[&a, &b]).expect("raw single");
    let mut raw_single_call = || raw_single.execute_and_drop().expect("raw run");
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
        let lists: Vec<Vec<&Buffer>> = shards.iter().map(|(x, y)| vec![x, y]).collect();
        let out = exe.execute_sharded(&lists).expect("run sharded");
        assert_eq!(
            out.device(n - 1)[0].to_vec::<f32>().expect("read"),
            vec![4.0; 8]
        );
        let mut sharded_call = || {
            drop(black_box(
                exe.execute_sharded(black_box(&lists)).expect("run"),
            ))
        };
        let raw_sharded = RawShardedDispatch::new(&exe, &lists).expect("raw sharded");
        let mut raw_sharded_call = || raw_sharded.execute_and_drop().expect("raw run");
        let t = rounds(
            ROUNDS,
            CALLS,
            &mut [
                &mut single_call,
                &mut sharded_call,
                &mut raw_single_call,
                &mut raw_sharded_call,
            ],
        );
        let nf = n as f64;
        println!(
            "N={n}: {ROUNDS} rounds x {CALLS} calls, mean per call, median of rounds [min .. max]"
        );
        println!("{}", line_us("single-device, xlayer", &t[0]));
        println!("{}", line_us(&format!("sharded over {n}, xlayer"), &t[1]));
        println!("{}", line_us("single-device, C floor", &t[2]));
        println!("{}", line_us(&format!("sharded over {n}, C floor"), &t[3]));
        println!(
            "{}",
            line_ratio(
                "per device, xlayer",
                &ratios(&t[1], &t[0], nf),
                "(goal <= 1.2)"
            )
        );
        println!(
            "{}",
            line_ratio(
                "per device, C floor",
                &ratios(&t[3], &t[2], nf),
                "(the plugin's own)"
            )
        );
        println!(
            "{}",
            line_ratio(
                "xlayer/floor, sharded",
                &ratios(&t[1], &t[3], 1.0),
                "(xlayer's overhead)"
            )
        );
        println!(
            "{}",
            line_ratio("xlayer/floor, single", &ratios(&t[0], &t[2], 1.0), "")
        );
    }
    println!("load average at end: {}", load_average());
}
