//! Prometheus metrics: what the daemon counts, and the HTTP endpoint that serves them.
//!
//! Contract (docs/metrics.md lists every metric):
//! - [`Metrics`] holds every value in shared atomics (the `prometheus` crate's vectors).
//!   The daemon's task updates them at the end of each pass and FRR sync; a poller task
//!   reads bgpd's sessions and nft's guard counters every [`POLL`]; the control socket
//!   counts the libvirt hook's reports. A scrape only encodes the current values: it never
//!   runs a pass, calls vtysh or nft, or waits for the daemon's task.
//! - [`serve`] binds `metrics.listen` before the daemon's first pass (a bind failure names
//!   the address and stops the daemon with exit 1) and answers `GET /metrics` in the
//!   Prometheus text format 0.0.4, which Debian 12's `promtool check metrics` reads (it
//!   does not read OpenMetrics' `_total` counters; measured).
//! - Label sets are bounded: families (2), op kinds (7), hook ops (8) by results (3), BGP
//!   peers, and one series per VM for guard drops, removed when the VM goes away.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::model::Mac;

/// How often the poller reads bgpd's sessions and nft's guard counters.
pub const POLL: Duration = Duration::from_secs(5);
/// The longest one poll of bgpd waits: a slow FRR leaves the last values in place.
const POLL_TIMEOUT: Duration = Duration::from_secs(4);

/// Pass and FRR push durations: 1 ms to about 33 s, doubling.
fn duration_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.001, 2.0, 16).expect("valid buckets")
}

/// The hook's ops as labels (`start` has nothing to do and is not reported); anything
/// else is `other`.
pub const HOOK_OPS: [&str; 8] =
    ["prepare", "started", "stopped", "release", "migrate", "restore", "reconnect", "other"];
/// The hook's outcomes: `ok`, `refused` (exit 2: invalid or conflicting input), `failed`
/// (a runtime failure, also when the op had to exit 0 regardless).
pub const HOOK_RESULTS: [&str; 3] = ["ok", "refused", "failed"];

/// Every metric hvroute exports.
pub struct Metrics {
    registry: Registry,
    pub vms: IntGaugeVec,
    pub prefixes_desired: IntGaugeVec,
    pub prefixes_advertised: IntGaugeVec,
    pub routes: IntGaugeVec,
    pub neighbours: IntGaugeVec,
    pub repairs: IntCounterVec,
    pub passes: IntCounter,
    pub op_errors: IntCounter,
    pub pass_seconds: Histogram,
    pub frr_push_seconds: Histogram,
    pub frr_push_errors: IntCounter,
    pub frr_restarts: IntCounter,
    pub frr_reachable: IntGauge,
    pub bgp_peer_up: IntGaugeVec,
    pub bgp_sent: IntGaugeVec,
    pub bgp_received: IntGaugeVec,
    pub hooks: IntCounterVec,
    pub guard_drops: IntCounterVec,
    pub vm_drops: IntCounterVec,
    /// Each VM's MACs, as the last pass saw them: the poller sums their drop counters.
    vm_macs: Mutex<Arc<BTreeMap<String, Vec<Mac>>>>,
    /// The nft counters' last values, so the exported counters grow by the difference.
    last_drops: Mutex<BTreeMap<String, u64>>,
    /// The BGP sessions of the last poll: (peer, family, state).
    last_peers: Mutex<BTreeSet<[String; 3]>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn histogram(r: &Registry, name: &str, help: &str) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(duration_buckets()))
        .expect("valid metric");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

/// `ipv4` or `ipv6`.
pub fn family(a: &IpAddr) -> &'static str {
    if a.is_ipv4() { "ipv4" } else { "ipv6" }
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let info = gauge_vec(&r, "hvroute_build_info", "hvroute's version; always 1.", &["version"]);
        info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let frr_reachable = IntGauge::new(
            "hvroute_frr_reachable",
            "1 when the last poll of bgpd's sessions (show bgp summary json) answered, else 0.",
        )
        .expect("valid metric");
        r.register(Box::new(frr_reachable.clone())).expect("unique metric");
        let m = Metrics {
            vms: gauge_vec(
                &r,
                "hvroute_vms",
                "VMs in the state dir after the last pass, by state: active (routed), parked (a \
                 hook entry of an earlier boot), incoming (a live migration not started here), \
                 error (a state file that cannot be read).",
                &["state"],
            ),
            prefixes_desired: gauge_vec(
                &r,
                "hvroute_prefixes_desired",
                "VM host prefixes (/32, /128) the last pass wanted routed, by family.",
                &["family"],
            ),
            prefixes_advertised: gauge_vec(
                &r,
                "hvroute_prefixes_advertised",
                "VM prefixes FRR holds as network lines after the last successful FRR sync, by \
                 family (host loopbacks not included); bgpd's import-check advertises each only \
                 while its kernel route exists.",
                &["family"],
            ),
            routes: gauge_vec(
                &r,
                "hvroute_routes_programmed",
                "hvroute's routes (its route protocol) in the kernel after the last pass, by family.",
                &["family"],
            ),
            neighbours: gauge_vec(
                &r,
                "hvroute_neighbours_programmed",
                "hvroute's permanent neighbours (its protocol) on the bridge after the last pass, by family.",
                &["family"],
            ),
            repairs: counter_vec(
                &r,
                "hvroute_drift_repairs_total",
                "Changes a pass or FRR sync made although the desired state had not changed: \
                 something else changed the kernel or FRR. By kind: route_add, route_del, \
                 neigh_add, neigh_del, bridge, guard, frr.",
                &["kind"],
            ),
            passes: counter(&r, "hvroute_reconcile_passes_total", "Full reconcile passes run."),
            op_errors: counter(
                &r,
                "hvroute_reconcile_op_errors_total",
                "Kernel ops that failed in a pass (retried with backoff).",
            ),
            pass_seconds: histogram(
                &r,
                "hvroute_reconcile_pass_duration_seconds",
                "Duration of full reconcile passes: read, observe, plan, apply.",
            ),
            frr_push_seconds: histogram(
                &r,
                "hvroute_frr_push_duration_seconds",
                "Duration of FRR syncs that changed FRR's config or failed: read (when due), \
                 plan, one vtysh batch, write memory.",
            ),
            frr_push_errors: counter(
                &r,
                "hvroute_frr_push_errors_total",
                "FRR syncs that failed: vtysh unreachable or timed out, a batch refused, the \
                 running config unreadable. Each is retried with backoff.",
            ),
            frr_restarts: counter(
                &r,
                "hvroute_frr_restarts_total",
                "Times bgpd's pid changed (FRR restarted, or started after hvroute); each makes \
                 hvroute re-assert FRR's config.",
            ),
            frr_reachable,
            bgp_peer_up: gauge_vec(
                &r,
                "hvroute_bgp_peer_up",
                "1 when the BGP session is Established, else 0; state is bgpd's word for it. By \
                 peer and address family, from the last poll.",
                &["peer", "family", "state"],
            ),
            bgp_sent: gauge_vec(
                &r,
                "hvroute_bgp_peer_prefixes_sent",
                "Prefixes bgpd sends to the peer, by address family, from the last poll.",
                &["peer", "family"],
            ),
            bgp_received: gauge_vec(
                &r,
                "hvroute_bgp_peer_prefixes_received",
                "Prefixes bgpd accepted from the peer, by address family, from the last poll.",
                &["peer", "family"],
            ),
            hooks: counter_vec(
                &r,
                "hvroute_hook_invocations_total",
                "libvirt qemu hook runs reported to this daemon, by op and result (ok, refused: \
                 exit 2, failed). Runs while no daemon listens are not counted.",
                &["op", "result"],
            ),
            guard_drops: counter_vec(
                &r,
                "hvroute_guard_dropped_packets_total",
                "Packets the guards dropped, by reason: unbound (from a port bound to no VM), \
                 to_host (from VMs to the host's own services), forward (from VMs to a \
                 destination they may not reach). Read from nft every few seconds.",
                &["reason"],
            ),
            vm_drops: counter_vec(
                &r,
                "hvroute_guard_vm_dropped_packets_total",
                "Frames from a VM's ports its guards dropped (spoofed sources, foreign MACs, \
                 router advertisements, ...). Read from nft every few seconds.",
                &["vm"],
            ),
            registry: r,
            vm_macs: Mutex::default(),
            last_drops: Mutex::default(),
            last_peers: Mutex::default(),
        };
        // Every op and result, so that rate() sees the first one.
        for op in HOOK_OPS {
            for res in HOOK_RESULTS {
                m.hooks.with_label_values(&[op, res]);
            }
        }
        for fam in ["ipv4", "ipv6"] {
            for g in [&m.prefixes_desired, &m.prefixes_advertised, &m.routes, &m.neighbours] {
                g.with_label_values(&[fam]);
            }
        }
        for kind in ["route_add", "route_del", "neigh_add", "neigh_del", "bridge", "guard", "frr"] {
            m.repairs.with_label_values(&[kind]);
        }
        for reason in ["unbound", "to_host", "forward"] {
            m.guard_drops.with_label_values(&[reason]);
        }
        for state in ["active", "parked", "incoming", "error"] {
            m.vms.with_label_values(&[state]);
        }
        m
    }

    /// Every metric in the Prometheus text format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let families = self.registry.gather();
        prometheus::TextEncoder::new().encode_utf8(&families, &mut out).expect("text encoding never fails");
        out
    }

    /// Counts one run of the libvirt hook.
    pub fn hook(&self, op: &str, result: &str) {
        let op = if HOOK_OPS.contains(&op) { op } else { "other" };
        let result = if HOOK_RESULTS.contains(&result) { result } else { "failed" };
        self.hooks.with_label_values(&[op, result]).inc();
    }

    /// Sets a gauge vector with a `family` label from addresses.
    pub fn set_by_family<'a>(g: &IntGaugeVec, addrs: impl IntoIterator<Item = &'a IpAddr>) {
        let (mut v4, mut v6) = (0, 0);
        for a in addrs {
            if a.is_ipv4() {
                v4 += 1;
            } else {
                v6 += 1;
            }
        }
        g.with_label_values(&["ipv4"]).set(v4);
        g.with_label_values(&["ipv6"]).set(v6);
    }

    /// The VMs and their MACs, for the per-VM drop counters; a VM that went away loses its
    /// series.
    pub fn set_vms(&self, vms: BTreeMap<String, Vec<Mac>>) {
        let mut cur = self.vm_macs.lock().expect("not poisoned");
        for gone in cur.keys().filter(|k| !vms.contains_key(*k)) {
            let _ = self.vm_drops.remove_label_values(&[gone]);
        }
        *cur = Arc::new(vms);
    }

    /// Takes one reading of nft's guard counters (name to packets, as
    /// [`crate::kernel::nft::guard_drops`] reads them). Counters grow by the difference to
    /// the last reading; a counter that went down (its chain was recreated) counts from 0.
    pub fn take_drops(&self, now: &BTreeMap<String, u64>) {
        let mut last = self.last_drops.lock().expect("not poisoned");
        let delta = |name: &str| {
            let n = now.get(name).copied().unwrap_or(0);
            let l = last.get(name).copied().unwrap_or(0);
            if n >= l { n - l } else { n }
        };
        for (reason, name) in [
            ("unbound", crate::guard::UNBOUND_COUNTER),
            ("to_host", crate::guard::HOST_COUNTER),
            ("forward", crate::guard::FORWARD_COUNTER),
        ] {
            self.guard_drops.with_label_values(&[reason]).inc_by(delta(name));
        }
        // A VM has a series while one of its NICs has guard rules (a counter in nft): a VM
        // with no port on the bridge yet has nothing to count, and costs no memory here.
        let vms = self.vm_macs.lock().expect("not poisoned").clone();
        for (vm, macs) in vms.iter() {
            let names: Vec<String> = macs.iter().map(crate::guard::NicRules::counter_name).collect();
            if names.iter().any(|n| now.contains_key(n)) {
                let d: u64 = names.iter().map(|n| delta(n)).sum();
                self.vm_drops.with_label_values(&[vm]).inc_by(d);
            } else {
                let _ = self.vm_drops.remove_label_values(&[vm]);
            }
        }
        *last = now.clone();
    }

    /// Takes one reading of bgpd's sessions; `None` when bgpd did not answer.
    pub fn take_peers(&self, peers: Option<&[crate::frr::PeerView]>) {
        let Some(peers) = peers else {
            self.frr_reachable.set(0);
            return;
        };
        self.frr_reachable.set(1);
        // Sessions that went away (or changed state) lose their series; the others are
        // overwritten in place, so a scrape never sees a session missing for a moment.
        let now: BTreeSet<[String; 3]> =
            peers.iter().map(|p| [p.name.clone(), p.family.to_string(), p.state.clone()]).collect();
        let mut last = self.last_peers.lock().expect("not poisoned");
        for gone in last.difference(&now) {
            let [name, family, state] = gone;
            let _ = self.bgp_peer_up.remove_label_values(&[name, family, state]);
            if !now.iter().any(|p| p[0] == *name && p[1] == *family) {
                let _ = self.bgp_sent.remove_label_values(&[name, family]);
                let _ = self.bgp_received.remove_label_values(&[name, family]);
            }
        }
        *last = now;
        for p in peers {
            let up = p.state == "Established";
            self.bgp_peer_up.with_label_values(&[&p.name, p.family, &p.state]).set(up as i64);
            self.bgp_sent.with_label_values(&[&p.name, p.family]).set(p.prefixes_sent as i64);
            self.bgp_received.with_label_values(&[&p.name, p.family]).set(p.prefixes_received as i64);
        }
    }
}

/// The drift repairs among a pass's ops: ops on an address whose desired MAC is the same
/// as in the previous pass's desired state, and the other ops (bridge, guards) when the
/// desired state did not change at all. The first pass repairs nothing: it starts.
pub fn repairs<'a>(
    prev: Option<&crate::plan::Desired>,
    now: &crate::plan::Desired,
    ops: impl IntoIterator<Item = &'a crate::plan::Op>,
) -> BTreeMap<&'static str, u64> {
    let mut out = BTreeMap::new();
    let Some(prev) = prev else { return out };
    let same_all = std::ptr::eq(prev, now) || prev == now;
    for op in ops {
        let repair = match op.addr() {
            Some(addr) => prev.addrs.get(&addr) == now.addrs.get(&addr),
            None => same_all,
        };
        if repair {
            *out.entry(op.kind()).or_default() += 1;
        }
    }
    out
}

/// Reads bgpd's sessions and nft's guard counters every [`POLL`], off the daemon's task.
pub fn spawn_poller(m: Arc<Metrics>, vtysh: Option<crate::frr::vtysh::Vtysh>, guards: bool) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Some(v) = &vtysh {
                let peers = tokio::time::timeout(POLL_TIMEOUT, crate::frr::bgp_peers(v)).await;
                match peers {
                    Ok(Ok(p)) => m.take_peers(Some(&p)),
                    _ => m.take_peers(None),
                }
            }
            if guards {
                let drops = tokio::task::spawn_blocking(crate::kernel::nft::guard_drops).await;
                if let Ok(d) = drops {
                    m.take_drops(&d);
                }
            }
        }
    });
}

/// Binds `addr` and serves `GET /metrics` from `m` until the runtime stops.
pub async fn serve(addr: SocketAddr, m: Arc<Metrics>) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!("cannot serve metrics on {addr} (metrics.listen): {}", crate::config::io_reason(&e))
    })?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let m = m.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let m = m.clone();
                    async move { Ok::<_, std::convert::Infallible>(answer(&req, &m)) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(io, svc);
                let _ = conn.await;
            });
        }
    });
    Ok(())
}

type Body = http_body_util::Full<hyper::body::Bytes>;

fn answer<B>(req: &hyper::Request<B>, m: &Metrics) -> hyper::Response<Body> {
    use hyper::{Method, StatusCode, header};
    let reply = |status: StatusCode, ctype: &str, body: String| {
        hyper::Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, ctype)
            .body(Body::from(body))
            .expect("valid response")
    };
    let text = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, text, "only GET\n".into());
    }
    match req.uri().path() {
        "/metrics" => reply(StatusCode::OK, prometheus::TEXT_FORMAT, m.render()),
        "/" => reply(StatusCode::OK, text, "hvroute: metrics are at /metrics\n".into()),
        _ => reply(StatusCode::NOT_FOUND, text, "not found; metrics are at /metrics\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(s: &str) -> Mac {
        s.parse().unwrap()
    }

    fn peer() -> crate::frr::PeerView {
        crate::frr::PeerView {
            name: "eth1".into(),
            family: "ipv4",
            state: "Established".into(),
            uptime: "00:01:00".into(),
            prefixes_sent: 3,
            prefixes_received: 1,
        }
    }

    /// The HELP and TYPE lines of every metric, as a golden file: a renamed metric or a
    /// changed type breaks operators' dashboards and alerts, so it must show in review.
    /// Regenerate with `UPDATE_GOLDEN=1 cargo test --lib metrics`.
    #[test]
    fn names_help_and_types_are_golden() {
        let m = Metrics::new();
        m.take_peers(Some(&[peer()]));
        m.set_vms([("web1".to_string(), vec![mac("52:54:00:00:00:01")])].into());
        m.take_drops(&[("drop-525400000001".to_string(), 0)].into());
        let text = m.render();
        let meta: String = text.lines().filter(|l| l.starts_with("# ")).map(|l| format!("{l}\n")).collect();
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/metrics.txt");
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, &meta).unwrap();
        }
        let want = std::fs::read_to_string(&path).unwrap();
        assert_eq!(meta, want, "metrics changed; UPDATE_GOLDEN=1 regenerates {}", path.display());
        for l in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let w: Vec<&str> = l.split_whitespace().collect();
            let (name, kind) = (w[2], w[3]);
            assert!(name.starts_with("hvroute_"), "{l}");
            assert_eq!(name.ends_with("_total"), kind == "counter", "{l}");
            if kind == "histogram" {
                assert!(name.ends_with("_seconds"), "{l}");
            }
        }
    }

    #[test]
    fn samples_render_with_their_labels() {
        let m = Metrics::new();
        m.hook("started", "ok");
        m.hook("bogus", "weird");
        Metrics::set_by_family(
            &m.prefixes_desired,
            &["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()],
        );
        m.pass_seconds.observe(0.003);
        m.take_peers(Some(&[peer()]));
        let t = m.render();
        for want in [
            "hvroute_hook_invocations_total{op=\"started\",result=\"ok\"} 1\n",
            "hvroute_hook_invocations_total{op=\"other\",result=\"failed\"} 1\n",
            "hvroute_prefixes_desired{family=\"ipv4\"} 1\n",
            "hvroute_prefixes_desired{family=\"ipv6\"} 1\n",
            "hvroute_reconcile_pass_duration_seconds_bucket{le=\"0.004\"} 1\n",
            "hvroute_reconcile_pass_duration_seconds_count 1\n",
            "hvroute_bgp_peer_up{family=\"ipv4\",peer=\"eth1\",state=\"Established\"} 1\n",
            "hvroute_bgp_peer_prefixes_sent{family=\"ipv4\",peer=\"eth1\"} 3\n",
            "hvroute_frr_reachable 1\n",
            "hvroute_build_info{version=",
        ] {
            assert!(t.contains(want), "{want:?} missing from\n{t}");
        }
        // A session that changes state keeps one series, with the new state.
        m.take_peers(Some(&[crate::frr::PeerView { state: "Active".into(), ..peer() }]));
        let t = m.render();
        assert!(t.contains("hvroute_bgp_peer_up{family=\"ipv4\",peer=\"eth1\",state=\"Active\"} 0\n"), "{t}");
        assert!(!t.contains("state=\"Established\""), "{t}");
        // A session that went away leaves no series; FRR not answering keeps the last ones.
        m.take_peers(Some(&[]));
        assert!(!m.render().contains("hvroute_bgp_peer_up{"));
        m.take_peers(None);
        assert!(m.render().contains("hvroute_frr_reachable 0\n"));
    }

    /// nft's counters are mirrored as Prometheus counters: they grow by differences, a
    /// recreated chain (its counter back near 0) does not make them go down, and a VM
    /// that went away loses its series (bounded cardinality).
    #[test]
    fn guard_drops_are_counters_per_vm() {
        let m = Metrics::new();
        let (a, b) = (mac("52:54:00:00:00:01"), mac("52:54:00:00:00:02"));
        m.set_vms([("web1".to_string(), vec![a]), ("web2".to_string(), vec![b])].into());
        let reading = |pairs: &[(&str, u64)]| -> BTreeMap<String, u64> {
            pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
        };
        let both = |a: u64, b: u64, host: u64| {
            reading(&[("drop-525400000001", a), ("drop-525400000002", b), (crate::guard::HOST_COUNTER, host)])
        };
        m.take_drops(&both(5, 0, 2));
        m.take_drops(&both(7, 0, 3));
        m.take_drops(&both(1, 0, 3));
        let t = m.render();
        assert!(t.contains("hvroute_guard_vm_dropped_packets_total{vm=\"web1\"} 8\n"), "{t}");
        assert!(t.contains("hvroute_guard_vm_dropped_packets_total{vm=\"web2\"} 0\n"), "{t}");
        // A VM whose NIC has no guard rules (no port yet) has no series.
        m.take_drops(&reading(&[("drop-525400000001", 1)]));
        assert!(!m.render().contains("vm=\"web2\""));
        assert!(t.contains("hvroute_guard_dropped_packets_total{reason=\"to_host\"} 3\n"), "{t}");
        m.set_vms([("web1".to_string(), vec![a])].into());
        assert!(!m.render().contains("vm=\"web2\""));
    }

    #[test]
    fn repairs_are_ops_the_desired_state_did_not_ask_for() {
        use crate::plan::{Desired, Op};
        let cfg = crate::config::Config::parse(
            "[pools]\nipv4=[\"192.0.2.0/24\"]\n[bgp]\nasn=65001\nrouter_id=\"10.255.0.1\"\n",
        )
        .unwrap();
        let snap = crate::store::Snapshot::default();
        let mut before = Desired::build(&cfg, &snap, "boot");
        before.addrs.insert("192.0.2.1".parse().unwrap(), mac("52:54:00:00:00:01"));
        let mut after = before.clone();
        after.addrs.insert("192.0.2.2".parse().unwrap(), mac("52:54:00:00:00:02"));
        let ops = [
            Op::ReplaceRoute { addr: "192.0.2.1".parse().unwrap() },
            Op::ReplaceRoute { addr: "192.0.2.2".parse().unwrap() },
            Op::SetBridgeUp,
        ];
        let r = repairs(Some(&before), &after, &ops);
        assert_eq!(r.into_iter().collect::<Vec<_>>(), vec![("route_add", 1)]);
        let r = repairs(Some(&after), &after, &ops);
        assert_eq!(r.into_iter().collect::<Vec<_>>(), vec![("bridge", 1), ("route_add", 2)]);
        assert!(repairs(None, &after, &ops).is_empty());
    }

    /// The cost of one scrape's encoding with a guard-drop series per VM (docs/benchmarks.md):
    /// `cargo test --release --lib metrics::tests::render_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, run by hand in release mode"]
    fn render_cost() {
        for n in [1_000u32, 10_000] {
            let m = Metrics::new();
            let vms = (0..n)
                .map(|i| {
                    let b = i.to_be_bytes();
                    (format!("i-2-{i}-VM"), vec![Mac([0x52, 0x54, b[0], b[1], b[2], b[3]])])
                })
                .collect();
            let counters: BTreeMap<String, u64> = (0..n)
                .map(|i| {
                    let b = i.to_be_bytes();
                    (crate::guard::NicRules::counter_name(&Mac([0x52, 0x54, b[0], b[1], b[2], b[3]])), 1)
                })
                .collect();
            m.set_vms(vms);
            m.take_drops(&counters);
            let t = std::time::Instant::now();
            let rounds = 20;
            let mut bytes = 0;
            for _ in 0..rounds {
                bytes = m.render().len();
            }
            let per = t.elapsed().as_secs_f64() * 1e3 / f64::from(rounds);
            let t = std::time::Instant::now();
            m.take_drops(&counters);
            let poll = t.elapsed().as_secs_f64() * 1e3;
            println!("{n} VMs: render {per:.2} ms, {bytes} bytes; one guard-counter update {poll:.2} ms");
        }
    }
}
