//! `scripts/lab.sh` builds the lab from `tests/topologies/lab.clab.yml` (issue 7, item 4):
//! after `lab.sh up` the lab's namespaces and veths are exactly the file's nodes and links.
//!
//! Slow (about 40 s: `lab.sh up` waits for BGP and pings every path), so only the full run
//! has it. It hands lab.sh the binaries this test run built (`HVROUTE_BIN` and
//! `HVROUTE_LAB_TOPOLOGY_BIN`, the debug `hvroute` and `examples/lab-topology`), which spares
//! CI a release build of about 6 minutes from a clean clone; lab.sh's own build is the one
//! an admin's `scripts/lab.sh up` runs. Needs root and FRR 8.x.
//! Run: `cargo test --test slow_lab_topology -- --test-threads=2`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::fabric::observed_topology;
use common::topology::Topology;
use common::*;

const LAB_SH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/lab.sh");
const LAB_TOPOLOGY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/topologies/lab.clab.yml");

/// `examples/lab-topology` as a full `cargo test` built it, beside the binary in
/// `examples/`; built here (debug, the dependencies are there already) when this test runs
/// alone.
fn topology_reader() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_hvroute"));
    let reader = bin.parent().expect("the binary's directory").join("examples/lab-topology");
    if !reader.exists() {
        let o = Command::new(env!("CARGO"))
            .args(["build", "--example", "lab-topology"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("cargo");
        assert!(o.status.success(), "cargo build --example lab-topology: {}", show(&o));
    }
    assert!(reader.exists(), "{} is missing", reader.display());
    reader
}

/// A lab under its own namespace prefix and run directory, so that it never meets an admin's
/// `hvr-lab-` lab; `lab.sh down` on drop, also when the test panics.
struct ScriptLab {
    prefix: String,
    run_dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl ScriptLab {
    fn new() -> ScriptLab {
        let tmp = tempfile::Builder::new().prefix("hvt-lab-").tempdir().expect("tempdir");
        ScriptLab {
            prefix: format!("hvt-lab{}-", std::process::id()),
            run_dir: tmp.path().join("run"),
            _tmp: tmp,
        }
    }

    fn run(&self, cmd: &str) -> Output {
        Command::new("bash")
            .args([LAB_SH, cmd])
            .env("HVROUTE_LAB_PREFIX", &self.prefix)
            .env("HVROUTE_LAB_RUN_DIR", &self.run_dir)
            .env("HVROUTE_BIN", env!("CARGO_BIN_EXE_hvroute"))
            .env("HVROUTE_LAB_TOPOLOGY_BIN", topology_reader())
            .env_remove("HVROUTE_LAB_TOPOLOGY")
            .output()
            .expect("bash")
    }
}

impl Drop for ScriptLab {
    fn drop(&mut self) {
        let o = self.run("down");
        if !o.status.success() {
            eprintln!("warning: lab.sh down failed: {}", show(&o));
        }
    }
}

/// A node or a link in lab.clab.yml that `lab.sh up` does not make (or one it makes that
/// the file does not have) means the file no longer describes the lab admins and
/// containerlab users run: this fails, naming it.
#[test]
fn lab_sh_builds_exactly_the_file() {
    require_root();
    let file = Topology::load(Path::new(LAB_TOPOLOGY)).unwrap_or_else(|e| panic!("{LAB_TOPOLOGY}: {e}"));
    let lab = ScriptLab::new();
    let up = lab.run("up");
    assert!(up.status.success(), "scripts/lab.sh up failed:\n{}", show(&up));
    let out = stdout(&up);
    assert!(out.contains("all ") && out.contains("ping checks passed"), "{out}");

    let (nodes, links) = observed_topology(&lab.prefix);
    let diff = file.differences(&format!("the lab {}*", lab.prefix), &nodes, &links);
    assert!(diff.is_empty(), "{LAB_TOPOLOGY} and scripts/lab.sh up differ:\n{}", diff.join("\n"));

    let status = lab.run("status");
    assert!(status.status.success(), "scripts/lab.sh status after up:\n{}", show(&status));
    drop(lab);
}
