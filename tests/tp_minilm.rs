//! Tensor-parallel all-MiniLM-L6-v2 (Megatron style, `models::bert_tp`) on
//! 2 CPU devices: heads and MLP units split over `model`, one `shard_map`,
//! compiled once; its sentence embeddings equal single-device MiniLM's.
//!
//! The whole model (6 encoder layers, 12 all-reduces) runs with the default
//! compile options: multi-device CPU compiles turn XNNPACK fusions off,
//! which deadlocked against the all-reduces on a 2-core machine
//! (`xlayer::pjrt::multi_device`, docs/sharding.md).

use anyhow::Result;
use xlayer::models::bert::{checkpoint_names, param_tree, trace_sentence_embedding, BertConfig};
use xlayer::models::bert_tp::{
    check_split, param_spec, trace_sentence_embedding_sharded, trace_sentence_embedding_tp,
};
use xlayer::models::minilm::{cosine, MiniLm};

/// Encoder layers run: all of MiniLM's.
const LAYERS: usize = 6;
use xlayer::sharding::{Array, Mesh, NamedSharding};
use xlayer::weights::{load_tree, SafetensorsFile};
use xlayer::{Client, CompileCache, CompileOptions, Error, Program, P};

#[test]
fn specs_split_heads_and_mlp_units() {
    let cfg = BertConfig::minilm_l6();
    let tree = param_tree(&cfg).unwrap();
    let mut split = 0;
    for path in tree.paths() {
        let spec = param_spec(&path, "model");
        let want = if path.contains("/self/") || path.contains("/intermediate/") {
            if path.ends_with("kernel") {
                P![None, "model"]
            } else {
                P!["model"]
            }
        } else if path.contains("output/dense/kernel") {
            P!["model", None]
        } else {
            P![]
        };
        assert_eq!(spec, want, "{path}");
        split += usize::from(spec != P![]);
    }
    // Per layer: 4 column kernels + 4 biases + 2 row kernels.
    assert_eq!(split, 6 * 10);
    check_split(&cfg, "model", 2).unwrap();
    let mesh = Mesh::new(&Client::cpu_devices(2).unwrap(), &[2], &["data"]).unwrap();
    assert!(matches!(
        trace_sentence_embedding_sharded(&cfg, &mesh, Some("data"), None, 3, 8),
        Err(Error::IndivisibleDimension { tensor, size: 3, shards: 2, .. }) if tensor == "batch"
    ));
    assert!(matches!(
        trace_sentence_embedding_sharded(&cfg, &mesh, None, Some("model"), 2, 8),
        Err(Error::UnknownName { name, .. }) if name == "model"
    ));
    assert!(matches!(
        check_split(&cfg, "model", 8),
        Err(Error::IndivisibleDimension { tensor, size: 12, shards: 8, .. }) if tensor == "num_attention_heads"
    ));
}

#[test]
fn tensor_parallel_minilm_matches_single_device() -> Result<()> {
    let dir = xla_build::ensure_asset(&xla_build::MINILM)?;
    let cpu = Client::cpu()?;
    let model = MiniLm::load_from_dir(&cpu, &dir, CompileCache::from_env()?)?;
    let texts = [
        "The cat sits on the mat.",
        "Tensor parallelism splits attention heads over devices.",
        "Rust",
        "A longer sentence, with punctuation; and several clauses, to pad the others.",
    ];
    let cfg = model.config().clone();
    assert_eq!(cfg.num_layers, LAYERS);
    let mesh = Mesh::new(&Client::cpu_devices(2)?, &[2], &["model"])?;
    let file = SafetensorsFile::open(dir.join("model.safetensors"))?;
    let wanted = param_tree(&cfg)?;
    let (tree, _) = load_tree(&cpu, &file, &wanted, &checkpoint_names())?;
    let mut weights = Vec::new();
    let (mut sharded_bytes, mut whole_bytes) = (0usize, 0usize);
    for ((path, spec), buf) in wanted.entries().into_iter().zip(tree.leaves()) {
        let sharding = NamedSharding::new(&mesh, param_spec(&path, "model"));
        let a = Array::from_bytes(&buf.to_bytes()?, spec, &sharding)?;
        whole_bytes += spec.size_in_bytes();
        sharded_bytes += a.shards()[0].spec().size_in_bytes();
        weights.push(a);
    }
    let q = wanted
        .paths()
        .iter()
        .position(|p| p == "encoder/layer/0/attention/self/query/kernel")
        .unwrap();
    assert_eq!(weights[q].shards()[1].dims(), &[384, 192]);
    let o = wanted
        .paths()
        .iter()
        .position(|p| p == "encoder/layer/0/output/dense/kernel")
        .unwrap();
    assert_eq!(weights[o].shards()[0].dims(), &[768, 384]);
    println!(
        "weights per device: {sharded_bytes} bytes sharded over 2 vs {whole_bytes} replicated ({:.3})",
        sharded_bytes as f64 / whole_bytes as f64
    );
    assert!(sharded_bytes < whole_bytes);

    // Inputs padded to the longest sentence.
    let tokens = model.tokenize(&texts)?;
    let seq = tokens.iter().map(|t| t.ids.len()).max().unwrap_or(1);
    let (mut ids, mut mask) = (Vec::new(), Vec::new());
    for t in &tokens {
        for j in 0..seq {
            ids.push(t.ids.get(j).map_or(0, |&i| i as i32));
            mask.push(if j < t.ids.len() { 1f32 } else { 0.0 });
        }
    }
    let repl = NamedSharding::replicated(&mesh);
    let dims = [texts.len(), seq];
    let (ids_host, mask_host) = (ids, mask);
    let ids = Array::from_host(&ids_host, &dims, &repl)?;
    let mask = Array::from_host(&mask_host, &dims, &repl)?;

    // Single device: the same program untouched, same padded inputs.
    let single = cpu.compile(&Program::mlir_text(
        trace_sentence_embedding(&cfg, texts.len(), seq)?.to_stablehlo(),
    )?)?;
    let mut single_args: Vec<&xlayer::Buffer> = tree.leaves();
    let ids1 = cpu.buffer_from_host(&ids_host, &dims)?;
    let mask1 = cpu.buffer_from_host(&mask_host, &dims)?;
    single_args.extend([&ids1, &mask1]);
    let want_flat = single.execute(&single_args)?.remove(0).to_vec::<f32>()?;
    let h = cfg.hidden_size;
    let want: Vec<&[f32]> = want_flat.chunks(h).collect();

    let program = trace_sentence_embedding_tp(&cfg, &mesh, "model", texts.len(), seq)?;
    let text = program.to_stablehlo();
    assert!(text.contains("sdy.manual_computation"));
    // Two psums per layer, nothing else crosses devices.
    assert_eq!(text.matches("all_reduce").count(), 2 * LAYERS, "{text}");
    // Default options: the multi-device defaults keep the all-reduces
    // from deadlocking (no test-only flag).
    let exe = mesh
        .client()
        .compile_with(&Program::mlir_text(text)?, &CompileOptions::new().spmd(2))?;
    let mut args: Vec<&Array> = weights.iter().collect();
    args.extend([&ids, &mask]);
    let out = exe.execute_arrays(&args, &[repl])?;
    let got = out[0].to_vec::<f32>()?;
    for (i, w) in want.iter().enumerate() {
        let c = cosine(&got[i * h..(i + 1) * h], w);
        assert!(c >= 0.99999, "sentence {i}: cosine {c}");
    }
    Ok(())
}
