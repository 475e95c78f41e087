//! All-reduces between matrix products on 2 CPU devices, the pattern of a
//! tensor-parallel transformer (`models::bert_tp`). Each of the 6 layers has
//! an attention-like block and an MLP block:
//!
//! - attention: a column-parallel product (whole heads per device),
//!   per-head batched products, a row-parallel product, then a `psum`;
//! - MLP: a column-parallel product to 4× the width, a row-parallel product
//!   back, then a `psum`.
//!
//! With the CPU plugin's XNNPACK fusions on, one device's all-reduce and
//! the other device's XNNPACK fusion can hold the client's whole thread
//! pool on a 2-core machine, and XLA aborts the process after 40 s
//! ("Expected 2 threads to join the rendezvous, but only 1 of them
//! arrived"). This program aborted like that in 3 of 3 runs with
//! `.xla_flag(MULTI_DEVICE_CPU_FLAG, true)` on the 2-core machine.
//!
//! Multi-device compiles on a CPU client turn the fusions off by default
//! (`xlayer::pjrt::multi_device::MULTI_DEVICE_CPU_FLAG`). These tests check
//! that default. They also run the program 20 times, from two threads at
//! once on one client, against the same layers on one device.

use anyhow::Result;
use xlayer::builder::{shard_map, Builder, DotDims, Value};
use xlayer::pjrt::multi_device::MULTI_DEVICE_CPU_FLAG;
use xlayer::sharding::{Array, Mesh, NamedSharding};
use xlayer::{ArraySpec, Client, CompileOptions, DType, Program, P};

const LAYERS: usize = 6;
/// Tokens (rows of `x`).
const BATCH: usize = 64;
const WIDTH: usize = 384;
const HEAD: usize = 32;

/// Deterministic values in [-0.5, 0.5) scaled by `scale`.
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
        })
        .collect()
}

/// One layer: `q = tanh(x @ w)` split into heads, `tanh(q qᵀ / 8) q` per
/// head, heads joined, `@ v`, then `psum` over `axis` when set.
fn layer(x: &Value, w: &Value, v: &Value, axis: Option<&str>) -> xlayer::Result<Value> {
    let q = x.matmul(w)?.tanh()?;
    let local = q.dims()[1];
    let q = q
        .reshape(&[BATCH, local / HEAD, HEAD])?
        .transpose(&[1, 0, 2][..])?;
    let batched = |lc: usize, rc: usize| DotDims {
        lhs_batch: vec![0],
        rhs_batch: vec![0],
        lhs_contract: vec![lc],
        rhs_contract: vec![rc],
    };
    let scores = (q.dot_general(&q, &batched(2, 2))? * 0.125)?.tanh()?;
    let ctx = scores
        .dot_general(&q, &batched(2, 1))?
        .transpose(&[1, 0, 2][..])?
        .reshape(&[BATCH, local])?;
    let y = ctx.matmul(v)?;
    match axis {
        Some(a) => y.psum(&[a]),
        None => Ok(y),
    }
}

/// The program's parameters: `x`, then per layer `w`, `v` (attention,
/// `WIDTH` square) and `a`, `o` (MLP, `WIDTH` to `4 WIDTH` and back).
fn parameters(b: &Builder) -> xlayer::Result<Vec<Value>> {
    let mut p = vec![b.parameter(ArraySpec::new(DType::F32, vec![BATCH, WIDTH]), "x")?];
    for i in 0..LAYERS {
        for (name, dims) in [
            ("w", [WIDTH, WIDTH]),
            ("v", [WIDTH, WIDTH]),
            ("a", [WIDTH, 4 * WIDTH]),
            ("o", [4 * WIDTH, WIDTH]),
        ] {
            let spec = ArraySpec::new(DType::F32, dims.to_vec());
            p.push(b.parameter(spec, &format!("{name}{i}"))?);
        }
    }
    Ok(p)
}

fn run_layers(x: &Value, params: &[Value], axis: Option<&str>) -> xlayer::Result<Value> {
    let mut x = x.clone();
    for l in params.chunks(4) {
        x = (layer(&x, &l[0], &l[1], axis)? + &x)?;
        let h = x.matmul(&l[2])?.tanh()?.matmul(&l[3])?;
        let h = match axis {
            Some(a) => h.psum(&[a])?,
            None => h,
        };
        x = ((h + &x)? * 0.5)?;
    }
    Ok(x)
}

/// The tensor-parallel program over `mesh` (axis `m`), as StableHLO text.
fn tp_program(mesh: &Mesh) -> Result<Program> {
    let b = Builder::new();
    let params = parameters(&b)?;
    let mut specs = vec![P![]];
    for _ in 0..LAYERS {
        specs.extend([P![None, "m"], P!["m", None], P![None, "m"], P!["m", None]]);
    }
    let y = shard_map(mesh, &specs, &[P![]], &params, |_, local: &[Value]| {
        Ok(vec![run_layers(&local[0], &local[1..], Some("m"))?])
    })?;
    Ok(Program::mlir_text(b.build(&y)?.to_stablehlo())?)
}

/// The same layers on one device.
fn single_program() -> Result<Program> {
    let b = Builder::new();
    let params = parameters(&b)?;
    let y = run_layers(&params[0], &params[1..], None)?;
    Ok(Program::mlir_text(b.build(&[y])?.to_stablehlo())?)
}

fn host_inputs() -> Vec<(Vec<f32>, Vec<usize>)> {
    let mut v = vec![(values(BATCH * WIDTH, 1, 2.0), vec![BATCH, WIDTH])];
    for i in 0..LAYERS as u64 {
        for (k, dims) in [
            [WIDTH, WIDTH],
            [WIDTH, WIDTH],
            [WIDTH, 4 * WIDTH],
            [4 * WIDTH, WIDTH],
        ]
        .into_iter()
        .enumerate()
        {
            let n = dims[0] * dims[1];
            let scale = 2.0 / (dims[0] as f32).sqrt();
            v.push((values(n, 2 + 4 * i + k as u64, scale), dims.to_vec()));
        }
    }
    v
}

fn mesh() -> Result<Mesh> {
    Ok(Mesh::new(&Client::cpu_devices(2)?, &[2], &["m"])?)
}

fn single_device_result() -> Result<Vec<f32>> {
    let cpu = Client::cpu()?;
    let exe = cpu.compile(&single_program()?)?;
    let bufs = host_inputs()
        .iter()
        .map(|(v, d)| cpu.buffer_from_host(v, d))
        .collect::<xlayer::Result<Vec<_>>>()?;
    let refs: Vec<&xlayer::Buffer> = bufs.iter().collect();
    Ok(exe.execute(&refs)?.remove(0).to_vec::<f32>()?)
}

fn close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 + 1e-4 * w.abs(),
            "{what}: element {i}: {g} vs {w}"
        );
    }
}

#[test]
fn multi_device_cpu_compiles_turn_xnnpack_fusions_off_by_default() -> Result<()> {
    let two = Client::cpu_devices(2)?;
    let flag = |o: &CompileOptions| o.flags().get(MULTI_DEVICE_CPU_FLAG).cloned();
    let spmd = two.effective_compile_options(&CompileOptions::new().spmd(2))?;
    assert_eq!(flag(&spmd), Some(false.into()));
    // One device, on a 1- or a 2-device client: the plugin's default.
    for c in [Client::cpu()?, two.clone()] {
        let single = c.effective_compile_options(&CompileOptions::new())?;
        assert_eq!(flag(&single), None);
    }
    // An explicit setting wins.
    let forced = CompileOptions::new()
        .spmd(2)
        .xla_flag(MULTI_DEVICE_CPU_FLAG, true);
    assert_eq!(
        flag(&two.effective_compile_options(&forced)?),
        Some(true.into())
    );
    Ok(())
}

#[test]
fn many_all_reduces_between_products_finish_and_match_one_device() -> Result<()> {
    let want = single_device_result()?;
    let mesh = mesh()?;
    let exe = mesh
        .client()
        .compile_with(&tp_program(&mesh)?, &CompileOptions::new().spmd(2))?;
    let repl = NamedSharding::replicated(&mesh);
    let args = host_inputs()
        .iter()
        .enumerate()
        .map(|(i, (v, d))| {
            let spec = match i {
                0 => P![],
                i if i % 2 == 1 => P![None, "m"],
                _ => P!["m", None],
            };
            Array::from_host(v, d, &NamedSharding::new(&mesh, spec))
        })
        .collect::<xlayer::Result<Vec<_>>>()?;
    let refs: Vec<&Array> = args.iter().collect();
    // 2 threads x 10 runs of 12 all-reduces each, on the same client.
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = (0..2)
            .map(|t| {
                let (exe, refs, repl, want) = (&exe, &refs, &repl, &want);
                s.spawn(move || -> Result<()> {
                    for r in 0..10 {
                        let out = exe.execute_arrays(refs, std::slice::from_ref(repl))?;
                        close(
                            &out[0].to_vec::<f32>()?,
                            want,
                            &format!("thread {t} run {r}"),
                        );
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().expect("a run thread panicked")?;
        }
        Ok(())
    })
}
