//! Kernel change hints: a netlink multicast subscription that tells the daemon when
//! something it owns may have changed. Hints carry a reason only; the daemon answers
//! every hint with a full, level-triggered pass (design.md §3), so a missed or merged
//! hint costs latency, never correctness.
//!
//! Reported: a deleted hvroute route or neighbour; a route or permanent neighbour of
//! another protocol on the bridge (it may have replaced ours); an address removed from
//! the bridge; the bridge appearing, disappearing or changing state (link up after down
//! lost every route, some without a delete event); and socket overflow (ENOBUFS), after
//! which events were lost.

use std::os::fd::AsRawFd;

use anyhow::{Context, Result};
use futures::StreamExt;
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::RouteNetlinkMessage as M;
use netlink_packet_route::link::{LinkAttribute, LinkFlags};
use netlink_packet_route::neighbour::{NeighbourAttribute, NeighbourState};
use netlink_packet_route::route::RouteAttribute;
use netlink_sys::AsyncSocket;
use rtnetlink::MulticastGroup;
use tokio::sync::mpsc;

/// Receive buffer for the event socket. 10,000 VMs' worth of route and neighbour
/// deletions arrive at once when the bridge goes down.
const RCVBUF: libc::c_int = 16 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hint(pub &'static str);

/// Subscribes before the caller's first full read (subscribe, then list, then converge).
pub async fn subscribe(bridge: &str, proto: u8) -> Result<mpsc::UnboundedReceiver<Hint>> {
    let groups = [
        MulticastGroup::Link,
        MulticastGroup::Ipv4Route,
        MulticastGroup::Ipv6Route,
        MulticastGroup::Neigh,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv6Ifaddr,
    ];
    let (mut conn, handle, mut messages) =
        rtnetlink::new_multicast_connection(&groups).context("cannot subscribe to netlink events")?;
    let fd = conn.socket_mut().socket_mut().as_raw_fd();
    // SO_RCVBUFFORCE passes rmem_max as root; fall back to the capped SO_RCVBUF.
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: fd is a valid socket owned by `conn`; the value is a c_int.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                &RCVBUF as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            break;
        }
    }
    tokio::spawn(conn);

    let mut bridge_index = {
        let mut links = handle.link().get().match_name(bridge.to_owned()).execute();
        match links.next().await {
            Some(Ok(l)) => Some(l.header.index),
            _ => None,
        }
    };
    let bridge = bridge.to_owned();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut bridge_up: Option<bool> = None;
        let mut ports = std::collections::HashSet::new();
        while let Some((msg, _)) = messages.next().await {
            let hint = match msg.payload {
                NetlinkPayload::Overrun(_) => Some(Hint("netlink event overflow (ENOBUFS)")),
                NetlinkPayload::InnerMessage(m) => {
                    classify(&m, &bridge, proto, &mut bridge_index, &mut bridge_up, &mut ports)
                }
                _ => None,
            };
            if let Some(h) = hint
                && tx.send(h).is_err()
            {
                return;
            }
        }
    });
    Ok(rx)
}

fn classify(
    m: &M,
    bridge: &str,
    proto: u8,
    bridge_index: &mut Option<u32>,
    bridge_up: &mut Option<bool>,
    ports: &mut std::collections::HashSet<u32>,
) -> Option<Hint> {
    let on_bridge = |i: u32| Some(i) == *bridge_index;
    match m {
        // A port joining the bridge: a CloudStack shim entry may wait for its tap.
        M::NewLink(l)
            if bridge_index.is_some()
                && l.attributes
                    .iter()
                    .any(|a| matches!(a, LinkAttribute::Controller(i) if on_bridge(*i))) =>
        {
            ports.insert(l.header.index).then_some(Hint("port joined the bridge"))
        }
        // A known port that left the bridge (or went away): forget it.
        M::NewLink(l) | M::DelLink(l) if ports.remove(&l.header.index) => None,
        M::NewLink(l) | M::DelLink(l) => {
            let named = l.attributes.iter().any(|a| matches!(a, LinkAttribute::IfName(n) if n == bridge));
            if !named && !on_bridge(l.header.index) {
                return None;
            }
            if matches!(m, M::DelLink(_)) {
                *bridge_index = None;
                *bridge_up = None;
                return Some(Hint("bridge deleted"));
            }
            *bridge_index = Some(l.header.index);
            let up = l.header.flags.contains(LinkFlags::Up);
            let was = bridge_up.replace(up);
            match (was, up) {
                (Some(false), true) => Some(Hint("bridge link up")),
                (None, _) => Some(Hint("bridge appeared")),
                (Some(true), false) => Some(Hint("bridge link down")),
                _ => None,
            }
        }
        M::DelRoute(r) if u8::from(r.header.protocol) == proto => Some(Hint("owned route deleted")),
        M::NewRoute(r) if u8::from(r.header.protocol) != proto => {
            let oif = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            });
            oif.filter(|i| on_bridge(*i)).map(|_| Hint("foreign route on the bridge"))
        }
        M::DelNeighbour(n) => {
            let owned = n
                .attributes
                .iter()
                .any(|a| matches!(a, NeighbourAttribute::Protocol(p) if u8::from(*p) == proto));
            owned.then_some(Hint("owned neighbour deleted"))
        }
        M::NewNeighbour(n) => {
            let owned = n
                .attributes
                .iter()
                .any(|a| matches!(a, NeighbourAttribute::Protocol(p) if u8::from(*p) == proto));
            (!owned && on_bridge(n.header.ifindex) && n.header.state == NeighbourState::Permanent)
                .then_some(Hint("foreign permanent neighbour on the bridge"))
        }
        M::DelAddress(a) if on_bridge(a.header.index) => Some(Hint("address removed from the bridge")),
        _ => None,
    }
}
