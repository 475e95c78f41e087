//! Flax parity and Keras FlaxLayer cases (issue #5). Reference data from
//! flax.linen (tests/fixtures/gen_flax.py): init parity (same seed, same
//! variable tree: names, shapes, dtypes, values) and apply parity (same
//! variables, same outputs) for every module and option, the seeds' CNN, the
//! Keras BatchNorm module and a pre-LayerNorm transformer block.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use anyhow::Result;
use xlayer::builder::{nn, Padding, Tree, Value};
use xlayer::flax::{
    self, avg_pool, make_causal_mask, max_pool, min_pool, ApplyOptions, BatchNorm, Conv,
    ConvPadding, ConvTranspose, Dense, DenseGeneral, Dropout, Embed, FlaxLayer, FnModule,
    GroupNorm, InitOptions, LayerNorm, Method, Module, MultiHeadDotProductAttention, Mutable,
    RMSNorm, Rngs, Scope,
};
use xlayer::layers::{Apply, DTypePolicy, Input, Layer, Model, Sequential, Training};
use xlayer::weights::SafetensorsFile;
use xlayer::{bf16, f16, Buffer, Client, DType};

fn client() -> Client {
    Client::default_client().expect("default client")
}

fn fixture() -> &'static SafetensorsFile {
    static F: OnceLock<SafetensorsFile> = OnceLock::new();
    F.get_or_init(|| {
        SafetensorsFile::open(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/flax.safetensors"
        ))
        .expect("fixture")
    })
}

fn to_f64(bytes: &[u8], dtype: DType) -> Vec<f64> {
    match dtype {
        DType::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect(),
        DType::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        DType::F16 => bytes
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        DType::BF16 => bytes
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        DType::I32 => bytes
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect(),
        d => panic!("unexpected dtype {d}"),
    }
}

fn fx(name: &str) -> Vec<f64> {
    let f = fixture();
    let spec = f
        .spec(name)
        .unwrap_or_else(|| panic!("fixture has no {name}"));
    to_f64(f.bytes(name).unwrap(), spec.dtype)
}

fn buf_f64(b: &Buffer) -> Vec<f64> {
    to_f64(&b.to_bytes().unwrap(), b.dtype())
}

fn upload(name: &str) -> Result<Buffer> {
    let f = fixture();
    let spec = f
        .spec(name)
        .unwrap_or_else(|| panic!("fixture has no {name}"))
        .clone();
    let c = client();
    Ok(c.buffer_from_bytes(f.bytes(name).unwrap(), &spec, c.default_device())?)
}

/// The inputs `case.x0, case.x1, ...` (one leaf, or a tuple).
fn inputs(case: &str) -> Result<Tree<Buffer>> {
    // The training call of the BatchNorm module shares its inputs.
    let case = if case == "bnmod_train" { "bnmod" } else { case };
    let mut v = vec![];
    while fixture().spec(&format!("{case}.x{}", v.len())).is_some() {
        v.push(upload(&format!("{case}.x{}", v.len()))?);
    }
    Ok(if v.len() == 1 {
        Tree::Leaf(v.remove(0))
    } else {
        Tree::Tuple(v.into_iter().map(Tree::Leaf).collect())
    })
}

/// Keys `prefix.<a>.<b>...` of the fixture as a tree of buffers (paths `a/b/...`).
fn fixture_tree(prefix: &str) -> Result<Tree<Buffer>> {
    let mut flat: BTreeMap<Vec<String>, Buffer> = BTreeMap::new();
    for name in fixture().names() {
        if let Some(rest) = name.strip_prefix(&format!("{prefix}.")) {
            flat.insert(rest.split('.').map(str::to_string).collect(), upload(name)?);
        }
    }
    // Leaves and subtrees can mix at one level: build level by level.
    fn nest(items: Vec<(Vec<String>, Buffer)>) -> Tree<Buffer> {
        let mut m: BTreeMap<String, Tree<Buffer>> = BTreeMap::new();
        let mut groups: BTreeMap<String, Vec<(Vec<String>, Buffer)>> = BTreeMap::new();
        for (mut p, b) in items {
            let head = p.remove(0);
            if p.is_empty() {
                m.insert(head, Tree::Leaf(b));
            } else {
                groups.entry(head).or_default().push((p, b));
            }
        }
        for (k, v) in groups {
            m.insert(k, nest(v));
        }
        Tree::Map(m)
    }
    assert!(!flat.is_empty(), "fixture has no {prefix}.*");
    Ok(nest(flat.into_iter().collect()))
}

fn refs(t: &Tree<Buffer>) -> Tree<&Buffer> {
    t.structure().unflatten(t.leaves()).expect("same structure")
}

fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = 0f64;
    for (g, w) in got.iter().zip(want) {
        let e = (g - w).abs() / w.abs().max(1.0);
        assert!(e.is_finite(), "{what}: {g} vs {w}");
        worst = worst.max(e);
    }
    assert!(worst <= tol, "{what}: worst error {worst:e} > {tol:e}");
}

/// Init parity: Flax's `module.init(PRNGKey(seed), ...)` variables
/// (`case.init.*`) against ours: same paths, specs, values to `tol`.
fn check_init(
    case: &str,
    module: &dyn Module,
    method: &Method,
    rngs: &Rngs,
    training: Option<bool>,
) -> Result<()> {
    let x = inputs(case)?;
    let vars = flax::init(
        module,
        rngs,
        &refs(&x),
        &InitOptions {
            method: method.clone(),
            training: training.map(Training::from),
        },
    )?;
    let want = fixture_tree(&format!("{case}.init"))?;
    assert_eq!(vars.paths(), want.paths(), "{case}: variable names");
    for ((p, g), w) in vars.entries().into_iter().zip(want.leaves()) {
        assert_eq!(g.spec(), w.spec(), "{case}: {p}");
        assert_close(&buf_f64(g), &buf_f64(w), 2e-6, &format!("{case} init {p}"));
    }
    Ok(())
}

/// Init parity for big models: per-leaf [sum, sum |.|, first four values].
fn check_init_stats(
    case: &str,
    module: &dyn Module,
    method: &Method,
    seed: u64,
) -> Result<Tree<Buffer>> {
    let x = inputs(case)?;
    let vars = flax::init(
        module,
        &Rngs::seed(seed),
        &refs(&x),
        &InitOptions::new()
            .method(method.clone())
            .training(Training::No),
    )
    .or_else(|_| {
        flax::init(
            module,
            &Rngs::seed(seed),
            &refs(&x),
            &InitOptions::new().method(method.clone()),
        )
    })?;
    let names: Vec<String> = fixture()
        .names()
        .into_iter()
        .filter_map(|n| {
            n.strip_prefix(&format!("{case}.stats."))
                .map(|s| s.replace('.', "/"))
        })
        .collect();
    let mut got_paths = vars.paths();
    got_paths.sort();
    let mut names_sorted = names.clone();
    names_sorted.sort();
    assert_eq!(got_paths, names_sorted, "{case}: variable names");
    for (p, b) in vars.entries() {
        let v = buf_f64(b);
        let st = fx(&format!("{case}.stats.{}", p.replace('/', ".")));
        let sum: f64 = v.iter().sum();
        let abs: f64 = v.iter().map(|x| x.abs()).sum();
        assert!(
            (sum - st[0]).abs() <= 1e-4 * st[1].max(1.0),
            "{case} {p}: sum {sum} vs {}",
            st[0]
        );
        assert!(
            (abs - st[1]).abs() <= 1e-5 * st[1].max(1.0),
            "{case} {p}: |sum| {abs} vs {}",
            st[1]
        );
        assert_close(
            &v[..4.min(v.len())],
            &st[2..2 + 4.min(v.len())],
            2e-6,
            &format!("{case} {p} head"),
        );
    }
    Ok(vars)
}

/// Apply parity: `case.vars.*` through our module against `case.y` (and
/// `case.mut.*` when mutable).
#[allow(clippy::too_many_arguments)]
fn check_apply(
    case: &str,
    module: &dyn Module,
    method: &Method,
    vars: &Tree<Buffer>,
    rngs: &Rngs,
    mutable: Mutable,
    training: Option<bool>,
    tol: f64,
) -> Result<(Tree<Buffer>, Tree<Buffer>)> {
    let x = inputs(case)?;
    let check_mut = mutable != Mutable::Nothing;
    let (y, m) = flax::apply(
        module,
        &refs(vars),
        &refs(&x),
        &ApplyOptions {
            method: method.clone(),
            rngs: rngs.clone(),
            mutable,
            training: training.map(Training::from),
        },
    )?;
    let yb = match &y {
        Tree::Leaf(b) => b,
        other => panic!("{case}: output paths {:?}", other.paths()),
    };
    assert_eq!(
        yb.dims(),
        fixture().spec(&format!("{case}.y")).unwrap().dims,
        "{case}: shape"
    );
    assert_close(
        &buf_f64(yb),
        &fx(&format!("{case}.y")),
        tol,
        &format!("{case} apply"),
    );
    if check_mut {
        let want = fixture_tree(&format!("{case}.mut"))?;
        assert_eq!(m.paths(), want.paths(), "{case}: mutated names");
        for ((p, g), w) in m.entries().into_iter().zip(want.leaves()) {
            assert_close(
                &buf_f64(g),
                &buf_f64(w),
                tol,
                &format!("{case} mutated {p}"),
            );
        }
    }
    Ok((y, m))
}

/// Init then apply parity for a small case.
fn parity(case: &str, module: &dyn Module, seed: u64, tol: f64) -> Result<()> {
    check_init(case, module, &Method::Call, &Rngs::seed(seed), None)?;
    let vars = fixture_tree(&format!("{case}.vars"))?;
    check_apply(
        case,
        module,
        &Method::Call,
        &vars,
        &Rngs::new(),
        Mutable::Nothing,
        None,
        tol,
    )?;
    Ok(())
}

// ---- Linear ----

#[test]
fn dense_and_dense_general_match_flax() -> Result<()> {
    parity("dense", &Dense::new(5), 0, 1e-6)?;
    parity(
        "dense_nobias",
        &Dense {
            use_bias: false,
            ..Dense::new(5)
        },
        1,
        1e-6,
    )?;
    parity(
        "dense_bf16",
        &Dense {
            param_dtype: DType::BF16,
            ..Dense::new(5)
        },
        2,
        1e-6,
    )?;
    parity(
        "dense_general",
        &DenseGeneral {
            axis: vec![-2, -1],
            ..DenseGeneral::new(&[2, 3])
        },
        3,
        1e-6,
    )?;
    parity(
        "dense_general_batch",
        &DenseGeneral {
            batch_dims: vec![0],
            ..DenseGeneral::new(&[4])
        },
        4,
        1e-6,
    )?;
    Ok(())
}

#[test]
fn embed_lookup_and_attend_match_flax() -> Result<()> {
    parity("embed", &Embed::new(10, 4), 5, 0.0)?;
    let attend = Method::named("attend");
    check_init(
        "embed_attend",
        &Embed::new(10, 4),
        &attend,
        &Rngs::seed(6),
        None,
    )?;
    let vars = fixture_tree("embed_attend.vars")?;
    check_apply(
        "embed_attend",
        &Embed::new(10, 4),
        &attend,
        &vars,
        &Rngs::new(),
        Mutable::Nothing,
        None,
        1e-6,
    )?;
    Ok(())
}

// ---- Convolutions ----

#[test]
fn conv_options_match_flax() -> Result<()> {
    parity("conv_same", &Conv::new(4, &[3, 3]), 10, 1e-5)?;
    parity(
        "conv_valid_strides",
        &Conv {
            strides: vec![2],
            padding: ConvPadding::Valid,
            ..Conv::new(4, &[3, 3])
        },
        11,
        1e-5,
    )?;
    parity(
        "conv_explicit_dilated",
        &Conv {
            padding: ConvPadding::Explicit(vec![(1, 2), (0, 1)]),
            input_dilation: vec![2],
            kernel_dilation: vec![1, 2],
            ..Conv::new(4, &[3, 3])
        },
        12,
        1e-5,
    )?;
    parity(
        "conv_circular",
        &Conv {
            padding: ConvPadding::Circular,
            ..Conv::new(4, &[3, 3])
        },
        13,
        1e-5,
    )?;
    parity(
        "conv_groups",
        &Conv {
            feature_group_count: 3,
            use_bias: false,
            ..Conv::new(6, &[3, 3])
        },
        14,
        1e-5,
    )?;
    parity(
        "conv1d_causal",
        &Conv {
            padding: ConvPadding::Causal,
            kernel_dilation: vec![2],
            ..Conv::new(4, &[3])
        },
        15,
        1e-5,
    )?;
    parity("conv_nobatch", &Conv::new(4, &[3, 3]), 16, 1e-5)?;
    Ok(())
}

#[test]
fn conv_transpose_options_match_flax() -> Result<()> {
    parity(
        "convt_same",
        &ConvTranspose {
            strides: vec![2, 2],
            ..ConvTranspose::new(4, &[3, 3])
        },
        17,
        1e-5,
    )?;
    parity(
        "convt_valid",
        &ConvTranspose {
            strides: vec![2, 1],
            padding: ConvPadding::Valid,
            ..ConvTranspose::new(4, &[3, 3])
        },
        18,
        1e-5,
    )?;
    parity(
        "convt_circular",
        &ConvTranspose {
            strides: vec![2, 2],
            padding: ConvPadding::Circular,
            ..ConvTranspose::new(4, &[3, 3])
        },
        19,
        1e-5,
    )?;
    parity(
        "convt_transpose_kernel",
        &ConvTranspose {
            strides: vec![2, 2],
            transpose_kernel: true,
            ..ConvTranspose::new(4, &[2, 2])
        },
        20,
        1e-5,
    )?;
    Ok(())
}

// ---- Normalization ----

#[test]
fn batchnorm_statistics_and_running_averages_match_flax() -> Result<()> {
    let train = BatchNorm {
        use_running_average: Some(false),
        momentum: 0.9,
        ..BatchNorm::new()
    };
    check_init(
        "batchnorm_train",
        &train,
        &Method::Call,
        &Rngs::seed(30),
        None,
    )?;
    let vars = fixture_tree("batchnorm_train.vars")?;
    let stats = Mutable::Only(vec!["batch_stats".into()]);
    check_apply(
        "batchnorm_train",
        &train,
        &Method::Call,
        &vars,
        &Rngs::new(),
        stats.clone(),
        None,
        1e-5,
    )?;

    let eval = BatchNorm {
        use_running_average: Some(true),
        ..BatchNorm::new()
    };
    parity("batchnorm_eval", &eval, 31, 1e-5)?;

    let plain = BatchNorm {
        use_running_average: Some(false),
        use_scale: false,
        use_bias: false,
        epsilon: 1e-3,
        ..BatchNorm::new()
    };
    check_init(
        "batchnorm_plain",
        &plain,
        &Method::Call,
        &Rngs::seed(32),
        None,
    )?;
    let vars = fixture_tree("batchnorm_plain.vars")?;
    check_apply(
        "batchnorm_plain",
        &plain,
        &Method::Call,
        &vars,
        &Rngs::new(),
        stats,
        None,
        1e-5,
    )?;
    Ok(())
}

#[test]
fn layer_rms_and_group_norm_match_flax() -> Result<()> {
    parity("layernorm", &LayerNorm::new(), 33, 1e-5)?;
    parity(
        "layernorm_axes",
        &LayerNorm {
            reduction_axes: vec![-2, -1],
            use_bias: false,
            ..LayerNorm::new()
        },
        34,
        1e-5,
    )?;
    parity("rmsnorm", &RMSNorm::new(), 35, 1e-5)?;
    parity("groupnorm", &GroupNorm::new(2), 36, 1e-5)?;
    parity(
        "groupnorm_size",
        &GroupNorm {
            num_groups: None,
            group_size: Some(3),
            epsilon: 1e-5,
            ..GroupNorm::new(0)
        },
        37,
        1e-5,
    )?;
    Ok(())
}

// ---- Dropout ----

#[test]
fn dropout_masks_are_flax_bit_for_bit() -> Result<()> {
    for (case, module, seed, key) in [
        ("dropout", Dropout::new(0.5), 40, 3u64),
        (
            "dropout_bcast",
            Dropout {
                broadcast_dims: vec![0],
                ..Dropout::new(0.25)
            },
            41,
            4,
        ),
    ] {
        let vars = Tree::Map(BTreeMap::new());
        let x = inputs(case)?;
        let init = flax::init(
            &module,
            &Rngs::seed(seed),
            &refs(&x),
            &InitOptions::new().training(Training::No),
        )?;
        assert!(init.is_empty(), "dropout has no variables");
        check_apply(
            case,
            &module,
            &Method::Call,
            &vars,
            &Rngs::new().with_seed("dropout", key),
            Mutable::Nothing,
            Some(true),
            // The masks are exact (a wrong one is off by ~1); kept values
            // may differ by an ulp in `x / keep_prob`.
            1e-6,
        )?;
    }
    Ok(())
}

// ---- Attention ----

fn cross() -> FnModule {
    FnModule::new("Cross").call(|s, x, _| {
        let l: Vec<Value> = x.leaves().into_iter().cloned().collect();
        let mha = MultiHeadDotProductAttention {
            qkv_features: Some(8),
            ..MultiHeadDotProductAttention::new(2)
        };
        Ok(Tree::leaf(mha.apply(
            s,
            &l[0],
            Some(&l[1]),
            Some(&l[2]),
            Some(&l[3]),
            None,
        )?))
    })
}

fn self_attn_causal() -> FnModule {
    FnModule::new("SelfAttnCausal").call(|s, x, _| {
        let x = x.clone().into_leaf()?;
        let ones = x.builder().ones(DType::F32, &x.dims()[..2])?;
        let m = make_causal_mask(&ones, DType::F32)?;
        let mha = MultiHeadDotProductAttention {
            out_features: Some(3),
            ..MultiHeadDotProductAttention::new(2)
        };
        Ok(Tree::leaf(mha.apply(s, &x, None, None, Some(&m), None)?))
    })
}

fn attn_dropout() -> FnModule {
    FnModule::new("AttnDropout").call(|s, x, _| {
        let x = x.clone().into_leaf()?;
        let mha = MultiHeadDotProductAttention {
            dropout_rate: 0.5,
            ..MultiHeadDotProductAttention::new(2)
        };
        Ok(Tree::leaf(mha.apply(
            s,
            &x,
            None,
            None,
            None,
            Some(false),
        )?))
    })
}

#[test]
fn multi_head_attention_with_masks_and_dropout_matches_flax() -> Result<()> {
    parity("mha_cross", &cross(), 50, 1e-5)?;
    parity("mha_causal", &self_attn_causal(), 51, 1e-5)?;
    // Init without a dropout stream: Flax falls back to `params` for it.
    check_init(
        "mha_dropout",
        &attn_dropout(),
        &Method::Call,
        &Rngs::seed(52),
        None,
    )?;
    let vars = fixture_tree("mha_dropout.vars")?;
    check_apply(
        "mha_dropout",
        &attn_dropout(),
        &Method::Call,
        &vars,
        &Rngs::new().with_seed("dropout", 7),
        Mutable::Nothing,
        None,
        1e-5,
    )?;
    // Init with both streams (as FlaxLayer does).
    check_init(
        "mha_dropout_init2",
        &attn_dropout(),
        &Method::Call,
        &Rngs::seed(8).with_seed("dropout", 9),
        None,
    )?;
    Ok(())
}

// ---- Sequential, pooling, activations ----

#[test]
fn sequential_pooling_and_activations_match_flax() -> Result<()> {
    let seq = flax::Sequential::new()
        .module(Dense::new(4))
        .func(nn::relu)
        .module(Dense::new(2));
    parity("sequential", &seq, 60, 1e-6)?;

    let pools = FnModule::new("Pools").call(|_s, x, _| {
        let x = x.clone().into_leaf()?;
        let flat = |v: Value| v.flatten();
        let parts = vec![
            flat(avg_pool(&x, &[2, 2], &[2, 2], &Padding::Valid, true)?)?,
            flat(avg_pool(&x, &[3, 3], &[2, 2], &Padding::Same, true)?)?,
            flat(avg_pool(&x, &[3, 3], &[], &Padding::Same, false)?)?,
            flat(max_pool(
                &x,
                &[2, 3],
                &[1, 2],
                &Padding::Explicit(vec![(1, 0), (0, 1)]),
            )?)?,
            flat(min_pool(&x, &[2, 2], &[], &Padding::Same)?)?,
            flat(nn::gelu(&x, true)?)?,
            flat(nn::silu(&x)?)?,
            flat(nn::softmax(&x, 3)?)?,
        ];
        Ok(Tree::leaf(Value::concatenate(&parts, 0)?))
    });
    let x = inputs("pools")?;
    let (y, _) = flax::apply(&pools, &Tree::Empty, &refs(&x), &ApplyOptions::new())?;
    assert_close(&buf_f64(y.leaves()[0]), &fx("pools.y"), 1e-6, "pools");
    Ok(())
}

// ---- The seeds' models ----

fn flatten2(x: &Value) -> xlayer::Result<Value> {
    x.reshape(&[x.dims()[0], x.element_count() / x.dims()[0]])
}

/// The Keras FlaxLayer doc's CNN, as `forward` (Conv32-pool-Conv64-pool-Dense200-Dense10).
fn cnn_forward(s: &Scope, x: &Tree<Value>, dropout: Option<bool>) -> xlayer::Result<Tree<Value>> {
    let x = x.clone().into_leaf()?;
    let x = nn::relu(&Conv::new(32, &[3, 3]).apply(s, &x)?)?;
    let x = avg_pool(&x, &[2, 2], &[2, 2], &Padding::Valid, true)?;
    let x = nn::relu(&Conv::new(64, &[3, 3]).apply(s, &x)?)?;
    let x = avg_pool(&x, &[2, 2], &[2, 2], &Padding::Valid, true)?;
    let x = flatten2(&x)?;
    let mut x = nn::relu(&Dense::new(200).apply(s, &x)?)?;
    if let Some(training) = dropout {
        x = Dropout::new(0.3).apply(s, &x, Some(!training))?;
    }
    let x = Dense::new(10).apply(s, &x)?;
    Ok(Tree::leaf(nn::softmax(&x, 1)?))
}

fn cnn() -> FnModule {
    FnModule::new("CNNForward").method("forward", false, |s, x, _| cnn_forward(s, x, None))
}

/// Keras's BatchNorm (use_scale=False) + dropout module, called without a method.
fn bn_module() -> FnModule {
    FnModule::new("BNModule").call_training(|s, x, training| {
        let ura = Some(!training.unwrap_or(false));
        let bn = || BatchNorm {
            use_scale: false,
            ..BatchNorm::new()
        };
        let x = x.clone().into_leaf()?;
        let x = Conv {
            use_bias: false,
            ..Conv::new(12, &[3, 3])
        }
        .apply(s, &x)?;
        let x = nn::relu(&bn().apply(s, &x, ura)?)?;
        let x = Conv {
            strides: vec![2, 2],
            ..Conv::new(24, &[6, 6])
        }
        .apply(s, &x)?;
        let x = nn::relu(&bn().apply(s, &x, ura)?)?;
        let x = Conv {
            strides: vec![2, 2],
            ..Conv::new(32, &[6, 6])
        }
        .apply(s, &x)?;
        let x = bn().apply(s, &x, ura)?;
        let x = Dense::new(200).apply(s, &flatten2(&x)?)?;
        let x = bn().apply(s, &x, ura)?;
        let x = Dropout::new(0.3).apply(s, &x, Some(!training.unwrap_or(false)))?;
        let x = Dense::new(10).apply(s, &nn::relu(&x)?)?;
        Ok(Tree::leaf(nn::softmax(&x, 1)?))
    })
}

/// A pre-LayerNorm transformer block (inputs `(x, mask)`).
fn block() -> FnModule {
    FnModule::new("Block").call(|s, x, _| {
        let l: Vec<Value> = x.leaves().into_iter().cloned().collect();
        let (x, mask) = (&l[0], &l[1]);
        let d = x.dims()[2];
        let h = LayerNorm::new().apply(s, x)?;
        let h = MultiHeadDotProductAttention::new(4).apply(s, &h, None, None, Some(mask), None)?;
        let x = (x + &h)?;
        let h = LayerNorm::new().apply(s, &x)?;
        let h = nn::gelu(&Dense::new(4 * d).apply(s, &h)?, true)?;
        let h = Dense::new(d).apply(s, &h)?;
        Ok(Tree::leaf((x + h)?))
    })
}

#[test]
fn seeds_cnn_and_transformer_block_match_flax() -> Result<()> {
    let fwd = Method::named("forward");
    let vars = check_init_stats("cnn", &cnn(), &fwd, 70)?;
    check_apply(
        "cnn",
        &cnn(),
        &fwd,
        &vars,
        &Rngs::new(),
        Mutable::Nothing,
        None,
        1e-5,
    )?;
    parity("block", &block(), 72, 1e-5)?;
    Ok(())
}

#[test]
fn keras_batchnorm_module_matches_flax_in_both_modes() -> Result<()> {
    let m = bn_module();
    let vars = check_init_stats("bnmod", &m, &Method::Call, 71)?;
    check_apply(
        "bnmod",
        &m,
        &Method::Call,
        &vars,
        &Rngs::new(),
        Mutable::Nothing,
        Some(false),
        1e-5,
    )?;
    // A training call: batch statistics, dropout from the `dropout` stream,
    // updated batch_stats.
    check_apply(
        "bnmod_train",
        &m,
        &Method::Call,
        &vars,
        &Rngs::new().with_seed("dropout", 5),
        Mutable::Only(vec!["batch_stats".into()]),
        Some(true),
        1e-4,
    )?;
    Ok(())
}

// ---- Keras FlaxLayer cases (layer-semantics.md) ----

fn x28() -> Result<Buffer> {
    upload("cnn.x0")
}

fn host(b: &Buffer) -> Vec<f32> {
    b.to_vec::<f32>().unwrap()
}

#[test]
fn flax_layer_bound_method_cnn() -> Result<()> {
    let c = client();
    // From Flax's variables: Flax's outputs.
    let vars = flax::init(
        &cnn(),
        &Rngs::seed(70),
        &Tree::leaf(&x28()?),
        &InitOptions::new().method(Method::named("forward")),
    )?;
    let layer = FlaxLayer::builder(cnn())
        .method(Method::named("forward"))
        .variables(vars)
        .name("cnn")
        .build()?;
    assert_eq!(layer.trainable_weight_count()?, 8);
    assert_eq!(layer.weights()?.param_count(), 648_226);
    assert_eq!(layer.non_trainable_weight_count()?, 0);
    let y = layer.call1(&x28()?, Training::No)?;
    let want = fx("cnn.y");
    assert_close(
        &host(&y).iter().map(|&v| v as f64).collect::<Vec<_>>(),
        &want,
        1e-5,
        "FlaxLayer cnn",
    );
    assert_eq!(layer.kind(), "FlaxLayer");

    // In a functional model and a Sequential.
    let inp = Input::new(&c, &[28, 28, 1], DType::F32);
    let model = Model::new(inp.clone(), layer.apply(&inp)?)?;
    assert_eq!(model.count_params()?, 648_226);
    assert_eq!(host(&model.call1(&x28()?, Training::No)?), host(&y));
    assert!(model.summary()?.contains("cnn (FlaxLayer)"));
    let seq = Sequential::new().add(layer.clone());
    assert_eq!(host(&seq.call1(&x28()?, Training::No)?), host(&y));

    // Flax checkpoint interchange: `.`-joined keys, load back.
    let dir = std::env::temp_dir().join(format!("xlayer-flax-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("cnn.safetensors");
    layer.save_variables(&path)?;
    let f = SafetensorsFile::open(&path)?;
    assert!(
        f.names().contains(&"params.Conv_0.kernel") && f.names().contains(&"params.Dense_1.bias")
    );
    let loaded = flax::load_variables(&c, &path, None)?;
    let rebuilt = FlaxLayer::builder(cnn())
        .method(Method::named("forward"))
        .variables(loaded)
        .build()?;
    assert_eq!(host(&rebuilt.call1(&x28()?, Training::No)?), host(&y));
    // Model save/load round trip.
    let mpath = dir.join("model.safetensors");
    model.save_weights(&mpath)?;
    let fresh = FlaxLayer::builder(cnn())
        .method(Method::named("forward"))
        .name("cnn")
        .seed(1)
        .build()?;
    let inp2 = Input::new(&c, &[28, 28, 1], DType::F32);
    let model2 = Model::new(inp2.clone(), fresh.apply(&inp2)?)?;
    assert_ne!(host(&model2.call1(&x28()?, Training::No)?), host(&y));
    model2.load_weights(&mpath)?;
    assert_eq!(host(&model2.call1(&x28()?, Training::No)?), host(&y));
    // A Flax checkpoint loads into a built layer; a wrong one is refused whole.
    fresh.load_variables(&path)?;
    assert_eq!(host(&fresh.call1(&x28()?, Training::No)?), host(&y));
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[test]
fn flax_layer_unbound_method_with_dropout_rng() -> Result<()> {
    let module = FnModule::new("CNNDropout").method("forward", true, cnn_forward);
    // Keras's wrapper(module, inputs, training): a free function taking the module first.
    let wrapper = Method::free(
        true,
        |m: &dyn Module, s: &Scope, x: &Tree<Value>, training: Option<bool>| {
            m.call_method(s, "forward", x, training)
        },
    );
    let layer = FlaxLayer::builder(module).method(wrapper).seed(3).build()?;
    let x = x28()?;
    let y0 = host(&layer.call1(&x, Training::No)?);
    assert_eq!(layer.trainable_weight_count()?, 8);
    assert_eq!(layer.weights()?.param_count(), 648_226);
    assert_eq!(
        host(&layer.call1(&x, Training::No)?),
        y0,
        "inference is deterministic"
    );
    let t1 = host(&layer.call1(&x, Training::Yes)?);
    let t2 = host(&layer.call1(&x, Training::Yes)?);
    assert_ne!(t1, y0, "training applies dropout");
    assert_ne!(t1, t2, "each training call gets a fresh dropout rng");
    assert_eq!(y0.len(), 4 * 10);
    Ok(())
}

#[test]
fn flax_layer_batchnorm_dropout_without_method() -> Result<()> {
    let x = x28()?;
    let mut outs = vec![];
    for policy in [DTypePolicy::Float32, DTypePolicy::MixedFloat16] {
        let layer = FlaxLayer::builder(bn_module())
            .seed(11)
            .dtype_policy(policy)
            .build()?;
        let y_before = layer.call1(&x, Training::No)?;
        let w = layer.weights()?;
        assert_eq!(
            (w.params.len(), w.param_count()),
            (13, 354_258),
            "{policy:?}"
        );
        assert_eq!((w.state.len(), w.state_count()), (8, 536), "{policy:?}");
        assert_eq!(w.state.paths()[0], "batch_stats/BatchNorm_0/mean");
        assert!(
            w.state.leaves().iter().all(|b| b.dtype() == DType::F32),
            "state stays f32"
        );
        let stats0: Vec<Vec<u8>> = w
            .state
            .leaves()
            .iter()
            .map(|b| b.to_bytes().unwrap())
            .collect();
        // Inference keeps the state; training updates every batch_stats leaf.
        layer.call1(&x, Training::No)?;
        let same: Vec<Vec<u8>> = layer
            .weights()?
            .state
            .leaves()
            .iter()
            .map(|b| b.to_bytes().unwrap())
            .collect();
        assert_eq!(stats0, same);
        let yt = layer.call1(&x, Training::Yes)?;
        assert_eq!(yt.dims(), &[4, 10]);
        let after: Vec<Vec<u8>> = layer
            .weights()?
            .state
            .leaves()
            .iter()
            .map(|b| b.to_bytes().unwrap())
            .collect();
        for (i, (a, b)) in stats0.iter().zip(&after).enumerate() {
            assert_ne!(
                a, b,
                "{policy:?}: state leaf {i} changed by a training call"
            );
        }
        let y = layer.call1(&x, Training::No)?;
        assert_ne!(buf_f64(&y), buf_f64(&y_before));
        let y64 = buf_f64(&y);
        assert!(y64.iter().all(|v| v.is_finite()));
        outs.push(buf_f64(&y_before));
    }
    // Same seed, same init: mixed_float16 is float32 to half precision.
    assert_close(&outs[1], &outs[0], 2e-2, "mixed_float16 vs float32");
    Ok(())
}

#[test]
fn flax_layer_state_only_variables_count_calls() -> Result<()> {
    let c = client();
    let module = FnModule::new("Counter").call(|s, x, _| {
        let v = s.variable("a", "b", |b| b.scalar(0f32))?;
        v.set((v.value()? + 1.0)?)?;
        Ok(x.clone())
    });
    let vars = Tree::map([("a", Tree::map([("b", Tree::leaf(c.scalar(0f32)?))]))]);
    let layer = FlaxLayer::builder(module).variables(vars).build()?;
    assert_eq!(
        (
            layer.trainable_weight_count()?,
            layer.non_trainable_weight_count()?
        ),
        (0, 1)
    );
    let x = c.buffer_from_host(&[1f32, 2.0], &[1, 2])?;
    for _ in 0..3 {
        layer.call1(&x, Training::Yes)?;
    }
    layer.call1(&x, Training::No)?;
    let count = layer.variables()?.get("a/b")?.to_vec::<f32>()?[0];
    assert_eq!(count, 3.0, "training calls count, inference calls do not");
    Ok(())
}

#[test]
fn same_seed_same_variables_and_fresh_rng_per_layer() -> Result<()> {
    let c = client();
    let x = c.buffer_from_host(&[1f32, 2.0, 3.0], &[1, 3])?;
    let m = || {
        FnModule::new("M")
            .call(|s, x, _| Ok(Tree::leaf(Dense::new(2).apply(s, &x.clone().into_leaf()?)?)))
    };
    let a = FlaxLayer::builder(m()).seed(9).build()?;
    let b = FlaxLayer::builder(m()).seed(9).build()?;
    assert_eq!(
        host(&a.call1(&x, Training::No)?),
        host(&b.call1(&x, Training::No)?)
    );
    Ok(())
}

// ---- Errors ----

#[test]
fn errors_name_the_method_path_stream_and_collection() -> Result<()> {
    let c = client();
    // Unknown method.
    let err = FlaxLayer::builder(cnn())
        .method(Method::named("nope"))
        .build()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nope") && err.contains("forward") && err.contains("CNNForward"),
        "{err}"
    );

    // Param shape mismatch names the path.
    let mlp = FnModule::new("MLP")
        .call(|s, x, _| Ok(Tree::leaf(Dense::new(2).apply(s, &x.clone().into_leaf()?)?)));
    let x = c.buffer_from_host(&[1f32; 4], &[1, 4])?;
    let bad = Tree::map([(
        "params",
        Tree::map([(
            "Dense_0",
            Tree::map([
                (
                    "kernel",
                    Tree::leaf(c.buffer_from_host(&[0f32; 6], &[3, 2])?),
                ),
                ("bias", Tree::leaf(c.buffer_from_host(&[0f32; 2], &[2])?)),
            ]),
        )]),
    )]);
    let err = flax::apply(&mlp, &refs(&bad), &Tree::leaf(&x), &ApplyOptions::new())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("/Dense_0") && err.contains("kernel") && err.contains("[4, 2]"),
        "{err}"
    );
    // A FlaxLayer given such variables fails at its first call, also naming it.
    let layer = FlaxLayer::builder(mlp.clone()).variables(bad).build()?;
    let err = layer.call1(&x, Training::No).unwrap_err().to_string();
    assert!(err.contains("/Dense_0"), "{err}");

    // Missing rng stream.
    let drop = Dropout::new(0.5);
    let err = flax::apply(
        &drop,
        &Tree::Empty,
        &Tree::leaf(&x),
        &ApplyOptions::new().training(Training::Yes),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("needs PRNG for \"dropout\""), "{err}");

    // A collection that is not mutable.
    let bn = BatchNorm {
        use_running_average: Some(false),
        ..BatchNorm::new()
    };
    let xs = c.buffer_from_host(&[1f32, 2.0, 3.0, 5.0], &[2, 2])?;
    let vars = flax::init(&bn, &Rngs::seed(0), &Tree::leaf(&xs), &InitOptions::new())?;
    assert_eq!(
        vars.paths(),
        vec![
            "batch_stats/mean",
            "batch_stats/var",
            "params/bias",
            "params/scale"
        ]
    );
    let err = flax::apply(&bn, &refs(&vars), &Tree::leaf(&xs), &ApplyOptions::new())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("batch_stats") && err.contains("immutable"),
        "{err}"
    );
    // With `batch_stats` mutable it works and returns only that collection.
    let (_, m) = flax::apply(
        &bn,
        &refs(&vars),
        &Tree::leaf(&xs),
        &ApplyOptions::new().mutable(Mutable::Only(vec!["batch_stats".into()])),
    )?;
    assert_eq!(m.paths(), vec!["batch_stats/mean", "batch_stats/var"]);
    // Missing params outside init.
    let err = flax::apply(&mlp, &Tree::Empty, &Tree::leaf(&x), &ApplyOptions::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains("params") && err.contains("/Dense_0"), "{err}");
    Ok(())
}
