//! xlayer's CPU kernels (`pjrt::ffi`) through compiled programs: they
//! register with the pinned CPU plugin, and the quantized matrix-vector
//! product equals the product with the host-dequantized weight
//! (`gguf::quant::dequantize`, the reference checked against transformers
//! in tests/gguf.rs) within a rounding bound; wrong operands are errors
//! naming the kernel, at build time or from the kernel itself.

use half::f16;
use xlayer::builder::Builder;
use xlayer::gguf::quant::dequantize;
use xlayer::gguf::GgmlType;
use xlayer::models::qmatvec::quantized_matvec;
use xlayer::pjrt::ffi;
use xlayer::{ArraySpec, Buffer, Client, DType, Error};

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [-1, 1).
    fn f(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// The file bytes of a random `[rows, cols]` tensor of block type `ty`.
fn random_blocks(ty: GgmlType, rows: usize, cols: usize, rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rows * cols / 32 {
        out.extend(f16::from_f32(0.05 * rng.f()).to_le_bytes());
        if ty == GgmlType::Q4_1 {
            out.extend(f16::from_f32(0.3 * rng.f()).to_le_bytes());
        }
        let n = if ty == GgmlType::Q8_0 { 32 } else { 16 };
        out.extend((0..n).map(|_| rng.next() as u8));
    }
    out
}

/// The parts of the file bytes, as `models::qweight` uploads them.
fn parts(ty: GgmlType, bytes: &[u8], rows: usize, cols: usize) -> Vec<(Vec<u8>, ArraySpec)> {
    let nb = cols / 32;
    let fields: Vec<(usize, usize, ArraySpec)> = match ty {
        GgmlType::Q4_0 => vec![
            (0, 2, ArraySpec::new(DType::F16, vec![rows, nb])),
            (2, 18, ArraySpec::new(DType::U8, vec![rows, nb, 16])),
        ],
        GgmlType::Q4_1 => vec![
            (0, 2, ArraySpec::new(DType::F16, vec![rows, nb])),
            (2, 4, ArraySpec::new(DType::F16, vec![rows, nb])),
            (4, 20, ArraySpec::new(DType::U8, vec![rows, nb, 16])),
        ],
        _ => vec![
            (0, 2, ArraySpec::new(DType::F16, vec![rows, nb])),
            (2, 34, ArraySpec::new(DType::I8, vec![rows, nb, 32])),
        ],
    };
    fields
        .into_iter()
        .map(|(a, b, spec)| {
            let data = bytes
                .chunks_exact(ty.block_bytes())
                .flat_map(|blk| blk[a..b].to_vec())
                .collect();
            (data, spec)
        })
        .collect()
}

fn client() -> Client {
    let c = Client::cpu().unwrap();
    if let Err(why) = c.plugin().cpu_kernels() {
        panic!("the pinned CPU plugin refused xlayer's kernels: {why}");
    }
    c
}

#[test]
fn kernels_register_with_the_cpu_plugin() {
    let c = client();
    assert!(c.cpu_kernels() || std::env::var_os("XLAYER_CPU_KERNELS").is_some_and(|v| v == "0"));
    let (major, minor) = ffi::framework_api_version().expect("the plugin asked for metadata");
    assert_eq!(major, 0);
    assert!(minor >= 1, "framework FFI API 0.{minor}");
}

/// The largest error seen, relative to `sum |w_i x_i|` of its row, must
/// stay below this: 2^-20 (about 8 f32 ulps of the sum of magnitudes; the
/// kernels accumulate 16- or 32-term block sums, then the blocks, in f32,
/// in another order than the reference). Measured: see the test output
/// (1.0e-7 on this machine, AVX-512 path).
const REL_BOUND: f64 = 1.0 / (1u64 << 20) as f64;

#[test]
fn matvec_equals_the_dequantized_product() {
    let c = client();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut worst = 0f64;
    for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0] {
        for (rows, cols) in [(1, 32), (37, 64), (67, 576), (3, 1536), (1024, 96)] {
            let bytes = random_blocks(ty, rows, cols, &mut rng);
            let w = dequantize(ty, &bytes, rows * cols).unwrap();
            let x: Vec<f32> = (0..cols).map(|_| rng.f()).collect();
            let b = Builder::new();
            let xv = b
                .parameter(ArraySpec::new(DType::F32, vec![1, cols]), "x")
                .unwrap();
            let ps = parts(ty, &bytes, rows, cols);
            let pv: Vec<_> = ps
                .iter()
                .enumerate()
                .map(|(i, (_, s))| b.parameter(s.clone(), &format!("p{i}")).unwrap())
                .collect();
            let y = quantized_matvec(ty, rows, cols, &xv, &pv).unwrap();
            let exe = b.build(&[y]).unwrap().compile(&c).unwrap();
            if (rows, cols) == (37, 64) {
                // How the pinned plugin lowers the call: one typed-FFI
                // custom call of the kernel, nothing around it.
                let hlo = exe.optimized_hlo().unwrap();
                if let Some(text) = hlo.text() {
                    let calls: Vec<&str> =
                        text.lines().filter(|l| l.contains("custom-call")).collect();
                    println!("{ty}: {}", calls.join("\n"));
                    assert_eq!(calls.len(), 1, "{text}");
                    assert!(calls[0].contains(ffi::matvec_target(ty).unwrap()), "{text}");
                }
            }
            let mut args: Vec<Buffer> = vec![c.buffer_from_host(&x, &[1, cols]).unwrap()];
            for (data, spec) in &ps {
                args.push(c.buffer_from_bytes(data, spec, c.default_device()).unwrap());
            }
            let refs: Vec<&Buffer> = args.iter().collect();
            let got = exe.execute(&refs).unwrap()[0].to_vec::<f32>().unwrap();
            assert_eq!(got.len(), rows);
            for (r, &g) in got.iter().enumerate() {
                let row = &w[r * cols..(r + 1) * cols];
                let exact: f64 = row.iter().zip(&x).map(|(&w, &x)| w as f64 * x as f64).sum();
                let mag: f64 = row
                    .iter()
                    .zip(&x)
                    .map(|(&w, &x)| (w as f64 * x as f64).abs())
                    .sum();
                let rel = (g as f64 - exact).abs() / mag.max(f64::MIN_POSITIVE);
                worst = worst.max(rel);
                assert!(
                    rel <= REL_BOUND,
                    "{ty} [{rows}, {cols}] row {r}: kernel {g}, exact {exact}, error {rel:e} of sum |w x| {mag}"
                );
            }
        }
    }
    println!("largest error relative to sum |w x|: {worst:e} (bound {REL_BOUND:e})");
}

#[test]
fn kernel_refuses_operands_that_do_not_fit() {
    let c = client();
    let b = Builder::new();
    let x = b.parameter(ArraySpec::of::<f32>([64]), "x").unwrap();
    let d = b
        .parameter(ArraySpec::new(DType::F16, vec![5, 2]), "d")
        .unwrap();
    let qs = b
        .parameter(ArraySpec::new(DType::U8, vec![5, 2, 16]), "qs")
        .unwrap();
    // Past the typed builder (which would refuse it): a result of 4 rows
    // for a 5-row weight. The kernel reports it instead of writing past it.
    let y = b
        .custom_call(
            ffi::Q4_0_MATVEC,
            &[&x, &d, &qs],
            vec![ArraySpec::of::<f32>([4])],
            &[],
        )
        .unwrap();
    let exe = b.build(&y).unwrap().compile(&c).unwrap();
    let args = [
        c.buffer_from_host(&[0f32; 64], &[64]).unwrap(),
        c.buffer_from_bytes(
            &[0u8; 20],
            &ArraySpec::new(DType::F16, vec![5, 2]),
            c.default_device(),
        )
        .unwrap(),
        c.buffer_from_bytes(
            &[0u8; 160],
            &ArraySpec::new(DType::U8, vec![5, 2, 16]),
            c.default_device(),
        )
        .unwrap(),
    ];
    // Execution is asynchronous: the error shows when the output is read.
    let run = exe
        .execute(&args.iter().collect::<Vec<_>>())
        .and_then(|out| out[0].to_vec::<f32>());
    match run {
        Err(Error::Pjrt { message, .. }) => {
            assert!(
                message.contains("xlayer_q4_0_matvec") && message.contains("f32[4]"),
                "{message}"
            )
        }
        other => panic!("expected the kernel's error, got {other:?}"),
    }
    // A name no one registered does not compile.
    let b = Builder::new();
    let x = b.parameter(ArraySpec::of::<f32>([4]), "x").unwrap();
    let y = b
        .custom_call(
            "xlayer_no_such_kernel",
            &[&x],
            vec![ArraySpec::of::<f32>([4])],
            &[],
        )
        .unwrap();
    match b.build(&y).unwrap().compile(&c) {
        Err(e) => assert!(e.to_string().contains("xlayer_no_such_kernel"), "{e}"),
        Ok(_) => panic!("a call of an unregistered kernel compiled"),
    }
}

/// `QWeight::linear` of one row calls the kernel when the builder allows
/// it, and gives the plain-HLO formulation's values within the bound.
#[test]
fn qweight_linear_uses_the_kernel_when_allowed() {
    use xlayer::builder::{Path, Tree, VarBuilder};
    use xlayer::models::qweight::QWeight;
    let c = client();
    let (rows, cols, ty) = (67, 576, GgmlType::Q4_1);
    let mut rng = Rng(7);
    let bytes = random_blocks(ty, rows, cols, &mut rng);
    let ps = parts(ty, &bytes, rows, cols);
    let x: Vec<f32> = (0..cols).map(|_| rng.f()).collect();
    let mut outs = Vec::new();
    for kernels in [true, false] {
        let b = Builder::new();
        b.set_cpu_kernels(kernels);
        let xv = b
            .parameter(ArraySpec::new(DType::F32, vec![1, cols]), "x")
            .unwrap();
        let leaves: Vec<(Path, xlayer::builder::Value)> = ["d", "m", "qs"]
            .iter()
            .zip(&ps)
            .map(|(name, (_, spec))| {
                (
                    Path::parse("w").join(name),
                    b.parameter(spec.clone(), name).unwrap(),
                )
            })
            .collect();
        let tree = Tree::from_paths(leaves).unwrap();
        let vb = VarBuilder::new(&tree);
        let y = QWeight::load(&vb, "w", &[rows, cols])
            .unwrap()
            .linear(&xv)
            .unwrap();
        assert_eq!(y.dims(), &[1, rows]);
        let comp = b.build(&[y]).unwrap();
        assert_eq!(comp.to_stablehlo().contains(ffi::Q4_1_MATVEC), kernels);
        let exe = comp.compile(&c).unwrap();
        let mut args = vec![c.buffer_from_host(&x, &[1, cols]).unwrap()];
        for (data, spec) in &ps {
            args.push(c.buffer_from_bytes(data, spec, c.default_device()).unwrap());
        }
        outs.push(
            exe.execute(&args.iter().collect::<Vec<_>>()).unwrap()[0]
                .to_vec::<f32>()
                .unwrap(),
        );
    }
    let w = dequantize(ty, &bytes, rows * cols).unwrap();
    for r in 0..rows {
        let row = &w[r * cols..(r + 1) * cols];
        let mag: f64 = row
            .iter()
            .zip(&x)
            .map(|(&w, &x)| (w as f64 * x as f64).abs())
            .sum();
        let diff = (outs[0][r] as f64 - outs[1][r] as f64).abs();
        assert!(
            diff <= 2.0 * REL_BOUND * mag,
            "row {r}: kernel {} vs HLO {}",
            outs[0][r],
            outs[1][r]
        );
    }
}
