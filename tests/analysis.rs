//! Cost analysis, optimized program, fingerprint and memory stats of
//! compiled executables, on the CPU plugin.

use xlayer::{Client, CompileOptions, Program};

fn matmul(m: usize, k: usize, n: usize, bias: bool) -> Program {
    let body = if bias {
        format!(
            "  %1 = stablehlo.constant dense<1.0> : tensor<{m}x{n}xf32>\n  %2 = stablehlo.add %0, %1 : tensor<{m}x{n}xf32>\n  return %2 : tensor<{m}x{n}xf32>"
        )
    } else {
        format!("  return %0 : tensor<{m}x{n}xf32>")
    };
    Program::mlir_text(format!(
        "func.func public @main(%a: tensor<{m}x{k}xf32>, %b: tensor<{k}x{n}xf32>) -> tensor<{m}x{n}xf32> {{\n  %0 = stablehlo.dot_general %a, %b, contracting_dims = [1] x [0] : (tensor<{m}x{k}xf32>, tensor<{k}x{n}xf32>) -> tensor<{m}x{n}xf32>\n{body}\n}}"
    ))
    .unwrap()
}

#[test]
fn matmul_cost_is_two_mnk_flops_and_bias_adds_mn() {
    let client = Client::cpu().unwrap();
    let (m, k, n) = (16, 32, 8);
    let cost = client
        .compile(&matmul(m, k, n, false))
        .unwrap()
        .cost_analysis()
        .unwrap();
    assert_eq!(cost.flops(), Some((2 * m * n * k) as f64), "{cost}");
    // operands and result, f32: (m·k + k·n + m·n) · 4 bytes
    assert_eq!(
        cost.bytes_accessed(),
        Some(((m * k + k * n + m * n) * 4) as f64),
        "{cost}"
    );
    assert_eq!(cost.transcendentals().unwrap_or(0.0), 0.0);
    // The bias add costs one flop per output element on top of the matmul.
    let cost = client
        .compile(&matmul(m, k, n, true))
        .unwrap()
        .cost_analysis()
        .unwrap();
    assert_eq!(cost.flops(), Some((2 * m * n * k + m * n) as f64), "{cost}");
}

#[test]
fn optimized_hlo_fingerprint_and_memory_stats() {
    let client = Client::cpu().unwrap();
    let exe = client.compile(&matmul(4, 8, 2, true)).unwrap();
    let hlo = exe.optimized_hlo().unwrap();
    // The CPU plugin returns a binary HloModuleProtoWithConfig, not text.
    assert_eq!(hlo.format, "hlo_with_config");
    assert!(!hlo.bytes.is_empty());
    assert!(hlo.text().is_none());
    let fp = exe.fingerprint().unwrap();
    assert!(!fp.is_empty());
    let again = client.compile(&matmul(4, 8, 2, true)).unwrap();
    assert_eq!(
        again.fingerprint().unwrap(),
        fp,
        "same program, same options: same fingerprint"
    );
    let other = client.compile(&matmul(4, 8, 2, false)).unwrap();
    assert_ne!(other.fingerprint().unwrap(), fp);
    let mem = exe.compiled_memory_stats().unwrap();
    assert_eq!(mem.argument_size_in_bytes, ((4 * 8 + 8 * 2) * 4) as i64);
    assert_eq!(mem.output_size_in_bytes, (4 * 2 * 4) as i64);
}

#[test]
fn compiler_dumps_optimized_hlo_text() {
    let client = Client::cpu().unwrap();
    let (exe, text) = client
        .compile_with_hlo_text(&matmul(4, 8, 2, true), &CompileOptions::new())
        .unwrap();
    assert!(text.starts_with("HloModule"), "{text}");
    assert!(text.contains("dot("), "{text}");
    let a = client.buffer_from_host(&[1f32; 32], &[4, 8]).unwrap();
    let b = client.buffer_from_host(&[0.5f32; 16], &[8, 2]).unwrap();
    assert_eq!(
        exe.execute(&[&a, &b]).unwrap()[0].to_vec::<f32>().unwrap(),
        vec![5.0; 8]
    );
}

#[test]
fn bench_times_and_rates_a_matmul() {
    use xlayer::bench::{bench, random_inputs, BenchOptions, Roofline};
    let client = Client::cpu().unwrap();
    let exe = client.compile(&matmul(64, 64, 64, false)).unwrap();
    let inputs = random_inputs(&client, &exe.signature().inputs, 7).unwrap();
    let args: Vec<_> = inputs.iter().collect();
    let opts = BenchOptions::new()
        .warmup(1)
        .iters(5)
        .roofline(Roofline::new(100.0, 10.0).unwrap());
    let r = bench(&exe, &args, &opts).unwrap();
    assert_eq!(r.times.len(), 5);
    assert!(r.min <= r.median && r.median <= r.max);
    assert_eq!(r.flops, Some((2 * 64 * 64 * 64) as f64));
    assert!(r.gflops().unwrap() > 0.0 && r.roofline_fraction().unwrap() > 0.0);
    assert!(bench(&exe, &args, &BenchOptions::new().iters(0)).is_err());
    // wrong arguments are refused before anything runs
    assert!(bench(&exe, &args[..1], &opts).is_err());
}

#[test]
fn measured_roofline_is_positive() {
    let client = Client::cpu().unwrap();
    let r = xlayer::bench::Roofline::measure(&client).unwrap();
    assert!(r.peak_gflops > 0.1 && r.peak_gbps > 0.1, "{r:?}");
}

#[test]
fn parameter_specs_come_from_the_hlo_proto() {
    let client = Client::cpu().unwrap();
    let p = Program::mlir_text(
        "func.func public @main(%a: tensor<2x3xbf16>, %b: tensor<i32>, %c: tensor<4xi1>) -> tensor<i32> {\n  return %b : tensor<i32>\n}",
    )
    .unwrap();
    let exe = client.compile(&p).unwrap();
    assert_eq!(
        exe.optimized_hlo().unwrap().parameter_specs().unwrap(),
        p.signature().inputs
    );
}

/// Programs whose optimized HLO holds every kind of instruction xlayer's
/// own count prices: dots (plain and batched), convolutions (SAME padding,
/// stride 2, feature groups, input dilation), reduces, a reduce-window,
/// transcendentals inside fusions.
fn cost_programs() -> Vec<(&'static str, Program)> {
    use xlayer::builder::{nn, trace, ConvAttrs, ConvDims, Pool, Tree};
    use xlayer::ArraySpec;
    let program =
        |name: &'static str,
         specs: Vec<ArraySpec>,
         f: fn(&[xlayer::builder::Value]) -> xlayer::Result<xlayer::builder::Value>| {
            let inputs = Tree::List(specs.into_iter().map(Tree::Leaf).collect());
            let c = trace(name, &inputs, |_b, t| Ok(Tree::leaf(f(&t.into_leaves())?))).unwrap();
            (name, c.program().unwrap())
        };
    let f32s = |dims: &[usize]| ArraySpec::of::<f32>(dims.to_vec());
    vec![
        program(
            "mlp_tanh_softmax",
            vec![f32s(&[32, 64]), f32s(&[64, 48]), f32s(&[48, 10])],
            |x| {
                let h = x[0].matmul(&x[1])?.tanh()?;
                nn::softmax(&h.matmul(&x[2])?, -1)
            },
        ),
        program(
            "batched_attention_scores",
            vec![f32s(&[4, 16, 32]), f32s(&[4, 32, 24])],
            |x| (x[0].matmul(&x[1])?.exp()? * 0.5)?.sum(&[-1], false),
        ),
        program(
            "conv_same_stride2",
            vec![f32s(&[2, 15, 15, 16]), f32s(&[3, 3, 16, 8])],
            |x| {
                let attrs = ConvAttrs::new(ConvDims::nhwc(2))
                    .strides(&[2, 2])
                    .padding(&[(1, 1), (1, 1)]);
                nn::relu(&x[0].conv_general(&x[1], &attrs)?)
            },
        ),
        program(
            "conv_grouped_dilated_then_pool",
            vec![f32s(&[1, 9, 9, 16]), f32s(&[3, 3, 4, 16])],
            |x| {
                let attrs = ConvAttrs::new(ConvDims::nhwc(2))
                    .padding(&[(2, 2), (2, 2)])
                    .lhs_dilation(&[2, 2])
                    .feature_group_count(4);
                x[0].conv_general(&x[1], &attrs)?
                    .max_pool(&Pool::new(&[1, 2, 2, 1]).strides(&[1, 2, 2, 1]))
            },
        ),
        program("layer_norm", vec![f32s(&[8, 128, 96])], |x| {
            nn::standardize(&x[0], -1, 1e-5)
        }),
    ]
}

/// The CPU plugin build whose compiler gives a cost analysis
/// (`cpu-xla-pjrt`, the default until 2026-12-03), whatever
/// `XLAYER_CPU_RECIPE` chooses.
fn cost_reference_client() -> Client {
    let path = xla_build::ensure_recipe(&xla_build::CPU_XLA_PJRT).unwrap();
    let plugin = xlayer::Plugin::load(path).unwrap();
    Client::new(&plugin, &xlayer::ClientOptions::new().cpu_device_count(1)).unwrap()
}

/// xlayer's own count (what `cost_analysis` falls back to on plugins
/// without one) gives the flops, transcendentals and bytes of the
/// compiler's cost analysis on `cpu-xla-pjrt`, for the same optimized
/// program; and on the build `XLAYER_CPU_RECIPE` chooses, if another, the
/// same transcendentals and flops within 0.1% of that compiler's
/// (the builds simplify elementwise code differently: `cpu-lammps` counts
/// 32 more flops of 228 544 in the softmax program).
#[test]
fn counted_cost_matches_the_compilers() {
    let reference = cost_reference_client();
    let chosen = Client::cpu().unwrap();
    for (name, program) in cost_programs() {
        let exe = reference.compile(&program).unwrap();
        let counted = exe.optimized_hlo().unwrap().counted_cost().unwrap();
        let compiler = exe.compiler_cost_analysis().unwrap();
        assert_eq!(counted.source, xlayer::CostSource::Counted);
        assert_eq!(compiler.source, xlayer::CostSource::Compiler);
        let both = format!("{name}\ncounted:\n{counted}\ncompiler:\n{compiler}");
        assert_eq!(counted.flops(), compiler.flops(), "{both}");
        assert_eq!(
            counted.transcendentals().unwrap_or(0.0),
            compiler.transcendentals().unwrap_or(0.0),
            "{both}"
        );
        // Equal on these programs; a fusion that reads part of an operand
        // would make the count higher (see `CostSource::Counted`).
        assert_eq!(
            counted.bytes_accessed(),
            compiler.bytes_accessed(),
            "{both}"
        );

        if chosen.plugin().path() != reference.plugin().path() {
            let other = chosen.compile(&program).unwrap().cost_analysis().unwrap();
            let (f, reference) = (other.flops().unwrap(), compiler.flops().unwrap());
            assert!((f - reference).abs() <= reference * 1e-3, "{name}: {other}");
            assert_eq!(
                other.transcendentals().unwrap_or(0.0),
                compiler.transcendentals().unwrap_or(0.0),
                "{name}: {other}"
            );
        }
    }
}
