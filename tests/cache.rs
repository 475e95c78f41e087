//! The persistent compilation cache against the real CPU plugin: a first
//! compile writes an entry, a fresh cache over the same folder (as a second
//! process would) loads it without compiling, and a truncated or corrupted
//! entry is detected, recompiled and replaced. Two different builds of the
//! CPU plugin (the default and `cpu-xla-pjrt`, fetched here when absent,
//! sha256-pinned) never load each other's entries, and the folder is
//! private: created 0700, refused when others can write it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use xlayer::{Client, ClientOptions, CompileCache, CompileOptions, Error, Plugin, Program};

fn program(scale: f32) -> Program {
    Program::mlir_text(format!(
        r#"func.func public @main(%a: tensor<3xf32>) -> tensor<3xf32> {{
  %c = stablehlo.constant dense<{scale:.1}> : tensor<3xf32>
  %0 = stablehlo.multiply %a, %c : tensor<3xf32>
  return %0 : tensor<3xf32>
}}"#
    ))
    .unwrap()
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("xlayer-cache-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    d
}

fn run(client: &Client, cache: &CompileCache, p: &Program) -> Vec<f32> {
    let exe = cache.compile(client, p, &CompileOptions::new()).unwrap();
    let x = client.buffer_from_host(&[1f32, 2.0, 3.0], &[3]).unwrap();
    exe.execute(&[&x]).unwrap()[0].to_vec::<f32>().unwrap()
}

/// The entry files of a cache folder (and any temporary file left over).
fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

#[test]
fn second_run_compiles_nothing_and_corrupt_entries_are_replaced() {
    let client = Client::cpu().unwrap();
    let dir = temp_dir("roundtrip");
    let p = program(2.0);

    let first = CompileCache::at(&dir);
    assert_eq!(run(&client, &first, &p), vec![2.0, 4.0, 6.0]);
    let s = first.stats();
    assert_eq!((s.compiles, s.hits, s.writes), (1, 0, 1), "{s:?}");
    let files = entries(&dir);
    assert_eq!(files.len(), 1, "one entry, no temp files: {files:?}");

    // A new cache over the same folder: what a second process sees.
    let second = CompileCache::at(&dir);
    assert_eq!(run(&client, &second, &p), vec![2.0, 4.0, 6.0]);
    let s = second.stats();
    assert_eq!((s.compiles, s.hits, s.writes), (0, 1, 0), "{s:?}");

    // Another program gets another entry.
    assert_eq!(run(&client, &second, &program(3.0)), vec![3.0, 6.0, 9.0]);
    assert_eq!(entries(&dir).len(), 2);

    // Truncate the first entry: detected, recompiled, replaced.
    let bytes = fs::read(&files[0]).unwrap();
    fs::write(&files[0], &bytes[..bytes.len() / 2]).unwrap();
    let third = CompileCache::at(&dir);
    assert_eq!(run(&client, &third, &p), vec![2.0, 4.0, 6.0]);
    let s = third.stats();
    assert_eq!(
        (s.compiles, s.hits, s.writes, s.rejected),
        (1, 0, 1, 1),
        "{s:?}"
    );
    // (Serialization is not byte-for-byte deterministic: compare sizes only.)
    let rewritten = fs::read(&files[0]).unwrap().len();
    assert!(rewritten > bytes.len() / 2, "entry rewritten whole");

    // A payload bit flip (valid length, wrong checksum): same.
    let mut flipped = bytes.clone();
    let n = flipped.len();
    flipped[n - 100] ^= 0x55;
    fs::write(&files[0], &flipped).unwrap();
    let fourth = CompileCache::at(&dir);
    assert_eq!(run(&client, &fourth, &p), vec![2.0, 4.0, 6.0]);
    assert_eq!(fourth.stats().rejected, 1);

    // And the rewritten entry loads again.
    let fifth = CompileCache::at(&dir);
    assert_eq!(run(&client, &fifth, &p), vec![2.0, 4.0, 6.0]);
    assert_eq!(fifth.stats().hits, 1);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn disabled_cache_always_compiles() {
    let client = Client::cpu().unwrap();
    let cache = CompileCache::disabled();
    assert!(cache.dir().is_none());
    let before = xlayer::compile_count();
    run(&client, &cache, &program(5.0));
    run(&client, &cache, &program(5.0));
    assert_eq!(cache.stats().compiles, 2);
    assert!(xlayer::compile_count() >= before + 2);
}

#[test]
fn key_depends_on_program_and_options() {
    let client = Client::cpu().unwrap();
    let cache = CompileCache::disabled();
    let key = |p: &Program, o: &CompileOptions| cache.key(&client, p, o).unwrap();
    let o = CompileOptions::new();
    let k1 = key(&program(2.0), &o);
    assert_eq!(k1, key(&program(2.0), &o));
    assert_eq!(k1.digest(), key(&program(2.0), &o).digest());
    assert_ne!(k1, key(&program(4.0), &o));
    assert_ne!(k1.digest(), key(&program(4.0), &o).digest());
    let fast = CompileOptions::new().xla_flag("xla_cpu_enable_fast_math", true);
    assert_ne!(k1, key(&program(2.0), &fast));
    let file = xlayer::cache::plugin_sha256(client.plugin(), None).unwrap();
    assert_eq!(
        k1.plugin_sha256, file,
        "the key holds the plugin's content digest"
    );
}

/// A one-device client of the CPU plugin build `recipe`, fetched if absent.
fn client_of(recipe: &'static xla_build::Recipe) -> Client {
    let path = xla_build::ensure_recipe(recipe).unwrap();
    let plugin = Plugin::load(path).unwrap();
    Client::new(&plugin, &ClientOptions::new().cpu_device_count(1)).unwrap()
}

/// Set in the child process that runs the two-builds test.
const CHILD: &str = "XLAYER_CACHE_TEST_TWO_BUILDS_CHILD";

/// The former default build (`xla_build::CPU_XLA_PJRT`) and the default
/// one (`xla_build::CPU`, ZML's), each loaded by name, so the test keeps
/// two builds whichever one `Client::cpu()` picks. Runs in
/// a child process at xlayer's default log level (no `XLAYER_LOG`, no
/// `TF_CPP_MIN_LOG_LEVEL`): `cpu-zml` logs two E-level `cpu_aot_loader`
/// lines (~2 KB each) on every executable it loads from the cache, because
/// its compiles record LLVM's tuning flags `+prefer-no-gather` and
/// `+prefer-no-scatter` among the target features and its loader does not
/// find those among the host's CPU features. A false alarm (the entry loads
/// and runs, compiled by the same plugin on the same machine), which xlayer
/// keeps off stderr while the plugin is quiet: the child's stderr must not
/// show it. `cpu-xla-pjrt` logs nothing there.
#[test]
fn two_plugin_builds_never_load_each_others_entries() {
    if std::env::var_os(CHILD).is_none() {
        let name = "two_plugin_builds_never_load_each_others_entries";
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--test-threads=1"])
            .env(CHILD, "1")
            .env_remove("TF_CPP_MIN_LOG_LEVEL")
            .env_remove("XLAYER_LOG")
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "{stdout}\n{stderr}");
        assert!(stdout.contains("1 passed"), "{stdout}");
        assert!(!stderr.contains("cpu_aot_loader"), "{stderr}");
        assert!(!stderr.contains("absl::InitializeLog"), "{stderr}");
        return;
    }
    let a = client_of(&xla_build::CPU_XLA_PJRT);
    let b = client_of(&xla_build::CPU);
    assert_ne!(a.plugin().path(), b.plugin().path());
    // The premise: both builds call themselves the same XLA version.
    assert_eq!(
        a.plugin().attribute("xla_version"),
        b.plugin().attribute("xla_version")
    );
    let dir = temp_dir("two-builds");
    let p = program(2.0);

    // A then B on one folder: two compiles, no cross hit, two entries.
    let first = CompileCache::at(&dir);
    assert_eq!(run(&a, &first, &p), vec![2.0, 4.0, 6.0]);
    assert_eq!(run(&b, &first, &p), vec![2.0, 4.0, 6.0]);
    let s = first.stats();
    assert_eq!((s.compiles, s.hits, s.writes), (2, 0, 2), "{s:?}");
    assert_eq!(entries(&dir).len(), 2);
    let ka = first.key(&a, &p, &CompileOptions::new()).unwrap();
    let kb = first.key(&b, &p, &CompileOptions::new()).unwrap();
    assert_ne!(ka.plugin_sha256, kb.plugin_sha256);
    assert_eq!(ka.xla_version, kb.xla_version);

    // Each build then finds its own entry.
    let second = CompileCache::at(&dir);
    assert_eq!(run(&a, &second, &p), vec![2.0, 4.0, 6.0]);
    assert_eq!(run(&b, &second, &p), vec![2.0, 4.0, 6.0]);
    let s = second.stats();
    assert_eq!((s.compiles, s.hits, s.rejected), (0, 2, 0), "{s:?}");

    // A's entry under B's name (a stored key that differs): not loaded,
    // recompiled, replaced by B's own.
    let (pa, pb) = (
        second.entry_path(&ka).unwrap(),
        second.entry_path(&kb).unwrap(),
    );
    fs::copy(&pa, &pb).unwrap();
    let third = CompileCache::at(&dir);
    assert_eq!(run(&b, &third, &p), vec![2.0, 4.0, 6.0]);
    let s = third.stats();
    assert_eq!(
        (s.compiles, s.hits, s.rejected, s.writes),
        (1, 0, 1, 1),
        "{s:?}"
    );
    let fourth = CompileCache::at(&dir);
    assert_eq!(run(&b, &fourth, &p), vec![2.0, 4.0, 6.0]);
    assert_eq!(fourth.stats().hits, 1);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn created_cache_folder_is_private() {
    let client = Client::cpu().unwrap();
    let root = temp_dir("private");
    let dir = root.join("nested").join("cache");
    let cache = CompileCache::at(&dir);
    run(&client, &cache, &program(6.0));
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&root.join("nested")), 0o700);
    let files = entries(&dir);
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(mode(&files[0]), 0o600);
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn cache_folder_that_others_can_write_is_refused() {
    let client = Client::cpu().unwrap();
    for bits in [0o770, 0o707, 0o1777] {
        let dir = temp_dir(&format!("shared-{bits:o}"));
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(bits)).unwrap();
        let cache = CompileCache::at(&dir);
        let err = cache
            .compile(&client, &program(7.0), &CompileOptions::new())
            .expect_err("refused");
        let text = err.to_string();
        match err {
            Error::CacheDirWritableByOthers { path, mode } => {
                assert_eq!((path, mode), (dir.clone(), bits));
            }
            other => panic!("{other:?}"),
        }
        assert!(text.contains(&dir.display().to_string()), "{text}");
        assert!(text.contains(&format!("{bits:03o}")), "{text}");
        assert_eq!(cache.stats().compiles, 0);
        assert!(entries(&dir).is_empty(), "nothing written");
        // Made private, it is used.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        run(&client, &cache, &program(7.0));
        assert_eq!(cache.stats().writes, 1);
        fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn cache_folder_that_cannot_be_created_only_costs_the_cache() {
    let client = Client::cpu().unwrap();
    let root = temp_dir("uncreatable");
    fs::create_dir_all(&root).unwrap();
    let file = root.join("a-file");
    fs::write(&file, b"x").unwrap();
    // Under a regular file: cannot be created (ENOTDIR), whoever runs this.
    let cache = CompileCache::at(file.join("cache"));
    assert_eq!(run(&client, &cache, &program(8.0)), vec![8.0, 16.0, 24.0]);
    let s = cache.stats();
    assert_eq!((s.compiles, s.writes), (1, 0), "{s:?}");
    // A path that is a file is refused, not silently unused.
    let err = CompileCache::at(&file)
        .compile(&client, &program(8.0), &CompileOptions::new())
        .expect_err("not a folder");
    assert!(
        matches!(&err, Error::CacheDirNotAFolder { path } if *path == file),
        "{err:?}"
    );
    fs::remove_dir_all(&root).unwrap();
}
