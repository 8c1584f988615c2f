//! Acceptance test of issue 7's metrics (docs/metrics.md): a hypervisor running the real
//! `hvroute daemon` and real FRR beside a spine, scraped at its default listen address
//! (`127.0.0.1:9478`, which each network namespace has for itself) with curl from inside
//! the hypervisor's namespace, every scrape checked by Debian 12's `promtool check
//! metrics`.
//!
//! Needs root, FRR 8.x, nftables, curl and promtool (`HVROUTE_PROMTOOL`, or `promtool` on
//! PATH; scripts/test.sh unpacks it from Debian's `prometheus` package).
//! Run: `cargo test --test netns_metrics -- --test-threads=2`.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use common::fabric::*;
use common::hook::*;
use common::*;

const METRICS_URL: &str = "http://127.0.0.1:9478/metrics";
/// The poller reads bgpd and nft every 5 s; a value it reads shows within two polls.
const POLLED_BOUND: std::time::Duration = std::time::Duration::from_secs(15);

/// One scrape: `name{labels}` (labels as the text format prints them) to value.
struct Scrape {
    text: String,
    samples: BTreeMap<String, f64>,
}

impl Scrape {
    fn get(&self, series: &str) -> f64 {
        self.samples.get(series).copied().unwrap_or(f64::NAN)
    }
}

/// `$HVROUTE_PROMTOOL`, else the copy `ensure_promtool` unpacked into the cache (so that a
/// test run by hand after one scripts/test.sh finds it), else `promtool` on PATH.
fn promtool() -> String {
    if let Ok(p) = std::env::var("HVROUTE_PROMTOOL") {
        return p;
    }
    let cache = std::env::var("HVROUTE_CACHE").unwrap_or_else(|_| "/var/cache/hvroute-test".into());
    let unpacked = format!("{cache}/promtool/usr/bin/promtool");
    if std::path::Path::new(&unpacked).exists() { unpacked } else { "promtool".to_string() }
}

/// GET /metrics in the hypervisor's namespace; panics unless it answers 200 and promtool
/// finds no problem in it.
fn scrape(hv: &Hv) -> Scrape {
    let o = run("ip", &["netns", "exec", &hv.ns, "curl", "-sS", "--fail", "--max-time", "5", METRICS_URL]);
    assert!(
        o.status.success(),
        "scraping {METRICS_URL} in {} failed: {}\n{}",
        hv.ns,
        show(&o),
        hv.diagnostics()
    );
    let text = stdout(&o);
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {} ({e}); scripts/test.sh unpacks it, or set HVROUTE_PROMTOOL", promtool())
        });
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let p = child.wait_with_output().unwrap();
    assert!(
        p.status.success() && p.stdout.is_empty() && p.stderr.is_empty(),
        "promtool check metrics found problems: {}\n{text}",
        show(&p)
    );
    let samples = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect();
    Scrape { text, samples }
}

/// Polls scrapes until COND holds; panics with the last scrape.
fn wait_scrape(
    hv: &Hv,
    bound: std::time::Duration,
    what: &str,
    mut cond: impl FnMut(&Scrape) -> bool,
) -> Scrape {
    let mut last = None;
    let ok = poll_until(bound, || {
        let s = scrape(hv);
        let ok = cond(&s);
        last = Some(s);
        ok
    });
    let s = last.expect("scraped at least once");
    assert!(ok, "within {bound:?}: {what}\nlast scrape:\n{}\n{}", s.text, hv.diagnostics());
    s
}

fn counts(s: &Scrape, metric: &str) -> (f64, f64) {
    (s.get(&format!("{metric}{{family=\"ipv4\"}}")), s.get(&format!("{metric}{{family=\"ipv6\"}}")))
}

/// Prevents: a metrics endpoint that operators cannot trust: values that do not follow
/// VMs coming and going, a BGP session shown up while it is down, drift repairs and hook
/// runs that go uncounted, guard drops that stay invisible, or text Prometheus' own linter
/// rejects.
#[test]
fn metrics_follow_the_hypervisor() {
    let mut f = Fabric::new("met", &[HvSpec::new(Peering::Unnumbered)]);
    f.start_daemons();
    let hv = f.hv(1);
    let first = wait_scrape(hv, SETUP_BOUND, "a first pass", |s| {
        s.get("hvroute_reconcile_pass_duration_seconds_count") >= 1.0
    });
    assert!(first.text.contains("# TYPE hvroute_reconcile_pass_duration_seconds histogram"));
    assert_eq!(first.get("hvroute_vms{state=\"active\"}"), 0.0);

    // VMs come: desired, programmed and advertised go up.
    f.hv_mut(1).add_vms(2);
    f.hv_mut(1).pass_and_frr_sync();
    let hv = f.hv(1);
    wait_scrape(hv, REPAIR_BOUND, "two VMs desired, routed and advertised", |s| {
        s.get("hvroute_vms{state=\"active\"}") == 2.0
            && counts(s, "hvroute_prefixes_desired") == (2.0, 2.0)
            && counts(s, "hvroute_routes_programmed") == (2.0, 2.0)
            && counts(s, "hvroute_neighbours_programmed") == (2.0, 2.0)
            && counts(s, "hvroute_prefixes_advertised") == (2.0, 2.0)
    });

    // The BGP session: up once bgpd says Established, with the prefixes sent.
    f.wait_spine_exact(FABRIC_BOUND, "the spine to hold the VM prefixes");
    let hv = f.hv(1);
    let up = "hvroute_bgp_peer_up{family=\"ipv4\",peer=\"uplink0\",state=\"Established\"}";
    wait_scrape(hv, POLLED_BOUND, "the session Established and 2 IPv4 prefixes sent", |s| {
        s.get(up) == 1.0
            && s.get("hvroute_bgp_peer_prefixes_sent{family=\"ipv4\",peer=\"uplink0\"}") >= 2.0
            && s.get("hvroute_frr_reachable") == 1.0
    });

    // A pass asked for over the control socket shows in the histogram.
    let before = scrape(hv).get("hvroute_reconcile_pass_duration_seconds_count");
    control_reconcile(&hv.socket, SETUP_BOUND).expect("the daemon runs a pass");
    let after = scrape(hv);
    assert!(after.get("hvroute_reconcile_pass_duration_seconds_count") > before, "{}", after.text);
    assert!(
        after.get("hvroute_reconcile_passes_total")
            >= after.get("hvroute_reconcile_pass_duration_seconds_count")
    );

    // Drift: a route deleted by hand is put back, and counted as a repair.
    let repaired = "hvroute_drift_repairs_total{kind=\"route_add\"}";
    let r0 = scrape(hv).get(repaired);
    let vm1 = hv.vms[0].clone();
    let ip4 = vm1.ip4.clone().expect("dual stack");
    ip(&hv.ns, &format!("route del {ip4}/32 dev {BRIDGE} proto {PROTO}"));
    wait_scrape(hv, REPAIR_BOUND, "the deleted route repaired and counted", |s| {
        s.get(repaired) >= r0 + 1.0 && counts(s, "hvroute_routes_programmed") == (2.0, 2.0)
    });

    // The libvirt hook reports its runs: one validated, one refused (outside the pools).
    let ok = "hvroute_hook_invocations_total{op=\"prepare\",result=\"ok\"}";
    let refused = "hvroute_hook_invocations_total{op=\"prepare\",result=\"refused\"}";
    let s0 = scrape(hv);
    let good = simple_xml("guest7", "52:54:00:00:01:07", &["192.0.2.107"], None);
    hook_ok_in(&hv.ns, &hv.cfg, ["guest7", "prepare", "begin", "-"], &good);
    let bad = simple_xml("guest8", "52:54:00:00:01:08", &["198.51.100.8"], None);
    let o = hook_in(&hv.ns, &hv.cfg, ["guest8", "prepare", "begin", "-"], &bad);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(o.stdout.is_empty());
    wait_scrape(hv, REPAIR_BOUND, "both hook runs counted", |s| {
        s.get(ok) == s0.get(ok) + 1.0 && s.get(refused) == s0.get(refused) + 1.0
    });

    // A VM that spoofs its source: its guard drops grow (read from nft every few seconds).
    let drops = format!("hvroute_guard_vm_dropped_packets_total{{vm=\"{}\"}}", vm1.name);
    let d0 = wait_scrape(hv, POLLED_BOUND, "a drop series for the guarded VM", |s| s.get(&drops).is_finite())
        .get(&drops);
    ip(&vm1.ns, "addr add 192.0.2.199/32 dev eth0");
    let _ = run(
        "ip",
        &["netns", "exec", &vm1.ns, "ping", "-c", "3", "-i", "0.2", "-W", "1", "-I", "192.0.2.199", OUT4],
    );
    wait_scrape(hv, POLLED_BOUND, "the spoofed packets counted against the VM", |s| {
        s.get(&drops) >= d0 + 3.0
    });

    // A VM goes: desired and advertised go down, its drop series goes.
    f.hv_mut(1).del_vm("vm2");
    f.hv_mut(1).pass_and_frr_sync();
    let hv = f.hv(1);
    let s = wait_scrape(hv, REPAIR_BOUND, "one VM left, desired and advertised", |s| {
        s.get("hvroute_vms{state=\"active\"}") == 1.0
            && counts(s, "hvroute_prefixes_desired") == (1.0, 1.0)
            && counts(s, "hvroute_prefixes_advertised") == (1.0, 1.0)
            && counts(s, "hvroute_routes_programmed") == (1.0, 1.0)
    });
    assert!(!s.text.contains("vm=\"vm2\""), "vm2's series stayed:\n{}", s.text);
}

/// Prevents: a daemon that starts without its metrics because the port is taken (another
/// exporter, a second daemon) and nobody notices. It must refuse to start, naming the
/// address, with exit 1, before it changes anything.
#[test]
fn a_taken_metrics_port_stops_the_daemon() {
    let mut f = Fabric::new(
        "metport",
        &[HvSpec::new(Peering::Unnumbered).toml("[metrics]\nlisten = \"127.0.0.1:9479\"\n")],
    );
    let hv = f.hv_mut(1);
    let holder = Background::spawn_in(&hv.ns, &["python3", "-c", PY_LISTEN, "9479"]);
    wait_until(SETUP_BOUND, "a listener on 127.0.0.1:9479", || {
        sh_in(&hv.ns, "ss -Hltn 'sport = :9479' | grep -q LISTEN").status.success()
    });
    let cfg = hv.cfg.to_str().expect("utf-8 path");
    let o = Background::spawn_in(&hv.ns, &[BIN, "--config", cfg, "daemon"]).finish(SETUP_BOUND);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let err = stderr(&o);
    assert!(err.contains("127.0.0.1:9479") && err.contains("metrics.listen"), "{err}");
    assert!(!bridge_exists(&hv.ns), "the daemon changed the kernel before it failed");
    drop(holder);
}

/// Holds a TCP port in its namespace until killed.
const PY_LISTEN: &str = r#"
import socket, sys, time
s = socket.socket()
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
while True:
    time.sleep(60)
"#;
