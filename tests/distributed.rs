//! Two processes on this machine, one run (issue #13, "More than one
//! process").
//!
//! The test binary runs itself twice (`--node 0`, `--node 1`) with one
//! shared `FileKvStore` folder. Each node:
//! 1. exchanges a value with the other through the store (a put, then a
//!    blocking get of the other's key): the store works across processes;
//! 2. creates its client with `Client::distributed` (node id, node count 2,
//!    the store as the C API's key-value callbacks).
//!
//! The pinned CPU plugin has no cross-process runtime: step 2 must give
//! `Error::DistributedUnsupported`, with the plugin seeing one device in
//! all and never calling the store. A plugin that joins the run instead
//! makes this test fail with a note saying so, so that the cross-process
//! psum gets written against something that can run it. A one-node
//! "distributed" client must still work (it runs a program).
//! The children are separate processes, so a plugin abort cannot take the
//! test harness down with it.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use xlayer::pjrt::distributed::DistributedOptions;
use xlayer::pjrt::kv_store::{FileKvStore, KeyValueStore};
use xlayer::{Client, ClientOptions, Error, Plugin, Program};

/// What one node does; its stdout line `RESULT node=<i> ...` is what the
/// parent checks.
fn node(id: usize, dir: &str) -> Result<String, String> {
    let store = Arc::new(FileKvStore::new(dir).map_err(|e| e.to_string())?);
    let other = 1 - id;
    store
        .put(
            &format!("hello/{id}"),
            format!("pid {}", std::process::id()).as_bytes(),
        )
        .map_err(|e| e.to_string())?;
    let got = store
        .get(&format!("hello/{other}"), Duration::from_secs(60))
        .map_err(|e| e.to_string())?;
    let got = String::from_utf8(got).map_err(|e| e.to_string())?;
    if !got.starts_with("pid ") || got == format!("pid {}", std::process::id()) {
        return Err(format!("node {id} read {got:?} from node {other}"));
    }
    let plugin = Plugin::cpu().map_err(|e| e.to_string())?;
    let dist = DistributedOptions::new(id, 2, store.clone()).map_err(|e| e.to_string())?;
    match Client::distributed(&plugin, &ClientOptions::new().cpu_device_count(1), &dist) {
        Err(Error::DistributedUnsupported {
            global_devices,
            local_devices,
            store_calls,
            num_nodes,
            ..
        }) => Ok(format!(
            "RESULT node={id} exchanged=yes unsupported global={global_devices} local={local_devices} store_calls={store_calls} nodes={num_nodes}"
        )),
        Err(e) => Err(format!("node {id}: unexpected error: {e}")),
        Ok(c) => Err(format!(
            "node {id}: the plugin joined a 2-process run ({} devices in all): write the cross-process psum test",
            c.global_device_count().unwrap_or(0)
        )),
    }
}

fn spawn_node(me: &std::path::Path, id: usize, dir: &std::path::Path) -> std::process::Child {
    Command::new(me)
        .arg("--node")
        .arg(id.to_string())
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn a node")
}

/// Waits up to `limit` for `child`, killing it past that.
fn wait_output(mut child: std::process::Child, limit: Duration) -> std::process::Output {
    let start = Instant::now();
    while child.try_wait().expect("poll a node").is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("a node's output")
}

fn two_nodes_exchange_through_the_store_and_the_cpu_plugin_does_not_join() {
    let me = std::env::current_exe().expect("test binary path");
    let dir = std::env::temp_dir().join(format!("xlayer-distributed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let children: Vec<_> = (0..2).map(|i| spawn_node(&me, i, &dir)).collect();
    for (i, child) in children.into_iter().enumerate() {
        let out = wait_output(child, Duration::from_secs(180));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "node {i} exited with {}:\n{stdout}\n{stderr}",
            out.status
        );
        let expected = format!(
            "RESULT node={i} exchanged=yes unsupported global=1 local=1 store_calls=0 nodes=2"
        );
        assert!(
            stdout.lines().any(|l| l == expected),
            "node {i} printed:\n{stdout}\n{stderr}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
    println!("two_nodes_exchange_through_the_store_and_the_cpu_plugin_does_not_join ... ok");
}

fn one_node_run_is_a_working_client() {
    let dir = std::env::temp_dir().join(format!("xlayer-distributed-one-{}", std::process::id()));
    let store: Arc<dyn KeyValueStore> = Arc::new(FileKvStore::new(&dir).expect("store"));
    let dist = DistributedOptions::new(0, 1, store).expect("options");
    let plugin = Plugin::cpu().expect("plugin");
    let client = Client::distributed(&plugin, &ClientOptions::new().cpu_device_count(1), &dist)
        .expect("a one-node client");
    assert_eq!(client.global_device_count().expect("devices"), 1);
    let exe = client
        .compile(
            &Program::mlir_text(
                "func.func public @main(%a: tensor<2xf32>) -> tensor<2xf32> {\n  %0 = stablehlo.add %a, %a : tensor<2xf32>\n  return %0 : tensor<2xf32>\n}",
            )
            .expect("program"),
        )
        .expect("compile");
    let a = client.buffer_from_host(&[1f32, 2.0], &[2]).expect("upload");
    let out = exe.execute(&[&a]).expect("run")[0]
        .to_vec::<f32>()
        .expect("read");
    assert_eq!(out, vec![2.0, 4.0]);
    assert_eq!(client.store_calls(), 0);
    std::fs::remove_dir_all(&dir).ok();
    println!("one_node_run_is_a_working_client ... ok");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--node") {
        let id: usize = args[at + 1].parse().expect("node id");
        match node(id, &args[at + 2]) {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(3);
            }
        }
        return;
    }
    // `cargo test` passes harness flags (e.g. --test-threads); a filter
    // that names neither test skips both, as the harness would.
    let filter = args.iter().skip(1).find(|a| !a.starts_with('-'));
    let run = |name: &str| filter.is_none_or(|f| name.contains(f.as_str()));
    if run("two_nodes_exchange_through_the_store_and_the_cpu_plugin_does_not_join") {
        two_nodes_exchange_through_the_store_and_the_cpu_plugin_does_not_join();
    }
    if run("one_node_run_is_a_working_client") {
        one_node_run_is_a_working_client();
    }
}
