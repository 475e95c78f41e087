//! Tracing + emission time of a ~10,000-op graph next to the CPU plugin's
//! compile time for the same graph, in one run. Goal: tracing < 5% of compile.
//!
//! `cargo bench --bench trace`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use xlayer::builder::{trace, Computation, Tree};
use xlayer::{ArraySpec, Client};

/// A chain of elementwise ops and small matmuls: ~10,000 recorded ops.
fn build() -> Computation {
    let inputs = Tree::List(vec![
        Tree::Leaf(ArraySpec::of::<f32>([16, 16])),
        Tree::Leaf(ArraySpec::of::<f32>([16, 16])),
    ]);
    trace("chain", &inputs, |_b, t| {
        let x = t.into_leaves();
        let (mut h, w) = (x[0].clone(), x[1].clone());
        for i in 0..1000 {
            h = (&h * 0.5)?;
            h = h.tanh()?;
            h = (&h + 1.0)?;
            if i % 4 == 0 {
                h = h.matmul(&w)?;
            }
            h = h.maximum(&x[0])?;
            h = (&h - &w)?;
        }
        Ok(Tree::leaf(h))
    })
    .expect("trace")
}

fn main() {
    let client = Client::cpu().expect("CPU plugin");
    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(20)
        .measurement_time(Duration::from_secs(10))
        .warm_up_time(Duration::from_secs(1));
    let comp = build();
    let ops = comp.graph().nodes.len();
    c.bench_function("trace+emit ~10k ops", |bch| {
        bch.iter(|| black_box(build().to_stablehlo()))
    });

    // Side-by-side in this run: median of a few traces vs a few compiles.
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let trace_t = median(
        (0..7)
            .map(|_| {
                let t = Instant::now();
                black_box(build().to_stablehlo());
                t.elapsed()
            })
            .collect(),
    );
    let program = comp.program().expect("program");
    let compile_t = median(
        (0..3)
            .map(|_| {
                let t = Instant::now();
                black_box(client.compile(&program).expect("compile"));
                t.elapsed()
            })
            .collect(),
    );
    println!(
        "graph: {ops} ops; trace+emit {:.2} ms; plugin compile {:.1} ms; ratio {:.2}% (goal < 5%)",
        trace_t.as_secs_f64() * 1e3,
        compile_t.as_secs_f64() * 1e3,
        100.0 * trace_t.as_secs_f64() / compile_t.as_secs_f64()
    );
    c.final_summary();
}
