//! The `xlayer` command line: run, inspect and time XLA programs through
//! the PJRT plugin, and inspect its devices and safetensors files.
//!
//! ```text
//! xlayer doctor                          # plugin path, C API version, attributes, devices
//! xlayer devices                         # one line per device
//! xlayer run PROGRAM --inputs in.safetensors [--outputs out.safetensors] [--signature TYPES]
//! xlayer bench PROGRAM [--inputs in.safetensors | --random] [--iters N] [--warmup N]
//!              [--peak-gflops X --peak-gbps Y | --roofline] [--json]
//! xlayer hlo PROGRAM [--cost] [--proto out.pb]   # optimized HLO text, from the compiler
//! xlayer inspect FILE.safetensors [--json]       # names, dtypes, shapes, sizes, total
//! ```
//!
//! `PROGRAM` is StableHLO text (`jax.jit(f).lower(...).as_text()`), a
//! serialized `jax.export` artifact (`exp.serialize()`), or MLIR bytecode
//! with `--signature "f32[2,3],f32[3,4]"` giving its input types. The kind
//! is recognised by content, not by file name.
//!
//! Inputs are bound by name (`arg0`, `arg1`, ... or `0`, `1`, ...: the
//! position in the Python call) or, when no tensor is so named, in file
//! order; dtypes and shapes are checked before anything runs. Outputs are
//! printed, or saved as `out0`, `out1`, ... with `--outputs`.
//!
//! `run`, `bench` and `hlo` compile `PROGRAM` in a child process (this
//! binary, as `xlayer __isolated-compile`), so that a crash of the plugin's
//! compiler on a corrupt file is reported as an error; `--no-isolate`
//! compiles in this process.
//!
//! Exit status: 0 on success, 1 on an error (bad program file, missing or
//! mismatched inputs, unreadable safetensors, plugin errors), 2 on a usage
//! error. See `docs/cli.md`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use xlayer::bench::{bench, random_inputs, BenchOptions, Roofline};
use xlayer::io::{bind_inputs, read_safetensors, upload, write_safetensors};
use xlayer::{ArraySpec, Buffer, Client, DType, Plugin, Program, Signature};

/// Run, inspect and time XLA programs through a PJRT plugin.
///
/// Environment: XLAYER_PJRT_PLUGIN=/path/plugin.so overrides the default
/// (CPU) plugin; XLAYER_HOME is where fetched plugins and the measured
/// roofline are cached; XLAYER_LOG=1 shows the plugin's own log lines (as
/// --verbose does).
#[derive(Parser)]
#[command(name = "xlayer", version)]
struct Cli {
    /// Show the PJRT plugin's own log lines (absl/XLA INFO lines on stderr),
    /// hidden by default; XLAYER_LOG=1 does the same.
    #[arg(long, short, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the default PJRT plugin (fetching it if needed) and report its
    /// path, C API version, attributes, platform and devices.
    Doctor,
    /// List the addressable devices of the default plugin (index, id,
    /// kind, description).
    Devices {
        /// On the CPU plugin: expose this many devices (its
        /// `cpu_device_count` option; without it 1, as the library's
        /// `Client::cpu()` and JAX; `Client::cpu_devices(n)` makes n).
        #[arg(long)]
        cpu_count: Option<usize>,
    },
    /// Compile PROGRAM, run it on the inputs, print or save the outputs.
    Run {
        #[command(flatten)]
        program: ProgramArgs,
        /// Inputs, a safetensors file (tensors named argK, or in file order).
        #[arg(long, short)]
        inputs: Option<PathBuf>,
        /// Save the outputs (named out0, out1, ...) instead of printing them.
        #[arg(long, short)]
        outputs: Option<PathBuf>,
    },
    /// Time PROGRAM: warm-up, timed runs, GFLOP/s, GB/s, roofline fraction.
    Bench {
        #[command(flatten)]
        program: ProgramArgs,
        /// Inputs, a safetensors file.
        #[arg(long, short, conflicts_with = "random")]
        inputs: Option<PathBuf>,
        /// Random inputs of the program's input types (the default when no --inputs).
        #[arg(long)]
        random: bool,
        /// Timed runs.
        #[arg(long, default_value_t = 20)]
        iters: usize,
        /// Untimed warm-up runs.
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// Peak compute of the device, GFLOP/s (with --peak-gbps).
        #[arg(long, requires = "peak_gbps")]
        peak_gflops: Option<f64>,
        /// Peak memory bandwidth of the device, GB/s (with --peak-gflops).
        #[arg(long, requires = "peak_gflops")]
        peak_gbps: Option<f64>,
        /// Compare against a roofline measured once (matmul + copy) and cached.
        #[arg(long, conflicts_with = "peak_gflops")]
        roofline: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the optimized HLO of PROGRAM, as XLA's own text.
    Hlo {
        #[command(flatten)]
        program: ProgramArgs,
        /// Also print the compiler's cost analysis and memory statistics.
        #[arg(long)]
        cost: bool,
        /// Also save the optimized program the plugin returns (a serialized
        /// HloModuleProtoWithConfig on CPU).
        #[arg(long)]
        proto: Option<PathBuf>,
    },
    /// List the tensors of a safetensors file: names, dtypes, shapes, sizes.
    Inspect {
        /// The file.
        file: PathBuf,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct ProgramArgs {
    /// StableHLO text, a jax.export artifact, or MLIR bytecode (with --signature).
    program: PathBuf,
    /// Input types of a bytecode program, e.g. "f32[2,3],i32[],bool[4]".
    #[arg(long)]
    signature: Option<String>,
    /// Compile in this process. By default the program, a file xlayer did
    /// not write, is compiled in a child process, so that a crash of the
    /// plugin's compiler on it is reported as an error.
    #[arg(long)]
    no_isolate: bool,
}

impl ProgramArgs {
    /// The compile options: isolated unless `--no-isolate`.
    fn compile_options(&self) -> xlayer::CompileOptions {
        let opts = xlayer::CompileOptions::new();
        if self.no_isolate {
            opts
        } else {
            opts.isolated()
        }
    }
}

fn main() -> ExitCode {
    // The child side of an isolated compile (CompileOptions::isolated).
    if std::env::args_os().nth(1).as_deref()
        == Some(std::ffi::OsStr::new(xlayer::pjrt::isolate::CHILD_COMMAND))
    {
        return ExitCode::from(xlayer::pjrt::isolate::child_main() as u8);
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    // Decided before any thread starts: the first plugin load, on this
    // thread, then sets the variable the plugin reads with no other thread
    // running (see xlayer::pjrt::logging).
    xlayer::set_plugin_logging(cli.verbose || xlayer::pjrt::logging::log_requested_by_env());
    let result = match cli.command {
        Command::Doctor => doctor(),
        Command::Devices { cpu_count } => devices(cpu_count),
        Command::Run {
            program,
            inputs,
            outputs,
        } => run(&program, inputs.as_deref(), outputs.as_deref()),
        Command::Bench {
            program,
            inputs,
            random: _,
            iters,
            warmup,
            peak_gflops,
            peak_gbps,
            roofline,
            json,
        } => {
            let roof = match (peak_gflops, peak_gbps) {
                (Some(g), Some(b)) => Some(RooflineChoice::Given(g, b)),
                _ if roofline => Some(RooflineChoice::Measured),
                _ => None,
            };
            bench_cmd(&program, inputs.as_deref(), iters, warmup, roof, json)
        }
        Command::Hlo {
            program,
            cost,
            proto,
        } => hlo(&program, cost, proto.as_deref()),
        Command::Inspect { file, json } => inspect(&file, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Print the chain of causes, skipping a cause already quoted by
            // the message before it (xlayer's errors embed their source).
            let mut msg = String::new();
            for cause in e.chain() {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    if !msg.is_empty() {
                        msg.push_str(": ");
                    }
                    msg.push_str(&c);
                }
            }
            eprintln!("xlayer: error: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn doctor() -> Result<()> {
    let plugin = Plugin::default_plugin()?;
    let (major, minor) = plugin.api_version();
    println!("plugin:       {}", plugin.path().display());
    println!("C API:        {major}.{minor}");
    for (k, v) in plugin.attributes() {
        println!("attribute:    {k} = {v}");
    }
    let client = Client::default_plugin()?;
    println!(
        "platform:     {} ({})",
        client.platform_name(),
        client.platform_version()
    );
    println!(
        "devices:      {} (multi-device programs: one SPMD program over N of them; see docs/sharding.md)",
        client.devices().len()
    );
    if client.platform_name() == "cpu" {
        println!("              CPU device count: the plugin's `cpu_device_count` option; xlayer's clients have 1 (as JAX), Client::cpu_devices(n) n; `xlayer devices --cpu-count N` lists N; `xlayer run` of an artifact exported for N devices makes N");
    }
    for d in client.devices() {
        println!(
            "  [{}] id={} kind={} {}",
            d.index(),
            d.id(),
            d.kind(),
            d.description()
        );
    }
    Ok(())
}

fn devices(cpu_count: Option<usize>) -> Result<()> {
    let client = match cpu_count {
        None => Client::default_plugin()?,
        Some(n) => {
            let plugin = Plugin::default_plugin()?;
            let count = i64::try_from(n).context("--cpu-count")?;
            anyhow::ensure!(n > 0, "--cpu-count must be at least 1");
            Client::new(
                &plugin,
                &xlayer::ClientOptions::new().cpu_device_count(count),
            )?
        }
    };
    for d in client.devices() {
        println!(
            "{}\t{}\t{}\t{}",
            d.index(),
            d.id(),
            d.kind(),
            d.description()
        );
    }
    Ok(())
}

/// Parses `f32[2,3]`-style types separated by commas.
fn parse_signature(s: &str) -> Result<Signature> {
    let mut inputs = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let open = rest.find('[').with_context(|| {
            format!("bad type in --signature at `{rest}`: expected DTYPE[DIMS], e.g. f32[2,3]")
        })?;
        let close = rest
            .find(']')
            .filter(|&c| c > open)
            .with_context(|| format!("bad type in --signature at `{rest}`: missing `]`"))?;
        let name = rest[..open].trim();
        let dtype = DType::ALL
            .into_iter()
            .find(|d| d.to_string() == name || d.mlir_name() == name)
            .with_context(|| {
                format!("unknown dtype `{name}` in --signature (use f32, bf16, i32, u8, bool, ...)")
            })?;
        let dims = rest[open + 1..close]
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(|d| {
                d.parse::<usize>()
                    .with_context(|| format!("dimension `{d}` in --signature is not a number"))
            })
            .collect::<Result<Vec<_>>>()?;
        inputs.push(ArraySpec::new(dtype, dims));
        rest = rest[close + 1..].trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    Ok(Signature {
        inputs,
        ..Default::default()
    })
}

fn load_program(args: &ProgramArgs) -> Result<Program> {
    let sig = args.signature.as_deref().map(parse_signature).transpose()?;
    Ok(Program::from_file_with_signature(&args.program, sig)?)
}

fn load_inputs(client: &Client, program: &Program, path: &Path) -> Result<Vec<Buffer>> {
    let tensors = read_safetensors(path)?;
    let bound = bind_inputs(program, &tensors)
        .with_context(|| format!("binding {} to {}", path.display(), program.name()))?;
    Ok(upload(client, &bound)?)
}

fn preview(b: &Buffer) -> Result<String> {
    const MAX: usize = 16;
    fn join<T: std::fmt::Display>(v: &[T]) -> String {
        v.iter()
            .take(MAX)
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
    let s = match b.dtype() {
        DType::Bool => join(&b.to_vec::<bool>()?),
        DType::I8 => join(&b.to_vec::<i8>()?),
        DType::I16 => join(&b.to_vec::<i16>()?),
        DType::I32 => join(&b.to_vec::<i32>()?),
        DType::I64 => join(&b.to_vec::<i64>()?),
        DType::U8 => join(&b.to_vec::<u8>()?),
        DType::U16 => join(&b.to_vec::<u16>()?),
        DType::U32 => join(&b.to_vec::<u32>()?),
        DType::U64 => join(&b.to_vec::<u64>()?),
        DType::F16 => join(&b.to_vec::<xlayer::f16>()?),
        DType::BF16 => join(&b.to_vec::<xlayer::bf16>()?),
        DType::F32 => join(&b.to_vec::<f32>()?),
        DType::F64 => join(&b.to_vec::<f64>()?),
    };
    let more = if b.element_count() > MAX {
        format!(", ... ({} more)", b.element_count() - MAX)
    } else {
        String::new()
    };
    Ok(format!("[{s}{more}]"))
}

/// A client of the default plugin with at least `n` devices: on CPU, one
/// with exactly `n` devices (the default has 1).
fn client_for(n: usize) -> Result<Client> {
    let client = Client::default_plugin()?;
    if client.devices().len() >= n || client.platform_name() != "cpu" {
        return Ok(client);
    }
    let plugin = client.plugin().clone();
    drop(client);
    let count = i64::try_from(n).context("device count")?;
    Ok(Client::new(
        &plugin,
        &xlayer::ClientOptions::new().cpu_device_count(count),
    )?)
}

/// `xlayer run` of a program partitioned over several devices (a
/// `jax.export` artifact exported for N > 1): inputs scattered by the
/// artifact's shardings, one SPMD run, outputs gathered.
fn run_sharded(
    args: &ProgramArgs,
    program: &Program,
    inputs: Option<&Path>,
    outputs: Option<&Path>,
) -> Result<()> {
    let n = program.device_count();
    let client = client_for(n)?;
    let plan = xlayer::sharding::ExportPlan::new(&client, program)?;
    let tensors = match inputs {
        Some(p) => read_safetensors(p)?,
        None => Vec::new(),
    };
    let bound = bind_inputs(program, &tensors)
        .with_context(|| format!("binding the inputs to {}", program.name()))?;
    let exe = client.compile_with(program, &args.compile_options().spmd(n))?;
    let host: Vec<(&ArraySpec, &[u8])> = bound
        .iter()
        .map(|t| (&t.array.spec, t.array.bytes.as_slice()))
        .collect();
    let arrays = plan.run(program, &exe, &host)?;
    eprintln!(
        "ran `{}` on {n} devices, mesh {:?}",
        program.name(),
        plan.mesh
    );
    match outputs {
        Some(path) => {
            let named = arrays
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    Ok(xlayer::NamedArray::new(
                        format!("out{i}"),
                        a.spec().clone(),
                        a.to_bytes()?,
                    ))
                })
                .collect::<Result<Vec<_>>>()?;
            xlayer::io::write_host_safetensors(path, &named)?;
            println!("wrote {} output(s) to {}", arrays.len(), path.display());
        }
        None => {
            for (i, a) in arrays.iter().enumerate() {
                let gathered =
                    client.buffer_from_bytes(&a.to_bytes()?, a.spec(), client.default_device())?;
                println!("out{i}: {} = {}", a.spec(), preview(&gathered)?);
            }
        }
    }
    Ok(())
}

fn run(args: &ProgramArgs, inputs: Option<&Path>, outputs: Option<&Path>) -> Result<()> {
    let program = load_program(args)?;
    if program.device_count() > 1 {
        return run_sharded(args, &program, inputs, outputs);
    }
    let client = Client::default_plugin()?;
    let buffers = match inputs {
        Some(p) => load_inputs(&client, &program, p)?,
        None if program.signature().inputs.is_empty() => Vec::new(),
        None => bail!(
            "`{}` takes {} input(s) {}; pass them with --inputs FILE.safetensors",
            program.name(),
            program.signature().inputs.len(),
            program.signature()
        ),
    };
    let exe = client.compile_with(&program, &args.compile_options())?;
    let outs = exe.execute(&buffers.iter().collect::<Vec<_>>())?;
    match outputs {
        Some(path) => {
            let named: Vec<(String, &Buffer)> = outs
                .iter()
                .enumerate()
                .map(|(i, b)| (format!("out{i}"), b))
                .collect();
            write_safetensors(path, &named)?;
            println!("wrote {} output(s) to {}", outs.len(), path.display());
        }
        None => {
            for (i, b) in outs.iter().enumerate() {
                println!("out{i}: {} = {}", b.spec(), preview(b)?);
            }
        }
    }
    Ok(())
}

enum RooflineChoice {
    Given(f64, f64),
    Measured,
}

fn bench_cmd(
    args: &ProgramArgs,
    inputs: Option<&Path>,
    iters: usize,
    warmup: usize,
    roof: Option<RooflineChoice>,
    json: bool,
) -> Result<()> {
    let program = load_program(args)?;
    if program.device_count() > 1 {
        bail!(
            "`{}` is partitioned over {} devices; `xlayer bench` times single-device programs \
             (run it with `xlayer run`, print its partitioned program with `xlayer hlo`)",
            program.name(),
            program.device_count()
        );
    }
    if inputs.is_none() {
        // Refuse inputs too large for the host before compiling.
        xlayer::bench::check_host_memory(
            "random input",
            &program.signature().inputs,
            xlayer::bench::available_memory(),
        )?;
    }
    let client = Client::default_plugin()?;
    let exe = client.compile_with(&program, &args.compile_options())?;
    let buffers = match inputs {
        Some(p) => load_inputs(&client, &program, p)?,
        // The compiled executable's own parameter types, sizes checked
        // against the host memory before anything is allocated.
        None => random_inputs(&client, &exe.signature().inputs, 0)?,
    };
    let mut opts = BenchOptions::new().iters(iters).warmup(warmup);
    match roof {
        Some(RooflineChoice::Given(g, b)) => opts = opts.roofline(Roofline::new(g, b)?),
        Some(RooflineChoice::Measured) => {
            opts = opts.roofline(Roofline::cached_or_measure(&client)?)
        }
        None => {}
    }
    let report = bench(&exe, &buffers.iter().collect::<Vec<_>>(), &opts)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        print!("{report}");
    }
    Ok(())
}

fn hlo(args: &ProgramArgs, cost: bool, proto: Option<&Path>) -> Result<()> {
    let program = load_program(args)?;
    // A program partitioned over N devices is compiled for N (on CPU, a
    // client with N devices), as `run` does; its text is one device's.
    let n = program.device_count();
    let (client, options) = if n > 1 {
        (client_for(n)?, args.compile_options().spmd(n))
    } else {
        (Client::default_plugin()?, args.compile_options())
    };
    let (exe, text) = client.compile_with_hlo_text(&program, &options)?;
    print!("{text}");
    if cost {
        println!("\n// cost analysis");
        match exe.cost_analysis() {
            Ok(c) => {
                println!("//   ({})", c.source);
                for line in c.to_string().lines() {
                    println!("//   {line}");
                }
            }
            Err(e) if e.is_unimplemented() => println!("//   unknown: the plugin gives none ({e})"),
            Err(e) => return Err(e.into()),
        }
        match exe.compiled_memory_stats() {
            Ok(m) => println!(
                "// memory: arguments {} B, outputs {} B, aliased {} B, temporaries {} B, peak {} B",
                m.argument_size_in_bytes, m.output_size_in_bytes, m.alias_size_in_bytes, m.temp_size_in_bytes, m.peak_memory_in_bytes
            ),
            Err(xlayer::Error::Unsupported { .. }) => println!("// memory: not reported by this plugin"),
            Err(e) => return Err(e.into()),
        }
        println!("// fingerprint: {}", exe.fingerprint()?);
    }
    if let Some(path) = proto {
        let p = exe.optimized_hlo()?;
        std::fs::write(path, &p.bytes)
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!(
            "wrote the optimized program ({} format, {} bytes) to {}",
            p.format,
            p.bytes.len(),
            path.display()
        );
    }
    Ok(())
}

fn inspect(path: &Path, json: bool) -> Result<()> {
    let tensors = read_safetensors(path)?;
    let total: usize = tensors.iter().map(|t| t.array.bytes.len()).sum();
    if json {
        let list: Vec<_> = tensors
            .iter()
            .map(|t| serde_json::json!({"name": t.name, "dtype": t.array.spec.dtype.to_safetensors().to_string(), "shape": t.array.spec.dims, "bytes": t.array.bytes.len()}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"file": path.display().to_string(), "tensors": list, "total_bytes": total})
            )?
        );
        return Ok(());
    }
    let width = tensors
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    println!(
        "{:width$}  {:5}  {:16}  {:>12}",
        "name", "dtype", "shape", "bytes"
    );
    for t in &tensors {
        let shape = format!("{:?}", t.array.spec.dims);
        println!(
            "{:width$}  {:5}  {:16}  {:>12}",
            t.name,
            t.array.spec.dtype.to_safetensors().to_string(),
            shape,
            t.array.bytes.len()
        );
    }
    println!("{} tensor(s), {total} bytes", tensors.len());
    Ok(())
}
