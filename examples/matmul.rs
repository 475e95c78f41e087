//! Compiles a matmul two ways on the CPU plugin and runs it on device
//! buffers: from StableHLO text, and traced from a Rust closure.
//!
//! `cargo run --release --example matmul`
//!
//! The plugin is fetched from PyPI on first use (sha256-verified, cached in
//! `~/.cache/xlayer`).

use anyhow::Result;
use xlayer::{builder::jit, ArraySpec, Client, Program};

const PROGRAM: &str = r#"module @matmul_plus_one {
  func.func public @main(%a: tensor<2x3xf32>, %b: tensor<3x4xf32>) -> tensor<2x4xf32> {
    %0 = stablehlo.dot_general %a, %b, contracting_dims = [1] x [0] : (tensor<2x3xf32>, tensor<3x4xf32>) -> tensor<2x4xf32>
    %one = stablehlo.constant dense<1.0> : tensor<2x4xf32>
    %1 = stablehlo.add %0, %one : tensor<2x4xf32>
    return %1 : tensor<2x4xf32>
  }
}"#;

fn main() -> Result<()> {
    let client = Client::cpu()?;
    println!(
        "platform: {} ({} devices)",
        client.platform_name(),
        client.devices().len()
    );
    let a = client.buffer_from_host(&[1f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3])?;
    let b = client.buffer_from_host(&(0..12).map(|i| i as f32).collect::<Vec<_>>(), &[3, 4])?;

    let from_text = client.compile(&Program::mlir_text(PROGRAM)?)?;
    println!("compiled {}: {}", from_text.name(), from_text.signature());
    let c1 = from_text.execute(&[&a, &b])?[0].to_vec::<f32>()?;

    let specs = [ArraySpec::of::<f32>([2, 3]), ArraySpec::of::<f32>([3, 4])];
    let traced = jit(&client, &specs, |_b, x| {
        Ok(vec![(x[0].matmul(&x[1])? + 1.0)?])
    })?;
    let c2 = traced.execute(&[&a, &b])?[0].to_vec::<f32>()?;

    println!("a @ b + 1 =");
    for row in c1.chunks(4) {
        println!("  {row:?}");
    }
    println!("traced closure agrees: {}", c1 == c2);
    anyhow::ensure!(
        c1 == c2,
        "the traced closure disagrees with the StableHLO text"
    );
    Ok(())
}
