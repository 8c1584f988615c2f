//! The kernel backend: **where a route is written to the kernel**.
//!
//! Contract: a [`Kernel`] observes only what hvroute owns or manages (the bridge, its
//! gateway addresses and sysctls, and routes and neighbours carrying hvroute's route
//! protocol number) and applies a [`Plan`] with replace semantics, treating "already
//! gone" on delete as success. One failing op does not stop the others: `apply` returns
//! the failures and carries on. [`netlink::Netlink`] is the real backend (rtnetlink, one
//! socket, pipelined requests; no `ip` forks). [`fake::Fake`] is an in-memory kernel for
//! loop and property tests that can be told to fail.

pub mod announce;
pub mod events;
pub mod fake;
pub mod netlink;
pub mod nft;

use crate::plan::{Desired, Observed, Op, Plan};

/// An op the kernel refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpError {
    pub op: Op,
    pub error: String,
}

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let line = Plan { ops: vec![self.op.clone()], ..Plan::default() }.to_string();
        write!(f, "{}: {}", line.trim_end(), self.error)
    }
}

/// The effects the reconcile pass needs from a kernel.
#[allow(async_fn_in_trait)]
pub trait Kernel {
    /// Reads the current state of what `desired` describes.
    async fn observe(&mut self, desired: &Desired) -> anyhow::Result<Observed>;
    /// What [`crate::plan::plan_vm`] needs for these addresses: the bridge, and the owned
    /// routes and neighbours of `addrs` (at least). By default, everything.
    async fn observe_addrs(
        &mut self,
        desired: &Desired,
        addrs: &std::collections::BTreeSet<std::net::IpAddr>,
    ) -> anyhow::Result<Observed> {
        let _ = addrs;
        self.observe(desired).await
    }
    /// Executes the plan in order (bridge first, then deletions, then additions) and
    /// returns the ops that failed.
    async fn apply(&mut self, plan: &Plan) -> Vec<OpError>;
}
