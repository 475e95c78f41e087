//! The cost of compiling in a child process (`CompileOptions::isolated`):
//! median compile time of a small program (the MLP of the interchange
//! fixtures) and of a MiniLM bucket (batch 1, 8 tokens), in this process
//! and isolated, and their ratio. No compilation cache is involved.
//!
//! ```text
//! cargo bench --bench isolation
//! ```
//! Results are recorded in `docs/cli.md` ("Isolation").

use std::path::Path;
use std::time::{Duration, Instant};

use xlayer::models::bert::{trace_sentence_embedding, BertConfig};
use xlayer::{Client, CompileOptions, Program};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time(client: &Client, program: &Program, opts: &CompileOptions, runs: usize) -> Duration {
    median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                client.compile_with(program, opts).expect("compile");
                t.elapsed()
            })
            .collect(),
    )
}

fn main() {
    let client = Client::cpu().expect("CPU client");
    let isolated = CompileOptions::new().isolated_as(env!("CARGO_BIN_EXE_xlayer"));
    let plain = CompileOptions::new();
    let mlp = Program::from_file(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/interchange/mlp.mlir"),
    )
    .expect("mlp.mlir");
    let minilm = trace_sentence_embedding(&BertConfig::minilm_l6(), 1, 8)
        .and_then(|c| c.program())
        .expect("MiniLM program");
    println!(
        "{:<22} {:>12} {:>12} {:>7}",
        "program", "in-process", "isolated", "ratio"
    );
    for (name, program, runs) in [("mlp (text)", &mlp, 9), ("MiniLM b1 s8", &minilm, 5)] {
        // One untimed compile each, so that both start warm.
        client.compile_with(program, &plain).expect("warm-up");
        client.compile_with(program, &isolated).expect("warm-up");
        let a = time(&client, program, &plain, runs);
        let b = time(&client, program, &isolated, runs);
        println!(
            "{name:<22} {:>9.1} ms {:>9.1} ms {:>6.2}x",
            a.as_secs_f64() * 1e3,
            b.as_secs_f64() * 1e3,
            b.as_secs_f64() / a.as_secs_f64()
        );
    }
}
