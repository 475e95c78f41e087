//! Train-step time (issue #7): the Keras MLP (784-300-100-10) and the
//! Flax-style CNN (Conv32-pool-Conv64-pool-Dense200-Dense10) with Adam and
//! sparse categorical cross-entropy, batch 128, one compiled train step per
//! batch. Compare with `benches/compare/train_jax.py` (JAX + optax under
//! `jax.jit`); `benches/compare/train.sh` runs both back to back.
//!
//! `cargo bench --bench train`

use std::time::Instant;

use xlayer::builder::{init, nn, random, Pool, Tree, Value};
use xlayer::layers::{Apply, HostArray, Init, Input, Inputs, JaxLayer, Model, Out, Params, Rng};
use xlayer::train::{Adam, FitOptions, Loss, Trainer};
use xlayer::{Client, DType};

mod common;

use common::conv;

const BATCH: usize = 128;
const STEPS: usize = 20;

fn dense(p: &Tree<Value>, x: &Value, i: usize) -> xlayer::Result<Value> {
    x.matmul(p.get(format!("w{i}"))?)? + p.get(format!("b{i}"))?
}

fn mlp(Params(p): Params, Inputs(x): Inputs) -> xlayer::Result<Out> {
    let x = x.into_leaf()?;
    let n = x.dims()[0];
    let h = dense(&p, &x.reshape(&[n, 784])?, 0)?.tanh()?;
    let h = dense(&p, &h, 1)?.tanh()?;
    Ok(Out::from(dense(&p, &h, 2)?))
}

fn mlp_init(Rng(key): Rng, Inputs(_x): Inputs) -> xlayer::Result<Init> {
    let k = random::split_keys(&key, 3)?;
    let b = key.builder();
    let sizes = [784, 300, 100, 10];
    let mut m = Vec::new();
    for i in 0..3 {
        m.push((
            format!("w{i}"),
            Tree::leaf(init::glorot_uniform().init(
                &k[i],
                &[sizes[i], sizes[i + 1]],
                DType::F32,
            )?),
        ));
        m.push((
            format!("b{i}"),
            Tree::leaf(b.zeros(DType::F32, &[sizes[i + 1]])?),
        ));
    }
    Ok(Init(Tree::map(m)))
}

fn cnn(Params(p): Params, Inputs(x): Inputs) -> xlayer::Result<Out> {
    let g = |n: &str| p.get(n).expect("param");
    let x = x.into_leaf()?;
    let pool = |v: &Value| v.avg_pool(&Pool::new(&[1, 2, 2, 1]));
    let h = pool(&nn::relu(&conv(&x, g("k1"), g("c1"))?)?)?;
    let h = pool(&nn::relu(&conv(&h, g("k2"), g("c2"))?)?)?;
    let n = h.dims()[0];
    let h = nn::relu(&(h.reshape(&[n, 7 * 7 * 64])?.matmul(g("w1"))? + g("b1"))?)?;
    Ok(Out::from((h.matmul(g("w2"))? + g("b2"))?))
}

fn cnn_init(Rng(key): Rng, Inputs(_x): Inputs) -> xlayer::Result<Init> {
    let k = random::split_keys(&key, 4)?;
    let b = key.builder();
    let li = init::lecun_normal();
    Ok(Init(Tree::map([
        (
            "k1",
            Tree::leaf(li.init(&k[0], &[3, 3, 1, 32], DType::F32)?),
        ),
        ("c1", Tree::leaf(b.zeros(DType::F32, &[32])?)),
        (
            "k2",
            Tree::leaf(li.init(&k[1], &[3, 3, 32, 64], DType::F32)?),
        ),
        ("c2", Tree::leaf(b.zeros(DType::F32, &[64])?)),
        (
            "w1",
            Tree::leaf(li.init(&k[2], &[7 * 7 * 64, 200], DType::F32)?),
        ),
        ("b1", Tree::leaf(b.zeros(DType::F32, &[200])?)),
        ("w2", Tree::leaf(li.init(&k[3], &[200, 10], DType::F32)?)),
        ("b2", Tree::leaf(b.zeros(DType::F32, &[10])?)),
    ])))
}

fn time_steps(model: Model, x: &HostArray, y: &HostArray) -> xlayer::Result<f64> {
    let trainer = Trainer::new(
        model,
        Adam::new(1e-3),
        Loss::SparseCategoricalCrossentropy { from_logits: true },
        &[],
    );
    let opts = FitOptions {
        batch_size: BATCH,
        epochs: 1,
        shuffle: false,
        verbose: false,
        ..Default::default()
    };
    trainer.fit(&x.rows(0, BATCH)?, &y.rows(0, BATCH)?, &opts)?; // compile + warm-up
    let mut per_step = Vec::new();
    for _ in 0..3 {
        let s = Instant::now();
        trainer.fit(x, y, &opts)?;
        per_step.push(s.elapsed().as_secs_f64() * 1e3 / STEPS as f64);
    }
    per_step.sort_by(f64::total_cmp);
    Ok(per_step[1])
}

fn main() -> xlayer::Result<()> {
    let client = Client::cpu()?;
    let n = BATCH * STEPS;
    let x = HostArray::from_slice(
        &(0..n * 784)
            .map(|i| (i % 17) as f32 / 17.0)
            .collect::<Vec<_>>(),
        &[n, 28, 28, 1],
    )?;
    let y = HostArray::from_slice(&(0..n).map(|i| (i % 10) as i32).collect::<Vec<_>>(), &[n])?;
    println!("| xlayer train step (Adam, batch {BATCH}) | ms per step |");
    println!("|---|---|");
    for (name, layer) in [
        (
            "MLP 784-300-100-10",
            JaxLayer::builder(mlp).init_fn(mlp_init).seed(0).build()?,
        ),
        (
            "CNN Conv32-Conv64-Dense200-Dense10",
            JaxLayer::builder(cnn).init_fn(cnn_init).seed(0).build()?,
        ),
    ] {
        let inp = Input::new(&client, &[28, 28, 1], DType::F32);
        let model = Model::new(inp.clone(), layer.apply(&inp)?)?;
        println!("| {name} | {:.3} |", time_steps(model, &x, &y)?);
    }
    Ok(())
}
