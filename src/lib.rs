//! hvroute: pure L3 networking for VMs on KVM hypervisors.
//!
//! Data flows one way: [`store`] (desired state, JSON files) and [`config`] feed
//! [`plan::Desired`]; the [`kernel`] backend observes what hvroute owns; the pure
//! [`plan::plan`] computes the difference; the backend applies it. The [`daemon`]
//! runs that pass whenever something may have changed. See `docs/architecture.md`.

pub mod cli;
pub mod config;
pub mod configdrive;
pub mod control;
pub mod daemon;
pub mod frr;
pub mod guard;
pub mod hook;
pub mod kernel;
pub mod metrics;
pub mod model;
pub mod plan;
pub mod reconcile;
pub mod store;
