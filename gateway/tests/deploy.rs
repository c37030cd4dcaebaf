//! The deployment artefacts against the real binary: the Kubernetes manifests under
//! `k8s/`, the Dockerfile, the metrics catalogue (`docs/metrics.md`) and the Grafana
//! dashboard. Manifests drift silently: a renamed flag or environment variable, a port
//! moved to the other listener or a renamed metric breaks a deployment only when it is
//! rolled out. These tests make that drift a red `cargo test`:
//!
//! * every flag and environment variable the manifests and the Dockerfile pass exists in
//!   `gateway --help` (clap prints `[env: NAME=]` for each variable it reads);
//! * the container ports are the ports of the listen addresses, and the Services and the
//!   ServiceMonitor name ports the container has;
//! * the binary, started with the manifests' environment (listen addresses moved to
//!   127.0.0.1 port 0 and a temporary data directory), serves the probe paths and
//!   `/metrics` on the listener the manifests point them at, and stops on SIGTERM well
//!   within the pod's termination grace period;
//! * the families `/metrics` exports are exactly the catalogue's, with its types and
//!   labels, and every metric the dashboard queries is exported.
//!
//! The manifests are read with a small line-based reader rather than a YAML parser: they
//! are written in one plain style (block lists, `- name:` then `value:`), and the reader
//! fails loudly when it finds none of what it looks for.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Variables the manifests set that are not the binary's flags, with who reads them.
const ENV_NOT_FLAGS: [(&str, &str); 1] = [("RUST_LOG", "the log filter (tracing EnvFilter)")];
/// How long the test waits for the hub to print its addresses.
const START_WAIT_S: u64 = 30;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    let path = repo().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Every YAML file under `k8s/`, with comments stripped.
fn manifests() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut dirs = vec![repo().join("k8s")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read k8s dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                let text = std::fs::read_to_string(&path).expect("read manifest");
                let stripped: Vec<&str> = text
                    .lines()
                    .filter(|l| !l.trim_start().starts_with('#'))
                    .collect();
                out.push((path.display().to_string(), stripped.join("\n")));
            }
        }
    }
    assert!(!out.is_empty(), "no manifests under k8s/");
    out
}

fn value_of(line: &str, key: &str) -> Option<String> {
    let rest = line.trim().trim_start_matches("- ").strip_prefix(key)?;
    let rest = rest.strip_prefix(':')?;
    Some(rest.trim().trim_matches('"').to_string())
}

/// The hub container's environment: `- name: X` directly followed by `value: Y`.
fn container_env(statefulset: &str) -> BTreeMap<String, String> {
    let lines: Vec<&str> = statefulset.lines().collect();
    let mut env = BTreeMap::new();
    for pair in lines.windows(2) {
        if let (Some(name), Some(value)) = (value_of(pair[0], "name"), value_of(pair[1], "value")) {
            env.insert(name, value);
        }
    }
    assert!(!env.is_empty(), "no env in the StatefulSet");
    env
}

/// Container ports: `- name: X` directly followed by `containerPort: N`.
fn container_ports(statefulset: &str) -> BTreeMap<String, u16> {
    let lines: Vec<&str> = statefulset.lines().collect();
    let mut ports = BTreeMap::new();
    for pair in lines.windows(2) {
        if let (Some(name), Some(port)) = (
            value_of(pair[0], "name"),
            value_of(pair[1], "containerPort"),
        ) {
            ports.insert(name, port.parse().expect("a port number"));
        }
    }
    ports
}

/// Probes and scrape endpoints: `path: P` and `port: NAME` on adjacent lines, in either
/// order (probes put the path first, the ServiceMonitor the port).
fn http_gets(text: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = text.lines().collect();
    lines
        .windows(2)
        .filter_map(|pair| {
            let path_first = || Some((value_of(pair[0], "path")?, value_of(pair[1], "port")?));
            let port_first = || Some((value_of(pair[1], "path")?, value_of(pair[0], "port")?));
            path_first().or_else(port_first)
        })
        .collect()
}

fn help() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("--help")
        .output()
        .expect("run gateway --help");
    assert!(out.status.success(), "gateway --help failed");
    String::from_utf8(out.stdout).expect("utf-8 help")
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr}"))
}

#[test]
fn every_flag_and_variable_the_manifests_pass_exists_in_the_binary() {
    let help = help();
    let all = manifests();
    let mut flags = BTreeSet::new();
    for (_, text) in &all {
        for token in text.split(|c: char| c.is_whitespace() || "[]\",'=".contains(c)) {
            // `---` separates YAML documents; a flag is `--` and a letter.
            let flag = token.strip_prefix("--");
            if flag.is_some_and(|f| f.starts_with(|c: char| c.is_ascii_lowercase())) {
                flags.insert(token.to_string());
            }
        }
    }
    for flag in &flags {
        assert!(
            help.contains(&format!("{flag} ")),
            "{flag} is not in gateway --help"
        );
    }
    let statefulset = read("k8s/base/statefulset.yaml");
    let mut names: BTreeSet<String> = container_env(&statefulset).into_keys().collect();
    // The Dockerfile's ENV instruction sets more of them.
    let dockerfile = read("Dockerfile");
    for token in dockerfile.split_whitespace() {
        if let Some((name, _)) = token.split_once('=') {
            if name.starts_with("HUB_") {
                names.insert(name.to_string());
            }
        }
    }
    assert!(names.contains("HUB_DATA_DIR"), "env not found: {names:?}");
    for name in &names {
        let known = help.contains(&format!("[env: {name}="))
            || ENV_NOT_FLAGS.iter().any(|(n, _)| n == name);
        assert!(
            known,
            "{name} is read neither by a flag of gateway nor listed"
        );
    }
    // The entry point is the binary this test ran, where the Dockerfile installs it.
    assert!(statefulset.contains("command: [\"/usr/local/bin/gateway\"]"));
    assert!(dockerfile.contains("/usr/local/bin/"));
    assert!(dockerfile.contains("target/release/gateway"));
}

#[test]
fn ports_services_and_servicemonitor_agree_with_the_listen_addresses() {
    let statefulset = read("k8s/base/statefulset.yaml");
    let env = container_env(&statefulset);
    let ports = container_ports(&statefulset);
    assert_eq!(
        ports.get("fspiop"),
        Some(&port_of(&env["HUB_FSPIOP_LISTEN"]))
    );
    assert_eq!(ports.get("admin"), Some(&port_of(&env["HUB_ADMIN_LISTEN"])));
    assert_eq!(
        env["HUB_DATA_DIR"], "/var/lib/position-hub",
        "the data dir must be the volume's mount path"
    );
    assert!(statefulset.contains("mountPath: /var/lib/position-hub"));
    // Every targetPort and ServiceMonitor port is a named container port.
    let services = read("k8s/base/services.yaml");
    let servicemonitor = read("k8s/base/servicemonitor.yaml");
    let mut named = 0;
    for line in services.lines().chain(servicemonitor.lines()) {
        if let Some(port) = value_of(line, "targetPort").or_else(|| value_of(line, "port")) {
            if port.parse::<u16>().is_err() {
                assert!(ports.contains_key(&port), "{port} is no container port");
                named += 1;
            }
        }
    }
    assert!(named >= 4, "too few named ports found: {named}");
    assert!(servicemonitor.contains("app.kubernetes.io/component: admin"));
    // The Dockerfile exposes the same two ports.
    let dockerfile = read("Dockerfile");
    let expose = format!("EXPOSE {} {}", ports["fspiop"], ports["admin"]);
    assert!(dockerfile.contains(&expose), "Dockerfile lacks {expose}");
}

/// The gateway binary with the manifests' environment, on 127.0.0.1 ephemeral ports.
struct Hub {
    child: std::process::Child,
    fspiop: String,
    admin: String,
}

impl Hub {
    fn start(env: &BTreeMap<String, String>, data_dir: &Path) -> Hub {
        let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
            .envs(env)
            .env("HUB_FSPIOP_LISTEN", "127.0.0.1:0")
            .env("HUB_ADMIN_LISTEN", "127.0.0.1:0")
            .env("HUB_DATA_DIR", data_dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start gateway");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().take(2) {
                let Ok(line) = line else { break };
                let url = line.rsplit(' ').next().unwrap_or("").to_string();
                if tx.send(url).is_err() {
                    break;
                }
            }
        });
        let wait = Duration::from_secs(START_WAIT_S);
        let fspiop = rx.recv_timeout(wait).expect("fspiop address");
        let admin = rx.recv_timeout(wait).expect("admin address");
        Hub {
            child,
            fspiop,
            admin,
        }
    }

    /// SIGTERM; whether it exited 0 within `limit`.
    fn terminate(&mut self, limit: Duration) -> bool {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `name -> (type, label names)` of an exposition, from its `# TYPE` and sample lines.
fn families(text: &str) -> BTreeMap<String, (String, BTreeSet<String>)> {
    let mut out: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name type");
            out.insert(name.to_string(), (kind.to_string(), BTreeSet::new()));
        }
    }
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let series = line.split(' ').next().expect("a series");
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| out.contains_key(*f)))
            .unwrap_or(name);
        let entry = out
            .get_mut(family)
            .unwrap_or_else(|| panic!("{name} has no # TYPE line"));
        for pair in labels.trim_end_matches('}').split(',') {
            if let Some((label, _)) = pair.split_once('=') {
                if label != "le" {
                    entry.1.insert(label.to_string());
                }
            }
        }
    }
    out
}

/// The catalogue's rows: `| \`name\` | type | labels | meaning |`.
fn catalogue() -> BTreeMap<String, (String, BTreeSet<String>)> {
    let mut out = BTreeMap::new();
    for line in read("docs/metrics.md").lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 5 || !cells[1].starts_with('`') {
            continue;
        }
        let labels = cells[3]
            .split(',')
            .map(|l| l.trim().trim_matches('`').to_string())
            .filter(|l| !l.is_empty())
            .collect();
        out.insert(
            cells[1].trim_matches('`').to_string(),
            (cells[2].to_string(), labels),
        );
    }
    assert!(out.len() > 10, "catalogue rows not found");
    out
}

/// Metric names in the dashboard's queries: identifiers starting `hub_` or `engine_`,
/// histogram suffixes removed.
fn dashboard_metrics() -> BTreeSet<String> {
    let json: serde_json::Value =
        serde_json::from_str(&read("k8s/base/dashboards/position-hub.json")).expect("JSON");
    let mut names = BTreeSet::new();
    let panels = json["panels"].as_array().expect("panels");
    for target in panels
        .iter()
        .flat_map(|p| p["targets"].as_array().expect("targets"))
    {
        let expr = target["expr"].as_str().expect("expr");
        for token in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if token.starts_with("hub_") || token.starts_with("engine_") {
                let name = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| token.strip_suffix(s))
                    .unwrap_or(token);
                names.insert(name.to_string());
            }
        }
    }
    assert!(names.len() > 10, "dashboard queries not found");
    names
}

fn grace_period() -> Duration {
    let statefulset = read("k8s/base/statefulset.yaml");
    let seconds = statefulset
        .lines()
        .find_map(|l| value_of(l, "terminationGracePeriodSeconds"))
        .expect("terminationGracePeriodSeconds")
        .parse()
        .expect("seconds");
    Duration::from_secs(seconds)
}

#[tokio::test]
async fn the_binary_serves_the_probes_and_metrics_the_manifests_use() {
    let statefulset = read("k8s/base/statefulset.yaml");
    let env = container_env(&statefulset);
    let ports = container_ports(&statefulset);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut hub = Hub::start(&env, dir.path());
    let http = common::Http::default();
    let base = |port: &str| match port {
        "fspiop" => hub.fspiop.clone(),
        "admin" => hub.admin.clone(),
        other => panic!("probe on unknown port {other} (ports: {ports:?})"),
    };

    let mut gets = http_gets(&statefulset);
    gets.extend(http_gets(&read("k8s/base/servicemonitor.yaml")));
    let paths: BTreeSet<&str> = gets.iter().map(|(p, _)| p.as_str()).collect();
    for needed in ["/health/live", "/health/ready", "/metrics"] {
        assert!(paths.contains(needed), "{needed} not used by the manifests");
    }
    for (path, port) in &gets {
        let (status, _) = http.text(&format!("{}{path}", base(port))).await;
        assert_eq!(status, 200, "GET {path} on the {port} listener");
    }

    let (status, text) = http.text(&format!("{}/metrics", hub.admin)).await;
    assert_eq!(status, 200);
    let exported = families(&text);
    let documented = catalogue();
    let exported_names: BTreeSet<&String> = exported.keys().collect();
    let documented_names: BTreeSet<&String> = documented.keys().collect();
    assert_eq!(
        exported_names, documented_names,
        "docs/metrics.md and /metrics differ"
    );
    for (name, (kind, labels)) in &exported {
        let (doc_kind, doc_labels) = &documented[name];
        assert_eq!(kind, doc_kind, "type of {name}");
        assert_eq!(labels, doc_labels, "labels of {name}");
    }
    for name in dashboard_metrics() {
        assert!(
            exported.contains_key(&name),
            "the dashboard queries {name}, which /metrics does not export"
        );
    }

    // A pod is killed after its grace period: the hub must be gone well before.
    let limit = grace_period();
    assert!(hub.terminate(limit), "no clean exit within {limit:?}");
}

#[test]
fn the_dockerfile_follows_the_image_rules() {
    // hadolint runs in CI (.ci/checks/30-k8s.sh); these are the project's own rules.
    let dockerfile = read("Dockerfile");
    let instructions: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let froms: Vec<&str> = instructions
        .iter()
        .copied()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(froms.len(), 2, "a builder and a runtime stage: {froms:?}");
    for from in &froms {
        let image = from.split_whitespace().nth(1).expect("an image");
        let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
        assert!(
            !tag.is_empty() && tag != "latest" && tag.chars().any(|c| c.is_ascii_digit()),
            "{image} is not pinned to a version"
        );
    }
    assert!(froms[0].ends_with(" AS builder"));
    assert!(
        !froms[1].contains("rust"),
        "no toolchain in the runtime image"
    );
    let last_user = instructions
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER instruction");
    assert!(
        !last_user.starts_with("root") && !last_user.starts_with("0"),
        "runs as {last_user}"
    );
    assert!(
        instructions.iter().all(|l| !l.starts_with("ADD ")),
        "no ADD"
    );
    let ignore = read(".dockerignore");
    assert!(ignore.lines().any(|l| l.trim() == "target/"));
}
