//! Collectives and their gradients against JAX, on the CPU plugin's 4
//! devices: `tests/fixtures/collectives.safetensors` (written by
//! `tests/fixtures/gen_collectives.py`) holds per case the global inputs,
//! the global output of one `jax.shard_map`, a random output cotangent and
//! JAX's cotangents of the inputs (`jax.vjp` of the whole shard_map). Each
//! case is rebuilt with `builder::shard_map`, differentiated with
//! `autodiff::vjp`, compiled for 4 partitions (Shardy) and run with one
//! argument list per device; outputs are assembled from the devices'
//! shards and compared.

use std::sync::OnceLock;

use xlayer::builder::autodiff::vjp;
use xlayer::builder::{shard_map, Builder, Value};
use xlayer::sharding::{Array, Mesh, NamedSharding, PartitionSpec};
use xlayer::{Client, CompileOptions, DType, Program, Result, P};

mod common;

use common::{compare, Fixture, Tol};

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| Fixture::load("collectives.safetensors"))
}

fn mesh(name: &str) -> Mesh {
    let client = Client::cpu_devices(4).expect("a CPU client with 4 devices");
    match name {
        "ab" => Mesh::new(&client, &[2, 2], &["a", "b"]),
        _ => Mesh::new(&client, &[4], &["x"]),
    }
    .expect("mesh")
}

fn ab() -> PartitionSpec {
    P!["a", "b"]
}

fn f32_of(t: &common::Tensor) -> Vec<f32> {
    t.bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn bytes_of(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

type Body = fn(&Builder, &[Value]) -> Result<Vec<Value>>;

/// Rebuilds case `name` (its shard_map over `mesh_name` with `in_specs` /
/// `out_spec`), runs it on 4 devices and compares its output and, when the
/// fixture has them, the input cotangents, within `tol`.
fn check(
    name: &str,
    mesh_name: &str,
    in_specs: &[PartitionSpec],
    out_spec: PartitionSpec,
    body: Body,
    tol: Tol,
) {
    let fx = fixture();
    let ins = fx.tensors_of(name, "in");
    let grads = fx.tensors_of(name, "grad");
    let out = &fx.tensors[&format!("{name}.out")];
    let ct = &fx.tensors[&format!("{name}.ct")];
    assert_eq!(ins.len(), in_specs.len(), "{name}: inputs");
    let mesh = mesh(mesh_name);
    let b = Builder::new();
    let mut params = Vec::new();
    for (i, t) in ins.iter().enumerate() {
        params.push(b.parameter(t.spec.clone(), &format!("in{i}")).unwrap());
    }
    let ct_param = (!grads.is_empty()).then(|| b.parameter(ct.spec.clone(), "ct").unwrap());
    let y = shard_map(
        &mesh,
        in_specs,
        std::slice::from_ref(&out_spec),
        &params,
        body,
    )
    .unwrap();
    let mut outputs = y.clone();
    if let Some(ct) = ct_param {
        outputs.extend(vjp(&b, &y, &params, &[ct]).unwrap());
    }
    let text = b.build(&outputs).unwrap().to_stablehlo();
    let exe = mesh
        .client()
        .compile_with(
            &Program::mlir_text(text).unwrap(),
            &CompileOptions::new().spmd(4),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let shard = |spec: &PartitionSpec| NamedSharding::new(&mesh, spec.clone());
    let mut args = Vec::new();
    for (t, spec) in ins.iter().zip(in_specs) {
        args.push(Array::from_host(&f32_of(t), &t.spec.dims, &shard(spec)).unwrap());
    }
    if !grads.is_empty() {
        args.push(Array::from_host(&f32_of(ct), &ct.spec.dims, &shard(&out_spec)).unwrap());
    }
    let mut checks: Vec<(String, &PartitionSpec, &common::Tensor)> =
        vec![(format!("{name}.out"), &out_spec, out)];
    for (i, g) in grads.iter().enumerate() {
        checks.push((format!("{name}.grad{i}"), &in_specs[i], g));
    }
    let out_shardings: Vec<NamedSharding> = checks.iter().map(|(_, s, _)| shard(s)).collect();
    let refs: Vec<&Array> = args.iter().collect();
    let results = exe
        .execute_arrays(&refs, &out_shardings)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    for ((what, _, want), got) in checks.into_iter().zip(results) {
        let got = got.to_vec::<f32>().unwrap();
        compare(&what, &want.spec, &bytes_of(&got), want, tol).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Data movement only (gather, permute, exchange): the same bits.
const MOVED: Tol = Tol::Exact;
/// Sums over devices and their transposes: the order of the additions is
/// the plugin's.
const SUMMED: Tol = Tol::UlpsOrAbs(4, 1e-6);

#[test]
fn psum_family() {
    check(
        "psum_a_replicated",
        "ab",
        &[ab()],
        P![None, "b"],
        |_, x| Ok(vec![x[0].psum(&["a"])?]),
        SUMMED,
    );
    check(
        "psum_ab_times_x",
        "ab",
        &[ab()],
        ab(),
        |_, x| Ok(vec![x[0].psum(&["a", "b"])?.mul(&x[0])?]),
        SUMMED,
    );
    check(
        "pmean_b_times_x",
        "ab",
        &[ab()],
        ab(),
        |_, x| Ok(vec![x[0].pmean(&["b"])?.mul(&x[0])?]),
        SUMMED,
    );
    check(
        "pmax_a",
        "ab",
        &[ab()],
        ab(),
        |_, x| Ok(vec![x[0].pmax(&["a"])?]),
        MOVED,
    );
    check(
        "pmin_ab",
        "ab",
        &[ab()],
        ab(),
        |_, x| Ok(vec![x[0].pmin(&["a", "b"])?]),
        MOVED,
    );
}

#[test]
fn all_gather_and_psum_scatter() {
    check(
        "all_gather_b_tiled",
        "ab",
        &[ab()],
        ab(),
        |_, x| Ok(vec![x[0].all_gather("b", 1, true)?]),
        SUMMED,
    );
    check(
        "all_gather_a_untiled",
        "ab",
        &[ab()],
        P![None, "a", "b"],
        |_, x| Ok(vec![x[0].all_gather("a", 0, false)?]),
        SUMMED,
    );
    check(
        "psum_scatter_b_tiled",
        "ab",
        &[ab()],
        ab(),
        |_, x| Ok(vec![x[0].psum_scatter("b", 0, true)?]),
        SUMMED,
    );
    check(
        "psum_scatter_x_untiled",
        "x",
        &[P!["x"]],
        P!["x"],
        |_, x| Ok(vec![x[0].psum_scatter("x", 1, false)?]),
        SUMMED,
    );
}

#[test]
fn all_to_all_ppermute_axis_index() {
    check(
        "all_to_all_b_tiled",
        "ab",
        &[ab()],
        ab(),
        |_, x| Ok(vec![x[0].all_to_all("b", 0, 1, true)?]),
        MOVED,
    );
    check(
        "all_to_all_x_untiled",
        "x",
        &[P!["x"]],
        P!["x"],
        |_, x| Ok(vec![x[0].all_to_all("x", 1, 0, false)?]),
        MOVED,
    );
    check(
        "ppermute_a_swap",
        "ab",
        &[ab()],
        ab(),
        |_, x| Ok(vec![x[0].ppermute("a", &[(0, 1), (1, 0)])?]),
        MOVED,
    );
    check(
        "ppermute_x_shift",
        "x",
        &[P!["x"]],
        P!["x"],
        |_, x| {
            Ok(vec![x[0]
                .ppermute("x", &[(0, 1), (1, 2), (2, 3)])?
                .mul(&x[0])?])
        },
        SUMMED, // the gradient adds the product rule's two terms
    );
    check(
        "axis_index_b",
        "ab",
        &[ab()],
        ab(),
        |b, x| {
            let i = b.axis_index("b")?.convert(DType::F32)?;
            Ok(vec![x[0].mul(&(i + 1.0)?)?])
        },
        MOVED,
    );
}

#[test]
fn replicated_inputs_sum_their_cotangents() {
    check(
        "replicated_weight",
        "x",
        &[P!["x"], P![]],
        P!["x"],
        |_, a| Ok(vec![a[0].matmul(&a[1])?.tanh()?]),
        Tol::UlpsOrAbs(8, 1e-6),
    );
    check(
        "data_parallel_loss",
        "x",
        &[P!["x"], P![]],
        P![],
        |_, a| {
            let h = a[0].matmul(&a[1])?.tanh()?;
            Ok(vec![h.square()?.mean(&[0, 1], true)?.pmean(&["x"])?])
        },
        Tol::UlpsOrAbs(8, 1e-6),
    );
}

#[test]
fn every_fixture_case_is_checked() {
    let known = [
        "psum_a_replicated",
        "psum_ab_times_x",
        "pmean_b_times_x",
        "pmax_a",
        "pmin_ab",
        "all_gather_b_tiled",
        "all_gather_a_untiled",
        "psum_scatter_b_tiled",
        "psum_scatter_x_untiled",
        "all_to_all_b_tiled",
        "all_to_all_x_untiled",
        "ppermute_a_swap",
        "ppermute_x_shift",
        "axis_index_b",
        "replicated_weight",
        "data_parallel_loss",
    ];
    let cases: Vec<&String> = fixture().cases.iter().collect();
    assert_eq!(cases.len(), known.len(), "{cases:?}");
    for c in cases {
        assert!(known.contains(&c.as_str()), "fixture case {c} has no test");
    }
}
