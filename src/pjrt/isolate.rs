//! Compiling untrusted programs in a child process.
//!
//! The plugin's compiler is C++ that trusts its input: one changed byte of
//! MLIR bytecode or of a `jax.export` artifact can make it segfault, abort
//! on an uncaught exception or corrupt its heap, and no Rust code can catch
//! that. With [`crate::CompileOptions::isolated`], [`crate::Client::compile_with`]
//! hands the program to a child process (the `xlayer` binary, run as
//! `xlayer __isolated-compile`), which loads the same plugin, compiles,
//! and sends back the serialized executable; the parent loads it. If the
//! child dies, the parent gets [`Error::PluginCrashed`] naming the program
//! and the signal, and carries on.
//!
//! The child is found, in order: `XLAYER_BIN`; the running program itself
//! when it is `xlayer`; an `xlayer` next to it or one folder up (where
//! `cargo test` binaries live); or it is given with
//! [`crate::CompileOptions::isolated_as`].
//!
//! Protocol (both ways over pipes): the magic line [`MAGIC`], then
//! length-prefixed (u64, little-endian) parts. Request: a JSON header
//! (plugin path, platform, device count, program name, format and
//! signature, XLA flags, device index, replicas, partitions, partitioner
//! and device assignment by index), then the code. Answer: `O` and the
//! serialized executable, or `E` and a JSON error (the plugin's code and
//! message, which the parent turns back into [`Error::Pjrt`]).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::dtype::{ArraySpec, DType};
use crate::error::{Error, ErrorCode, Result};
use crate::pjrt::client::{Client, ClientOptions, Device};
use crate::pjrt::compile_options::{CompileOptions, XlaFlag};
use crate::pjrt::executable::Executable;
use crate::pjrt::plugin::Plugin;
use crate::program::{Program, ProgramFormat, Signature};

/// The hidden subcommand of the `xlayer` binary that runs the child side.
pub const CHILD_COMMAND: &str = "__isolated-compile";

/// First bytes of every request and answer.
pub const MAGIC: &[u8] = b"xlayer-isolated-compile/1\n";

/// How many trailing lines of the child's stderr an error keeps.
const STDERR_LINES: usize = 12;

/// The child program for isolated compiles (see the module docs).
///
/// Errors: [`Error::Isolation`] when none is found.
pub fn find_child() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("XLAYER_BIN").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let me = std::env::current_exe().map_err(|e| Error::Isolation {
        child: PathBuf::from("xlayer"),
        reason: format!("cannot locate the running program: {e}"),
    })?;
    let name = format!("xlayer{}", std::env::consts::EXE_SUFFIX);
    if me.file_name().is_some_and(|n| n == name.as_str()) {
        return Ok(me);
    }
    let dir = me.parent().unwrap_or(Path::new("."));
    let candidates = [dir.join(&name), dir.join("..").join(&name)];
    candidates
        .iter()
        .find(|c| c.is_file())
        .cloned()
        .ok_or_else(|| Error::Isolation {
            child: candidates[0].clone(),
            reason: "no `xlayer` binary next to the running program; set XLAYER_BIN or use CompileOptions::isolated_as".into(),
        })
}

/// Describes how a child ended, for [`Error::PluginCrashed`].
pub fn describe_exit(signal: Option<i32>, exit_code: Option<i32>) -> String {
    let name = |s: i32| match s {
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        _ => "signal",
    };
    match (signal, exit_code) {
        (Some(s), _) => format!("killed by {} ({s})", name(s)),
        (None, Some(c)) => format!("exit code {c} without an answer"),
        (None, None) => "ended without an answer".into(),
    }
}

fn put(out: &mut Vec<u8>, part: &[u8]) {
    out.extend_from_slice(&(part.len() as u64).to_le_bytes());
    out.extend_from_slice(part);
}

/// The next length-prefixed part of `bytes` from `*at`.
fn take<'a>(bytes: &'a [u8], at: &mut usize) -> Option<&'a [u8]> {
    let len = bytes.get(*at..at.checked_add(8)?)?;
    let len = usize::try_from(u64::from_le_bytes(len.try_into().ok()?)).ok()?;
    let start = *at + 8;
    let part = bytes.get(start..start.checked_add(len)?)?;
    *at = start + len;
    Some(part)
}

fn specs_json(v: &[ArraySpec]) -> Value {
    v.iter()
        .map(|s| json!({"dtype": s.dtype.mlir_name(), "dims": s.dims}))
        .collect()
}

fn specs_from(v: &Value) -> Option<Vec<ArraySpec>> {
    v.as_array()?
        .iter()
        .map(|s| {
            let dtype = DType::from_mlir_name(s.get("dtype")?.as_str()?)?;
            let dims = s
                .get("dims")?
                .as_array()?
                .iter()
                .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                .collect::<Option<Vec<usize>>>()?;
            Some(ArraySpec::new(dtype, dims))
        })
        .collect()
}

fn flags_json(options: &CompileOptions) -> Value {
    options
        .flags()
        .iter()
        .map(|(k, v)| {
            let v = match v {
                XlaFlag::String(s) => json!({"string": s}),
                XlaFlag::Bool(b) => json!({"bool": b}),
                XlaFlag::Int(i) => json!({"int": i}),
                XlaFlag::Double(d) => json!({"double": d}),
            };
            (k.clone(), v)
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// The request for compiling `program` with `options` on `client`'s plugin.
fn request(client: &Client, program: &Program, options: &CompileOptions) -> Vec<u8> {
    let sig = program.signature();
    let header = json!({
        "plugin": client.plugin().path(),
        "platform": client.platform_name(),
        "devices": client.devices().len(),
        "name": program.name(),
        "bytecode": program.format() == ProgramFormat::MlirBytecode,
        "inputs": specs_json(&sig.inputs),
        "outputs": specs_json(&sig.outputs),
        "donors": sig.donors,
        "flags": flags_json(options),
        "device": options.device_index,
        "replicas": options.num_replicas,
        "partitions": options.num_partitions,
        "spmd": options.spmd_partitioning(),
        "shardy": options.shardy_partitioner(),
        "assignment": options.assignment.as_ref().map(|ds| ds.iter().map(|d| d.index()).collect::<Vec<_>>()),
    });
    let mut out = MAGIC.to_vec();
    put(&mut out, header.to_string().as_bytes());
    put(&mut out, program.code());
    out
}

/// Compiles `program` in a child process (see the module docs) and loads
/// the executable it sends back.
pub(crate) fn compile_isolated(
    client: &Client,
    program: &Program,
    options: &CompileOptions,
    child: Option<&Path>,
    device: Device,
) -> Result<Executable> {
    let child = match child {
        Some(c) => c.to_path_buf(),
        None => find_child()?,
    };
    let isolation = |reason: String| Error::Isolation {
        child: child.clone(),
        reason,
    };
    let mut proc = Command::new(&child)
        .arg(CHILD_COMMAND)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| isolation(format!("cannot start it: {e}")))?;
    let req = request(client, program, options);
    let mut stdin = proc.stdin.take();
    // Written from another thread while this one drains stdout and stderr,
    // so that neither side blocks on a full pipe.
    let writer = std::thread::spawn(move || {
        if let Some(s) = stdin.as_mut() {
            let _ = s.write_all(&req);
        }
    });
    let out = proc
        .wait_with_output()
        .map_err(|e| isolation(format!("cannot wait for it: {e}")))?;
    let _ = writer.join();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    let tail = lines[lines.len().saturating_sub(STDERR_LINES)..].join("\n");
    let answer = out.stdout.strip_prefix(MAGIC);
    let signal = std::os::unix::process::ExitStatusExt::signal(&out.status);
    let crashed = || Error::PluginCrashed {
        program: program.name().to_string(),
        signal,
        exit_code: out.status.code(),
        stderr: tail.clone(),
    };
    let Some(answer) = answer else {
        if out.status.success() {
            return Err(isolation(format!(
                "it exited without answering as `xlayer {CHILD_COMMAND}` does (is it an xlayer binary of this version?); stderr: {tail}"
            )));
        }
        return Err(crashed());
    };
    if !out.status.success() {
        return Err(crashed());
    }
    let mut at = 1;
    let part = take(answer, &mut at);
    match (answer.first(), part) {
        (Some(b'O'), Some(exe)) => load(client, exe, program, options, device),
        (Some(b'E'), Some(err)) => match error_from(err) {
            Some(e) => Err(e),
            // The plugin compiled it in the child, and an xlayer check of the
            // result failed: compiling here is safe and gives the typed error.
            None => client.compile_with(program, &options.clone().not_isolated()),
        },
        _ => Err(isolation("its answer is malformed".into())),
    }
}

/// Loads the child's executable; where that cannot be done (another device
/// than the default one, a plugin without serialization), compiles here:
/// the child has shown that this compile does not crash.
fn load(
    client: &Client,
    exe: &[u8],
    program: &Program,
    options: &CompileOptions,
    device: Device,
) -> Result<Executable> {
    if device == *client.default_device() {
        if let Ok(e) = client.load_compiled(exe, program, options, device) {
            return Ok(e);
        }
    }
    client.compile_with(program, &options.clone().not_isolated())
}

fn error_json(e: &Error) -> Value {
    match e {
        Error::Pjrt {
            function,
            code,
            message,
        } => {
            let raw = (0..=64).find(|&c| ErrorCode::from_raw(c) == *code);
            json!({"kind": "pjrt", "function": function, "code": raw, "message": message})
        }
        Error::JaxlibKernel {
            program,
            targets,
            message,
        } => {
            json!({"kind": "jaxlib_kernel", "program": program, "targets": targets, "message": message})
        }
        other => json!({"kind": "other", "message": other.to_string()}),
    }
}

/// The compile error the child reported (the plugin's, or the plugin's
/// explained as [`Error::JaxlibKernel`]), or `None` for another error (an
/// xlayer check after a successful compile).
fn error_from(bytes: &[u8]) -> Option<Error> {
    let v: Value = serde_json::from_slice(bytes).unwrap_or_default();
    let text = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    match v["kind"].as_str() {
        Some("pjrt") => Some(Error::Pjrt {
            function: "PJRT_Client_Compile",
            code: ErrorCode::from_raw(v["code"].as_u64().unwrap_or(2) as u32),
            message: text("message"),
        }),
        Some("jaxlib_kernel") => Some(Error::JaxlibKernel {
            program: text("program"),
            targets: v["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t.as_str().map(str::to_string))
                .collect(),
            message: text("message"),
        }),
        _ => None,
    }
}

/// Compiles the request read from `input` (the child side, run by
/// `xlayer __isolated-compile`). Returns the answer to write; `Err` only
/// for a request that is not one (then the child exits with status 2).
fn serve(input: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let body = input
        .strip_prefix(MAGIC)
        .ok_or("not an isolated-compile request")?;
    let mut at = 0;
    let header = take(body, &mut at).ok_or("no header")?;
    let code = take(body, &mut at).ok_or("no code")?;
    let h: Value = serde_json::from_slice(header).map_err(|e| e.to_string())?;
    let compiled = (|| -> Result<Vec<u8>> {
        let plugin = Plugin::load(h["plugin"].as_str().unwrap_or_default())?;
        let mut copts = ClientOptions::new();
        if h["platform"].as_str() == Some("cpu") {
            copts = copts.cpu_device_count(h["devices"].as_i64().unwrap_or(1));
        }
        let client = Client::new(&plugin, &copts)?;
        let name = h["name"].as_str().unwrap_or("main");
        let program = if h["bytecode"].as_bool() == Some(true) {
            let sig = Signature {
                inputs: specs_from(&h["inputs"]).unwrap_or_default(),
                outputs: specs_from(&h["outputs"]).unwrap_or_default(),
                donors: serde_json::from_value(h["donors"].clone()).unwrap_or_default(),
            };
            Program::mlir_bytecode(code.to_vec(), sig)?
        } else {
            Program::mlir_text(String::from_utf8_lossy(code).into_owned())?
        }
        .with_name(name);
        let mut options = CompileOptions::plugin_defaults()
            .num_replicas(h["replicas"].as_u64().unwrap_or(1) as usize)
            .num_partitions(h["partitions"].as_u64().unwrap_or(1) as usize)
            .use_spmd_partitioning(h["spmd"].as_bool().unwrap_or(false))
            .use_shardy_partitioner(h["shardy"].as_bool().unwrap_or(false));
        if let Some(d) = h["device"].as_u64() {
            options = options.device(d as usize);
        }
        if let Some(list) = h["assignment"].as_array() {
            let devices = list
                .iter()
                .map(|i| {
                    client
                        .device(i.as_u64().unwrap_or(u64::MAX) as usize)
                        .cloned()
                })
                .collect::<Result<Vec<_>>>()?;
            options = options.device_assignment(&devices);
        }
        for (k, v) in h["flags"].as_object().into_iter().flatten() {
            let flag = if let Some(s) = v["string"].as_str() {
                XlaFlag::String(s.to_string())
            } else if let Some(b) = v["bool"].as_bool() {
                XlaFlag::Bool(b)
            } else if let Some(i) = v["int"].as_i64() {
                XlaFlag::Int(i)
            } else {
                XlaFlag::Double(v["double"].as_f64().unwrap_or_default())
            };
            options = options.xla_flag(k.clone(), flag);
        }
        client.compile_with(&program, &options)?.serialize()
    })();
    let mut out = MAGIC.to_vec();
    match compiled {
        Ok(exe) => {
            out.push(b'O');
            put(&mut out, &exe);
        }
        Err(e) => {
            out.push(b'E');
            put(&mut out, error_json(&e).to_string().as_bytes());
        }
    }
    Ok(out)
}

/// The child side of an isolated compile: reads one request from stdin,
/// compiles it, writes the answer to stdout. Returns the exit status (0
/// when an answer was written, 2 for a malformed request). A crash of the
/// plugin kills this process, which is the point.
#[doc(hidden)]
pub fn child_main() -> i32 {
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut input) {
        eprintln!("xlayer {CHILD_COMMAND}: cannot read the request: {e}");
        return 2;
    }
    match serve(&input) {
        Ok(answer) => {
            let mut out = std::io::stdout().lock();
            if out.write_all(&answer).and_then(|()| out.flush()).is_err() {
                return 2;
            }
            0
        }
        Err(e) => {
            eprintln!("xlayer {CHILD_COMMAND}: {e}");
            2
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_round_trip_and_truncation_is_caught() {
        let mut b = Vec::new();
        put(&mut b, b"abc");
        put(&mut b, b"");
        let mut at = 0;
        assert_eq!(take(&b, &mut at), Some(&b"abc"[..]));
        assert_eq!(take(&b, &mut at), Some(&b""[..]));
        assert_eq!(take(&b, &mut at), None);
        let mut at = 0;
        assert_eq!(take(&b[..5], &mut at), None);
    }

    #[test]
    fn specs_and_errors_survive_the_trip() {
        let specs = vec![
            ArraySpec::new(DType::F32, vec![2, 3]),
            ArraySpec::new(DType::U8, vec![]),
        ];
        assert_eq!(specs_from(&specs_json(&specs)), Some(specs));
        let e = Error::Pjrt {
            function: "PJRT_Client_Compile",
            code: ErrorCode::InvalidArgument,
            message: "bad".into(),
        };
        let back = error_from(error_json(&e).to_string().as_bytes()).unwrap();
        assert_eq!(back.to_string(), e.to_string());
        let kernel = Error::JaxlibKernel {
            program: "p".into(),
            targets: vec!["lapack_strsm_ffi".into(), "lapack_sgetrf_ffi".into()],
            message: "No FFI handler".into(),
        };
        let back = error_from(error_json(&kernel).to_string().as_bytes()).unwrap();
        assert_eq!(back.to_string(), kernel.to_string());
        let other = Error::NotBuilt { layer: "x".into() };
        assert!(error_from(error_json(&other).to_string().as_bytes()).is_none());
        assert!(serve(b"garbage").is_err());
    }
}
