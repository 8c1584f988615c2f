//! Reads a topology file (`tests/topologies/*.clab.yml`) with the tests' parser and prints
//! it for shell scripts:
//!
//! - `lab-topology bash FILE`: the bash declarations `scripts/lab.sh` evaluates (nodes,
//!   links, spine, outside host, hypervisors, VMs);
//! - `lab-topology node FILE NODE`: the variables one node's containerlab set-up script
//!   (`tests/topologies/clab-node.sh`) reads.
//!
//! A file that is not a valid topology (unknown node in a link, an interface used twice, a
//! missing fact) is one sentence on stderr and exit 2; nothing goes to stdout.

#[path = "../tests/common/topology.rs"]
mod topology;

use std::path::Path;
use std::process::ExitCode;

const USAGE: &str = "usage: lab-topology bash FILE | lab-topology node FILE NODE";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (file, node) = match args.as_slice() {
        [m, f] if m == "bash" => (f, None),
        [m, f, n] if m == "node" => (f, Some(n.as_str())),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let out = topology::Topology::load(Path::new(file)).and_then(|t| t.facts()).and_then(|f| match node {
        Some(n) => f.node_shell(n),
        None => Ok(f.to_bash()),
    });
    match out {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lab-topology: {file}: {e}");
            ExitCode::from(2)
        }
    }
}
