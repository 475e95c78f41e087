//! Dispatch latency of a cached tiny program, `f(a, b) = a @ b + 1` with
//! a: f32[2,3], b: f32[3,4], through xlayer's safe API next to the floor: the
//! same executable run straight through the plugin's C function table
//! (`xlayer::pjrt::bench_support::RawDispatch`), in one run.
//!
//! `cargo bench --bench dispatch` reports both with criterion, then measures
//! them again interleaved (rounds of A then B, so drift hits both alike) and
//! prints the ratio xlayer / raw. The goal (issue #2) is a ratio <= 1.15.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use xlayer::pjrt::bench_support::RawDispatch;
use xlayer::{Client, ClientOptions, Plugin, Program};

mod common;
use common::interleaved::{line_ratio, line_us, ratios, rounds};

/// The StableHLO text JAX 0.10.2 emits for `jax.jit(f)` (facts file).
const PROGRAM: &str = r#"module @jit_f attributes {mhlo.num_partitions = 1 : i32, mhlo.num_replicas = 1 : i32} {
  func.func public @main(%arg0: tensor<2x3xf32>, %arg1: tensor<3x4xf32>) -> (tensor<2x4xf32>) {
    %0 = stablehlo.dot_general %arg0, %arg1, contracting_dims = [1] x [0], precision = [DEFAULT, DEFAULT] : (tensor<2x3xf32>, tensor<3x4xf32>) -> tensor<2x4xf32>
    %cst = stablehlo.constant dense<1.000000e+00> : tensor<f32>
    %1 = stablehlo.broadcast_in_dim %cst, dims = [] : (tensor<f32>) -> tensor<2x4xf32>
    %2 = stablehlo.add %0, %1 : tensor<2x4xf32>
    return %2 : tensor<2x4xf32>
  }
}
"#;

const A: [f32; 6] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
const B: [f32; 12] = [1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0];

/// Calls per round and rounds of the interleaved comparison: many short
/// rounds, so that a burst of noise from a neighbour spoils few of them and
/// the median of the per-round ratios stays put.
const CALLS: u32 = 5_000;
const ROUNDS: usize = 41;

fn dispatch(c: &mut Criterion) {
    let path = xla_build::ensure(xla_build::Target::Cpu).expect("CPU plugin");

    let client = Client::new(
        &Plugin::load(&path).expect("load plugin"),
        &ClientOptions::new(),
    )
    .expect("client");
    let exe = client
        .compile(&Program::mlir_text(PROGRAM).expect("program"))
        .expect("compile");
    let a = client.buffer_from_host(&A, &[2, 3]).expect("upload a");
    let b = client.buffer_from_host(&B, &[3, 4]).expect("upload b");
    let out = exe.execute(&[&a, &b]).expect("execute")[0]
        .to_vec::<f32>()
        .expect("read");
    assert_eq!(out, vec![2.0, 3.0, 4.0, 7.0, 5.0, 6.0, 7.0, 16.0]);

    let xlayer_call = || {
        drop(black_box(
            exe.execute(black_box(&[&a, &b])).expect("execute"),
        ))
    };
    let raw = RawDispatch::new(&exe, &[&a, &b]).expect("raw dispatch");
    let raw_call = || raw.execute_and_drop().expect("raw execute");

    let mut g = c.benchmark_group("dispatch");
    g.bench_function("raw_c_api", |bench| bench.iter(raw_call));
    g.bench_function("xlayer", |bench| bench.iter(xlayer_call));
    g.finish();

    let mut raw_call = raw_call;
    let mut xlayer_call = xlayer_call;
    let t = rounds(ROUNDS, CALLS, &mut [&mut raw_call, &mut xlayer_call]);
    println!("\ninterleaved: {ROUNDS} rounds x {CALLS} calls each, mean per call, median of rounds [min .. max]");
    println!("{}", line_us("raw C API (floor)", &t[0]));
    println!("{}", line_us("xlayer execute", &t[1]));
    println!(
        "{}",
        line_ratio(
            "ratio xlayer/raw",
            &ratios(&t[1], &t[0], 1.0),
            "(goal <= 1.15)"
        )
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4)).sample_size(50);
    targets = dispatch
}
criterion_main!(benches);
