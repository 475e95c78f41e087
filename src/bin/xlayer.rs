//! The `xlayer` command line: inspect the PJRT plugin and its devices.
//!
//! ```text
//! xlayer doctor      # plugin path, C API version, attributes, platform, devices
//! xlayer devices     # one line per device
//! ```

use std::process::ExitCode;

use anyhow::Result;
use xlayer::{Client, Plugin};

const USAGE: &str = "usage: xlayer <command>

commands:
  doctor    load the default PJRT plugin (fetching it if needed) and report
            its path, C API version, attributes, platform and devices
  devices   list the addressable devices of the default plugin

environment: XLAYER_PJRT_PLUGIN=/path/plugin.so overrides the default (CPU) plugin;
             XLAYER_HOME is where fetched plugins are cached.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("doctor") => doctor(),
        Some("devices") => devices(),
        Some("-h" | "--help" | "help") | None => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => {
            eprintln!("xlayer: unknown command `{other}`\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xlayer: error: {e:#}");
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
    let client = Client::new(&plugin, &xlayer::ClientOptions::new())?;
    println!(
        "platform:     {} ({})",
        client.platform_name(),
        client.platform_version()
    );
    println!("devices:      {}", client.devices().len());
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

fn devices() -> Result<()> {
    let client = Client::default_plugin()?;
    for d in client.devices() {
        println!("{}\t{}\t{}", d.index(), d.kind(), d.description());
    }
    Ok(())
}
