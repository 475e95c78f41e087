//! Data-parallel training over 4 CPU devices: the batch is split over the
//! mesh axis `data`, the params are replicated, the loss is a `shard_map`
//! (per-device mean, `pmean` over `data`) differentiated from outside, and
//! one compiled SGD step updates the params. Its 20-step trajectory must
//! equal single-device training of the same model on the whole batch.

use xlayer::builder::autodiff::value_and_grad;
use xlayer::builder::{jit, shard_map, Builder, Tree, Value};
use xlayer::sharding::{Array, Mesh, NamedSharding};
use xlayer::{ArraySpec, Buffer, Client, CompileOptions, Program, Result, P};

const SHAPES: [&[usize]; 6] = [&[4, 8], &[8], &[8, 2], &[2], &[16, 4], &[16, 2]];
const LR: f64 = 0.1;

/// Mean squared error of a 4-8-2 tanh MLP on `(x, y)`.
fn local_loss(p: &[Value], x: &Value, y: &Value) -> Result<Value> {
    let h = x.matmul(&p[0])?.add(&p[1])?.tanh()?;
    let out = h.matmul(&p[2])?.add(&p[3])?;
    out.sub(y)?.square()?.mean(&[0, 1], false)
}

/// One SGD step: inputs (w1, b1, w2, b2, x, y), outputs (loss, new params).
fn step(b: &Builder, a: &[Value], mesh: Option<&Mesh>) -> Result<Vec<Value>> {
    let names = ["w1", "b1", "w2", "b2"];
    let params = Tree::map(
        names
            .iter()
            .zip(a)
            .map(|(n, v)| (*n, Tree::leaf(v.clone()))),
    );
    let (x, y) = (a[4].clone(), a[5].clone());
    let (loss, g) = value_and_grad(b, &params, |_, p| {
        let ps: Vec<Value> = names
            .iter()
            .map(|n| p.get(*n).cloned())
            .collect::<Result<_>>()?;
        match mesh {
            None => local_loss(&ps, &x, &y),
            Some(mesh) => {
                let mut ins = ps;
                ins.extend([x.clone(), y.clone()]);
                let specs = [P![], P![], P![], P![], P!["data"], P!["data"]];
                let l = shard_map(mesh, &specs, &[P![]], &ins, |_, v| {
                    Ok(vec![local_loss(&v[..4], &v[4], &v[5])?.pmean(&["data"])?])
                })?;
                Ok(l[0].clone())
            }
        }
    })?;
    let mut out = vec![loss];
    for (n, v) in names.iter().zip(a) {
        let gv = g.get(*n)?;
        out.push(v.sub(&gv.mul(&gv.scalar_like(LR)?)?)?);
    }
    Ok(out)
}

fn data() -> Vec<Vec<f32>> {
    let mut seed = 12345u64;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    };
    SHAPES
        .iter()
        .map(|s| (0..s.iter().product::<usize>()).map(|_| next()).collect())
        .collect()
}

#[test]
fn twenty_steps_match_single_device_training() -> Result<()> {
    let init = data();
    let specs: Vec<ArraySpec> = SHAPES
        .iter()
        .map(|s| ArraySpec::of::<f32>(s.to_vec()))
        .collect();

    // One device, the whole batch.
    let cpu = Client::cpu()?;
    let single = jit(&cpu, &specs, |b, a| step(b, a, None))?;
    let mut bufs: Vec<Buffer> = init
        .iter()
        .zip(SHAPES)
        .map(|(d, s)| cpu.buffer_from_host(d, s))
        .collect::<Result<_>>()?;
    let mut single_losses = Vec::new();
    for _ in 0..20 {
        let refs: Vec<&Buffer> = bufs.iter().collect();
        let mut out = single.execute(&refs)?;
        single_losses.push(out.remove(0).to_vec::<f32>()?[0]);
        bufs.splice(0..4, out);
    }

    // Four devices: batch over `data`, params replicated.
    let mesh = Mesh::new(&Client::cpu_devices(4)?, &[4], &["data"])?;
    let b = Builder::new();
    let params: Vec<Value> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| b.parameter(s.clone(), &format!("in{i}")))
        .collect::<Result<_>>()?;
    let outs = step(&b, &params, Some(&mesh))?;
    let text = b.build(&outs)?.to_stablehlo();
    assert!(text.contains("sdy.manual_computation"), "{text}");
    let exe = mesh
        .client()
        .compile_with(&Program::mlir_text(text)?, &CompileOptions::new().spmd(4))?;
    let repl = NamedSharding::replicated(&mesh);
    let batch = NamedSharding::new(&mesh, P!["data"]);
    let mut arrays: Vec<Array> = init
        .iter()
        .zip(SHAPES)
        .enumerate()
        .map(|(i, (d, s))| Array::from_host(d, s, if i < 4 { &repl } else { &batch }))
        .collect::<Result<_>>()?;
    assert_eq!(
        arrays[4].shard(0).map(|b| b.dims().to_vec()),
        Some(vec![4, 4])
    );
    let mut dp_losses = Vec::new();
    for _ in 0..20 {
        let refs: Vec<&Array> = arrays.iter().collect();
        let mut out = exe.execute_arrays(&refs, &vec![repl.clone(); 5])?;
        dp_losses.push(out.remove(0).to_vec::<f32>()?[0]);
        arrays.splice(0..4, out);
    }

    assert!(
        single_losses[19] < single_losses[0] * 0.9,
        "{single_losses:?}"
    );
    for (i, (s, d)) in single_losses.iter().zip(&dp_losses).enumerate() {
        assert!(
            (s - d).abs() <= 1e-5 * s.abs().max(1e-3),
            "step {i}: {s} vs {d}"
        );
    }
    for (k, (b, a)) in bufs.iter().zip(&arrays).take(4).enumerate() {
        let (s, d) = (b.to_vec::<f32>()?, a.to_vec::<f32>()?);
        for (x, y) in s.iter().zip(&d) {
            assert!(
                (x - y).abs() <= 1e-5 * x.abs().max(1.0),
                "param {k}: {x} vs {y}"
            );
        }
    }
    Ok(())
}
