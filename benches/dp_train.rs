//! Data-parallel training speed (issue #13): the speed suite's MLP
//! (784-512-512-10, relu; Adam 1e-3, sparse categorical cross-entropy
//! from logits, `benches/common/mlp.rs`) at batch 256, trained with
//! `Trainer::fit` on one device and data-parallel
//! (`Trainer::data_parallel`) over meshes of 1, 2 and 4 CPU devices of
//! `Client::cpu_devices(4)` (and over the one device of `Client::cpu()`,
//! to tell the data-parallel path's cost from the 4-device client's).
//!
//! One timed call is one `fit` of 20 batches of 256 rows (no shuffling):
//! each step uploads its batch (scattered over the mesh when
//! data-parallel) and reads the loss back, as `fit` does; a data-parallel
//! call also copies the weights and Adam's state to the mesh and back once
//! (amortized over the 20 steps). The configurations are interleaved,
//! round by round, after one warm-up call each (which compiles); the ratio
//! is the median over rounds of each round's time against the 1-device
//! `fit` of the same round.
//!
//! The CPU plugin runs every device's partition on the same host cores, so
//! on a machine with few cores no speedup is expected: N devices split the
//! same work N ways and add an all-reduce per gradient.
//!
//! `cargo bench --bench dp_train`

use std::time::Instant;

use xlayer::layers::{Apply, HostArray, Input, Model};
use xlayer::sharding::Mesh;
use xlayer::train::{Adam, FitOptions, Loss, Trainer};
use xlayer::{Client, DType};

mod common;

use common::interleaved::load_average;
use common::median;
use common::mlp::mlp_train_layer;

const BATCH: usize = 256;
const STEPS: usize = 20;
const ROUNDS: usize = 7;

/// The suite's MLP trainer on `client`, data-parallel over the first
/// `devices` devices of `mesh_client` when given.
fn trainer(client: &Client, mesh: Option<(&Client, usize)>) -> xlayer::Result<Trainer> {
    let inp = Input::new(client, &[28, 28, 1], DType::F32);
    let model = Model::new(inp.clone(), mlp_train_layer()?.apply(&inp)?)?;
    let t = Trainer::new(
        model,
        Adam::new(1e-3),
        Loss::SparseCategoricalCrossentropy { from_logits: true },
        &[],
    );
    match mesh {
        None => Ok(t),
        Some((c, n)) => t.data_parallel(&Mesh::new(c, &[n], &["data"])?, "data"),
    }
}

fn main() -> xlayer::Result<()> {
    let client = Client::cpu()?;
    let four = Client::cpu_devices(4)?;
    let n = BATCH * STEPS;
    let x: Vec<f32> = (0..n * 784).map(|i| (i % 17) as f32 / 17.0).collect();
    let y: Vec<i32> = (0..n).map(|i| (i % 10) as i32).collect();
    let (x, y) = (
        HostArray::from_slice(&x, &[n, 28, 28, 1])?,
        HostArray::from_slice(&y, &[n])?,
    );
    let opts = FitOptions {
        batch_size: BATCH,
        epochs: 1,
        shuffle: false,
        verbose: false,
        ..Default::default()
    };
    let configs: Vec<(String, Trainer)> = vec![
        ("1 device, `fit`".into(), trainer(&client, None)?),
        (
            "data-parallel, 1 device of `Client::cpu()`".into(),
            trainer(&client, Some((&client, 1)))?,
        ),
        (
            "data-parallel, 1 device of `cpu_devices(4)`".into(),
            trainer(&client, Some((&four, 1)))?,
        ),
        (
            "data-parallel, 2 devices".into(),
            trainer(&client, Some((&four, 2)))?,
        ),
        (
            "data-parallel, 4 devices".into(),
            trainer(&client, Some((&four, 4)))?,
        ),
    ];
    let load_before = load_average();
    for (_, t) in &configs {
        t.fit(&x.rows(0, BATCH)?, &y.rows(0, BATCH)?, &opts)?; // compile + warm-up
    }
    let mut ms: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    for _ in 0..ROUNDS {
        for (i, (_, t)) in configs.iter().enumerate() {
            let start = Instant::now();
            t.fit(&x, &y, &opts)?;
            ms[i].push(start.elapsed().as_secs_f64() * 1e3 / STEPS as f64);
        }
    }
    println!(
        "MLP 784-512-512-10 train step, Adam, batch {BATCH}: {ROUNDS} interleaved rounds of {STEPS} steps \
         (load average {load_before} before, {} after)",
        load_average()
    );
    println!();
    println!(
        "| configuration | ms per step (median) | min | rows/s | ratio to 1 device (same rounds) |"
    );
    println!("|---|---|---|---|---|");
    for (i, (name, _)) in configs.iter().enumerate() {
        let ratios: Vec<f64> = ms[i].iter().zip(&ms[0]).map(|(a, b)| a / b).collect();
        let m = median(&ms[i]);
        let min = ms[i].iter().copied().fold(f64::INFINITY, f64::min);
        println!(
            "| {name} | {m:.2} | {min:.2} | {:.0} | {:.2}x |",
            BATCH as f64 * 1e3 / m,
            median(&ratios)
        );
    }
    Ok(())
}
