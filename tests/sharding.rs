//! Meshes, partition specs, named shardings and sharded arrays on the CPU
//! plugin's 4 devices: JAX's slice semantics, scatter/gather, reshard,
//! a sharded program run on arrays, and every error case.

use anyhow::Result;
use xlayer::sharding::{Array, DimSpec, Mesh, NamedSharding, PartitionSpec};
use xlayer::{Client, ClientOptions, CompileOptions, Error, Plugin, Program, P};

fn client() -> Result<Client> {
    Ok(Client::cpu_devices(4)?)
}

fn mesh2x2() -> Result<Mesh> {
    Ok(Mesh::new(&client()?, &[2, 2], &["data", "model"])?)
}

#[test]
fn partition_specs_print_as_jax_writes_them() {
    assert_eq!(P!["data", None].to_string(), "P('data', None)");
    assert_eq!(P![("data", "model")].to_string(), "P(('data', 'model'))");
    assert_eq!(P![].to_string(), "P()");
    assert_eq!(
        PartitionSpec::new(vec![DimSpec::replicated(), DimSpec::axes(&["a", "b"])]),
        P![None, ["a", "b"]]
    );
}

#[test]
fn shard_ranges_follow_jax() -> Result<()> {
    let mesh = mesh2x2()?;
    assert_eq!(mesh.coords(2), vec![1, 0]);
    // P('data', 'model') on [8, 6]: device (i, j) holds rows 4i.., cols 3j..
    let s = NamedSharding::new(&mesh, P!["data", "model"]);
    let r = s.shard_ranges("x", &[8, 6])?;
    assert_eq!(r[0], vec![0..4, 0..3]);
    assert_eq!(r[1], vec![0..4, 3..6]);
    assert_eq!(r[2], vec![4..8, 0..3]);
    // P(('data', 'model')): 'data' is major, as jax.Array.addressable_shards.
    let s = NamedSharding::new(&mesh, P![("data", "model")]);
    let r = s.shard_ranges("x", &[8])?;
    assert_eq!(r, vec![vec![0..2], vec![2..4], vec![4..6], vec![6..8]]);
    let s = NamedSharding::new(&mesh, P![("model", "data")]);
    assert_eq!(s.shard_ranges("x", &[8])?[1], vec![4..6]);
    // P(None, 'model'): replicated over 'data'.
    let s = NamedSharding::new(&mesh, P![None, "model"]);
    let r = s.shard_ranges("w", &[4, 6])?;
    assert_eq!(r[0], r[2]);
    assert_eq!(r[1], vec![0..4, 3..6]);
    assert_eq!(s.shard_shape("w", &[4, 6])?, vec![4, 3]);
    assert_eq!(s.global_shape(&[4, 3]), vec![4, 6]);
    assert_eq!(
        s.sdy_attribute("mesh", 2),
        r#"#sdy.sharding<@mesh, [{}, {"model"}]>"#
    );
    assert_eq!(
        mesh.sdy_declaration("mesh"),
        r#"sdy.mesh @mesh = <["data"=2, "model"=2]>"#
    );
    Ok(())
}

#[test]
fn mesh_errors() -> Result<()> {
    let c = client()?;
    let e = Mesh::new(&c, &[4, 2], &["data", "model"]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::DeviceCount {
                expected: 8,
                actual: 4,
                ..
            }
        ),
        "{e}"
    );
    let e = Mesh::new(&c, &[2, 2], &["data", "data"]).unwrap_err();
    assert!(
        matches!(e, Error::DuplicateName { kind: "mesh axis", ref name, .. } if name == "data"),
        "{e}"
    );
    assert!(matches!(
        Mesh::new(&c, &[2], &["a", "b"]),
        Err(Error::MeshShape { .. })
    ));
    assert!(matches!(
        Mesh::new(&c, &[0], &["a"]),
        Err(Error::MeshShape { .. })
    ));
    assert!(matches!(
        Mesh::new(&c, &[], &[]),
        Err(Error::MeshShape { .. })
    ));
    let d = c.devices();
    let dup = [d[0].clone(), d[0].clone()];
    assert!(matches!(
        Mesh::from_devices(&c, &dup, &[2], &["a"]),
        Err(Error::DuplicateDevice { .. })
    ));
    let other = Client::new(&Plugin::cpu()?, &ClientOptions::new().cpu_device_count(2))?;
    let foreign = [d[0].clone(), other.devices()[1].clone()];
    assert!(matches!(
        Mesh::from_devices(&c, &foreign, &[2], &["a"]),
        Err(Error::ForeignClient { .. })
    ));
    assert!(matches!(
        mesh2x2()?.axis_size("batch"),
        Err(Error::UnknownName { .. })
    ));
    Ok(())
}

#[test]
fn sharding_errors_name_the_tensor_and_the_axis() -> Result<()> {
    let mesh = mesh2x2()?;
    let e = NamedSharding::new(&mesh, P!["batch"])
        .check("x", &[8])
        .unwrap_err();
    assert!(
        matches!(e, Error::UnknownMeshAxis { ref tensor, ref axis, .. } if tensor == "x" && axis == "batch"),
        "{e}"
    );
    assert!(e.to_string().contains("`x`") && e.to_string().contains("batch"));
    let e = NamedSharding::new(&mesh, P!["data", None])
        .check("w", &[7, 2])
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::IndivisibleDimension {
                dim: 0,
                size: 7,
                shards: 2,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("`w`") && e.to_string().contains("data"));
    let e = NamedSharding::new(&mesh, P![("data", "model")])
        .check("w", &[6])
        .unwrap_err();
    assert!(
        matches!(e, Error::IndivisibleDimension { shards: 4, .. }),
        "{e}"
    );
    let e = NamedSharding::new(&mesh, P!["data", "data"])
        .check("y", &[4, 4])
        .unwrap_err();
    assert!(
        matches!(e, Error::MeshAxisReused { ref axis, .. } if axis == "data"),
        "{e}"
    );
    let e = NamedSharding::new(&mesh, P![("model", "model")])
        .check("y", &[4])
        .unwrap_err();
    assert!(matches!(e, Error::MeshAxisReused { .. }), "{e}");
    let e = NamedSharding::new(&mesh, P!["data", None, None])
        .check("z", &[4, 4])
        .unwrap_err();
    assert!(matches!(e, Error::SpecRank { rank: 2, .. }), "{e}");
    // From host: the same checks, before any upload.
    let e = Array::from_host(&[0f32; 7], &[7], &NamedSharding::new(&mesh, P!["data"])).unwrap_err();
    assert!(matches!(e, Error::IndivisibleDimension { .. }), "{e}");
    let e = Array::from_host(&[0f32; 7], &[8], &NamedSharding::new(&mesh, P!["data"])).unwrap_err();
    assert!(
        matches!(
            e,
            Error::HostDataSize {
                expected: 8,
                actual: 7,
                ..
            }
        ),
        "{e}"
    );
    // bool bytes other than 0 and 1, as a single-device upload refuses them.
    let spec = xlayer::ArraySpec::new(xlayer::DType::Bool, [4]);
    let e = Array::from_bytes(&[0, 1, 2, 1], &spec, &NamedSharding::new(&mesh, P!["data"]))
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::OutOfRange {
                function: "Array::from_bytes",
                ..
            }
        ),
        "{e}"
    );
    Ok(())
}

#[test]
fn scatter_gather_and_reshard() -> Result<()> {
    let mesh = mesh2x2()?;
    let x: Vec<i32> = (0..48).collect();
    let s = NamedSharding::new(&mesh, P!["data", "model"]);
    let a = Array::from_host(&x, &[8, 6], &s)?;
    // Each device holds only its slice.
    assert_eq!(a.shards().len(), 4);
    for (b, dev) in a.shards().iter().zip(mesh.devices()) {
        assert_eq!(b.device(), dev);
        assert_eq!(b.dims(), &[4, 3]);
    }
    assert_eq!(
        a.shard(3).unwrap().to_vec::<i32>()?,
        vec![27, 28, 29, 33, 34, 35, 39, 40, 41, 45, 46, 47]
    );
    assert_eq!(a.to_vec::<i32>()?, x);
    assert!(matches!(a.to_vec::<f32>(), Err(Error::DType { .. })));
    // Reshard to rows over both axes, then to replicated.
    let b = a.reshard(&NamedSharding::new(&mesh, P![("data", "model")]))?;
    assert_eq!(
        b.shard(1).unwrap().to_vec::<i32>()?,
        (12..24).collect::<Vec<_>>()
    );
    assert_eq!(b.to_vec::<i32>()?, x);
    let c = b.reshard(&NamedSharding::replicated(&mesh))?;
    for sh in c.shards() {
        assert_eq!(sh.to_vec::<i32>()?, x);
    }
    // Onto a 1-d mesh of two of the devices.
    let small = Mesh::from_devices(mesh.client(), &mesh.devices()[2..], &[2], &["d"])?;
    let d = c.reshard(&NamedSharding::new(&small, P![None, "d"]))?;
    assert_eq!(d.shards()[0].device(), &mesh.devices()[2]);
    assert_eq!(d.to_vec::<i32>()?, x);
    // A scalar, replicated.
    let s0 = Array::from_host(&[7f64], &[], &NamedSharding::replicated(&mesh))?;
    assert_eq!(s0.to_vec::<f64>()?, vec![7.0]);
    Ok(())
}

#[test]
fn from_shards_checks_count_type_and_device() -> Result<()> {
    let mesh = mesh2x2()?;
    let c = mesh.client().clone();
    let s = NamedSharding::new(&mesh, P!["data"]);
    let spec = xlayer::ArraySpec::new(xlayer::DType::F32, vec![4]);
    let mk = |i: usize, n: usize| c.buffer_from_host_on(&vec![i as f32; n], &[n], &c.devices()[i]);
    let good = || -> xlayer::Result<Vec<_>> { (0..4).map(|i| mk(i, 2)).collect() };
    let a = Array::from_shards("y", spec.clone(), &s, good()?)?;
    assert_eq!(a.to_vec::<f32>()?, vec![0.0, 0.0, 2.0, 2.0]);
    let mut three = good()?;
    three.pop();
    assert!(matches!(
        Array::from_shards("y", spec.clone(), &s, three),
        Err(Error::DeviceCount { .. })
    ));
    let mut wrong = good()?;
    wrong[1] = mk(1, 3)?;
    assert!(matches!(
        Array::from_shards("y", spec.clone(), &s, wrong),
        Err(Error::ShardArgumentType { device: 1, .. })
    ));
    let mut swapped = good()?;
    swapped.swap(0, 1);
    assert!(matches!(
        Array::from_shards("y", spec, &s, swapped),
        Err(Error::ShardArgumentDevice { device: 0, .. })
    ));
    Ok(())
}

/// The 2x2 program of tests/multi_device.rs, run on sharded arrays.
#[test]
fn a_sharded_program_on_arrays_equals_the_host_result() -> Result<()> {
    let mesh = mesh2x2()?;
    let text = r#"module @jit_f attributes {mhlo.num_partitions = 4 : i32, mhlo.num_replicas = 1 : i32} {
  sdy.mesh @mesh = <["data"=2, "model"=2]>
  func.func public @main(%arg0: tensor<8x4xf32> {sdy.sharding = #sdy.sharding<@mesh, [{"data"}, {}]>}, %arg1: tensor<4x6xf32> {sdy.sharding = #sdy.sharding<@mesh, [{}, {"model"}]>}) -> (tensor<8x6xf32> {sdy.sharding = #sdy.sharding<@mesh, [{"data"}, {"model"}]>}) {
    %0 = stablehlo.dot_general %arg0, %arg1, contracting_dims = [1] x [0] : (tensor<8x4xf32>, tensor<4x6xf32>) -> tensor<8x6xf32>
    return %0 : tensor<8x6xf32>
  }
}"#;
    let exe = mesh
        .client()
        .compile_with(&Program::mlir_text(text)?, &CompileOptions::new().spmd(4))?;
    // Small integers: the products are exact.
    let x: Vec<f32> = (0..32).map(|i| (i % 5) as f32).collect();
    let w: Vec<f32> = (0..24).map(|i| (i % 3) as f32 - 1.0).collect();
    let xa = Array::from_host(&x, &[8, 4], &NamedSharding::new(&mesh, P!["data", None]))?;
    let wa = Array::from_host(&w, &[4, 6], &NamedSharding::new(&mesh, P![None, "model"]))?;
    let out = exe.execute_arrays(
        &[&xa, &wa],
        &[NamedSharding::new(&mesh, P!["data", "model"])],
    )?;
    assert_eq!(out[0].dims(), &[8, 6]);
    let mut expected = vec![0f32; 48];
    for i in 0..8 {
        for j in 0..6 {
            expected[i * 6 + j] = (0..4).map(|k| x[i * 4 + k] * w[k * 6 + j]).sum();
        }
    }
    assert_eq!(out[0].to_vec::<f32>()?, expected);
    // Arguments whose mesh lacks one of the executable's devices.
    let small = Mesh::from_devices(mesh.client(), &mesh.devices()[..2], &[2], &["d"])?;
    let xs = Array::from_host(&x, &[8, 4], &NamedSharding::new(&small, P!["d"]))?;
    assert!(matches!(
        exe.execute_arrays(
            &[&xs, &wa],
            &[NamedSharding::new(&mesh, P!["data", "model"])]
        ),
        Err(Error::ShardArgumentDevice {
            device: 2,
            index: 0,
            ..
        })
    ));
    // Wrong number of output shardings.
    assert!(matches!(
        exe.execute_arrays(&[&xa, &wa], &[]),
        Err(Error::DeviceListCount { .. })
    ));
    Ok(())
}
