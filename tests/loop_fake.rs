//! Loop tests: the daemon's real loop over the fake kernel, with tokio's paused clock.
//! They pin down *when* passes happen; the netns tests pin down *what* the kernel holds.

use std::net::IpAddr;
use std::time::Duration;

use hvroute::config::Config;
use hvroute::control::Request;
use hvroute::daemon::{Daemon, Input};
use hvroute::kernel::events::Hint;
use hvroute::kernel::fake::SharedFake;
use hvroute::model::{Nic, Source, VmSpec};
use hvroute::reconcile::PassError;
use hvroute::store::Store;
use tokio::sync::{mpsc, oneshot};
use tokio::time::sleep;

struct Rig {
    dir: tempfile::TempDir,
    cfg: Config,
    fake: SharedFake,
}

impl Rig {
    fn new() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config::parse(&format!(
            "state_dir = \"{}\"\nresync_interval_s = 30\n[pools]\nipv4=[\"192.0.2.0/24\"]\nipv6=[\"2001:db8:100::/40\"]\n\
             [bgp]\nasn=65001\nrouter_id=\"10.255.0.1\"\n[frr]\nenabled=false\n",
            dir.path().display()
        ))
        .unwrap();
        Rig { dir, cfg, fake: SharedFake::new() }
    }

    fn add(&self, name: &str, ip: &str) {
        let store = Store::open(self.dir.path()).unwrap();
        let lock = store.lock().unwrap();
        let vm = VmSpec {
            name: name.parse().unwrap(),
            nics: vec![Nic {
                mac: "52:54:00:00:00:01".parse().unwrap(),
                addresses: [ip.parse().unwrap()].into(),
                port: None,
            }],
            source: Source::Cli,
            boot_id: None,
            migration: None,
        };
        store.put(&lock, &vm).unwrap();
    }

    fn daemon(&self) -> Daemon<SharedFake> {
        Daemon::new(
            self.cfg.clone(),
            Store::open(self.dir.path()).unwrap(),
            "boot".into(),
            self.fake.clone(),
            false,
        )
    }

    fn routed(&self, ip: &str) -> bool {
        let ip: IpAddr = ip.parse().unwrap();
        self.fake.0.borrow().state.routes.iter().any(|r| r.addr == ip)
    }

    fn neighbour(&self, ip: &str) -> bool {
        let ip: IpAddr = ip.parse().unwrap();
        self.fake.0.borrow().state.neighs.keys().any(|(a, _)| *a == ip)
    }
}

/// Runs the daemon until `script` finishes.
async fn drive<F: std::future::Future<Output = ()>>(
    d: &mut Daemon<SharedFake>,
    rx: mpsc::UnboundedReceiver<Input>,
    script: F,
) -> Result<(), PassError> {
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let script = async move {
        script.await;
        let _ = stop_tx.send(());
    };
    let (r, ()) = tokio::join!(d.run(rx, async { stop_rx.await.unwrap_or(()) }), script);
    r
}

/// A `vm add` must land at once, not at the next periodic resync 30 s later.
#[tokio::test(start_paused = true)]
async fn state_dir_change_is_applied_after_the_debounce_not_the_resync() {
    let rig = Rig::new();
    let mut d = rig.daemon();
    let (tx, rx) = mpsc::unbounded_channel();
    drive(&mut d, rx, async {
        sleep(Duration::from_millis(1)).await;
        assert!(
            rig.fake.0.borrow().state.bridge.as_ref().is_some_and(|b| b.up),
            "first pass creates the bridge up"
        );
        rig.add("vm1", "192.0.2.10");
        tx.send(Input::StateDirChanged(None)).unwrap();
        sleep(Duration::from_millis(5)).await;
        assert!(!rig.routed("192.0.2.10"), "debounce: no pass before 20 ms");
        sleep(Duration::from_millis(30)).await;
        assert!(rig.routed("192.0.2.10") && rig.neighbour("192.0.2.10"));
    })
    .await
    .unwrap();
}

/// A burst of hints (10,000 route deletions when the bridge goes down) costs one pass.
#[tokio::test(start_paused = true)]
async fn a_burst_of_hints_costs_one_pass() {
    let rig = Rig::new();
    rig.add("vm1", "192.0.2.10");
    let mut d = rig.daemon();
    let (tx, rx) = mpsc::unbounded_channel();
    drive(&mut d, rx, async {
        sleep(Duration::from_millis(1)).await;
        for _ in 0..1000 {
            tx.send(Input::Hint(Hint("owned route deleted"))).unwrap();
        }
        sleep(Duration::from_millis(100)).await;
    })
    .await
    .unwrap();
    assert_eq!(d.passes(), 2, "the first pass plus one for the burst");
}

/// Link down drops every route; link up must restore them at once (design.md §3).
#[tokio::test(start_paused = true)]
async fn link_up_hint_restores_everything_the_link_down_removed() {
    let rig = Rig::new();
    rig.add("vm1", "192.0.2.10");
    rig.add("vm2", "2001:db8:100::20");
    let mut d = rig.daemon();
    let (tx, rx) = mpsc::unbounded_channel();
    drive(&mut d, rx, async {
        sleep(Duration::from_millis(1)).await;
        assert!(rig.routed("192.0.2.10") && rig.routed("2001:db8:100::20"));
        rig.fake.0.borrow_mut().link_down();
        tx.send(Input::Hint(Hint("bridge link down"))).unwrap();
        sleep(Duration::from_millis(100)).await;
        assert!(!rig.routed("192.0.2.10"), "a running daemon respects an admin's link down");
        rig.fake.0.borrow_mut().link_up();
        tx.send(Input::Hint(Hint("bridge link up"))).unwrap();
        sleep(Duration::from_millis(30)).await;
        for ip in ["192.0.2.10", "2001:db8:100::20"] {
            assert!(rig.routed(ip) && rig.neighbour(ip), "{ip} not restored after link up");
        }
    })
    .await
    .unwrap();
}

/// A kernel that refuses ops (ENOMEM, a busy netlink socket) is retried with backoff,
/// without waiting for the next event or the periodic resync.
#[tokio::test(start_paused = true)]
async fn failed_ops_are_retried_with_backoff() {
    let rig = Rig::new();
    let mut d = rig.daemon();
    let (tx, rx) = mpsc::unbounded_channel();
    drive(&mut d, rx, async {
        sleep(Duration::from_millis(1)).await;
        // Both the quick additions and the full pass's own attempt fail.
        rig.fake.0.borrow_mut().fail_next = 4;
        rig.add("vm1", "192.0.2.10");
        tx.send(Input::StateDirChanged(None)).unwrap();
        sleep(Duration::from_millis(50)).await;
        assert!(!rig.routed("192.0.2.10") || !rig.neighbour("192.0.2.10"), "the injected failures hit");
        sleep(Duration::from_millis(1100)).await;
        assert!(rig.routed("192.0.2.10") && rig.neighbour("192.0.2.10"), "retried after 1 s backoff");
    })
    .await
    .unwrap();
}

/// Drift that raises no event (IPv4 routes vanish silently on link down) is still
/// repaired by the periodic resync.
#[tokio::test(start_paused = true)]
async fn silent_drift_is_repaired_by_the_periodic_resync() {
    let rig = Rig::new();
    rig.add("vm1", "192.0.2.10");
    let mut d = rig.daemon();
    let (_tx, rx) = mpsc::unbounded_channel();
    drive(&mut d, rx, async {
        sleep(Duration::from_millis(1)).await;
        rig.fake.0.borrow_mut().state.routes.clear();
        sleep(Duration::from_secs(29)).await;
        assert!(!rig.routed("192.0.2.10"), "no hint, so nothing before the resync");
        sleep(Duration::from_secs(2)).await;
        assert!(rig.routed("192.0.2.10"), "repaired by the 30 s resync");
    })
    .await
    .unwrap();
}

/// `vm add` waits on the control socket for a pass that saw its change.
#[tokio::test(start_paused = true)]
async fn reconcile_request_is_answered_after_a_fresh_pass() {
    let rig = Rig::new();
    let mut d = rig.daemon();
    let (tx, rx) = mpsc::unbounded_channel();
    drive(&mut d, rx, async {
        sleep(Duration::from_millis(1)).await;
        rig.add("vm1", "192.0.2.10");
        let (otx, orx) = oneshot::channel();
        tx.send(Input::Control(Request::Reconcile, otx)).unwrap();
        let answer = orx.await.unwrap();
        assert!(rig.routed("192.0.2.10"), "answered before the pass applied the change");
        assert_eq!(answer["pass"], 2);
        assert_eq!(answer["ops"], 2);
    })
    .await
    .unwrap();
}

/// A failed first observation (netlink busy at boot) must not skip the take-over
/// check: the retry is still a first pass.
#[tokio::test(start_paused = true)]
async fn take_over_is_checked_by_the_first_pass_that_gets_through() {
    let rig = Rig::new();
    rig.add("vm1", "192.0.2.10");
    foreign_bridge(&rig);
    rig.fake.0.borrow_mut().fail_observe = 1;
    let mut d = rig.daemon();
    let (_tx, rx) = mpsc::unbounded_channel();
    let r = drive(&mut d, rx, async { sleep(Duration::from_secs(3)).await }).await;
    assert!(matches!(r, Err(PassError::Refused(_))), "{r:?}");
    assert_eq!(d.passes(), 2);
    assert!(!rig.routed("192.0.2.10"));
}

fn foreign_bridge(rig: &Rig) {
    rig.fake.0.borrow_mut().state.bridge = Some(hvroute::plan::BridgeObs {
        ifindex: 3,
        is_bridge: true,
        up: true,
        mac: None,
        mtu: 1500,
        addrs: Default::default(),
        ports: vec![hvroute::plan::PortObs {
            name: "eno1".into(),
            kind: hvroute::plan::PortKind::Other("device".into()),
            mac: None,
        }],
    });
}

/// A bridge with a physical port is refused at start; nothing is programmed.
#[tokio::test(start_paused = true)]
async fn foreign_bridge_port_refuses_the_first_pass() {
    let rig = Rig::new();
    rig.add("vm1", "192.0.2.10");
    foreign_bridge(&rig);
    let mut d = rig.daemon();
    let (_tx, rx) = mpsc::unbounded_channel();
    let r = drive(&mut d, rx, async { sleep(Duration::from_millis(1)).await }).await;
    match r {
        Err(PassError::Refused(why)) => assert!(why[0].contains("eno1"), "{why:?}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(!rig.routed("192.0.2.10"));
}

/// The metrics follow the loop: a VM added is desired and programmed but is no drift
/// repair; a route that vanished behind the daemon's back is one; a hook's report is
/// counted. Prevents dashboards that count every new VM as drift, or miss real drift.
#[tokio::test(start_paused = true)]
async fn metrics_count_passes_vms_and_repairs() {
    let rig = Rig::new();
    rig.add("vm1", "192.0.2.10");
    let mut d = rig.daemon();
    let m = d.metrics.clone();
    let value = |series: &str| -> f64 {
        let text = m.render();
        let line = text.lines().find(|l| l.rsplit_once(' ').is_some_and(|(s, _)| s == series));
        line.and_then(|l| l.rsplit_once(' ')).map_or(f64::NAN, |(_, v)| v.parse().unwrap())
    };
    let (tx, rx) = mpsc::unbounded_channel();
    drive(&mut d, rx, async {
        sleep(Duration::from_millis(1)).await;
        assert_eq!(value("hvroute_vms{state=\"active\"}"), 1.0);
        assert_eq!(value("hvroute_routes_programmed{family=\"ipv4\"}"), 1.0);
        assert_eq!(value("hvroute_neighbours_programmed{family=\"ipv4\"}"), 1.0);
        rig.add("vm2", "2001:db8:100::20");
        tx.send(Input::StateDirChanged(None)).unwrap();
        sleep(Duration::from_millis(50)).await;
        assert_eq!(value("hvroute_vms{state=\"active\"}"), 2.0);
        assert_eq!(value("hvroute_prefixes_desired{family=\"ipv6\"}"), 1.0);
        assert_eq!(value("hvroute_routes_programmed{family=\"ipv6\"}"), 1.0);
        assert_eq!(value("hvroute_drift_repairs_total{kind=\"route_add\"}"), 0.0, "a new VM is no repair");
        rig.fake.0.borrow_mut().state.routes.clear();
        tx.send(Input::Hint(Hint("owned route deleted"))).unwrap();
        sleep(Duration::from_millis(50)).await;
        assert_eq!(value("hvroute_drift_repairs_total{kind=\"route_add\"}"), 2.0);
        assert_eq!(value("hvroute_reconcile_passes_total"), 3.0);
        assert_eq!(value("hvroute_reconcile_pass_duration_seconds_count"), 3.0);
        let (otx, orx) = oneshot::channel();
        let done = Request::HookDone { hook_op: "release".into(), result: "ok".into() };
        tx.send(Input::Control(done, otx)).unwrap();
        orx.await.unwrap();
        assert_eq!(value("hvroute_hook_invocations_total{op=\"release\",result=\"ok\"}"), 1.0);
    })
    .await
    .unwrap();
}
