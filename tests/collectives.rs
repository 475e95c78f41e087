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
use xlayer::builder::{shard_map, Builder, MeshAxes, Value};
use xlayer::{Buffer, Client, CompileOptions, DType, Program, Result};

mod common;

use common::{compare, Fixture, Tol};

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| Fixture::load("collectives.safetensors"))
}

fn client() -> Client {
    Client::cpu_devices(4).expect("a CPU client with 4 devices")
}

/// A spec: per dimension, the mesh axes splitting it (major first).
type Spec = &'static [&'static [&'static str]];

const AB: Spec = &[&["a"], &["b"]];
const X: Spec = &[&["x"]];
const REPL: Spec = &[];

fn mesh(name: &str) -> MeshAxes {
    match name {
        "ab" => MeshAxes::new(&[("a", 2), ("b", 2)]),
        _ => MeshAxes::new(&[("x", 4)]),
    }
    .expect("mesh")
}

/// Device `d`'s block of a global array of `dims` split by `spec`: the
/// start and length along each dimension.
fn block(mesh: &MeshAxes, spec: Spec, dims: &[usize], d: usize) -> Vec<(usize, usize)> {
    let mut coords = vec![0; mesh.sizes().len()];
    let mut rest = d;
    for (i, &s) in mesh.sizes().iter().enumerate().rev() {
        coords[i] = rest % s;
        rest /= s;
    }
    dims.iter()
        .enumerate()
        .map(|(k, &n)| {
            let axes = spec.get(k).copied().unwrap_or(&[]);
            let (mut index, mut parts) = (0, 1);
            for name in axes {
                let a = mesh.names().iter().position(|m| m == name).unwrap();
                index = index * mesh.sizes()[a] + coords[a];
                parts *= mesh.sizes()[a];
            }
            (index * (n / parts), n / parts)
        })
        .collect()
}

/// Row-major element offsets of a block.
fn offsets(dims: &[usize], blk: &[(usize, usize)]) -> Vec<usize> {
    let mut out = vec![0usize];
    for (k, &(start, len)) in blk.iter().enumerate() {
        let stride: usize = dims[k + 1..].iter().product();
        out = out
            .iter()
            .flat_map(|&o| (start..start + len).map(move |i| o + i * stride))
            .collect();
    }
    out
}

/// Uploads each device's block of a global f32 array.
fn scatter(
    client: &Client,
    mesh: &MeshAxes,
    spec: Spec,
    dims: &[usize],
    data: &[f32],
) -> Result<Vec<Buffer>> {
    (0..mesh.device_count())
        .map(|d| {
            let blk = block(mesh, spec, dims, d);
            let local: Vec<f32> = offsets(dims, &blk).iter().map(|&o| data[o]).collect();
            let shape: Vec<usize> = blk.iter().map(|&(_, l)| l).collect();
            client.buffer_from_host_on(&local, &shape, &client.devices()[d])
        })
        .collect()
}

/// Assembles a global f32 array from the devices' shards.
fn gather(mesh: &MeshAxes, spec: Spec, dims: &[usize], shards: &[&Buffer]) -> Result<Vec<f32>> {
    let mut out = vec![f32::NAN; dims.iter().product()];
    for (d, shard) in shards.iter().enumerate() {
        let blk = block(mesh, spec, dims, d);
        let shape: Vec<usize> = blk.iter().map(|&(_, l)| l).collect();
        assert_eq!(
            shard.dims(),
            &shape[..],
            "shard {d} of a {dims:?} array split as {spec:?}"
        );
        for (o, v) in offsets(dims, &blk).into_iter().zip(shard.to_vec::<f32>()?) {
            out[o] = v;
        }
    }
    Ok(out)
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
fn check(name: &str, mesh_name: &str, in_specs: &[Spec], out_spec: Spec, body: Body, tol: Tol) {
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
    let y = shard_map(&mesh, in_specs, &[out_spec], &params, body).unwrap();
    let mut outputs = y.clone();
    if let Some(ct) = ct_param {
        outputs.extend(vjp(&b, &y, &params, &[ct]).unwrap());
    }
    let text = b.build(&outputs).unwrap().to_stablehlo();
    let client = client();
    let exe = client
        .compile_with(
            &Program::mlir_text(text).unwrap(),
            &CompileOptions::new().spmd(4),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut per_param: Vec<Vec<Buffer>> = Vec::new();
    for (t, spec) in ins.iter().zip(in_specs) {
        per_param.push(scatter(&client, &mesh, spec, &t.spec.dims, &f32_of(t)).unwrap());
    }
    if !grads.is_empty() {
        per_param.push(scatter(&client, &mesh, out_spec, &ct.spec.dims, &f32_of(ct)).unwrap());
    }
    let lists: Vec<Vec<&Buffer>> = (0..4)
        .map(|d| per_param.iter().map(|p| &p[d]).collect())
        .collect();
    let outs = exe
        .execute_sharded(&lists)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut checks: Vec<(String, Spec, &common::Tensor)> =
        vec![(format!("{name}.out"), out_spec, out)];
    for (i, g) in grads.iter().enumerate() {
        checks.push((format!("{name}.grad{i}"), in_specs[i], g));
    }
    for (k, (what, spec, want)) in checks.into_iter().enumerate() {
        let got = gather(&mesh, spec, &want.spec.dims, &outs.output(k)).unwrap();
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
        &[AB],
        &[&[], &["b"]],
        |_, x| Ok(vec![x[0].psum(&["a"])?]),
        SUMMED,
    );
    check(
        "psum_ab_times_x",
        "ab",
        &[AB],
        AB,
        |_, x| Ok(vec![x[0].psum(&["a", "b"])?.mul(&x[0])?]),
        SUMMED,
    );
    check(
        "pmean_b_times_x",
        "ab",
        &[AB],
        AB,
        |_, x| Ok(vec![x[0].pmean(&["b"])?.mul(&x[0])?]),
        SUMMED,
    );
    check(
        "pmax_a",
        "ab",
        &[AB],
        AB,
        |_, x| Ok(vec![x[0].pmax(&["a"])?]),
        MOVED,
    );
    check(
        "pmin_ab",
        "ab",
        &[AB],
        AB,
        |_, x| Ok(vec![x[0].pmin(&["a", "b"])?]),
        MOVED,
    );
}

#[test]
fn all_gather_and_psum_scatter() {
    check(
        "all_gather_b_tiled",
        "ab",
        &[AB],
        AB,
        |_, x| Ok(vec![x[0].all_gather("b", 1, true)?]),
        SUMMED,
    );
    check(
        "all_gather_a_untiled",
        "ab",
        &[AB],
        &[&[], &["a"], &["b"]],
        |_, x| Ok(vec![x[0].all_gather("a", 0, false)?]),
        SUMMED,
    );
    check(
        "psum_scatter_b_tiled",
        "ab",
        &[AB],
        AB,
        |_, x| Ok(vec![x[0].psum_scatter("b", 0, true)?]),
        SUMMED,
    );
    check(
        "psum_scatter_x_untiled",
        "x",
        &[X],
        X,
        |_, x| Ok(vec![x[0].psum_scatter("x", 1, false)?]),
        SUMMED,
    );
}

#[test]
fn all_to_all_ppermute_axis_index() {
    check(
        "all_to_all_b_tiled",
        "ab",
        &[AB],
        AB,
        |_, x| Ok(vec![x[0].all_to_all("b", 0, 1, true)?]),
        MOVED,
    );
    check(
        "all_to_all_x_untiled",
        "x",
        &[X],
        X,
        |_, x| Ok(vec![x[0].all_to_all("x", 1, 0, false)?]),
        MOVED,
    );
    check(
        "ppermute_a_swap",
        "ab",
        &[AB],
        AB,
        |_, x| Ok(vec![x[0].ppermute("a", &[(0, 1), (1, 0)])?]),
        MOVED,
    );
    check(
        "ppermute_x_shift",
        "x",
        &[X],
        X,
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
        &[AB],
        AB,
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
        &[X, REPL],
        X,
        |_, a| Ok(vec![a[0].matmul(&a[1])?.tanh()?]),
        Tol::UlpsOrAbs(8, 1e-6),
    );
    check(
        "data_parallel_loss",
        "x",
        &[X, REPL],
        REPL,
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
