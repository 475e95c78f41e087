//! `jit` with input and output shardings and `with_sharding_constraint`,
//! on the CPU plugin's 4 devices as a 2x2 `('data', 'model')` mesh: the
//! partitioned program equals the single-device one, outputs come back
//! with the requested per-device shapes, and bad shardings are refused
//! before the plugin sees anything.

use anyhow::Result;
use xlayer::builder::{autodiff::vjp, jit, jit_sharded, Builder, Value};
use xlayer::sharding::{Array, Mesh, NamedSharding, PartitionSpec};
use xlayer::{ArraySpec, Client, Error, P};

fn mesh() -> Result<Mesh> {
    Ok(Mesh::new(
        &Client::cpu_devices(4)?,
        &[2, 2],
        &["data", "model"],
    )?)
}

fn data(n: usize, seed: f32) -> Vec<f32> {
    (0..n).map(|i| (i as f32 * 0.37 + seed).sin()).collect()
}

/// A two-layer MLP: `tanh(x @ w1 + b1) @ w2`, optionally constraining the
/// hidden activations to `hidden`.
fn mlp(x: &[Value], hidden: Option<&NamedSharding>) -> xlayer::Result<Vec<Value>> {
    let mut h = (x[0].matmul(&x[1])? + &x[2])?.tanh()?;
    if let Some(s) = hidden {
        h = h.with_sharding_constraint(s)?;
    }
    Ok(vec![h.matmul(&x[3])?])
}

fn specs() -> Vec<ArraySpec> {
    [vec![8, 6], vec![6, 8], vec![8], vec![8, 4]]
        .into_iter()
        .map(ArraySpec::of::<f32>)
        .collect()
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        // Splitting the contraction over `model` reorders a sum of 8 terms.
        assert!(
            (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
            "{what}[{i}]: {g} vs {w}"
        );
    }
}

/// The single-device result of the MLP on `host`.
fn reference(host: &[Vec<f32>]) -> Result<Vec<f32>> {
    let client = Client::cpu()?;
    let exe = jit(&client, &specs(), |_b, x| mlp(x, None))?;
    let bufs = host
        .iter()
        .zip(specs())
        .map(|(h, s)| client.buffer_from_host(h, &s.dims))
        .collect::<xlayer::Result<Vec<_>>>()?;
    let refs: Vec<_> = bufs.iter().collect();
    Ok(exe.execute(&refs)?[0].to_vec::<f32>()?)
}

#[test]
fn sharded_mlp_equals_one_device_with_and_without_a_constraint() -> Result<()> {
    let mesh = mesh()?;
    let s = |p: PartitionSpec| NamedSharding::new(&mesh, p);
    // Data parallel over `data`, the hidden dimension over `model`.
    let ins = [
        s(P!["data", None]),
        s(P![None, "model"]),
        s(P!["model"]),
        s(P!["model", None]),
    ];
    let out = s(P!["data", "model"]);
    let host: Vec<Vec<f32>> = specs()
        .iter()
        .enumerate()
        .map(|(i, sp)| data(sp.element_count(), i as f32))
        .collect();
    let want = reference(&host)?;
    let args = host
        .iter()
        .zip(specs())
        .zip(&ins)
        .map(|((h, sp), sh)| Array::from_host(h, &sp.dims, sh))
        .collect::<xlayer::Result<Vec<_>>>()?;
    let refs: Vec<&Array> = args.iter().collect();
    let hidden = s(P!["data", None]);
    for constraint in [None, Some(&hidden)] {
        let f = jit_sharded(&specs(), &ins, std::slice::from_ref(&out), |_b, x| {
            mlp(x, constraint)
        })?;
        assert_eq!(f.executable().devices().len(), 4);
        // Partitioned: each device's program takes its shard of each input.
        let local: Vec<Vec<usize>> = f
            .executable()
            .signature()
            .inputs
            .iter()
            .map(|s| s.dims.clone())
            .collect();
        assert_eq!(local, vec![vec![4, 6], vec![6, 4], vec![4], vec![4, 4]]);
        let y = f.call(&refs)?;
        assert_eq!(y.len(), 1);
        assert_eq!(y[0].dims(), &[8, 4]);
        assert_eq!(y[0].sharding(), &out);
        // Each device holds a 4x2 block: rows by `data`, columns by `model`.
        for i in 0..4 {
            assert_eq!(
                y[0].shard(i).expect("4 shards").dims(),
                &[4, 2],
                "shard {i}"
            );
        }
        assert_close(&y[0].to_vec::<f32>()?, &want, &format!("{constraint:?}"));
    }
    Ok(())
}

#[test]
fn arguments_in_another_layout_are_resharded_and_outputs_follow_out_shardings() -> Result<()> {
    let mesh = mesh()?;
    let rows = NamedSharding::new(&mesh, P!["data"]);
    let cols = NamedSharding::new(&mesh, P![None, ("data", "model")]);
    let spec = ArraySpec::of::<f32>([4, 8]);
    let f = jit_sharded(
        std::slice::from_ref(&spec),
        std::slice::from_ref(&rows),
        std::slice::from_ref(&cols),
        |_b, x| Ok(vec![x[0].exp()?]),
    )?;
    let host = data(32, 0.5);
    let x = Array::from_host(&host, &[4, 8], &NamedSharding::replicated(&mesh))?;
    let y = f.call(&[&x])?;
    assert_eq!(y[0].shard(0).expect("shard").dims(), &[4, 2]);
    let want: Vec<f32> = host.iter().map(|v| v.exp()).collect();
    assert_close(&y[0].to_vec::<f32>()?, &want, "exp");
    Ok(())
}

#[test]
fn emits_what_jax_emits() -> Result<()> {
    let mesh = mesh()?;
    let s = |p: PartitionSpec| NamedSharding::new(&mesh, p);
    let b = Builder::new();
    let x = b.parameter(ArraySpec::of::<f32>([8, 6]), "x")?;
    let w = b.parameter(ArraySpec::of::<f32>([6, 4]), "w")?;
    let y = x
        .matmul(&w)?
        .with_sharding_constraint(&s(P!["data", None]))?
        .tanh()?;
    let text = b
        .build(std::slice::from_ref(&y))?
        .with_shardings(
            &[s(P!["data", None]), s(P![None, "model"])],
            &[s(P!["data", "model"])],
        )?
        .to_stablehlo();
    // The attributes of `jax.jit(f, in_shardings=..., out_shardings=...)`
    // with `with_sharding_constraint(y, P('data', None))` (JAX 0.12).
    for want in [
        "mhlo.num_partitions = 4 : i32",
        r#"sdy.mesh @mesh = <["data"=2, "model"=2]>"#,
        r#"tensor<8x6xf32> {sdy.sharding = #sdy.sharding<@mesh, [{"data"}, {}]>}"#,
        r#"tensor<6x4xf32> {sdy.sharding = #sdy.sharding<@mesh, [{}, {"model"}]>}"#,
        r#"-> (tensor<8x4xf32> {sdy.sharding = #sdy.sharding<@mesh, [{"data"}, {"model"}]>})"#,
        r#""sdy.sharding_constraint"(%v2) {sharding = #sdy.sharding<@mesh, [{"data"}, {}]>}"#,
    ] {
        assert!(text.contains(want), "{want} not in {text}");
    }
    // The gradient of a constrained value is constrained the same way.
    let ct = b.ones(xlayer::DType::F32, &[8, 4])?;
    let g = vjp(
        &b,
        std::slice::from_ref(&y),
        std::slice::from_ref(&x),
        &[ct],
    )?;
    let text = b.build(&g)?.to_stablehlo();
    assert_eq!(text.matches("sdy.sharding_constraint").count(), 2, "{text}");
    Ok(())
}

#[test]
fn bad_shardings_are_typed_errors_naming_the_tensor() -> Result<()> {
    let mesh = mesh()?;
    let s = |p: PartitionSpec| NamedSharding::new(&mesh, p);
    let spec = [ArraySpec::of::<f32>([6, 3])];
    let id = |_b: &Builder, x: &[Value]| Ok(x.to_vec());
    let run = |input: PartitionSpec, output: PartitionSpec| {
        jit_sharded(&spec, &[s(input)], &[s(output)], id).map(|_| ())
    };
    match run(P!["data", "model", None], P![]) {
        Err(Error::SpecRank {
            tensor, rank: 2, ..
        }) => assert_eq!(tensor, "jit input 0"),
        other => panic!("{other:?}"),
    }
    match run(P![], P!["batch"]) {
        Err(Error::UnknownMeshAxis {
            tensor,
            axis,
            mesh_axes,
        }) => {
            assert_eq!((tensor.as_str(), axis.as_str()), ("jit output 0", "batch"));
            assert_eq!(mesh_axes, vec!["data".to_string(), "model".to_string()]);
        }
        other => panic!("{other:?}"),
    }
    // 3 columns over `model` (2).
    match run(P![None, "model"], P![]) {
        Err(Error::IndivisibleDimension {
            tensor,
            dim: 1,
            size: 3,
            shards: 2,
            ..
        }) => assert_eq!(tensor, "jit input 0"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        run(P!["data", "data"], P![]),
        Err(Error::MeshAxisReused { .. })
    ));
    // One sharding for two outputs.
    let r = jit_sharded(&spec, &[s(P![])], &[s(P![])], |_b, x| {
        Ok(vec![x[0].clone(), x[0].clone()])
    });
    assert!(
        matches!(r, Err(Error::Op { op: "jit", .. })),
        "{:?}",
        r.err()
    );
    // Shardings over two different meshes.
    let other = Mesh::new(mesh.client(), &[4], &["data"])?;
    let r = jit_sharded(&spec, &[s(P![])], &[NamedSharding::new(&other, P![])], id);
    assert!(
        matches!(r, Err(Error::Op { op: "jit", .. })),
        "{:?}",
        r.err()
    );
    // A constraint that does not fit its value.
    let b = Builder::new();
    let x = b.parameter(spec[0].clone(), "x")?;
    match x.with_sharding_constraint(&s(P![None, ("data", "model")])) {
        Err(Error::IndivisibleDimension {
            tensor, shards: 4, ..
        }) => {
            assert_eq!(tensor, "with_sharding_constraint")
        }
        other => panic!("{other:?}"),
    }
    // Calling with an argument of another shape.
    let f = jit_sharded(&spec, &[s(P!["data"])], &[s(P![])], id)?;
    let wrong = Array::from_host(&[0f32; 12], &[4, 3], &s(P!["data"]))?;
    assert!(matches!(
        f.call(&[&wrong]),
        Err(Error::ArgumentType { index: 0, .. })
    ));
    assert!(matches!(f.call(&[]), Err(Error::ArgumentCount { .. })));
    Ok(())
}

/// Whether the optimized (partitioned) program of `f` has an op `opcode`
/// (the CPU plugin returns the HLO module as a proto, whose instructions
/// name their opcode as a string).
fn has_op(f: &xlayer::builder::ShardedJit, opcode: &str) -> Result<bool> {
    let hlo = f.executable().optimized_hlo()?;
    Ok(hlo
        .bytes
        .windows(opcode.len())
        .any(|w| w == opcode.as_bytes()))
}

#[test]
fn a_constraint_changes_the_partitioned_program_not_the_result() -> Result<()> {
    let mesh = mesh()?;
    let rows = NamedSharding::new(&mesh, P![("data", "model")]);
    let replicated = NamedSharding::replicated(&mesh);
    let spec = [ArraySpec::of::<f32>([8, 4])];
    let host = data(32, 1.5);
    let x = Array::from_host(&host, &[8, 4], &rows)?;
    let mut results = Vec::new();
    for constraint in [None, Some(&replicated)] {
        let f = jit_sharded(
            &spec,
            std::slice::from_ref(&rows),
            std::slice::from_ref(&replicated),
            |_b, x| {
                let mut y = x[0].sin()?;
                if let Some(s) = constraint {
                    y = y.with_sharding_constraint(s)?;
                }
                Ok(vec![y.sum(&[0], false)?])
            },
        )?;
        // Rows split 4 ways: a local sum plus an all-reduce; forcing `sin`'s
        // result to be replicated first makes the partitioner gather it.
        assert_eq!(
            has_op(&f, "all-gather")?,
            constraint.is_some(),
            "{constraint:?}"
        );
        results.push(f.call(&[&x])?[0].to_vec::<f32>()?);
    }
    let want: Vec<f32> = (0..4)
        .map(|j| (0..8).map(|i| host[i * 4 + j].sin()).sum())
        .collect();
    assert_close(&results[0], &want, "unconstrained");
    assert_close(&results[1], &want, "constrained");
    Ok(())
}
