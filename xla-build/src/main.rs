//! `xla-build`: fetch and locate PJRT plugins from the command line.
//!
//! ```text
//! cargo run -p xla-build -- fetch cpu      # download, verify, unpack (idempotent): ZML's build
//! cargo run -p xla-build -- fetch cpu-xla-pjrt  # the former default CPU build (xla-cpu-pjrt 0.0.1)
//! cargo run -p xla-build -- fetch cpu-lammps  # a third: jaxlib 0.11.2's XLA CPU plugin
//! cargo run -p xla-build -- path cpu       # print the plugin path, fetching if needed
//! cargo run -p xla-build -- fetch minilm   # a pinned data asset (model weights)
//! cargo run -p xla-build -- fetch smollm2  # the SmolLM2-135M GGUF decoder
//! cargo run -p xla-build -- status         # what is cached, what each recipe pins
//! ```
//! To load the plugin and list its devices, use `cargo run -- doctor` (the
//! `xlayer` binary), which goes through the runtime itself.

use std::process::ExitCode;

use xla_build::{
    asset, ensure_asset, ensure_recipe, find_asset, find_recipe, home, provision_asset,
    provision_recipe, recipe, recipe_named, Recipe, Target, ASSETS, RECIPES,
};

const USAGE: &str = "usage: xla-build <command> [target]

commands:
  fetch [TARGET|ASSET]  download, verify (sha256) and unpack a plugin or an asset (default: cpu)
  path [TARGET|ASSET]   print its path (a file, or an asset's folder), fetching it first if needed
  status                show the cache folder, each recipe, and what is cached

targets: cpu (ZML's XLA CPU build; also called cpu-zml), cuda12, tpu;
         cpu-xla-pjrt, cpu-lammps (other CPU plugin builds: xla-cpu-pjrt 0.0.1, jaxlib 0.11.2's)
assets: minilm (all-MiniLM-L6-v2: safetensors weights, tokenizer.json, configs)
        smollm2 (SmolLM2-135M-Instruct: one Q4_1 GGUF file, 98 MB)
environment: XLAYER_HOME (cache), XLAYER_PJRT_PLUGIN[_CPU|_CUDA12|_TPU|_CPU_XLA_PJRT|_CPU_LAMMPS] (overrides),
             XLAYER_CPU_RECIPE=cpu-xla-pjrt|cpu-lammps (another CPU plugin build for every CPU client),
             XLAYER_MINILM_DIR, XLAYER_SMOLLM2_DIR (asset overrides), XLAYER_PYTHON";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xla-build: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn recipe_arg(args: &[String]) -> Result<&'static Recipe, xla_build::Error> {
    match args.get(1) {
        None => Ok(recipe(Target::Cpu)),
        Some(s) => match recipe_named(s) {
            Some(r) => Ok(r),
            None => s.parse::<Target>().map(recipe),
        },
    }
}

fn run(args: &[String]) -> Result<(), xla_build::Error> {
    let cmd = args.first().map(String::as_str);
    if let Some(a) = args.get(1).and_then(|n| asset(n)) {
        match cmd {
            Some("fetch") => {
                println!("{}", provision_asset(a)?.display());
                return Ok(());
            }
            Some("path") => {
                println!("{}", ensure_asset(a)?.display());
                return Ok(());
            }
            _ => {}
        }
    }
    match args.first().map(String::as_str) {
        Some("fetch") => {
            let r = recipe_arg(args)?;
            let path = provision_recipe(r)?;
            println!("{}", path.display());
            eprintln!(
                "note: at run time the {} plugin needs {}",
                r.name, r.runtime_note
            );
        }
        Some("path") => println!("{}", ensure_recipe(recipe_arg(args)?)?.display()),
        Some("status") => {
            println!("cache: {}", home()?.display());
            for r in RECIPES {
                let state = match find_recipe(r)? {
                    Some(p) => format!("found at {}", p.display()),
                    None => "not fetched".to_string(),
                };
                println!(
                    "{:7} {}=={} sha256:{}… {state}",
                    r.name,
                    r.package,
                    r.version,
                    &r.sha256[..12]
                );
            }
            for a in ASSETS {
                let state = match find_asset(a)? {
                    Some(p) => format!("found at {}", p.display()),
                    None => "not fetched".to_string(),
                };
                println!(
                    "{:7} {}=={} sha256:{}… {state}",
                    a.name,
                    a.package,
                    a.version,
                    &a.sha256[..12]
                );
            }
        }
        Some("-h" | "--help" | "help") | None => println!("{USAGE}"),
        Some(other) => {
            eprintln!("xla-build: unknown command `{other}`\n\n{USAGE}");
            std::process::exit(2);
        }
    }
    Ok(())
}
