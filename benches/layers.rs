//! Layer benchmarks (issue #4), printed as a table:
//!
//! 1. Call overhead: a cached `JaxLayer` call next to a raw `Executable`
//!    call of the same traced program, interleaved in one run (goal ≤ 1.2×).
//! 2. Forward time of the Keras test MLP (784-300-100-10) and the Flax-style
//!    CNN (Conv32-pool-Conv64-pool-Dense200-Dense10) as xlayer models, batch
//!    32 and 256 — compare with `benches/compare/layers_jax.py` (the same
//!    functions under `jax.jit`); `benches/compare/layers.sh` runs both.
//!
//! `cargo bench --bench layers`

use std::time::Instant;

use xlayer::builder::{jit, nn, Pool, Tree, Value};
use xlayer::layers::{Inputs, JaxLayer, Layer, Out, Params, Sequential, Training};
use xlayer::{ArraySpec, Buffer, Client};

mod common;

use common::{conv, random_params};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn mean_ns(calls: u32, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..calls {
        f();
    }
    start.elapsed().as_nanos() as f64 / calls as f64
}

fn affine(p: &Tree<Value>, x: &Value) -> xlayer::Result<Value> {
    x.matmul(p.get("w").expect("w"))? + p.get("b").expect("b")
}

fn overhead(client: &Client) -> xlayer::Result<()> {
    let w = client.buffer_from_host(&[0.5f32; 12], &[3, 4])?;
    let bias = client.buffer_from_host(&[1f32; 4], &[4])?;
    let x = client.buffer_from_host(&[1f32; 6], &[2, 3])?;
    let params = Tree::map([("w", Tree::leaf(w)), ("b", Tree::leaf(bias))]);
    let layer = JaxLayer::builder(|Params(p): Params, Inputs(x): Inputs| {
        Ok(Out::from(affine(&p, &x.into_leaf()?)?))
    })
    .params(params)
    .build()?;
    let raw = jit(
        client,
        &[
            ArraySpec::of::<f32>([4]),
            ArraySpec::of::<f32>([3, 4]),
            ArraySpec::of::<f32>([2, 3]),
        ],
        |_b, a| Ok(vec![(a[2].matmul(&a[1])? + &a[0])?]),
    )?;
    let w = client.buffer_from_host(&[0.5f32; 12], &[3, 4])?;
    let bias = client.buffer_from_host(&[1f32; 4], &[4])?;
    let want = raw.execute(&[&bias, &w, &x])?[0].to_vec::<f32>()?;
    assert_eq!(layer.call1(&x, Training::No)?.to_vec::<f32>()?, want);
    let (calls, rounds) = (2_000, 31);
    let (mut t_layer, mut t_raw, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let r = mean_ns(calls, || drop(raw.execute(&[&bias, &w, &x]).expect("raw")));
        let l = mean_ns(calls, || {
            drop(layer.call1(&x, Training::No).expect("layer"))
        });
        t_raw.push(r);
        t_layer.push(l);
        ratios.push(l / r);
    }
    println!("| call overhead (f32[2,3] @ f32[3,4] + b) | raw executable {:.2} µs | JaxLayer call {:.2} µs | ratio {:.2} |",
        median(t_raw) / 1e3, median(t_layer) / 1e3, median(ratios));
    Ok(())
}

fn mlp(Params(p): Params, Inputs(x): Inputs) -> xlayer::Result<Out> {
    let x = x.into_leaf()?;
    let n = x.dims()[0];
    let mut h = x.reshape(&[n, x.element_count() / n])?;
    for i in 0..3 {
        h = (h.matmul(p.get(format!("w{i}"))?)? + p.get(format!("b{i}"))?)?;
        h = if i < 2 {
            h.tanh()?
        } else {
            nn::softmax(&h, 1)?
        };
    }
    Ok(Out::from(h))
}

fn cnn(Params(p): Params, Inputs(x): Inputs) -> xlayer::Result<Out> {
    let g = |n: &str| p.get(n).expect("param");
    let x = x.into_leaf()?;
    let pool = |v: &Value| v.avg_pool(&Pool::new(&[1, 2, 2, 1]));
    let h = pool(&nn::relu(&conv(&x, g("k1"), g("c1"))?)?)?;
    let h = pool(&nn::relu(&conv(&h, g("k2"), g("c2"))?)?)?;
    let n = h.dims()[0];
    let h = h.reshape(&[n, h.element_count() / n])?;
    let h = nn::relu(&(h.matmul(g("w1"))? + g("b1"))?)?;
    let h = (h.matmul(g("w2"))? + g("b2"))?;
    Ok(Out::from(nn::softmax(&h, 1)?))
}

fn time_model(model: &Sequential, x: &Buffer, iters: usize) -> xlayer::Result<f64> {
    model.call1(x, Training::No)?.block_until_ready()?;
    let mut t = Vec::new();
    for _ in 0..iters {
        let s = Instant::now();
        model.call1(x, Training::No)?.block_until_ready()?;
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(t))
}

fn forward(client: &Client) -> xlayer::Result<()> {
    let mlp_params = random_params(
        client,
        &[
            ("w0", vec![784, 300]),
            ("b0", vec![300]),
            ("w1", vec![300, 100]),
            ("b1", vec![100]),
            ("w2", vec![100, 10]),
            ("b2", vec![10]),
        ],
        1,
    )?;
    let cnn_params = random_params(
        client,
        &[
            ("k1", vec![3, 3, 1, 32]),
            ("c1", vec![32]),
            ("k2", vec![3, 3, 32, 64]),
            ("c2", vec![64]),
            ("w1", vec![7 * 7 * 64, 200]),
            ("b1", vec![200]),
            ("w2", vec![200, 10]),
            ("b2", vec![10]),
        ],
        2,
    )?;
    let mlp_model = Sequential::new().add(JaxLayer::builder(mlp).params(mlp_params).build()?);
    let cnn_model = Sequential::new().add(JaxLayer::builder(cnn).params(cnn_params).build()?);
    for batch in [32usize, 256] {
        let x = client.buffer_from_host(&vec![0.5f32; batch * 784], &[batch, 28, 28, 1])?;
        let iters = if batch == 32 { 200 } else { 40 };
        let m = time_model(&mlp_model, &x, iters)?;
        let c = time_model(&cnn_model, &x, iters / 4)?;
        println!("| MLP 784-300-100-10 forward, batch {batch} | {m:.3} ms |");
        println!("| CNN Conv32-Conv64-Dense200-Dense10 forward, batch {batch} | {c:.3} ms |");
    }
    Ok(())
}

fn main() -> xlayer::Result<()> {
    let client = Client::cpu()?;
    println!("| xlayer | time |");
    println!("|---|---|");
    overhead(&client)?;
    forward(&client)?;
    Ok(())
}
