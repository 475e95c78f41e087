//! `xla-build`: fetch and locate PJRT plugins from the command line.
//!
//! ```text
//! cargo run -p xla-build -- fetch cpu      # download, verify, unpack (idempotent)
//! cargo run -p xla-build -- path cpu       # print the plugin path, fetching if needed
//! cargo run -p xla-build -- status         # what is cached, what each recipe pins
//! ```
//! To load the plugin and list its devices, use `cargo run -- doctor` (the
//! `xlayer` binary), which goes through the runtime itself.

use std::process::ExitCode;

use xla_build::{ensure, find, home, provision, recipe, Target};

const USAGE: &str = "usage: xla-build <command> [target]

commands:
  fetch [TARGET]   download, verify (sha256) and unpack the plugin (default: cpu)
  path [TARGET]    print the plugin's path, fetching it first if needed
  status           show the cache folder, each recipe, and what is cached

targets: cpu, cuda12, tpu
environment: XLAYER_HOME (cache), XLAYER_PJRT_PLUGIN[_CPU|_CUDA12|_TPU] (overrides), XLAYER_PYTHON";

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

fn target_arg(args: &[String]) -> Result<Target, xla_build::Error> {
    args.get(1).map_or(Ok(Target::Cpu), |s| s.parse())
}

fn run(args: &[String]) -> Result<(), xla_build::Error> {
    match args.first().map(String::as_str) {
        Some("fetch") => {
            let target = target_arg(args)?;
            let path = provision(target)?;
            println!("{}", path.display());
            eprintln!(
                "note: at run time the {target} plugin needs {}",
                recipe(target).runtime_note
            );
        }
        Some("path") => println!("{}", ensure(target_arg(args)?)?.display()),
        Some("status") => {
            println!("cache: {}", home()?.display());
            for t in Target::ALL {
                let r = recipe(t);
                let state = match find(t)? {
                    Some(p) => format!("found at {}", p.display()),
                    None => "not fetched".to_string(),
                };
                println!(
                    "{t:7} {}=={} sha256:{}… {state}",
                    r.package,
                    r.version,
                    &r.sha256[..12]
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
