//! MiniLM (all-MiniLM-L6-v2) at batch 32 on 1, 2 and 4 CPU devices
//! (issue #13), against the single-device program in the same process:
//!
//! - `tpN`: tensor parallel, heads and MLP units split over `model`
//!   (`models::bert_tp`, 2 all-reduces per layer);
//! - `dpN`: data parallel, the batch split over `data`, weights replicated;
//! - `dp2xtp2`: both, on a 2 × 2 `data` × `model` mesh.
//!
//! Every layout is one SPMD program compiled once with the default options
//! (`CompileOptions::new().spmd(n)`); its embeddings are checked against
//! the single-device ones (cosine >= 0.99999) before timing. Runs are
//! interleaved (a round runs every layout once, the single-device program
//! first); a time covers the execute and reading the embeddings back to the
//! host. Printed: the median time per layout and the median of the
//! per-round ratios t(1 device) / t(layout) (above 1: faster than one
//! device), with the single-device program without XNNPACK fusions (as
//! multi-device programs compile by default) as a second row, then the
//! weight bytes each device holds against replicated.
//!
//! `cargo bench --bench minilm_sharded` (`MINILM_SHARDED_ROUNDS`, default 9).

use anyhow::{ensure, Result};
use xlayer::models::bert::{checkpoint_names, param_tree, trace_sentence_embedding, BertConfig};
use xlayer::models::bert_tp::{param_spec, trace_sentence_embedding_sharded};
use xlayer::models::minilm::{cosine, MiniLm};
use xlayer::pjrt::multi_device::MULTI_DEVICE_CPU_FLAG;
use xlayer::sharding::{Array, Mesh, NamedSharding, PartitionSpec};
use xlayer::weights::{load_tree, SafetensorsFile};
use xlayer::{Buffer, Client, CompileOptions, Program, P};

mod common;

use common::interleaved::{load_average, median, ratios, rounds, spread};

const BATCH: usize = 32;

/// One way of spreading the model over a mesh.
struct Layout {
    name: &'static str,
    shape: &'static [usize],
    axes: &'static [&'static str],
    data: Option<&'static str>,
    model: Option<&'static str>,
}

const LAYOUTS: [Layout; 5] = [
    Layout {
        name: "tp2",
        shape: &[2],
        axes: &["model"],
        data: None,
        model: Some("model"),
    },
    Layout {
        name: "dp2",
        shape: &[2],
        axes: &["data"],
        data: Some("data"),
        model: None,
    },
    Layout {
        name: "tp4",
        shape: &[4],
        axes: &["model"],
        data: None,
        model: Some("model"),
    },
    Layout {
        name: "dp4",
        shape: &[4],
        axes: &["data"],
        data: Some("data"),
        model: None,
    },
    Layout {
        name: "dp2xtp2",
        shape: &[2, 2],
        axes: &["data", "model"],
        data: Some("data"),
        model: Some("model"),
    },
];

fn sentence(i: usize) -> String {
    const SUBJ: [&str; 4] = ["A man", "The young girl", "Our old dog", "A tired chef"];
    const VERB: [&str; 4] = ["is eating", "carries", "looks at", "quietly paints"];
    const OBJ: [&str; 4] = [
        "a piece of bread",
        "the red bicycle",
        "a bowl of soup",
        "the sky",
    ];
    format!(
        "{} {} {} near house {i}.",
        SUBJ[i % 4],
        VERB[(i / 4) % 4],
        OBJ[(i / 16) % 4]
    )
}

/// Token ids and mask of `BATCH` texts, padded (or cut) to `seq` tokens.
fn inputs(model: &MiniLm, sentences_per_text: usize, seq: usize) -> Result<(Vec<i32>, Vec<f32>)> {
    let texts: Vec<String> = (0..BATCH)
        .map(|i| {
            (0..sentences_per_text)
                .map(|k| sentence(i * sentences_per_text + k))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let (mut ids, mut mask) = (Vec::new(), Vec::new());
    for t in model.tokenize(&refs)? {
        for j in 0..seq {
            ids.push(t.ids.get(j).map_or(0, |&v| v as i32));
            mask.push(if j < t.ids.len() { 1.0 } else { 0.0 });
        }
    }
    Ok((ids, mask))
}

/// A compiled layout with its weights and inputs on the mesh.
struct Sharded {
    name: &'static str,
    exe: xlayer::Executable,
    args: Vec<Array>,
    out: NamedSharding,
    /// Weight bytes device 0 holds: all, encoder layers only.
    device_bytes: (usize, usize),
}

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let n_rounds: usize = std::env::var("MINILM_SHARDED_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(9);
    println!("load average at start: {}", load_average());
    let cpu = Client::cpu()?;
    let model = MiniLm::load(&cpu)?;
    let cfg: BertConfig = model.config().clone();
    let file = SafetensorsFile::open(model.load_info().dir.join("model.safetensors"))?;
    let wanted = param_tree(&cfg)?;
    let (tree, _) = load_tree(&cpu, &file, &wanted, &checkpoint_names())?;
    let entries = wanted.entries();
    let host: Vec<Vec<u8>> = tree
        .leaves()
        .iter()
        .map(|b| b.to_bytes())
        .collect::<xlayer::Result<_>>()?;
    let whole = entries
        .iter()
        .map(|(_, s)| s.size_in_bytes())
        .sum::<usize>();
    let whole_encoder = entries
        .iter()
        .filter(|(p, _)| p.starts_with("encoder/"))
        .map(|(_, s)| s.size_in_bytes())
        .sum::<usize>();

    for (case, per_text, seq) in [("short", 1usize, 16usize), ("long", 12, 128)] {
        let (ids, mask) = inputs(&model, per_text, seq)?;
        let dims = [BATCH, seq];
        let single = cpu.compile(&Program::mlir_text(
            trace_sentence_embedding(&cfg, BATCH, seq)?.to_stablehlo(),
        )?)?;
        let ids1 = cpu.buffer_from_host(&ids, &dims)?;
        let mask1 = cpu.buffer_from_host(&mask, &dims)?;
        let mut single_args: Vec<&Buffer> = tree.leaves();
        single_args.extend([&ids1, &mask1]);
        let run_single = || single.execute(&single_args)?.remove(0).to_vec::<f32>();
        let want = run_single()?;
        // The same program on one device without XNNPACK fusions, as the
        // multi-device programs compile by default: what the fusions alone
        // are worth.
        let single_no_xnn = cpu.compile_with(
            &Program::mlir_text(trace_sentence_embedding(&cfg, BATCH, seq)?.to_stablehlo())?,
            &CompileOptions::new().xla_flag(MULTI_DEVICE_CPU_FLAG, false),
        )?;
        let run_single_no_xnn = || {
            single_no_xnn
                .execute(&single_args)?
                .remove(0)
                .to_vec::<f32>()
        };

        let mut layouts = Vec::new();
        for l in &LAYOUTS {
            let devices = l.shape.iter().product();
            let mesh = Mesh::new(&Client::cpu_devices(devices)?, l.shape, l.axes)?;
            let program =
                trace_sentence_embedding_sharded(&cfg, &mesh, l.data, l.model, BATCH, seq)?;
            let exe = mesh.client().compile_with(
                &Program::mlir_text(program.to_stablehlo())?,
                &CompileOptions::new().spmd(devices),
            )?;
            let mut args = Vec::new();
            let mut device_bytes = (0, 0);
            for ((path, spec), bytes) in entries.iter().zip(&host) {
                let p = l
                    .model
                    .map_or_else(PartitionSpec::replicated, |a| param_spec(path, a));
                let a = Array::from_bytes(bytes, spec, &NamedSharding::new(&mesh, p))?;
                let shard = a.shards()[0].spec().size_in_bytes();
                device_bytes.0 += shard;
                if path.starts_with("encoder/") {
                    device_bytes.1 += shard;
                }
                args.push(a);
            }
            let rows = NamedSharding::new(&mesh, l.data.map_or_else(|| P![], |d| P![d]));
            args.push(Array::from_host(&ids, &dims, &rows)?);
            args.push(Array::from_host(&mask, &dims, &rows)?);
            layouts.push(Sharded {
                name: l.name,
                exe,
                args,
                out: rows,
                device_bytes,
            });
        }
        let run = |s: &Sharded| -> xlayer::Result<Vec<f32>> {
            let refs: Vec<&Array> = s.args.iter().collect();
            s.exe
                .execute_arrays(&refs, std::slice::from_ref(&s.out))?
                .remove(0)
                .to_vec::<f32>()
        };
        let h = cfg.hidden_size;
        for s in &layouts {
            let got = run(s)?;
            for i in 0..BATCH {
                let c = cosine(&got[i * h..(i + 1) * h], &want[i * h..(i + 1) * h]);
                ensure!(c >= 0.99999, "{} {case}: sentence {i}: cosine {c}", s.name);
            }
        }

        // One run per call and round; a failed run ends the benchmark.
        let mut calls: Vec<Box<dyn FnMut() + '_>> = vec![
            Box::new(|| drop(run_single().expect("single device"))),
            Box::new(|| drop(run_single_no_xnn().expect("single device, XNNPACK off"))),
        ];
        for s in &layouts {
            calls.push(Box::new(move || drop(run(s).expect(s.name))));
        }
        let mut refs: Vec<&mut dyn FnMut()> = calls.iter_mut().map(|c| c.as_mut() as _).collect();
        let times = rounds(n_rounds, 1, &mut refs);
        println!(
            "\nMiniLM b{BATCH} x {seq} tokens ({case}), {n_rounds} interleaved rounds, load {}:",
            load_average()
        );
        println!("| layout | devices | median ms | t(1 device) / t(layout) [min .. max] |");
        println!("|---|---|---|---|");
        println!(
            "| single device (anchor) | 1 | {:.1} | 1 |",
            median(&times[0]) / 1e6
        );
        let no_xnn = ratios(&times[0], &times[1], 1.0);
        let (lo, hi) = spread(&no_xnn);
        println!(
            "| single device, XNNPACK off | 1 | {:.1} | {:.2} [{lo:.2} .. {hi:.2}] |",
            median(&times[1]) / 1e6,
            median(&no_xnn),
        );
        for (k, (s, l)) in layouts.iter().zip(&LAYOUTS).enumerate() {
            let t = &times[k + 2];
            let r = ratios(&times[0], t, 1.0);
            let (lo, hi) = spread(&r);
            println!(
                "| {} | {} | {:.1} | {:.2} [{lo:.2} .. {hi:.2}] |",
                s.name,
                l.shape.iter().product::<usize>(),
                median(t) / 1e6,
                median(&r),
            );
        }
        if case == "short" {
            println!("\nweights per device (device 0's shards) against replicated:");
            println!("| layout | whole model | ratio | encoder layers | ratio |");
            println!("|---|---|---|---|---|");
            println!("| replicated | {whole} B | 1 | {whole_encoder} B | 1 |");
            for s in &layouts {
                let (all, enc) = s.device_bytes;
                println!(
                    "| {} | {all} B | {:.3} | {enc} B | {:.3} |",
                    s.name,
                    all as f64 / whole as f64,
                    enc as f64 / whole_encoder as f64
                );
            }
        }
    }
    println!("\nload average at end: {}", load_average());
    Ok(())
}
