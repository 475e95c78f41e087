//! Keras's JaxLayer test cases (../shared/docs/layer-semantics.md), ported:
//! outputs are checked against JAX running the same functions on the same
//! weights (tests/fixtures/gen_layers.py), except the gradient steps.

use std::sync::OnceLock;

use anyhow::Result;
use xlayer::builder::{nn, Tree, Value};
use xlayer::layers::{
    Apply, DTypePolicy, HostArray, Init, InitState, Input, Inputs, JaxLayer, Layer, Model, Out,
    OutState, Params, Rng, Sequential, State, Training,
};
use xlayer::weights::SafetensorsFile;
use xlayer::{f16, Buffer, Client, DType};

mod common;

use common::{leaf_bytes, open_fixture};

fn client() -> Client {
    Client::default_client().expect("default client")
}

fn fixture() -> &'static SafetensorsFile {
    static F: OnceLock<SafetensorsFile> = OnceLock::new();
    F.get_or_init(|| open_fixture("layers.safetensors"))
}

fn f32s(name: &str) -> Vec<f32> {
    common::f32s(fixture(), name)
}

fn upload(name: &str) -> Result<Buffer> {
    let dims = fixture().spec(name).unwrap().dims.clone();
    Ok(client().buffer_from_host(&f32s(name), &dims)?)
}

fn x() -> Result<Buffer> {
    upload("x")
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let worst = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs() / w.abs().max(1e-3))
        .fold(0f32, f32::max);
    assert!(worst <= tol, "{what}: worst relative error {worst} > {tol}");
}

// ---- the models ----

fn stateless_call(Inputs(x): Inputs) -> xlayer::Result<Out> {
    let x = x.into_leaf()?;
    let s = x.sum(&[1, 2, 3], false)?;
    let n = x.dims()[0];
    Ok(Out::from(s.reshape(&[n, 1])?.broadcast_to(&[n, 10])?))
}

fn mlp_forward(p: &Tree<Value>, x: Value) -> xlayer::Result<Value> {
    let n = x.dims()[0];
    let mut h = x.reshape(&[n, x.element_count() / n])?;
    for i in 0..3 {
        let w = p.get(format!("{i}/0"))?;
        let b = p.get(format!("{i}/1"))?;
        h = (h.matmul(w)? + b)?;
        h = if i < 2 {
            h.tanh()?
        } else {
            nn::softmax(&h, 1)?
        };
    }
    Ok(h)
}

fn mlp_call(Params(p): Params, Inputs(x): Inputs) -> xlayer::Result<Out> {
    Ok(Out::from(mlp_forward(&p, x.into_leaf()?)?))
}

/// Params a list of [w, b]; values depend on the rng key so that seeds matter.
fn mlp_init(Rng(key): Rng, Inputs(_x): Inputs) -> xlayer::Result<Init> {
    let b = key.builder().clone();
    let noise = key.convert(DType::F32)?.sum(&[0], false)?;
    let sizes = [784, 300, 100, 10];
    let mut layers = Vec::new();
    for i in 0..3 {
        let w = (b.full(0.01, DType::F32, &[sizes[i], sizes[i + 1]])? * &noise)?;
        layers.push(Tree::list([
            Tree::leaf(w),
            Tree::leaf(b.zeros(DType::F32, &[sizes[i + 1]])?),
        ]));
    }
    Ok(Init(Tree::List(layers)))
}

fn fixture_params() -> Result<Tree<Buffer>> {
    let mut layers = Vec::new();
    for i in 0..3 {
        layers.push(Tree::list([
            Tree::leaf(upload(&format!("mlp.{i}.w"))?),
            Tree::leaf(upload(&format!("mlp.{i}.b"))?),
        ]));
    }
    Ok(Tree::List(layers))
}

// ---- Keras cases ----

#[test]
fn stateless_layer_has_no_weights_and_matches_jax() -> Result<()> {
    let layer = JaxLayer::new(stateless_call)?;
    let y = layer.call1(&x()?, Training::No)?;
    assert_eq!(layer.trainable_weight_count()?, 0);
    assert_eq!(layer.non_trainable_weight_count()?, 0);
    assert_eq!(y.dims(), &[32, 10]);
    assert_close(
        &y.to_vec::<f32>()?,
        &f32s("stateless.out"),
        1e-6,
        "stateless",
    );
    Ok(())
}

#[test]
fn training_independent_mlp_counts_and_outputs() -> Result<()> {
    let c = client();
    // Built by init_fn: 6 weights, 266,610 scalars.
    let layer = JaxLayer::builder(mlp_call)
        .init_fn(mlp_init)
        .seed(1)
        .build()?;
    layer.build(&c, &Tree::leaf(x()?.spec().clone()))?;
    assert_eq!(layer.trainable_weight_count()?, 6);
    assert_eq!(layer.weights()?.param_count(), 266_610);
    // With the fixture's params: JAX's outputs.
    let layer = JaxLayer::builder(mlp_call)
        .params(fixture_params()?)
        .build()?;
    let y = layer.call1(&x()?, Training::No)?;
    assert_eq!(y.dims(), &[32, 10]);
    assert_close(&y.to_vec::<f32>()?, &f32s("mlp.out"), 2e-5, "mlp");
    // Training mode gives the same outputs (training-independent), and the
    // cache compiled once per mode.
    let yt = layer.call1(&x()?, Training::Yes)?;
    assert_close(&yt.to_vec::<f32>()?, &f32s("mlp.out"), 2e-5, "mlp training");
    layer.call1(&x()?, Training::No)?;
    assert_eq!(layer.compile_count(), 2);
    Ok(())
}

fn counting_call(
    Params(p): Params,
    State(s): State,
    Inputs(x): Inputs,
    t: Training,
) -> xlayer::Result<OutState> {
    let out = mlp_forward(&p, x.into_leaf()?)?;
    let count = s.clone().into_leaf()?;
    let new = if t.is_yes() { (&count + 1.0)? } else { count };
    Ok(OutState(Tree::leaf(out), Tree::leaf(new)))
}

fn counting_init(Rng(key): Rng, Inputs(x): Inputs) -> xlayer::Result<InitState> {
    let Init(params) = mlp_init(Rng(key), Inputs(x.clone()))?;
    let b = x.leaves()[0].builder().clone();
    Ok(InitState(params, Tree::leaf(b.scalar(0f32)?)))
}

fn state_value(layer: &JaxLayer) -> Result<f32> {
    Ok(layer.weights()?.state.leaves()[0].to_scalar::<f32>()?)
}

#[test]
fn training_state_counts_training_calls_only() -> Result<()> {
    let c = client();
    let layer = JaxLayer::builder(counting_call)
        .init_fn(counting_init)
        .seed(3)
        .build()?;
    layer.build(&c, &Tree::leaf(x()?.spec().clone()))?;
    assert_eq!(
        (
            layer.trainable_weight_count()?,
            layer.non_trainable_weight_count()?
        ),
        (6, 1)
    );
    assert_eq!(layer.weights()?.state_count(), 1);
    for i in 1..=3 {
        layer.call1(&x()?, Training::Yes)?;
        assert_eq!(state_value(&layer)?, i as f32);
    }
    layer.call1(&x()?, Training::No)?;
    assert_eq!(
        state_value(&layer)?,
        3.0,
        "inference must not change the state"
    );
    Ok(())
}

#[test]
fn mixed_float16_computes_in_half_keeps_weights_f32() -> Result<()> {
    let c = client();
    let layer = JaxLayer::builder(counting_call)
        .params(fixture_params()?)
        .state(Tree::leaf(c.scalar(0f32)?))
        .dtype_policy(DTypePolicy::MixedFloat16)
        .build()?;
    let y = layer.call1(&x()?, Training::Yes)?;
    assert_eq!(y.dtype(), DType::F16);
    let got: Vec<f32> = y.to_vec::<f16>()?.iter().map(|v| v.to_f32()).collect();
    assert_close(&got, &f32s("mlp_f16.out"), 2e-2, "mixed_float16");
    let w = layer.weights()?;
    assert!(w.params.leaves().iter().all(|b| b.dtype() == DType::F32));
    assert_eq!(w.state.leaves()[0].dtype(), DType::F32);
    assert_eq!(state_value(&layer)?, 1.0);
    Ok(())
}

#[test]
fn functional_and_sequential_models_match_the_layer() -> Result<()> {
    let c = client();
    let layer = JaxLayer::builder(mlp_call)
        .params(fixture_params()?)
        .name("mlp")
        .build()?;
    let want = f32s("mlp.out");

    let inp = Input::new(&c, &[28, 28, 1], DType::F32);
    let model = Model::new(inp.clone(), layer.apply(&inp)?)?;
    assert_eq!(model.trainable_weight_count()?, 6);
    assert_eq!(model.count_params()?, 266_610);
    let y = model.call1(&x()?, Training::No)?;
    assert_close(&y.to_vec::<f32>()?, &want, 2e-5, "functional");
    let summary = model.summary()?;
    assert!(
        summary.contains("mlp (JaxLayer)")
            && summary.contains("(None, 10)")
            && summary.contains("266610"),
        "{summary}"
    );

    let seq = Sequential::new().add(layer.clone());
    let y = seq.call1(&x()?, Training::No)?;
    assert_close(&y.to_vec::<f32>()?, &want, 2e-5, "sequential");

    // predict over batches of 8 gives (32, 10), the same values, and does not change weights.
    let xs = HostArray::from_slice(&f32s("x"), &[32, 28, 28, 1])?;
    let before: Vec<Vec<u8>> = leaf_bytes(&layer.weights()?.params)?;
    let p = model.predict(&xs, 8)?;
    assert_eq!(p.spec.dims, vec![32, 10]);
    assert_close(&p.to_vec::<f32>()?, &want, 2e-5, "predict");
    let after: Vec<Vec<u8>> = leaf_bytes(&layer.weights()?.params)?;
    assert_eq!(before, after);
    Ok(())
}

#[test]
fn rebuild_from_exported_weights_and_save_load_round_trip() -> Result<()> {
    let c = client();
    let layer = JaxLayer::builder(counting_call)
        .init_fn(counting_init)
        .seed(5)
        .name("counter_mlp")
        .build()?;
    let inp = Input::new(&c, &[28, 28, 1], DType::F32);
    let model = Model::new(inp.clone(), layer.apply(&inp)?)?;
    model.call1(&x()?, Training::Yes)?;
    let y0 = model.call1(&x()?, Training::No)?.to_vec::<f32>()?;

    // Rebuild a new layer from the exported params/state.
    let w = layer.weights()?;
    let copy = |t: &Tree<std::sync::Arc<Buffer>>| t.try_map(&mut |b| b.copy_to_device(b.device()));
    let rebuilt = JaxLayer::builder(counting_call)
        .params(copy(&w.params)?)
        .state(copy(&w.state)?)
        .build()?;
    assert_eq!(rebuilt.call1(&x()?, Training::No)?.to_vec::<f32>()?, y0);
    assert_eq!(state_value(&rebuilt)?, 1.0);

    // Save, change the model, reload: same outputs and state.
    let dir = std::env::temp_dir().join(format!("xlayer-layers-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("model.safetensors");
    model.save_weights(&path)?;
    model.call1(&x()?, Training::Yes)?;
    assert_eq!(state_value(&layer)?, 2.0);
    model.load_weights(&path)?;
    assert_eq!(state_value(&layer)?, 1.0);
    assert_eq!(model.call1(&x()?, Training::No)?.to_vec::<f32>()?, y0);

    // A file with one tensor of the wrong shape fails and changes nothing.
    let other = JaxLayer::builder(stateless_call).build()?;
    let _ = other;
    let bad = dir.join("bad.safetensors");
    let wrong = Tree::map([(
        "counter_mlp",
        Tree::map([
            (
                "params",
                Tree::leaf(c.buffer_from_host(&[0f32; 4], &[2, 2])?),
            ),
            ("state", Tree::leaf(c.scalar(9f32)?)),
        ]),
    )]);
    xlayer::weights::save_tree(&bad, &wrong, &xlayer::weights::NameMap::new())?;
    let err = model.load_weights(&bad).unwrap_err().to_string();
    assert!(
        err.contains("bad.safetensors") && err.contains("counter_mlp/params/0/0"),
        "{err}"
    );
    assert_eq!(
        state_value(&layer)?,
        1.0,
        "a failed load must leave the model as it was"
    );
    assert_eq!(model.call1(&x()?, Training::No)?.to_vec::<f32>()?, y0);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

// ---- unit cases ----

#[test]
fn missing_init_and_params_is_an_error_at_construction() {
    let err = JaxLayer::builder(mlp_call).build().unwrap_err().to_string();
    assert!(err.contains("neither init_fn nor params"), "{err}");
    let err = JaxLayer::builder(counting_call)
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("Params") && err.contains("State"), "{err}");
}

#[test]
fn call_must_take_inputs_and_state_rules_hold() {
    let err = JaxLayer::new(|Params(_p): Params| Ok(Out(Tree::Empty)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("call_fn must take `Inputs`"), "{err}");
    let err = JaxLayer::builder(|State(s): State, Inputs(_x): Inputs| Ok(Out(s)))
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("must return `OutState"), "{err}");
    let err = JaxLayer::builder(mlp_call)
        .init_fn(counting_init)
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("init_fn returns `InitState`"), "{err}");
}

#[test]
fn training_only_in_call_and_free_argument_order() -> Result<()> {
    let c = client();
    // training in call but not in init; arguments in an unusual order.
    let layer = JaxLayer::builder(|t: Training, Inputs(x): Inputs, Params(p): Params| {
        let x = x.into_leaf()?;
        let y = (x.sum(&[1, 2, 3], false)? * p.clone().into_leaf()?)?;
        Ok(Out::from(if t.is_yes() { (y * 2.0)? } else { y }))
    })
    .init_fn(|Inputs(x): Inputs| Ok(Init(Tree::leaf(x.into_leaf()?.builder().scalar(3f32)?))))
    .build()?;
    let input = c.buffer_from_host(&[1f32; 8], &[2, 2, 2, 1])?;
    assert_eq!(
        layer.call1(&input, Training::No)?.to_vec::<f32>()?,
        vec![12.0, 12.0]
    );
    assert_eq!(
        layer.call1(&input, Training::Yes)?.to_vec::<f32>()?,
        vec![24.0, 24.0]
    );
    Ok(())
}

#[test]
fn map_inputs_give_tuple_outputs() -> Result<()> {
    let c = client();
    let layer = JaxLayer::new(|Inputs(x): Inputs| {
        let a = x.get("a")?;
        let b = x.get("b")?;
        Ok(Out(Tree::tuple([
            Tree::leaf((a + b)?),
            Tree::leaf((a * b)?),
        ])))
    })?;
    let a = c.buffer_from_host(&[1f32, 2.0], &[2])?;
    let b = c.buffer_from_host(&[3f32, 4.0], &[2])?;
    let out = layer.call(
        &Tree::map([("a", Tree::leaf(&a)), ("b", Tree::leaf(&b))]),
        Training::No,
    )?;
    let Tree::Tuple(items) = out else {
        panic!("expected a tuple")
    };
    assert_eq!(items.len(), 2);
    assert_eq!(items[0].leaves()[0].to_vec::<f32>()?, vec![4.0, 6.0]);
    assert_eq!(items[1].leaves()[0].to_vec::<f32>()?, vec![3.0, 8.0]);
    Ok(())
}

#[test]
fn sixty_list_inputs() -> Result<()> {
    let c = client();
    let layer = JaxLayer::new(|Inputs(x): Inputs| {
        let leaves: Vec<Value> = x.leaves().into_iter().cloned().collect();
        let mut acc = leaves[0].clone();
        for v in &leaves[1..] {
            acc = (acc + v)?;
        }
        Ok(Out::from(acc))
    })?;
    let bufs: Vec<Buffer> = (0..60)
        .map(|i| c.buffer_from_host(&[i as f32], &[1]))
        .collect::<xlayer::Result<_>>()?;
    let tree = Tree::List(bufs.iter().map(Tree::leaf).collect());
    let y = layer.call(&tree, Training::No)?;
    assert_eq!(
        y.leaves()[0].to_vec::<f32>()?,
        vec![(0..60).sum::<i32>() as f32]
    );
    Ok(())
}

#[test]
fn state_only_layer_counts_calls() -> Result<()> {
    // Flax-style state-only variables {"a": {"b": 0}} counting calls.
    let c = client();
    let layer = JaxLayer::builder(|State(s): State, Inputs(x): Inputs| {
        let count = s.get("a/b")?;
        let next = (count + 1.0)?;
        Ok(OutState(
            x,
            Tree::map([("a", Tree::map([("b", Tree::leaf(next))]))]),
        ))
    })
    .state(Tree::map([(
        "a",
        Tree::map([("b", Tree::leaf(c.scalar(0i32)?))]),
    )]))
    .build()?;
    let input = c.buffer_from_host(&[1f32], &[1])?;
    for _ in 0..4 {
        layer.call1(&input, Training::No)?;
    }
    assert_eq!(
        layer
            .weights()?
            .state
            .get("a/b")
            .unwrap()
            .to_scalar::<i32>()?,
        4
    );
    assert_eq!(layer.trainable_weight_count()?, 0);
    Ok(())
}

#[test]
fn six_mismatched_state_structures_are_rejected() -> Result<()> {
    let c = client();
    type Make = fn(&Value) -> xlayer::Result<Tree<Value>>;
    let cases: [(&str, Make); 6] = [
        ("missing key", |v| {
            Ok(Tree::map([("a", Tree::leaf(v.clone()))]))
        }),
        ("extra key", |v| {
            Ok(Tree::map([
                ("a", Tree::leaf(v.clone())),
                ("b", Tree::leaf(v.clone())),
                ("c", Tree::leaf(v.clone())),
            ]))
        }),
        ("list instead of map", |v| {
            Ok(Tree::list([Tree::leaf(v.clone()), Tree::leaf(v.clone())]))
        }),
        ("leaf instead of map", |v| Ok(Tree::leaf(v.clone()))),
        ("wrong shape", |v| {
            Ok(Tree::map([
                ("a", Tree::leaf(v.clone())),
                ("b", Tree::leaf(v.broadcast_to(&[3])?)),
            ]))
        }),
        ("map instead of leaf", |v| {
            Ok(Tree::map([
                ("a", Tree::leaf(v.clone())),
                ("b", Tree::map([("x", Tree::leaf(v.clone()))])),
            ]))
        }),
    ];
    let input = c.buffer_from_host(&[1f32], &[1])?;
    for (what, make) in cases {
        let layer = JaxLayer::builder(move |State(s): State, Inputs(x): Inputs| {
            let v = s.get("a")?.clone();
            Ok(OutState(x, make(&v)?))
        })
        .state(Tree::map([
            ("a", Tree::leaf(c.scalar(0f32)?)),
            ("b", Tree::leaf(c.scalar(0f32)?)),
        ]))
        .build()?;
        let err = layer.call1(&input, Training::Yes).unwrap_err().to_string();
        assert!(
            err.contains("new state") || err.contains("structure"),
            "{what}: {err}"
        );
        assert!(
            err.contains("jax_layer"),
            "{what}: the message names the layer: {err}"
        );
        // The state is untouched.
        assert_eq!(layer.weights()?.state.len(), 2, "{what}");
    }
    Ok(())
}

#[test]
fn same_seed_twice_gives_identical_init() -> Result<()> {
    let c = client();
    let init = |seed| -> Result<Vec<Vec<u8>>> {
        let layer = JaxLayer::builder(mlp_call)
            .init_fn(mlp_init)
            .seed(seed)
            .build()?;
        layer.build(
            &c,
            &Tree::leaf(xlayer::ArraySpec::of::<f32>([2, 28, 28, 1])),
        )?;
        Ok(leaf_bytes(&layer.weights()?.params)?)
    };
    assert_eq!(init(7)?, init(7)?);
    assert_ne!(init(7)?, init(8)?);
    Ok(())
}

#[test]
fn rng_is_fresh_per_training_call_and_absent_in_inference() -> Result<()> {
    let c = client();
    let layer = JaxLayer::new(|rng: Option<Rng>, Inputs(x): Inputs| {
        let x = x.into_leaf()?;
        Ok(Out::from(match rng {
            Some(Rng(k)) => x.broadcast_to(&[2])?.add(&k.convert(DType::F32)?)?,
            None => x.broadcast_to(&[2])?,
        }))
    })?;
    let x = c.scalar(0f32)?;
    let a = layer.call1(&x, Training::Yes)?.to_vec::<f32>()?;
    let b = layer.call1(&x, Training::Yes)?.to_vec::<f32>()?;
    assert_ne!(a, b, "each training call gets a new key");
    assert_eq!(a[1] + 1.0, b[1], "Keras keys are [seed, counter]");
    assert_eq!(
        layer.call1(&x, Training::No)?.to_vec::<f32>()?,
        vec![0.0, 0.0]
    );
    Ok(())
}

// ---- Haiku-style transforms ----

#[test]
fn haiku_transform_with_state_and_without_apply_rng() -> Result<()> {
    use xlayer::builder::{init, random};
    use xlayer::layers::haiku::{self, Hk};
    let c = client();

    // transform_with_state: a linear map plus a counter of training calls.
    let t = haiku::transform_with_state(|hk: &mut Hk, x| {
        let x = x.into_leaf()?;
        let w = hk.get_parameter("linear/w", &[x.dims()[1], 2], DType::F32, &init::ones())?;
        let n = hk.get_state("counter/n", &[], DType::I32, &init::zeros())?;
        if hk.training().is_yes() && !hk.running_init() {
            hk.set_state("counter/n", (n + 1.0)?)?;
        }
        Ok(x.matmul(&w)?.into())
    });
    let layer = JaxLayer::builder(t.apply())
        .init_fn(t.init())
        .seed(1)
        .build()?;
    let x = c.buffer_from_host(&[1f32, 2.0, 3.0], &[1, 3])?;
    assert_eq!(
        layer.call1(&x, Training::Yes)?.to_vec::<f32>()?,
        vec![6.0, 6.0]
    );
    layer.call1(&x, Training::Yes)?;
    layer.call1(&x, Training::No)?;
    let w = layer.weights()?;
    assert_eq!(w.state.get("counter/n")?.to_scalar::<i32>()?, 2);
    assert_eq!(w.params.paths(), vec!["linear/w"]);

    // without_apply_rng: the layer never asks for a key.
    let t = haiku::transform(|hk: &mut Hk, x| {
        let x = x.into_leaf()?;
        let b = hk.get_parameter("bias/b", &[x.dims()[1]], DType::F32, &init::normal(1.0))?;
        Ok((x + b)?.into())
    });
    let layer = JaxLayer::builder(t.apply_without_rng())
        .init_fn(t.init())
        .seed(2)
        .build()?;
    assert!(!layer.call_needs().rng);
    let y = layer.call1(&x, Training::Yes)?.to_vec::<f32>()?;
    assert_eq!(y.len(), 3);

    // A module that uses hk.next_rng_key for dropout in training only.
    let t = haiku::transform(|hk: &mut Hk, x| {
        let x = x.into_leaf()?;
        if !hk.training().is_yes() {
            return Ok(x.into());
        }
        let keep = random::bernoulli(&hk.next_rng_key()?, 0.5, x.dims())?;
        Ok(keep
            .select(&(&x / 0.5)?, &x.scalar_like(0.0)?.broadcast_to(x.dims())?)?
            .into())
    });
    let layer = JaxLayer::builder(t.apply())
        .init_fn(t.init())
        .seed(3)
        .build()?;
    let ones = c.buffer_from_host(&[1f32; 64], &[1, 64])?;
    let a = layer.call1(&ones, Training::Yes)?.to_vec::<f32>()?;
    let b = layer.call1(&ones, Training::Yes)?.to_vec::<f32>()?;
    assert_ne!(a, b, "dropout masks differ between training calls");
    assert!(a.iter().all(|v| *v == 0.0 || *v == 2.0));
    assert_eq!(
        layer.call1(&ones, Training::No)?.to_vec::<f32>()?,
        vec![1.0; 64]
    );
    Ok(())
}

#[test]
fn forwards_are_jit_cached_per_mode_and_loaded_from_the_compile_cache() -> Result<()> {
    use xlayer::CompileCache;
    let c = client();
    let dir = std::env::temp_dir().join(format!("xlayer-jit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // A stateful model: the train and inference programs differ (the state
    // update), and the training mode is part of the jit key.
    let make = || -> Result<Model> {
        let layer = JaxLayer::builder(counting_call)
            .params(fixture_params()?)
            .state(Tree::leaf(c.scalar(0f32)?))
            .name("counting")
            .build()?;
        let inp = Input::new(&c, &[28, 28, 1], DType::F32);
        Ok(Model::new(inp.clone(), layer.apply(&inp)?)?.with_compile_cache(CompileCache::at(&dir)))
    };
    let first = make()?;
    let y = first.call1(&x()?, Training::No)?.to_vec::<f32>()?;
    first.call1(&x()?, Training::Yes)?;
    first.call1(&x()?, Training::No)?;
    first.call1(&x()?, Training::Yes)?;
    assert_eq!(first.compile_count(), 2, "one program per mode");
    let s = first.compile_cache().stats();
    assert_eq!((s.compiles, s.writes, s.hits), (2, 2, 0), "{s:?}");

    // A second model of the same layout loads both programs from disk and
    // computes the same values.
    let second = make()?;
    assert_eq!(second.call1(&x()?, Training::No)?.to_vec::<f32>()?, y);
    second.call1(&x()?, Training::Yes)?;
    let s = second.compile_cache().stats();
    assert_eq!((s.compiles, s.hits), (0, 2), "{s:?}");
    assert_eq!(
        second.layers()[0].weights()?.state.leaves()[0].to_scalar::<f32>()?,
        1.0,
        "the loaded train program updates (donated) state"
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[test]
fn alternating_input_shapes_and_modes_each_run_their_own_program() -> Result<()> {
    // A call like the last one reuses its program without building a key;
    // any other shape or mode must not: each call's output has its own
    // input's shape and values, and each (shape, mode) compiled once.
    let c = client();
    let layer = JaxLayer::new(|Inputs(x): Inputs| {
        let x = x.into_leaf()?;
        Ok(Out::from((&x * &x)?))
    })?;
    let a = c.buffer_from_host(&[1f32, 2., 3., 4., 5., 6.], &[2, 3])?;
    let b = c.buffer_from_host(&[1f32, -2., 3., -4.], &[4])?;
    let a2 = c.buffer_from_host(&[2f32, 2., 2., 2., 2., 2.], &[3, 2])?;
    for _ in 0..2 {
        for (x, want, dims) in [
            (&a, vec![1f32, 4., 9., 16., 25., 36.], vec![2, 3]),
            (&a, vec![1f32, 4., 9., 16., 25., 36.], vec![2, 3]),
            (&b, vec![1f32, 4., 9., 16.], vec![4]),
            (&a2, vec![4f32; 6], vec![3, 2]),
        ] {
            let y = layer.call1(x, Training::No)?;
            assert_eq!(y.dims(), dims.as_slice());
            assert_eq!(y.to_vec::<f32>()?, want);
        }
        let y = layer.call1(&b, Training::Yes)?;
        assert_eq!(y.to_vec::<f32>()?, vec![1f32, 4., 9., 16.]);
    }
    assert_eq!(layer.compile_count(), 4, "[2,3], [4], [3,2], [4] training");
    Ok(())
}
