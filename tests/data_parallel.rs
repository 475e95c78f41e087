//! Data-parallel training over 4 CPU devices: the batch is split over the
//! mesh axis `data`, the params are replicated, and one compiled step
//! updates them. Its 20-step trajectory must equal single-device training
//! of the same model on the whole batch. Two ways:
//!
//! - by hand: the loss is a `shard_map` (per-device mean, `pmean` over
//!   `data`) differentiated from outside;
//! - `Trainer::data_parallel` + `fit`: the unchanged Keras-style train step
//!   compiled with the batch sharded `P('data')` and everything else
//!   replicated, so that XLA's partitioner inserts the gradient all-reduce.

use xlayer::builder::autodiff::value_and_grad;
use xlayer::builder::{jit, shard_map, Builder, Tree, Value};
use xlayer::layers::{Activation, Apply, Dense, HostArray, Input, Model};
use xlayer::sharding::{Array, Mesh, NamedSharding};
use xlayer::train::{Adam, FitOptions, Loss, Sgd, Trainer};
use xlayer::{ArraySpec, Buffer, Client, CompileOptions, DType, Error, Program, Result, P};

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

/// `n` numbers in [-0.5, 0.5) from a fixed LCG stream `seed`.
fn uniform(seed: u64, n: usize) -> Vec<f32> {
    let mut seed = seed;
    (0..n)
        .map(|_| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect()
}

fn data() -> Vec<Vec<f32>> {
    let all = uniform(
        12345,
        SHAPES.iter().map(|s| s.iter().product::<usize>()).sum(),
    );
    let mut at = 0;
    SHAPES
        .iter()
        .map(|s| {
            let n: usize = s.iter().product();
            at += n;
            all[at - n..at].to_vec()
        })
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

// ---- `Trainer::data_parallel` + `fit` ----

const ROWS: usize = 32;

/// Keras-style Dense(16, relu) → Dense(3) on 6 features, with seeded
/// initializers (so every build starts from the same weights), on `client`.
fn dense_model(client: &Client) -> Result<Model> {
    let x = Input::new(client, &[6], DType::F32);
    let h = Dense::config(16)
        .activation(Activation::Relu)
        .seed(7)
        .build()?
        .apply(&x)?;
    let y = Dense::config(3).seed(8).build()?.apply(&h)?;
    Model::new(x, y)
}

fn xy() -> Result<(HostArray, HostArray)> {
    let x = uniform(99, ROWS * 6);
    // A smooth target, so that the loss goes down.
    let y: Vec<f32> = x
        .chunks(6)
        .flat_map(|r| [r[0] + r[1], r[2] * r[3], r[4] - r[5]])
        .collect();
    Ok((
        HostArray::from_slice(&x, &[ROWS, 6])?,
        HostArray::from_slice(&y, &[ROWS, 3])?,
    ))
}

/// Every weight of the model, in layer order, on the host.
fn weights(m: &Model) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::new();
    for (_, w) in m.weights()? {
        for b in w.params.leaves() {
            out.push(b.to_vec::<f32>()?);
        }
    }
    Ok(out)
}

fn mesh4() -> Result<Mesh> {
    Mesh::new(&Client::cpu_devices(4)?, &[4], &["data"])
}

/// The tolerance of a trajectory run on 4 devices against one device.
/// The partitioned step computes the same ops, but each device sums over
/// its quarter of the batch and the all-reduce adds the 4 partial sums:
/// the loss's and the gradients' batch sums are reordered (docs/ops.md,
/// "Reordered sums": 16 ulp, or 1e-5 absolute where a sum cancels).
/// Twenty steps compound that a little; 1e-5 relative (absolute below
/// magnitude 1) is far above it and far below what a missing or doubled
/// reduction gives (a gradient off by 4x moves the loss by percents).
fn close(a: f32, b: f32) -> bool {
    (a - b).abs() <= 1e-5 * a.abs().max(1.0)
}

/// Compares two trajectories (losses) and final weights.
fn assert_same_training(what: &str, losses: (&[f32], &[f32]), weights: (&[Vec<f32>], &[Vec<f32>])) {
    assert_eq!(losses.0.len(), losses.1.len(), "{what}");
    assert!(
        losses.0.last() < losses.0.first(),
        "{what}: the loss goes down: {:?}",
        losses.0
    );
    for (i, (s, d)) in losses.0.iter().zip(losses.1).enumerate() {
        assert!(close(*s, *d), "{what}, step {i}: loss {s} vs {d}");
    }
    assert_eq!(weights.0.len(), weights.1.len(), "{what}");
    for (k, (s, d)) in weights.0.iter().zip(weights.1).enumerate() {
        for (x, y) in s.iter().zip(d) {
            assert!(close(*x, *y), "{what}, weight {k}: {x} vs {y}");
        }
    }
}

/// Whether an executable's optimized (partitioned) program has an op
/// `opcode` (the CPU plugin returns the HLO module proto, whose
/// instructions name their opcode as a string).
fn has_op(exe: &xlayer::Executable, opcode: &str) -> Result<bool> {
    let hlo = exe.optimized_hlo()?;
    Ok(hlo
        .bytes
        .windows(opcode.len())
        .any(|w| w == opcode.as_bytes()))
}

/// Runs `steps` single-batch fits of `trainer` on consecutive batches of
/// `batch` rows (one step each, so every step's loss is seen, and the
/// weights and optimizer state go to the mesh and back every time).
fn step_by_step(trainer: &Trainer, steps: usize, batch: usize) -> Result<Vec<f32>> {
    let (x, y) = xy()?;
    let opts = FitOptions {
        batch_size: batch,
        epochs: 1,
        shuffle: false,
        verbose: false,
        ..Default::default()
    };
    let mut losses = Vec::new();
    for i in 0..steps {
        let at = (i * batch) % ROWS;
        let h = trainer.fit(&x.rows(at, at + batch)?, &y.rows(at, at + batch)?, &opts)?;
        losses.push(h.get("loss")[0]);
    }
    Ok(losses)
}

#[test]
fn data_parallel_fit_with_sgd_matches_one_device() -> Result<()> {
    // One fit of 20 steps (10 shuffled epochs of 2 batches of 16; the
    // history holds per-epoch mean losses): the weights stay on the 4
    // devices between steps. The model lives on a 1-device client.
    let (x, y) = xy()?;
    let opts = FitOptions {
        batch_size: 16,
        epochs: 10,
        shuffle: true,
        seed: 3,
        verbose: false,
        ..Default::default()
    };
    let train = |dp: bool| -> Result<(Vec<f32>, Vec<Vec<f32>>, Trainer)> {
        let model = dense_model(&Client::cpu()?)?;
        let mut t = Trainer::new(model, Sgd::new(0.1), Loss::MeanSquaredError, &[]);
        if dp {
            t = t.data_parallel(&mesh4()?, "data")?;
        }
        let h = t.fit(&x, &y, &opts)?;
        let w = weights(t.model())?;
        Ok((h.get("loss"), w, t))
    };
    let (l1, w1, _) = train(false)?;
    let (l4, w4, dp) = train(true)?;
    assert_ne!(w1, weights(&dense_model(&Client::cpu()?)?)?, "trained");
    assert_same_training("SGD, 10 epochs", (&l1, &l4), (&w1, &w4));

    // One step program, over the 4 devices, reduced by the partitioner.
    let steps = dp.compiled_steps();
    assert_eq!(steps.len(), 1, "one compiled step");
    assert_eq!(steps[0].devices().len(), 4);
    assert!(
        has_op(&steps[0], "all-reduce")?,
        "the partitioner's all-reduce"
    );
    // Each device runs on its quarter of the batch.
    let x_param = steps[0].signature().inputs.len() - 2;
    assert_eq!(steps[0].signature().inputs[x_param].dims, vec![4, 6]);
    Ok(())
}

#[test]
fn data_parallel_fit_with_adam_matches_one_device_step_by_step() -> Result<()> {
    // 20 fits of one step each: Adam's state goes to the mesh and back at
    // every call. This model lives on the mesh's own client (device 0).
    let train = |client: &Client, dp: bool| -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
        let model = dense_model(client)?;
        let mut t = Trainer::new(model, Adam::new(1e-2), Loss::MeanSquaredError, &[]);
        if dp {
            t = t.data_parallel(&mesh4()?, "data")?;
        }
        let losses = step_by_step(&t, 20, 8)?;
        Ok((losses, weights(t.model())?))
    };
    assert_eq!(
        weights(&dense_model(&Client::cpu()?)?)?,
        weights(&dense_model(&Client::cpu_devices(4)?)?)?,
        "the same initial weights on both clients"
    );
    let (l1, w1) = train(&Client::cpu()?, false)?;
    let (l4, w4) = train(&Client::cpu_devices(4)?, true)?;
    assert_same_training("Adam, 20 single-step fits", (&l1, &l4), (&w1, &w4));
    Ok(())
}

#[test]
fn data_parallel_errors_name_the_tensor_and_axis() -> Result<()> {
    let mesh = mesh4()?;
    let trainer = || -> Result<Trainer> {
        Ok(Trainer::new(
            dense_model(&Client::cpu()?)?,
            Sgd::new(0.1),
            Loss::MeanSquaredError,
            &[],
        ))
    };
    // An axis the mesh lacks.
    match trainer()?.data_parallel(&mesh, "batch") {
        Err(Error::UnknownMeshAxis {
            axis, mesh_axes, ..
        }) => {
            assert_eq!(axis, "batch");
            assert_eq!(mesh_axes, vec!["data".to_string()]);
        }
        other => panic!("expected UnknownMeshAxis, got {other:?}"),
    }
    // A mesh larger than the client's devices cannot be made.
    assert!(matches!(
        Mesh::new(&Client::cpu_devices(4)?, &[8], &["data"]),
        Err(Error::DeviceCount {
            expected: 8,
            actual: 4,
            ..
        })
    ));
    let t = trainer()?.data_parallel(&mesh, "data")?;
    let before = weights(t.model())?;
    let (x, y) = xy()?;
    let fit = |batch_size: usize, rows: usize| {
        let opts = FitOptions {
            batch_size,
            verbose: false,
            ..Default::default()
        };
        t.fit(&x.rows(0, rows)?, &y.rows(0, rows)?, &opts)
    };
    // A batch of 6 rows over 4 devices.
    match fit(6, 24) {
        Err(e @ Error::IndivisibleDimension { .. }) => {
            let Error::IndivisibleDimension {
                ref tensor,
                dim,
                size,
                ref axes,
                shards,
            } = e
            else {
                unreachable!()
            };
            assert!(tensor.starts_with("x "), "{tensor}");
            assert_eq!((dim, size, shards), (0, 6, 4));
            assert_eq!(axes, &vec!["data".to_string()]);
            assert!(e.to_string().contains("data-parallel"), "{e}");
        }
        other => panic!("expected IndivisibleDimension, got {other:?}"),
    }
    // 18 rows in batches of 8: the last batch has 2.
    assert!(matches!(
        fit(8, 18),
        Err(Error::IndivisibleDimension { size: 2, .. })
    ));
    assert_eq!(weights(t.model())?, before, "nothing trained");
    // Batches of 8 from 24 rows run.
    fit(8, 24)?;
    assert_ne!(weights(t.model())?, before);
    Ok(())
}
