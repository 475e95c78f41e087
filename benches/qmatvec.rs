//! The quantized matrix-vector product of decoding (issue #15): xlayer's
//! CPU kernel (`pjrt::ffi`, a custom call) against the plain-HLO
//! formulation XLA:CPU compiles (`QWeight::linear` with the kernels off),
//! on SmolLM2-135M's shapes, in interleaved rounds of the same run.
//!
//! `cargo bench --bench qmatvec`. Each program is the product alone
//! (`x: f32[1, in]` and the weight's parts as parameters, `f32[1, out]`
//! returned); one call is an execute plus reading the result. Reported:
//! median µs per call, GB/s of weight bytes read, and the median per-round
//! ratio HLO / kernel (how many times faster the kernel is). The kernel
//! uses `XLAYER_CPU_KERNEL_THREADS` threads (default 1).
//!
//! Environment: `QBENCH_ROUNDS` (default 9), `QBENCH_CALLS` (calls per
//! round, default 50; 5 for the 49152-row head).

use anyhow::Result;
use xlayer::builder::{Builder, Path, Tree, Value, VarBuilder};
use xlayer::gguf::GgmlType;
use xlayer::models::qweight::QWeight;
use xlayer::{ArraySpec, Buffer, Client, DType, Executable};

mod common;

use common::interleaved::{line_ratio, line_us, load_average, median, ratios, rounds};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The parts of a `[rows, cols]` weight of type `ty`: (name, spec).
fn part_specs(ty: GgmlType, rows: usize, cols: usize) -> Vec<(&'static str, ArraySpec)> {
    let nb = cols / 32;
    let mut v = vec![("d", ArraySpec::new(DType::F16, vec![rows, nb]))];
    if ty == GgmlType::Q4_1 {
        v.push(("m", ArraySpec::new(DType::F16, vec![rows, nb])));
    }
    v.push(match ty {
        GgmlType::Q8_0 => ("qs", ArraySpec::new(DType::I8, vec![rows, nb, 32])),
        _ => ("qs", ArraySpec::new(DType::U8, vec![rows, nb, 16])),
    });
    v
}

fn program(
    client: &Client,
    ty: GgmlType,
    rows: usize,
    cols: usize,
    kernel: bool,
) -> Result<Executable> {
    let b = Builder::new();
    b.set_cpu_kernels(kernel);
    let x = b.parameter(ArraySpec::new(DType::F32, vec![1, cols]), "x")?;
    let leaves: Vec<(Path, Value)> = part_specs(ty, rows, cols)
        .into_iter()
        .map(|(n, s)| Ok((Path::parse("w").join(n), b.parameter(s, n)?)))
        .collect::<xlayer::Result<_>>()?;
    let tree = Tree::from_paths(leaves)?;
    let y = QWeight::load(&VarBuilder::new(&tree), "w", &[rows, cols])?.linear(&x)?;
    Ok(b.build(&[y])?.compile(client)?)
}

fn main() -> Result<()> {
    let client = Client::cpu()?;
    anyhow::ensure!(
        client.cpu_kernels(),
        "the CPU kernels are not registered: {:?}",
        client.plugin().cpu_kernels()
    );
    let n_rounds = env_usize("QBENCH_ROUNDS", 9).max(1);
    println!("qmatvec: load average {} at the start", load_average());
    // SmolLM2-135M: attention q/o, k/v, ffn gate/up, ffn down, tied head.
    let shapes = [
        ("attn_q 576x576 Q4_1", GgmlType::Q4_1, 576, 576),
        ("attn_k 192x576 Q4_1", GgmlType::Q4_1, 192, 576),
        ("ffn_up 1536x576 Q4_1", GgmlType::Q4_1, 1536, 576),
        ("ffn_down 576x1536 Q4_1", GgmlType::Q4_1, 576, 1536),
        ("head 49152x576 Q8_0", GgmlType::Q8_0, 49152, 576),
        ("1536x576 Q4_0", GgmlType::Q4_0, 1536, 576),
    ];
    for (label, ty, rows, cols) in shapes {
        let calls = env_usize("QBENCH_CALLS", if rows > 10_000 { 5 } else { 50 }).max(1) as u32;
        let mut specs = vec![ArraySpec::new(DType::F32, vec![1, cols])];
        specs.extend(part_specs(ty, rows, cols).into_iter().map(|(_, s)| s));
        let args: Vec<Buffer> = xlayer::bench::random_inputs(&client, &specs, 1)?;
        let refs: Vec<&Buffer> = args.iter().collect();
        let weight_bytes: usize = specs[1..].iter().map(|s| s.size_in_bytes()).sum();
        let kernel = program(&client, ty, rows, cols, true)?;
        let hlo = program(&client, ty, rows, cols, false)?;
        let run = |e: &Executable| {
            let out = e.execute(&refs).expect("execute");
            out[0].block_until_ready().expect("ready");
        };
        run(&kernel);
        run(&hlo);
        let t = rounds(
            n_rounds,
            calls,
            &mut [&mut || run(&kernel), &mut || run(&hlo)],
        );
        println!("{label} ({:.2} MB of weights):", weight_bytes as f64 / 1e6);
        println!(
            "{}  {:.1} GB/s",
            line_us("kernel", &t[0]),
            weight_bytes as f64 / median(&t[0])
        );
        println!(
            "{}  {:.1} GB/s",
            line_us("plain HLO", &t[1]),
            weight_bytes as f64 / median(&t[1])
        );
        println!(
            "{}",
            line_ratio("HLO / kernel", &ratios(&t[1], &t[0], 1.0), "(times faster)")
        );
    }
    println!("qmatvec: load average {} at the end", load_average());
    Ok(())
}
