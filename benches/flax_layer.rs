//! FlaxLayer forward vs `jax.jit(module.apply)` (issue #5; the JAX side is
//! `benches/compare/jax_flax.py`): the seeds' CNN on f32[32,28,28,1] and a
//! pre-LayerNorm transformer block on f32[32,64,128] (4 heads, causal mask),
//! inference calls on device-resident inputs, each waited for
//! (`block_until_ready`, as the JAX side). Prints the median over rounds
//! of the mean time per call.
//!
//! `cargo bench --bench flax_layer` (release profile).

use std::time::Instant;

use xlayer::builder::{nn, Padding, Tree};
use xlayer::flax::{avg_pool, Conv, Dense, FlaxLayer, FnModule};
use xlayer::layers::{Layer, Training};
use xlayer::Client;

mod common;

use common::block;

fn cnn() -> FnModule {
    FnModule::new("CNN").call(|s, x, _| {
        let x = x.clone().into_leaf()?;
        let x = nn::relu(&Conv::new(32, &[3, 3]).apply(s, &x)?)?;
        let x = avg_pool(&x, &[2, 2], &[2, 2], &Padding::Valid, true)?;
        let x = nn::relu(&Conv::new(64, &[3, 3]).apply(s, &x)?)?;
        let x = avg_pool(&x, &[2, 2], &[2, 2], &Padding::Valid, true)?;
        let x = x.reshape(&[x.dims()[0], x.element_count() / x.dims()[0]])?;
        let x = nn::relu(&Dense::new(200).apply(s, &x)?)?;
        let x = Dense::new(10).apply(s, &x)?;
        Ok(Tree::leaf(nn::softmax(&x, 1)?))
    })
}

fn time(name: &str, layer: &FlaxLayer, client: &Client, dims: &[usize]) -> xlayer::Result<()> {
    let n: usize = dims.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
        .collect();
    let x = client.buffer_from_host(&data, dims)?;
    for _ in 0..5 {
        layer.call1(&x, Training::No)?.block_until_ready()?;
    }
    let (rounds, calls) = (9, 20);
    let mut means = vec![];
    for _ in 0..rounds {
        let t = Instant::now();
        for _ in 0..calls {
            layer.call1(&x, Training::No)?.block_until_ready()?;
        }
        means.push(t.elapsed().as_secs_f64() / calls as f64);
    }
    means.sort_by(|a, b| a.total_cmp(b));
    println!(
        "xlayer FlaxLayer {name}: median {:.3} ms per call (min {:.3}, max {:.3})",
        means[rounds / 2] * 1e3,
        means[0] * 1e3,
        means[rounds - 1] * 1e3
    );
    Ok(())
}

fn main() -> xlayer::Result<()> {
    let client = Client::cpu()?;
    time(
        "cnn f32[32,28,28,1]",
        &FlaxLayer::builder(cnn()).seed(0).build()?,
        &client,
        &[32, 28, 28, 1],
    )?;
    time(
        "block f32[32,64,128]",
        &FlaxLayer::builder(block(4)).seed(0).build()?,
        &client,
        &[32, 64, 128],
    )?;
    Ok(())
}
