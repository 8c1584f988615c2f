//! Every rendered frr.conf is taken by a real bgpd exactly as written.
//!
//! For each golden file (tests/golden/frr/*.conf) and each shipped example (frr/*.conf),
//! a fresh FRR 8.4 (zebra and bgpd, datacenter defaults) in its own network namespace
//! loads the file as FRR does at boot (`vtysh -b`), and `show running-config` must give
//! back the same lines in the same order.
//!
//! The failure this prevents: a config that passes `vtysh -C` (syntax only) but that bgpd
//! refuses or silently changes (facts.md: "Configure the peer-group first", "Invalid prefix
//! range"; also a peer-group mixing iBGP and eBGP, or a prefix with host bits set, which
//! bgpd quietly masks). Such a line would be missing after every
//! FRR start, and the first `write memory` would make the loss permanent.
//!
//! The test fails if vtysh exits non-zero, if it prints anything but the one benign note
//! below, or if any line differs after normalisation. Normalisation removes only what FRR
//! adds or places itself, each for a stated reason:
//! - vtysh's frame: `Building configuration...`, `Current configuration:`, `end`;
//! - `frr version X`: FRR stamps its own version; the rendering does not carry one;
//! - `hostname NAME`: FRR adds the system's host name (only when the file has none);
//! - `service integrated-vtysh-config`: vtysh's own setting, from vtysh.conf (only when
//!   the file has none);
//! - `!` lines and blank lines: FRR writes its own `!` separators and drops comments;
//! - `ip forwarding`, `ipv6 forwarding` in the file: zebra applies them and prints nothing
//!   for forwarding that is on. Instead of comparing, the test checks that the namespace,
//!   created with forwarding off, has it on after the load.
//!
//! vtysh's one benign note is "The route-map 'X' does not exist." for a route-map that
//! `router bgp` names before the file defines it further down. FRR writes its own config
//! in that order (route-maps after `router bgp`), so every FRR start prints it. It is
//! accepted only for route-maps the file does define.
//!
//! Needs root (namespaces, FRR's directories) and FRR installed.

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use common::frr::Frr;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn conf_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "conf"))
        .collect();
    v.sort();
    v
}

/// The lines to compare, after the normalisation described at the top of this file.
fn normalise(text: &str, file: &str) -> Vec<String> {
    let file_has = |prefix: &str| file.lines().any(|l| l.starts_with(prefix));
    text.lines()
        .filter(|l| {
            let t = l.trim();
            !(t.is_empty()
                || t.starts_with('!')
                || t == "Building configuration..."
                || t == "Current configuration:"
                || t == "end"
                || t.starts_with("frr version ")
                || (l.starts_with("hostname ") && !file_has("hostname "))
                || (*l == "service integrated-vtysh-config" && !file_has("service integrated-vtysh-config"))
                || *l == "ip forwarding"
                || *l == "ipv6 forwarding")
        })
        .map(str::to_string)
        .collect()
}

/// vtysh's output lines that are not the benign forward-reference note.
fn complaints(out: &str, file: &str) -> Vec<String> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| {
            let name = l.strip_prefix("The route-map '").and_then(|r| r.strip_suffix("' does not exist."));
            !name.is_some_and(|n| file.lines().any(|f| f.starts_with(&format!("route-map {n} "))))
        })
        .map(str::to_string)
        .collect()
}

/// Loads one file into a fresh FRR; returns what went wrong, if anything.
fn check_file(path: &Path) -> Option<String> {
    let file = std::fs::read_to_string(path).unwrap();
    let frr = Frr::start("load");
    assert_eq!(frr.sysctl("net/ipv4/ip_forward"), "0", "a new namespace starts with forwarding off");
    let o = frr.load(&file);
    let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    let mut problems = Vec::new();
    if !o.status.success() {
        problems.push(format!("vtysh -b exited with {}", o.status));
    }
    let bad = complaints(&out, &file);
    if !bad.is_empty() {
        problems.push(format!("vtysh -b complained:\n  {}", bad.join("\n  ")));
    }
    let running = frr.running_config();
    let (want, got) = (normalise(&file, &file), normalise(&running, &file));
    if want != got {
        let diff = hvroute::frr::bootstrap::unified_diff(
            &(want.join("\n") + "\n"),
            &(got.join("\n") + "\n"),
            "file",
            "running-config",
        );
        problems.push(format!("show running-config differs from the file:\n{diff}"));
    }
    for (line, key) in
        [("ip forwarding", "net/ipv4/ip_forward"), ("ipv6 forwarding", "net/ipv6/conf/all/forwarding")]
    {
        if file.lines().any(|l| l == line) && frr.sysctl(key) != "1" {
            problems.push(format!("the file says `{line}` but {key} is {}", frr.sysctl(key)));
        }
    }
    if frr.alive().len() != 2 {
        problems.push(format!("zebra or bgpd died: still running {:?}", frr.alive()));
    }
    (!problems.is_empty()).then(|| format!("{}:\n{}", path.display(), problems.join("\n")))
}

fn check_all(files: &[PathBuf]) {
    common::require_root();
    let t = Instant::now();
    let failures: Vec<String> = files.iter().filter_map(|p| check_file(p)).collect();
    eprintln!("loaded {} files into bgpd in {:.1} s", files.len(), t.elapsed().as_secs_f64());
    assert!(
        failures.is_empty(),
        "{} of {} files did not load as written:\n\n{}",
        failures.len(),
        files.len(),
        failures.join("\n\n")
    );
}

#[test]
fn every_golden_file_loads_into_bgpd_unchanged() {
    let files = conf_files(&repo().join("tests/golden/frr"));
    assert!(files.len() >= 7, "expected the golden files of tests/frr_render.rs, found {files:?}");
    check_all(&files);
}

#[test]
fn the_shipped_examples_load_into_bgpd_unchanged() {
    let files = conf_files(&repo().join("frr"));
    let names: Vec<String> =
        files.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["hypervisor.conf", "spine.conf"]);
    check_all(&files);
}

/// The check itself: a line bgpd refuses, and lines bgpd rewrites or reorders, fail it.
#[test]
fn a_refused_or_changed_line_fails_the_check() {
    common::require_root();
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(repo().join("frr/hypervisor.conf")).unwrap();
    let cases = [
        // bgpd refuses it: "Invalid prefix range ... mask length <= ge <= le".
        ("refused", good.replace("permit 192.0.2.0/24 ge 32", "permit 192.0.2.0/24 ge 16"), "vtysh -b"),
        // bgpd takes it but clears the host bits: it runs 192.0.2.0/24.
        ("changed", good.replace("permit 192.0.2.0/24 ge 32", "permit 192.0.2.5/24 ge 32"), "differs"),
        // bgpd takes it but prints prefix-lists grouped by family.
        (
            "reordered",
            good.replace(
                "ip prefix-list HVR-DEFAULT-V4 seq 5 permit 0.0.0.0/0\n",
                "ip prefix-list HVR-DEFAULT-V4 seq 5 permit 0.0.0.0/0\nipv6 prefix-list X seq 5 permit ::/0\n",
            ),
            "differs",
        ),
    ];
    for (name, text, needle) in cases {
        assert_ne!(text, good, "{name}: the case must change the file");
        let p = dir.path().join(format!("{name}.conf"));
        std::fs::write(&p, text).unwrap();
        let why = check_file(&p).unwrap_or_else(|| panic!("{name}: the check passed a broken file"));
        eprintln!("{why}\n");
        assert!(why.contains(needle), "{name}: {why}");
    }
}
