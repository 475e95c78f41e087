//! Compiles a StableHLO matmul on the CPU plugin and runs it on device buffers.
//!
//! `cargo run --release --example matmul`
//!
//! The plugin is fetched from PyPI on first use (sha256-verified, cached in
//! `~/.cache/xlayer`).

use anyhow::Result;
use xlayer::{Client, Program};

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
    let exe = client.compile(&Program::mlir_text(PROGRAM)?)?;
    println!("compiled {}: {}", exe.name(), exe.signature());
    let a = client.buffer_from_host(&[1f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3])?;
    let b = client.buffer_from_host(&(0..12).map(|i| i as f32).collect::<Vec<_>>(), &[3, 4])?;
    let out = exe.execute(&[&a, &b])?;
    let c = out[0].to_vec::<f32>()?;
    println!("a @ b + 1 =");
    for row in c.chunks(4) {
        println!("  {row:?}");
    }
    Ok(())
}
