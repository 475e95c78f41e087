//! Reverse-mode autodiff against JAX: the fixture `tests/fixtures/grads.safetensors`
//! (written by `tests/fixtures/gen_grads.py`, see docs/autodiff.md) holds per
//! case the primal inputs, the output cotangent (last input) and JAX's
//! cotangents of the float inputs (`jax.vjp`). Each test rebuilds one family's
//! cases with the builder, differentiates them with `autodiff::vjp` into ONE
//! program, runs it on the CPU plugin and compares within the tolerance stated
//! per family. Rules JAX cannot be asked about are checked against central
//! finite differences in f64; misuse must fail with errors naming the op.
//!
//! Set `XLAYER_OPS_REPORT=1` to print the measured max ulp distance per case.

use std::sync::OnceLock;

use xlayer::builder::autodiff::{grad, value_and_grad, value_and_grad_with_aux, vjp};
use xlayer::builder::{
    jit, nn, BinaryOp, Builder, ConvAttrs, ConvDims, DotDims, GatherDims, Padding, Pool,
    ScatterDims, ScatterMode, Tree, UnaryOp, Value, WindowAttrs,
};
use xlayer::{ArraySpec, Client, DType, Error, Result};

mod common;

use common::{case, Case, Fixture, Tol};

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| Fixture::load("grads.safetensors"))
}

fn client() -> &'static Client {
    common::cpu_client()
}

// ------------------------------------------------------------------ running a family

/// Builds every case's forward and its `vjp` into one program, runs it and
/// compares each input cotangent with JAX's; the cases must be exactly the
/// fixture's cases under `prefixes`.
fn run_family(prefixes: &[&str], cases: Vec<Case<Value>>) {
    common::run_family(fixture(), prefixes, &cases, |b, c, xs| {
        let n = xs.len();
        let (primal, ct) = (&xs[..n - 1], &xs[n - 1]);
        let wrt: Vec<Value> = primal
            .iter()
            .filter(|v| v.dtype().is_float())
            .cloned()
            .collect();
        (c.build)(b, primal).and_then(|y| vjp(b, &[y], &wrt, std::slice::from_ref(ct)))
    });
}

fn names_under(prefix: &str) -> Vec<String> {
    fixture().cases_under(&[prefix])
}

fn tail(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

fn i32s(b: &Builder, v: i32) -> Result<Value> {
    b.scalar(v)
}

// ------------------------------------------------------------------ families

/// Elementwise rules: a few ulps (the backward is a handful of float ops,
/// each rounded, while JAX's XLA may fuse them differently).
const ELEMENTWISE: Tol = Tol::UlpsOrAbs(4, 1e-7);

/// Rules whose backward adds cotangents (the transpose of a broadcast is a
/// sum, of a gather with repeated indices a scatter-add): the order of the
/// additions is the CPU's and XLA build's choice, not fixed by IEEE, so not
/// exact (docs/ops.md, "Tolerances").
const REORDERED_SUM: Tol = Tol::UlpsOrAbs(4, 1e-6);

#[test]
fn unary_rules() {
    let ops = [
        UnaryOp::Neg,
        UnaryOp::Abs,
        UnaryOp::Sign,
        UnaryOp::Exp,
        UnaryOp::Expm1,
        UnaryOp::Log,
        UnaryOp::Log1p,
        UnaryOp::Sqrt,
        UnaryOp::Rsqrt,
        UnaryOp::Cbrt,
        UnaryOp::Tanh,
        UnaryOp::Logistic,
        UnaryOp::Sin,
        UnaryOp::Cos,
        UnaryOp::Tan,
        UnaryOp::Floor,
        UnaryOp::Ceil,
        UnaryOp::RoundNearestAfz,
        UnaryOp::Erf,
        UnaryOp::ErfInv,
        UnaryOp::Erfc,
    ];
    let cases = names_under("unary/")
        .into_iter()
        .map(|name| {
            let op = *ops.iter().find(|o| o.name() == tail(&name)).expect("op");
            case(name, ELEMENTWISE, move |_, x| x[0].unary(op))
        })
        .collect();
    run_family(&["unary/"], cases);
}

#[test]
fn binary_select_clamp_convert_rules() {
    let ops = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Rem,
        BinaryOp::Pow,
        BinaryOp::Max,
        BinaryOp::Min,
        BinaryOp::Atan2,
    ];
    let mut cases: Vec<Case<Value>> = names_under("binary/")
        .into_iter()
        .filter(|n| n != "binary/broadcast")
        .map(|name| {
            let op = *ops.iter().find(|o| o.name() == tail(&name)).expect("op");
            case(name, ELEMENTWISE, move |_, x| x[0].binary(op, &x[1]))
        })
        .collect();
    cases.push(case("binary/broadcast", ELEMENTWISE, |_, x| {
        x[0].mul(&x[1])?.add(&x[0])
    }));
    cases.push(case("select", Tol::Exact, |_, x| {
        x[0].gt(&x[0].scalar_like(0.0)?)?.select(&x[1], &x[2])
    }));
    cases.push(case("clamp/scalar_bounds", Tol::Exact, |_, x| {
        x[0].clamp(&x[0].scalar_like(-0.5)?, &x[0].scalar_like(0.7)?)
    }));
    cases.push(case("clamp/array_bounds", Tol::Exact, |_, x| {
        x[1].clamp(&x[0], &x[2])
    }));
    cases.push(case("convert/bf16", Tol::Exact, |_, x| {
        (x[0].convert(DType::BF16)? * 2.0)?.convert(DType::F32)
    }));
    cases.push(case("convert/to_int", Tol::Exact, |_, x| {
        x[0].mul(&x[1].convert(DType::I32)?.convert(DType::F32)?)
    }));
    run_family(&["binary/", "select", "clamp/", "convert/"], cases);
}

#[test]
fn shape_and_dot_rules() {
    // Shape rules only move cotangents (exact), except broadcast, whose
    // transpose sums; products sum in another order.
    let dot = Tol::UlpsOrAbs(8, 1e-6);
    let cases = vec![
        case("shape/broadcast_in_dim", REORDERED_SUM, |_, x| {
            x[0].broadcast_in_dim(&[2, 3, 4], &[0, 2])
        }),
        case("shape/broadcast_ones", REORDERED_SUM, |_, x| {
            x[0].broadcast_in_dim(&[3, 4, 5], &[0, 1])
        }),
        case("shape/reshape", Tol::Exact, |_, x| x[0].reshape(&[4, 6])),
        case("shape/transpose", Tol::Exact, |_, x| {
            x[0].transpose(&[2, 0, 1])
        }),
        case("shape/slice", Tol::Exact, |_, x| {
            x[0].slice(&[1, 0], &[6, 7], &[2, 3])
        }),
        case("shape/dynamic_slice", Tol::Exact, |_, x| {
            x[0].dynamic_slice(&[x[1].clone(), x[2].clone()], &[2, 3])
        }),
        case("shape/dynamic_update_slice", Tol::Exact, |b, x| {
            x[0].dynamic_update_slice(&x[1], &[x[2].clone(), i32s(b, 1)?])
        }),
        case("shape/concatenate", Tol::Exact, |_, x| {
            Value::concatenate(&x[..3], 1)
        }),
        case("shape/pad", Tol::UlpsOrAbs(2, 1e-6), |_, x| {
            x[0].pad(&x[1], &[1, -2], &[-1, 2], &[1, 0])
        }),
        case("shape/reverse", Tol::Exact, |_, x| x[0].reverse(&[0, 2])),
        case("dot/matmul", dot, |_, x| x[0].matmul(&x[1])),
        case("dot/batched", dot, |_, x| {
            let d = DotDims {
                lhs_batch: vec![0],
                rhs_batch: vec![0],
                lhs_contract: vec![1],
                rhs_contract: vec![2],
            };
            x[0].dot_general(&x[1], &d)
        }),
        case("dot/multi_contract", dot, |_, x| {
            let d = DotDims {
                lhs_contract: vec![2, 0],
                rhs_contract: vec![0, 1],
                ..Default::default()
            };
            x[0].dot_general(&x[1], &d)
        }),
    ];
    run_family(&["shape/", "dot/"], cases);
}

fn conv_attrs(
    dims: ConvDims,
    strides: &[usize],
    padding: &[(i64, i64)],
    lhs: &[usize],
    rhs: &[usize],
    groups: usize,
) -> ConvAttrs {
    ConvAttrs {
        dims,
        strides: strides.to_vec(),
        padding: padding.to_vec(),
        lhs_dilation: lhs.to_vec(),
        rhs_dilation: rhs.to_vec(),
        feature_group_count: groups,
        batch_group_count: 1,
    }
}

#[test]
fn convolution_rules() {
    // Transposed convolutions sum their products in another order than JAX's.
    let tol = Tol::UlpsOrAbs(16, 2e-6);
    let nhwc = || ConvDims::nhwc(2);
    let configs: Vec<(&str, ConvAttrs)> = vec![
        (
            "basic",
            conv_attrs(nhwc(), &[1, 1], &[(1, 1), (1, 1)], &[1, 1], &[1, 1], 1),
        ),
        (
            "strided",
            conv_attrs(nhwc(), &[2, 3], &[(0, 1), (1, 0)], &[1, 1], &[1, 1], 1),
        ),
        (
            "rhs_dilation",
            conv_attrs(nhwc(), &[1, 2], &[(2, 1), (0, 0)], &[1, 1], &[2, 2], 1),
        ),
        (
            "lhs_dilation",
            conv_attrs(nhwc(), &[1, 1], &[(1, 1), (2, 2)], &[2, 1], &[1, 1], 1),
        ),
        (
            "groups",
            conv_attrs(nhwc(), &[1, 1], &[(1, 1), (1, 1)], &[1, 1], &[1, 1], 2),
        ),
        (
            "depthwise",
            conv_attrs(nhwc(), &[2, 2], &[(1, 1), (1, 1)], &[1, 1], &[1, 1], 3),
        ),
        (
            "nchw_1d",
            conv_attrs(ConvDims::nchw(1), &[2], &[(1, 2)], &[1], &[1], 1),
        ),
    ];
    let cases = configs
        .into_iter()
        .map(|(name, attrs)| {
            case(format!("conv/{name}"), tol, move |_, x| {
                x[0].conv_general(&x[1], &attrs)
            })
        })
        .collect();
    run_family(&["conv/"], cases);
}

#[test]
fn reduction_and_window_rules() {
    // Overlapping windows add several cotangents per input, in another order than JAX.
    let sum = REORDERED_SUM;
    let cases = vec![
        case("reduce/sum", Tol::Exact, |_, x| x[0].sum(&[0, 2], false)),
        case("reduce/max", Tol::Exact, |_, x| x[0].max(&[1], false)),
        case("reduce/max_ties", Tol::Exact, |_, x| x[0].max(&[1], false)),
        case("reduce/min", Tol::Exact, |_, x| x[0].min(&[0, 1], false)),
        case("reduce/prod", ELEMENTWISE, |_, x| x[0].prod(&[1], false)),
        case("reduce/prod_all", ELEMENTWISE, |_, x| {
            x[0].prod(&[0, 1], false)
        }),
        case("reduce/mean", ELEMENTWISE, |_, x| x[0].mean(&[2], false)),
        case("window/max_pool", sum, |_, x| {
            x[0].max_pool(
                &Pool::new(&[1, 3, 3, 1])
                    .strides(&[1, 2, 2, 1])
                    .padding(Padding::Same),
            )
        }),
        case("window/max_pool_valid", sum, |_, x| {
            x[0].max_pool(&Pool::new(&[1, 2, 2, 1]))
        }),
        case("window/min_pool", sum, |_, x| {
            let p = Padding::Explicit(vec![(0, 0), (1, 0), (0, 2), (0, 0)]);
            x[0].min_pool(&Pool::new(&[1, 2, 3, 1]).strides(&[1, 1, 2, 1]).padding(p))
        }),
        case("window/sum_pool", sum, |_, x| {
            let p = Padding::Explicit(vec![(0, 0), (1, 1), (0, 1), (0, 0)]);
            x[0].sum_pool(&Pool::new(&[1, 3, 2, 1]).strides(&[1, 2, 1, 1]).padding(p))
        }),
        case("window/avg_pool", sum, |_, x| {
            x[0].avg_pool(&Pool::new(&[1, 2, 2, 1]))
        }),
        case("window/cumsum", sum, |_, x| x[0].cumsum(1, false)),
        case("window/cumsum_reverse", sum, |_, x| x[0].cumsum(0, true)),
        case("window/cummax", sum, |_, x| x[0].cummax(1, false)),
    ];
    run_family(&["reduce/", "window/"], cases);
}

#[test]
fn indexing_rules() {
    let cases = vec![
        case("index/take", REORDERED_SUM, |_, x| x[0].take(&x[1], 0)),
        case("index/take_axis1", REORDERED_SUM, |_, x| {
            x[0].take(&x[1], 1)
        }),
        case("index/scatter_add", Tol::Exact, |_, x| {
            x[0].at_add(&x[1], &x[2])
        }),
        case("index/scatter_set", Tol::Exact, |_, x| {
            x[0].at_set(&x[1], &x[2])
        }),
        case("index/sort", Tol::Exact, |_, x| x[0].sort(1, false)),
        case("index/sort_desc_axis0", Tol::Exact, |_, x| {
            x[0].neg()?.sort(0, false)?.neg()
        }),
        case("index/sort_two", Tol::Exact, |_, x| {
            Value::sort_many(&x[..2], 0, false)?[1].clone() * 2.0
        }),
        case("index/top_k", Tol::Exact, |_, x| Ok(x[0].top_k(3)?.0)),
        case("index/argmax_no_grad", Tol::Exact, |_, x| {
            let i = x[0].argmax(1, DType::I32)?.reshape(&[3, 1])?;
            x[0].mul(&i.convert(DType::F32)?)
        }),
    ];
    run_family(&["index/"], cases);
}

#[test]
fn control_flow_and_nn_rules() {
    let nn_tol = Tol::UlpsOrAbs(16, 1e-6);
    let cases = vec![
        case("control/fori_loop", ELEMENTWISE, |b, x| {
            let w = x[1].clone();
            Ok(b.fori_loop(0, 4, &x[..1], |i, c| {
                Ok(vec![c[0].mul(&w)?.add(&i.convert(DType::F32)?)?.tanh()?])
            })?[0]
                .clone())
        }),
        case("control/fori_loop_two_carries", ELEMENTWISE, |b, x| {
            let out = b.fori_loop(1, 4, &x[..2], |_, c| {
                Ok(vec![c[0].mul(&c[1])?, c[1].add(&c[0].sum(&[0], false)?)?])
            })?;
            out[0].add(&out[1])
        }),
        case("control/cond", ELEMENTWISE, |b, x| {
            let p = x[0].sum(&[0], false)?.gt(&x[0].scalar_like(0.0)?)?;
            Ok(b.cond(&p, || Ok(vec![x[0].mul(&x[1])?]), || Ok(vec![x[1].sin()?]))?[0].clone())
        }),
        case("control/stop_gradient", Tol::Exact, |_, x| {
            x[0].mul(&x[1].mul(&x[0])?.stop_gradient()?)?.add(&x[1])
        }),
        case("nn/softmax", nn_tol, |_, x| nn::softmax(&x[0], 1)),
        case("nn/log_softmax", nn_tol, |_, x| nn::log_softmax(&x[0], 1)),
        case("nn/logsumexp", nn_tol, |_, x| {
            nn::logsumexp(&x[0], 0, false)
        }),
        case("nn/gelu_tanh", nn_tol, |_, x| nn::gelu(&x[0], true)),
        case("nn/gelu_erf", nn_tol, |_, x| nn::gelu(&x[0], false)),
        case("nn/softplus", nn_tol, |_, x| nn::softplus(&x[0])),
        case("nn/silu", nn_tol, |_, x| nn::silu(&x[0])),
        case("nn/relu", Tol::Exact, |_, x| nn::relu(&x[0])),
        case("nn/mlp_loss", nn_tol, |_, x| {
            let h = nn::relu(&x[0].matmul(&x[1])?.add(&x[2])?)?;
            let logits = h.matmul(&x[3])?.add(&x[4])?;
            let logp = nn::log_softmax(&logits, 1)?;
            let picked = logp
                .mul(&nn::one_hot(&x[5], 4, DType::F32)?)?
                .sum(&[1], false)?;
            picked.mean(&[0], false)?.neg()
        }),
    ];
    run_family(&["control/", "nn/"], cases);
}

#[test]
fn every_fixture_case_is_tested() {
    let families = [
        "unary/", "binary/", "select", "clamp/", "convert/", "shape/", "dot/", "conv/", "reduce/",
        "window/", "index/", "control/", "nn/",
    ];
    fixture().assert_no_orphans(&families);
}

// ------------------------------------------------------------------ finite differences

/// Deterministic f64 data in about [-1.5, 1.5] without ties.
fn data(n: usize, seed: u64) -> Vec<f64> {
    (0..n)
        .map(|i| ((i as f64 * 0.7548776662 + seed as f64 * 0.569840291) % 1.0) * 3.0 - 1.5)
        .collect()
}

/// Compares `grad` of `sum(f(x) * w)` (w a fixed pattern) with central
/// differences in f64: |grad - fd| <= 1e-6 * (1 + |fd|).
fn fd_check(
    name: &str,
    inputs: &[(Vec<f64>, Vec<usize>)],
    f: impl Fn(&Builder, &[Value]) -> Result<Value>,
) {
    let specs: Vec<ArraySpec> = inputs
        .iter()
        .map(|(_, d)| ArraySpec::new(DType::F64, d.clone()))
        .collect();
    let exe = jit(client(), &specs, |b, xs| {
        let params = Tree::List(xs.iter().cloned().map(Tree::Leaf).collect());
        let (loss, g) = value_and_grad(b, &params, |b, p| {
            let xs: Vec<Value> = p.into_leaves();
            let y = f(b, &xs)?;
            let w: Vec<f64> = (0..y.element_count())
                .map(|i| 0.5 + (i as f64 * 1.3).sin())
                .collect();
            let w = b.constant(&w, y.dims())?;
            y.mul(&w)?.sum(&(0..y.rank()).collect::<Vec<_>>(), false)
        })?;
        let mut outs = vec![loss];
        outs.extend(g.into_leaves());
        Ok(outs)
    })
    .unwrap_or_else(|e| panic!("{name}: {e}"));
    let run = |vals: &[Vec<f64>]| -> Vec<Vec<f64>> {
        let bufs: Vec<xlayer::Buffer> = vals
            .iter()
            .zip(inputs)
            .map(|(v, (_, d))| client().buffer_from_host(v, d).unwrap())
            .collect();
        let refs: Vec<&xlayer::Buffer> = bufs.iter().collect();
        exe.execute(&refs)
            .unwrap()
            .iter()
            .map(|o| o.to_vec::<f64>().unwrap())
            .collect()
    };
    let base: Vec<Vec<f64>> = inputs.iter().map(|(v, _)| v.clone()).collect();
    let got = run(&base);
    let eps = 1e-6;
    for k in 0..inputs.len() {
        for i in 0..base[k].len() {
            let mut plus = base.clone();
            plus[k][i] += eps;
            let mut minus = base.clone();
            minus[k][i] -= eps;
            let fd = (run(&plus)[0][0] - run(&minus)[0][0]) / (2.0 * eps);
            let g = got[1 + k][i];
            assert!(
                (g - fd).abs() <= 1e-6 * (1.0 + fd.abs()),
                "{name}: input {k}[{i}]: grad {g}, finite difference {fd}"
            );
        }
    }
}

#[test]
fn finite_differences_for_rules_jax_cannot_check() {
    // clamp with scalar bounds (JAX's clamp JVP rejects them)
    fd_check(
        "clamp_scalar_bounds",
        &[
            (data(10, 1), vec![10]),
            (vec![-0.3], vec![]),
            (vec![0.4], vec![]),
        ],
        |_, x| x[0].clamp(&x[1], &x[2]),
    );
    // max pooling with base and window dilation (JAX's max-pool JVP has no base dilation)
    fd_check("max_pool_dilated", &[(data(30, 2), vec![5, 6])], |b, x| {
        let w = WindowAttrs {
            dims: vec![2, 2],
            strides: vec![2, 1],
            base_dilation: vec![2, 1],
            window_dilation: vec![1, 2],
            padding: vec![(1, 0), (0, 1)],
        };
        let init = b.scalar(f64::NEG_INFINITY)?;
        Ok(b.reduce_window(&[x[0].clone()], &[init], &w, |a| {
            Ok(vec![a[0].maximum(&a[1])?])
        })?[0]
            .clone())
    });
    // sum pooling with base and window dilation
    fd_check("sum_pool_dilated", &[(data(24, 3), vec![4, 6])], |b, x| {
        let w = WindowAttrs {
            dims: vec![2, 3],
            strides: vec![1, 2],
            base_dilation: vec![2, 1],
            window_dilation: vec![1, 2],
            padding: vec![(0, 1), (2, -1)],
        };
        let init = b.scalar(0f64)?;
        Ok(
            b.reduce_window(&[x[0].clone()], &[init], &w, |a| Ok(vec![a[0].add(&a[1])?]))?[0]
                .clone(),
        )
    });
    // switch with three branches using outer values
    fd_check(
        "switch",
        &[(data(4, 4), vec![4]), (data(4, 5), vec![4])],
        |b, x| {
            let k = b.scalar(2i32)?;
            let (a, c) = (x[0].clone(), x[1].clone());
            Ok(b.switch(
                &k,
                vec![
                    Box::new(|| Ok(vec![a.exp()?])),
                    Box::new(|| Ok(vec![a.sin()?])),
                    Box::new(|| Ok(vec![a.mul(&c)?.tanh()?])),
                ],
            )?[0]
                .clone())
        },
    );
    // gather/scatter with 2-component index vectors
    fd_check("gather_2d_indices", &[(data(12, 6), vec![3, 4])], |b, x| {
        let idx = b.constant(&[0i32, 1, 2, 3, 1, 0, 0, 1], &[4, 2])?;
        let d = GatherDims {
            offset_dims: vec![],
            collapsed_slice_dims: vec![0, 1],
            start_index_map: vec![0, 1],
            index_vector_dim: 1,
        };
        x[0].gather(&idx, &d, &[1, 1])
    });
    fd_check(
        "scatter_add_2d_indices",
        &[(data(12, 7), vec![3, 4]), (data(4, 8), vec![4])],
        |b, x| {
            let idx = b.constant(&[0i32, 1, 2, 3, 0, 1, 2, 0], &[4, 2])?;
            let d = ScatterDims {
                update_window_dims: vec![],
                inserted_window_dims: vec![0, 1],
                scatter_dims_to_operand_dims: vec![0, 1],
                index_vector_dim: 1,
            };
            x[0].square()?.scatter(&idx, &x[1], &d, ScatterMode::Add)
        },
    );
    // a while loop with a nested max reduction and a captured value
    fd_check(
        "fori_nested_reduce",
        &[(data(6, 9), vec![2, 3]), (data(3, 10), vec![3])],
        |b, x| {
            let w = x[1].clone();
            Ok(b.fori_loop(0, 3, &x[..1], |_, c| {
                let m = c[0].max(&[1], true)?;
                Ok(vec![c[0].sub(&m)?.mul(&w)?.sin()?])
            })?[0]
                .clone())
        },
    );
    // conv with batch_group_count (JAX's rule supports it; fixture has none)
    fd_check(
        "conv_batch_groups",
        &[
            (data(2 * 5 * 2, 11), vec![2, 5, 2]),
            (data(3 * 2 * 2, 12), vec![3, 2, 2]),
        ],
        |_, x| {
            let mut a = conv_attrs(ConvDims::nhwc(1), &[1], &[(1, 1)], &[1], &[1], 1);
            a.batch_group_count = 2;
            x[0].conv_general(&x[1], &a)
        },
    );
}

// ------------------------------------------------------------------ API and errors

#[test]
fn value_and_grad_over_a_param_tree_with_aux() -> Result<()> {
    let exe = jit(
        client(),
        &[
            ArraySpec::of::<f32>([2, 3]),
            ArraySpec::of::<f32>([3]),
            ArraySpec::of::<f32>([4, 2]),
        ],
        |b, a| {
            let params = Tree::map([
                ("w", Tree::leaf(a[0].clone())),
                ("b", Tree::leaf(a[1].clone())),
            ]);
            let x = a[2].clone();
            let (loss, aux, g) = value_and_grad_with_aux(b, &params, |_, p| {
                let y = x.matmul(p.get("w")?)?.add(p.get("b")?)?;
                Ok((y.square()?.sum(&[0, 1], false)?, Tree::leaf(y)))
            })?;
            Ok(vec![
                loss,
                aux.into_leaves().remove(0),
                g.get("w")?.clone(),
                g.get("b")?.clone(),
            ])
        },
    )?;
    let w = [0.5f32, -1.0, 2.0, 1.5, 0.0, -0.5];
    let bias = [0.1f32, 0.2, -0.3];
    let x = [1f32, 2.0, -1.0, 0.5, 0.0, 1.0, 3.0, -2.0];
    let c = client();
    let outs = exe.execute(&[
        &c.buffer_from_host(&w, &[2, 3])?,
        &c.buffer_from_host(&bias, &[3])?,
        &c.buffer_from_host(&x, &[4, 2])?,
    ])?;
    let y = outs[1].to_vec::<f32>()?;
    // d/dw sum(y^2) = x^T 2y, d/db = sum_rows 2y
    let mut gw = [0f32; 6];
    let mut gb = [0f32; 3];
    for r in 0..4 {
        for j in 0..3 {
            gb[j] += 2.0 * y[r * 3 + j];
            for i in 0..2 {
                gw[i * 3 + j] += x[r * 2 + i] * 2.0 * y[r * 3 + j];
            }
        }
    }
    let loss: f32 = y.iter().map(|v| v * v).sum();
    assert!((outs[0].to_vec::<f32>()?[0] - loss).abs() < 1e-4);
    for (g, e) in outs[2].to_vec::<f32>()?.iter().zip(gw) {
        assert!((g - e).abs() < 1e-4, "{g} vs {e}");
    }
    for (g, e) in outs[3].to_vec::<f32>()?.iter().zip(gb) {
        assert!((g - e).abs() < 1e-4, "{g} vs {e}");
    }
    Ok(())
}

#[test]
fn unrelated_wrt_gets_zeros() -> Result<()> {
    let exe = jit(
        client(),
        &[ArraySpec::of::<f32>([3]), ArraySpec::of::<f32>([2])],
        |b, a| {
            let y = a[0].exp()?;
            vjp(
                b,
                &[y],
                &[a[0].clone(), a[1].clone()],
                &[b.ones(DType::F32, &[3])?],
            )
        },
    )?;
    let c = client();
    let outs = exe.execute(&[
        &c.buffer_from_host(&[0f32, 1.0, 2.0], &[3])?,
        &c.buffer_from_host(&[5f32, 6.0], &[2])?,
    ])?;
    assert_eq!(outs[1].to_vec::<f32>()?, vec![0.0, 0.0]);
    assert!((outs[0].to_vec::<f32>()?[1] - std::f32::consts::E).abs() < 1e-6);
    Ok(())
}

/// `r` must be `Error::Op` for `op` whose message contains every one of `words`.
fn fails<T: std::fmt::Debug>(r: Result<T>, op: &str, words: &[&str]) {
    match r {
        Err(Error::Op { op: got, message }) => {
            assert_eq!(got, op, "op name in {message:?}");
            for w in words {
                assert!(message.contains(w), "{message:?} does not name {w:?}");
            }
        }
        other => panic!("{op}: expected Error::Op, got {other:?}"),
    }
}

#[test]
fn errors_name_the_op_and_the_shape() -> Result<()> {
    let b = Builder::new();
    let x = b.parameter(ArraySpec::of::<f32>([4]), "params/x")?;
    let i = b.parameter(ArraySpec::of::<i32>([4]), "params/i")?;
    let px = Tree::leaf(x.clone());

    // An op without a rule: bit reinterpretation.
    fails(
        grad(&b, &px, |_, p| {
            let h = p.leaves()[0]
                .bitcast_convert(DType::F16)?
                .convert(DType::F32)?;
            h.sum(&[0, 1], false)
        }),
        "bitcast_convert",
        &["no differentiation rule"],
    );
    // Scatter in multiply mode.
    fails(
        grad(&b, &px, |b, p| {
            let idx = b.constant(&[1i32, 2], &[2])?;
            let u = b.ones(DType::F32, &[2])?;
            p.leaves()[0]
                .at_update(&idx, &u, 0, ScatterMode::Mul)?
                .sum(&[0], false)
        }),
        "scatter",
        &["no differentiation rule", "set and add"],
    );
    // A while loop without a static trip count.
    fails(
        grad(&b, &px, |b, p| {
            let out = b.while_loop(
                &[p.leaves()[0].clone()],
                |c| c[0].sum(&[0], false)?.lt(&c[0].scalar_like(10.0)?),
                |c| Ok(vec![(&c[0] * 2.0)?]),
            )?;
            out[0].sum(&[0], false)
        }),
        "while",
        &["static trip count"],
    );
    // A non-scalar loss names its shape.
    fails(
        grad(&b, &px, |_, p| p.leaves()[0].exp()),
        "grad",
        &["f32[4]"],
    );
    // Integer parameters have no gradient.
    fails(
        grad(&b, &Tree::leaf(i.clone()), |_, p| {
            p.leaves()[0].convert(DType::F32)?.sum(&[0], false)
        }),
        "grad",
        &["params/i", "i32"],
    );
    fails(
        vjp(
            &b,
            &[x.exp()?],
            std::slice::from_ref(&i),
            &[b.ones(DType::F32, &[4])?],
        ),
        "vjp",
        &["params/i"],
    );
    // A cotangent of the wrong type.
    fails(
        vjp(
            &b,
            &[x.exp()?],
            std::slice::from_ref(&x),
            &[b.ones(DType::F32, &[3])?],
        ),
        "vjp",
        &["f32[3]", "f32[4]"],
    );
    Ok(())
}

/// relu's forward is the one `max(x, 0)` JAX emits (the surrogate of its
/// custom gradient is dead code the compiler drops, so a conv + relu + pool
/// chain stays fusable), and its gradient is JAX's: 0 at x == 0, where
/// `max`'s own rule would give 0.5.
#[test]
fn relu_forward_is_one_max_and_its_gradient_is_zero_at_zero() -> Result<()> {
    let spec = ArraySpec::of::<f32>([5]);
    let c = xlayer::builder::trace("relu", &Tree::leaf(spec.clone()), |b, t| {
        let x = t.into_leaf()?;
        let y = nn::relu(&x)?;
        let g = grad(b, &Tree::leaf(x), |_, p| {
            nn::relu(p.leaves()[0])?.sum(&[0], false)
        })?;
        Ok(Tree::List(vec![Tree::leaf(y), g]))
    })?;
    let fwd = xlayer::builder::trace("relu_fwd", &Tree::leaf(spec), |_, t| {
        Ok(Tree::leaf(nn::relu(&t.into_leaf()?)?))
    })?;
    let (_, hlo) =
        client().compile_with_hlo_text(&fwd.program()?, &xlayer::CompileOptions::new())?;
    assert!(
        hlo.contains("maximum(") && !hlo.contains("select("),
        "{hlo}"
    );
    let exe = c.compile(client())?;
    let x = client().buffer_from_host(&[-1f32, 0.0, 2.0, f32::NAN, -0.0], &[5])?;
    let outs = exe.execute(&[&x])?;
    let y = outs[0].to_vec::<f32>()?;
    assert_eq!(&y[..3], &[0.0, 0.0, 2.0]);
    assert!(y[3].is_nan() && y[4] == 0.0, "{y:?}");
    assert_eq!(outs[1].to_vec::<f32>()?, vec![0.0, 0.0, 1.0, 0.0, 0.0]);
    Ok(())
}

/// A convolution of few products per output (3x3 over one feature) runs as
/// shifted products (no `convolution` in the optimized forward), a tiled
/// 2x2 sum pool as a sum of strided slices (no `reduce-window`), and both keep
/// their gradients: the values and the kernel's and input's cotangents
/// match the unlowered convolution's (a 2-feature input of the same
/// layer is lowered too, a 4-feature one is not: 36 products).
#[test]
fn small_convolutions_and_tiled_pools_are_lowered_with_their_gradients() -> Result<()> {
    let attrs = ConvAttrs::new(ConvDims::nhwc(2)).padding(&[(1, 1), (1, 1)]);
    let fwd = |x: &Value, k: &Value| -> Result<Value> {
        nn::relu(&x.conv_general(k, &attrs)?)?.avg_pool(&Pool::new(&[1, 2, 2, 1]))
    };
    let x1 = ArraySpec::of::<f32>([2, 6, 6, 1]);
    let k1 = ArraySpec::of::<f32>([3, 3, 1, 4]);
    let c = xlayer::builder::trace(
        "small_conv_fwd",
        &Tree::List(vec![Tree::leaf(x1.clone()), Tree::leaf(k1.clone())]),
        |_, t| {
            let l = t.leaves();
            Ok(Tree::leaf(fwd(l[0], l[1])?))
        },
    )?;
    let (_, hlo) = client().compile_with_hlo_text(&c.program()?, &xlayer::CompileOptions::new())?;
    assert!(
        !hlo.contains("convolution(") && !hlo.contains("reduce-window("),
        "{hlo}"
    );
    // Lowered (1 and 2 features) and not (4 features, 36 products): the
    // forward and the gradient of sum(fwd * w) against a direct evaluation.
    for c_in in [1usize, 2, 4] {
        let xs = ArraySpec::of::<f32>([2, 6, 6, c_in]);
        let ks = ArraySpec::of::<f32>([3, 3, c_in, 4]);
        let exe = jit(client(), &[xs.clone(), ks.clone()], |b, a| {
            let y = fwd(&a[0], &a[1])?;
            let g = grad(
                b,
                &Tree::List(vec![Tree::leaf(a[0].clone()), Tree::leaf(a[1].clone())]),
                |_, p| {
                    let l = p.leaves();
                    let w = b.iota(DType::F32, &[2, 3, 3, 4], 3)?;
                    (fwd(l[0], l[1])? * w)?.sum(&[0, 1, 2, 3], false)
                },
            )?;
            let mut outs = vec![y];
            outs.extend(g.leaves().into_iter().cloned());
            Ok(outs)
        })?;
        let xv: Vec<f32> = (0..xs.element_count())
            .map(|i| ((i * 37) % 23) as f32 / 11.0 - 1.0)
            .collect();
        let kv: Vec<f32> = (0..ks.element_count())
            .map(|i| ((i * 13) % 17) as f32 / 8.0 - 1.0)
            .collect();
        let out = exe.execute(&[
            &client().buffer_from_host(&xv, &xs.dims)?,
            &client().buffer_from_host(&kv, &ks.dims)?,
        ])?;
        let (want_y, want_gx, want_gk) = direct_conv_pool(&xv, &kv, c_in);
        let close = |got: Vec<f32>, want: &[f32], what: &str| {
            assert_eq!(got.len(), want.len());
            for (i, (g, w)) in got.iter().zip(want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                    "c_in {c_in} {what}[{i}]: {g} vs {w}"
                );
            }
        };
        close(out[0].to_vec::<f32>()?, &want_y, "y");
        close(out[1].to_vec::<f32>()?, &want_gx, "dx");
        close(out[2].to_vec::<f32>()?, &want_gk, "dk");
    }
    Ok(())
}

/// `avg_pool2x2(relu(conv3x3 SAME(x, k)))` on f32[2,6,6,c] with 4 output
/// features, evaluated in f64 loops, and the gradients of
/// `sum(y * w)` (`w` = the output feature index) for x and k.
fn direct_conv_pool(x: &[f32], k: &[f32], c: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (n, h, o) = (2usize, 6usize, 4usize);
    let xi = |b: usize, i: usize, j: usize, f: usize| ((b * h + i) * h + j) * c + f;
    let ki = |i: usize, j: usize, f: usize, q: usize| ((i * 3 + j) * c + f) * o + q;
    let mut pre = vec![0f64; n * h * h * o];
    for b in 0..n {
        for i in 0..h {
            for j in 0..h {
                for q in 0..o {
                    let mut s = 0f64;
                    for di in 0..3 {
                        for dj in 0..3 {
                            let (ii, jj) = (i + di, j + dj);
                            if ii < 1 || jj < 1 || ii > h || jj > h {
                                continue;
                            }
                            for f in 0..c {
                                s +=
                                    x[xi(b, ii - 1, jj - 1, f)] as f64 * k[ki(di, dj, f, q)] as f64;
                            }
                        }
                    }
                    pre[((b * h + i) * h + j) * o + q] = s;
                }
            }
        }
    }
    let mut y = vec![0f32; n * 3 * 3 * o];
    // d sum(y * w) / d pre = w[q] / 4 where pre > 0
    let mut dpre = vec![0f64; pre.len()];
    for b in 0..n {
        for i in 0..h {
            for j in 0..h {
                for q in 0..o {
                    let p = pre[((b * h + i) * h + j) * o + q];
                    y[((b * 3 + i / 2) * 3 + j / 2) * o + q] += (p.max(0.0) / 4.0) as f32;
                    if p > 0.0 {
                        dpre[((b * h + i) * h + j) * o + q] = q as f64 / 4.0;
                    }
                }
            }
        }
    }
    let mut gx = vec![0f64; x.len()];
    let mut gk = vec![0f64; k.len()];
    for b in 0..n {
        for i in 0..h {
            for j in 0..h {
                for q in 0..o {
                    let d = dpre[((b * h + i) * h + j) * o + q];
                    for di in 0..3 {
                        for dj in 0..3 {
                            let (ii, jj) = (i + di, j + dj);
                            if ii < 1 || jj < 1 || ii > h || jj > h {
                                continue;
                            }
                            for f in 0..c {
                                gx[xi(b, ii - 1, jj - 1, f)] += d * k[ki(di, dj, f, q)] as f64;
                                gk[ki(di, dj, f, q)] += d * x[xi(b, ii - 1, jj - 1, f)] as f64;
                            }
                        }
                    }
                }
            }
        }
    }
    let f = |v: Vec<f64>| v.into_iter().map(|a| a as f32).collect();
    (y, f(gx), f(gk))
}
