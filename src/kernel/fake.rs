//! An in-memory kernel for loop and property tests. It keeps the semantics the planner
//! relies on (replace, idempotent delete, no routes on a down or missing bridge, link
//! down flushes the bridge's routes and neighbours) and can fail the next N ops. It
//! never stands in for the real kernel in end-to-end tests.

use super::{Kernel, OpError};
use crate::plan::{BridgeObs, Desired, Observed, Op, Plan, RouteKey, default_metric};

#[derive(Debug, Clone, Default)]
pub struct Fake {
    pub state: Observed,
    /// The next this-many ops fail.
    pub fail_next: usize,
    /// The next this-many observations fail.
    pub fail_observe: usize,
    pub ops_applied: usize,
    next_ifindex: u32,
}

impl Fake {
    pub fn new() -> Fake {
        Fake { next_ifindex: 10, ..Fake::default() }
    }

    /// `ip link set BR down`: the kernel drops every route and neighbour on it.
    pub fn link_down(&mut self) {
        if let Some(b) = &mut self.state.bridge {
            b.up = false;
            let idx = b.ifindex;
            self.state.routes.retain(|r| r.ifindex != idx);
            self.state.neighs.retain(|(_, i), _| *i != idx);
        }
    }

    pub fn link_up(&mut self) {
        if let Some(b) = &mut self.state.bridge {
            b.up = true;
        }
    }

    fn step(&mut self, op: &Op) -> Result<(), String> {
        let s = &mut self.state;
        let bridge = |s: &mut Observed| -> Result<u32, String> {
            match &s.bridge {
                Some(b) if b.up => Ok(b.ifindex),
                Some(_) => Err("network is down".into()),
                None => Err("no such device".into()),
            }
        };
        match op {
            Op::CreateBridge { mac, mtu, .. } => {
                if s.bridge.is_some() {
                    return Err("file exists".into());
                }
                self.next_ifindex += 1;
                s.bridge = Some(BridgeObs {
                    ifindex: self.next_ifindex,
                    is_bridge: true,
                    up: false,
                    mac: Some(*mac),
                    mtu: *mtu,
                    addrs: Default::default(),
                    ports: vec![],
                });
            }
            Op::SetBridgeMac { mac } => s.bridge.as_mut().ok_or("no such device")?.mac = Some(*mac),
            Op::SetBridgeMtu { mtu } => s.bridge.as_mut().ok_or("no such device")?.mtu = *mtu,
            Op::SetBridgeUp => s.bridge.as_mut().ok_or("no such device")?.up = true,
            Op::InstallRedirectFilter => s.redirect_filter = true,
            Op::AddLoopbackAddr { addr } => {
                s.loopback_addrs.insert(*addr);
            }
            Op::AddBridgeAddr { addr } => {
                s.bridge.as_mut().ok_or("no such device")?.addrs.insert(*addr);
            }
            Op::SetSysctl { key, value } => {
                s.sysctls.insert(key.clone(), value.clone());
            }
            Op::DelNeigh { addr, ifindex } => {
                s.neighs.remove(&(*addr, *ifindex));
            }
            Op::DelRoute { addr, metric, ifindex } => {
                s.routes.remove(&RouteKey { addr: *addr, metric: *metric, ifindex: *ifindex });
            }
            Op::ReplaceRoute { addr } => {
                let idx = bridge(s)?;
                let m = default_metric(*addr);
                s.routes.retain(|r| !(r.addr == *addr && r.metric == m));
                s.routes.insert(RouteKey { addr: *addr, metric: m, ifindex: idx });
            }
            Op::ReplaceNeigh { addr, mac } => {
                let idx = bridge(s)?;
                s.neighs.insert((*addr, idx), Some(*mac));
            }
            Op::GuardBase { base } => s.guard.base = Some(base.fingerprint()),
            Op::GuardPorts { ports, trusted } => {
                s.guard.ports = ports.clone();
                s.guard.trusted = trusted.clone();
            }
            Op::GuardNic { port, nic, .. } => {
                s.guard.chains.insert(nic.chain());
                s.guard.map.insert(port.clone(), (nic.chain(), Some(nic.fingerprint())));
            }
            Op::UnguardPort { port } => {
                s.guard.map.remove(port);
            }
            Op::DelGuardChain { chain } => {
                s.guard.chains.remove(chain);
            }
            Op::IsolatePort { port } => {
                s.guard.isolated.insert(port.clone());
            }
            Op::RemoveGuards => s.guard = Default::default(),
        }
        Ok(())
    }
}

impl Fake {
    /// What `observe` returns, without the async wrapper.
    pub fn observe_now(&self, desired: &Desired) -> Observed {
        let mut o = self.state.clone();
        o.sysctls.retain(|k, _| desired.bridge.sysctls.contains_key(k));
        o
    }

    /// What `apply` does, without the async wrapper.
    pub fn apply_now(&mut self, plan: &Plan) -> Vec<OpError> {
        let mut errors = Vec::new();
        for op in &plan.ops {
            if self.fail_next > 0 {
                self.fail_next -= 1;
                errors.push(OpError { op: op.clone(), error: "injected failure".into() });
                continue;
            }
            match self.step(op) {
                Ok(()) => self.ops_applied += 1,
                Err(e) => errors.push(OpError { op: op.clone(), error: e }),
            }
        }
        errors
    }
}

impl Kernel for Fake {
    async fn observe(&mut self, desired: &Desired) -> anyhow::Result<Observed> {
        self.observe_checked(desired)
    }

    async fn apply(&mut self, plan: &Plan) -> Vec<OpError> {
        self.apply_now(plan)
    }
}

impl Fake {
    fn observe_checked(&mut self, desired: &Desired) -> anyhow::Result<Observed> {
        if self.fail_observe > 0 {
            self.fail_observe -= 1;
            anyhow::bail!("injected observation failure");
        }
        Ok(self.observe_now(desired))
    }
}

/// A fake shared between a running daemon and the test that drives it.
#[derive(Clone, Default)]
pub struct SharedFake(pub std::rc::Rc<std::cell::RefCell<Fake>>);

impl SharedFake {
    pub fn new() -> SharedFake {
        SharedFake(std::rc::Rc::new(std::cell::RefCell::new(Fake::new())))
    }
}

impl Kernel for SharedFake {
    async fn observe(&mut self, desired: &Desired) -> anyhow::Result<Observed> {
        self.0.borrow_mut().observe_checked(desired)
    }

    async fn apply(&mut self, plan: &Plan) -> Vec<OpError> {
        self.0.borrow_mut().apply_now(plan)
    }
}
