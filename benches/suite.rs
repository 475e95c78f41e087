//! The speed suite of issue #14, xlayer's side: the programs that
//! `benches/compare/suite.py` times next to JAX 0.12 in the same run.
//!
//! Entries (names shared with the JAX side):
//!
//! | entry | what one timed call is |
//! |---|---|
//! | `mlp_b256` | MLP 784-512-512-10 (relu, relu, softmax) forward, f32[256,784], a `JaxLayer` in a `Sequential` |
//! | `cnn_b32`, `cnn_b256` | the Keras-test CNN (Conv32-pool-Conv64-pool-Dense200-Dense10, softmax) forward on f32[B,28,28,1] |
//! | `block_b8x128x768` | a pre-LayerNorm transformer block (12-head causal self-attention, Dense 3072, gelu, Dense 768) as a `FlaxLayer`, f32[8,128,768] |
//! | `matmul_1024` | f32[1024,1024] @ f32[1024,1024] through `builder::jit` |
//! | `train_mlp`, `train_cnn` | one `Trainer` step (Adam 1e-3, sparse CE from logits, batch 128; batch uploaded and loss read back each step as `fit` does): `fit` over 10 batches, time / 10 |
//!
//! Forward calls are awaited (`block_until_ready`), on device-resident
//! inputs, as the JAX side does.
//!
//! Two ways to run it:
//!
//! - `cargo bench --bench suite`: every entry once (2 warm-ups, 15 timed
//!   calls), a table of median ms. No ratio: use the Python driver for that.
//! - `suite --serve` (what `benches/compare/suite.py` runs): reads commands
//!   on stdin, one per line, and answers each with one JSON line on stdout:
//!   - `time ENTRY N`: N timed calls of ENTRY (built and warmed on first use)
//!     → `{"entry", "runs_ms": [...], "median_ms"}`;
//!   - `hlo NAME FILE N [FLAGS]`: compiles the StableHLO text FILE (e.g.
//!     JAX's own `jax.jit(f).lower(...).as_text()`) with the XLA flags
//!     FLAGS (`name=value;name=value`; `true`/`false`, integers, else
//!     strings, which may hold commas), fills its inputs with 0.5, and times N calls →
//!     `{"entry": NAME, "runs_ms", "median_ms", "compile_ms"}`;
//!   - `info` → the plugin's path, C API version and platform version;
//!   - `quit`.
//!
//!   Errors are answered as `{"error": "..."}` and the server goes on.
//!
//! The plugin is the one `Client::cpu()` loads: the pinned CPU plugin, or
//! the file named by `XLAYER_PJRT_PLUGIN_CPU` (the driver points that at
//! each candidate plugin build).

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::json;
use xlayer::builder::{jit, nn, Pool, Tree, Value};
use xlayer::flax::FlaxLayer;
use xlayer::layers::{
    Apply, HostArray, Input, Inputs, JaxLayer, Layer, Model, Out, Params, Rng as RngArg,
    Sequential, Training,
};
use xlayer::train::{Adam, FitOptions, Loss, Trainer};
use xlayer::{ArraySpec, Buffer, Client, CompileOptions, DType, Executable, Program};

mod common;

use common::mlp::{init_from, mlp_logits, mlp_shapes, mlp_train_layer};
use common::{block, conv, median, random_params};

/// Every entry, in the order the table lists them.
const ENTRIES: [&str; 7] = [
    "mlp_b256",
    "cnn_b32",
    "cnn_b256",
    "block_b8x128x768",
    "matmul_1024",
    "train_mlp",
    "train_cnn",
];

const TRAIN_BATCH: usize = 128;
const TRAIN_STEPS: usize = 10;

/// One runnable entry: a call to time.
enum Runner {
    Seq(Sequential, Buffer),
    Flax(FlaxLayer, Buffer),
    Exe(Executable, Vec<Buffer>),
    Train(Box<Trainer>, HostArray, HostArray),
}

impl Runner {
    /// Runs one call (a train "call" is `TRAIN_STEPS` steps) and returns
    /// its time in ms (per step for training).
    fn call(&self) -> Result<f64> {
        let start = Instant::now();
        match self {
            Runner::Seq(l, x) => l.call1(x, Training::No)?.block_until_ready()?,
            Runner::Flax(l, x) => l.call1(x, Training::No)?.block_until_ready()?,
            Runner::Exe(e, args) => {
                let args: Vec<&Buffer> = args.iter().collect();
                for o in e.execute(&args)? {
                    o.block_until_ready()?;
                }
            }
            Runner::Train(t, x, y) => {
                let opts = FitOptions {
                    batch_size: TRAIN_BATCH,
                    epochs: 1,
                    shuffle: false,
                    verbose: false,
                    ..Default::default()
                };
                t.fit(x, y, &opts)?;
                return Ok(start.elapsed().as_secs_f64() * 1e3 / TRAIN_STEPS as f64);
            }
        }
        Ok(start.elapsed().as_secs_f64() * 1e3)
    }
}

fn input(client: &Client, dims: &[usize]) -> Result<Buffer> {
    let n: usize = dims.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
        .collect();
    Ok(client.buffer_from_host(&data, dims)?)
}

fn mlp(Params(p): Params, Inputs(x): Inputs) -> xlayer::Result<Out> {
    Ok(Out::from(nn::softmax(
        &mlp_logits(&p, &x.into_leaf()?)?,
        1,
    )?))
}

fn cnn_logits(p: &Tree<Value>, x: &Value) -> xlayer::Result<Value> {
    let pool = |v: &Value| v.avg_pool(&Pool::new(&[1, 2, 2, 1]));
    let h = pool(&nn::relu(&conv(x, p.get("k1")?, p.get("c1")?)?)?)?;
    let h = pool(&nn::relu(&conv(&h, p.get("k2")?, p.get("c2")?)?)?)?;
    let n = h.dims()[0];
    let h = h.reshape(&[n, h.element_count() / n])?;
    let h = nn::relu(&(h.matmul(p.get("w1")?)? + p.get("b1")?)?)?;
    h.matmul(p.get("w2")?)? + p.get("b2")?
}

fn cnn(Params(p): Params, Inputs(x): Inputs) -> xlayer::Result<Out> {
    Ok(Out::from(nn::softmax(
        &cnn_logits(&p, &x.into_leaf()?)?,
        1,
    )?))
}

fn cnn_train(Params(p): Params, Inputs(x): Inputs) -> xlayer::Result<Out> {
    Ok(Out::from(cnn_logits(&p, &x.into_leaf()?)?))
}

fn cnn_shapes() -> Vec<(&'static str, Vec<usize>)> {
    vec![
        ("k1", vec![3, 3, 1, 32]),
        ("c1", vec![32]),
        ("k2", vec![3, 3, 32, 64]),
        ("c2", vec![64]),
        ("w1", vec![7 * 7 * 64, 200]),
        ("b1", vec![200]),
        ("w2", vec![200, 10]),
        ("b2", vec![10]),
    ]
}

fn train_data() -> Result<(HostArray, HostArray)> {
    let n = TRAIN_BATCH * TRAIN_STEPS;
    let x: Vec<f32> = (0..n * 784).map(|i| (i % 17) as f32 / 17.0).collect();
    let y: Vec<i32> = (0..n).map(|i| (i % 10) as i32).collect();
    Ok((
        HostArray::from_slice(&x, &[n, 28, 28, 1])?,
        HostArray::from_slice(&y, &[n])?,
    ))
}

fn trainer(client: &Client, layer: JaxLayer) -> Result<Runner> {
    let inp = Input::new(client, &[28, 28, 1], DType::F32);
    let model = Model::new(inp.clone(), layer.apply(&inp)?)?;
    let t = Trainer::new(
        model,
        Adam::new(1e-3),
        Loss::SparseCategoricalCrossentropy { from_logits: true },
        &[],
    );
    let (x, y) = train_data()?;
    Ok(Runner::Train(Box::new(t), x, y))
}

fn build(client: &Client, entry: &str) -> Result<Runner> {
    Ok(match entry {
        "mlp_b256" => {
            let p = random_params(client, &mlp_shapes(), 1)?;
            let layer = JaxLayer::builder(mlp).params(p).build()?;
            let model = Sequential::new().add(layer);
            Runner::Seq(model, input(client, &[256, 784])?)
        }
        "cnn_b32" | "cnn_b256" => {
            let batch = if entry == "cnn_b32" { 32 } else { 256 };
            let p = random_params(client, &cnn_shapes(), 2)?;
            let model = Sequential::new().add(JaxLayer::builder(cnn).params(p).build()?);
            Runner::Seq(model, input(client, &[batch, 28, 28, 1])?)
        }
        "block_b8x128x768" => Runner::Flax(
            FlaxLayer::builder(block(12)).seed(0).build()?,
            input(client, &[8, 128, 768])?,
        ),
        "matmul_1024" => {
            let spec = ArraySpec::of::<f32>([1024, 1024]);
            let exe = jit(client, &[spec.clone(), spec], |_b, a| {
                Ok(vec![a[0].matmul(&a[1])?])
            })?;
            let a = input(client, &[1024, 1024])?;
            let b = input(client, &[1024, 1024])?;
            Runner::Exe(exe, vec![a, b])
        }
        "train_mlp" => trainer(client, mlp_train_layer()?)?,
        "train_cnn" => trainer(
            client,
            JaxLayer::builder(cnn_train)
                .init_fn(|RngArg(k): RngArg, Inputs(_x): Inputs| init_from(cnn_shapes(), &k))
                .seed(0)
                .build()?,
        )?,
        other => bail!("unknown entry {other:?}; entries: {}", ENTRIES.join(", ")),
    })
}

/// `name=value;name=value` → XLA flags on top of the default options.
fn parse_flags(s: Option<&str>) -> Result<CompileOptions> {
    let mut opts = CompileOptions::new();
    for kv in s.unwrap_or("").split(';').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| anyhow!("flag {kv:?} is not name=value"))?;
        opts = match v {
            "true" => opts.xla_flag(k, true),
            "false" => opts.xla_flag(k, false),
            _ => match v.parse::<i64>() {
                Ok(i) => opts.xla_flag(k, i),
                Err(_) => opts.xla_flag(k, v),
            },
        };
    }
    Ok(opts)
}

struct Server {
    client: Client,
    runners: BTreeMap<String, Runner>,
    hlo: BTreeMap<(String, String), (Executable, Vec<Buffer>, f64)>,
}

impl Server {
    fn time(&mut self, entry: &str, n: usize) -> Result<serde_json::Value> {
        if !self.runners.contains_key(entry) {
            let r = build(&self.client, entry).with_context(|| format!("building {entry}"))?;
            r.call()?;
            r.call()?;
            self.runners.insert(entry.to_string(), r);
        }
        let r = &self.runners[entry];
        let runs = (0..n.max(1))
            .map(|_| r.call())
            .collect::<Result<Vec<f64>>>()?;
        Ok(json!({"entry": entry, "median_ms": median(&runs), "runs_ms": runs}))
    }

    fn hlo(
        &mut self,
        name: &str,
        file: &str,
        n: usize,
        flags: Option<&str>,
    ) -> Result<serde_json::Value> {
        let key = (file.to_string(), flags.unwrap_or("").to_string());
        if !self.hlo.contains_key(&key) {
            let program = Program::from_text_file(file)?;
            let opts = parse_flags(flags)?;
            let t = Instant::now();
            let exe = self.client.compile_with(&program, &opts)?;
            let compile_ms = t.elapsed().as_secs_f64() * 1e3;
            let inputs = xlayer::bench::random_inputs(&self.client, &exe.signature().inputs, 0)?;
            self.hlo.insert(key.clone(), (exe, inputs, compile_ms));
        }
        let (exe, inputs, compile_ms) = &self.hlo[&key];
        let r = |_| -> Result<f64> {
            let args: Vec<&Buffer> = inputs.iter().collect();
            let start = Instant::now();
            for o in exe.execute(&args)? {
                o.block_until_ready()?;
            }
            Ok(start.elapsed().as_secs_f64() * 1e3)
        };
        r(0)?;
        let runs = (0..n.max(1)).map(r).collect::<Result<Vec<f64>>>()?;
        Ok(
            json!({"entry": name, "median_ms": median(&runs), "runs_ms": runs, "compile_ms": compile_ms}),
        )
    }

    fn answer(&mut self, line: &str) -> Result<Option<serde_json::Value>> {
        let w: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| -> Result<usize> {
            w.get(i)
                .ok_or_else(|| anyhow!("missing count"))?
                .parse()
                .context("count")
        };
        Ok(Some(match w.as_slice() {
            ["time", entry, ..] => self.time(entry, num(2)?)?,
            ["hlo", name, file, _, rest @ ..] => {
                self.hlo(name, file, num(3)?, rest.first().copied())?
            }
            ["info"] => {
                let p = self.client.plugin();
                json!({
                    "plugin": p.path().display().to_string(),
                    "api_version": format!("{}.{}", p.api_version().0, p.api_version().1),
                    "platform_version": self.client.platform_version(),
                })
            }
            ["quit"] => return Ok(None),
            _ => bail!("unknown command {line:?}"),
        }))
    }
}

fn serve(client: Client) -> Result<()> {
    let mut server = Server {
        client,
        runners: BTreeMap::new(),
        hlo: BTreeMap::new(),
    };
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let reply = match server.answer(&line) {
            Ok(Some(v)) => v,
            Ok(None) => break,
            Err(e) => json!({"error": format!("{e:#}")}),
        };
        writeln!(out, "{reply}")?;
        out.flush()?;
    }
    Ok(())
}

fn main() -> Result<()> {
    let client = Client::cpu()?;
    if std::env::args().any(|a| a == "--serve") {
        return serve(client);
    }
    let mut server = Server {
        client,
        runners: BTreeMap::new(),
        hlo: BTreeMap::new(),
    };
    println!("| xlayer suite entry | median ms (15 calls) |");
    println!("|---|---|");
    for e in ENTRIES {
        let v = server.time(e, 15)?;
        println!(
            "| {e} | {:.3} |",
            v["median_ms"].as_f64().unwrap_or(f64::NAN)
        );
    }
    Ok(())
}
