//! The rtnetlink backend. One netlink socket; route and neighbour requests are pipelined
//! (many in flight at once), which is what makes 10,000 VMs a sub-second job.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use futures::stream::{self, StreamExt, TryStreamExt};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::{AddressAttribute, AddressFlags};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, RouteMessageBuilder};

use super::{Kernel, OpError};
use crate::model::Mac;
use crate::plan::{
    BridgeObs, Desired, IfAddr, Observed, Op, Plan, PortKind, PortObs, RouteKey, default_metric,
};

/// An owned neighbour as [`Observed`] holds it: (address, ifindex) and its MAC.
type NeighEntry = ((IpAddr, u32), Option<Mac>);

/// How many route or neighbour requests are in flight at once.
const PIPELINE: usize = 512;

pub struct Netlink {
    handle: Handle,
    /// A second socket, so the route dump runs beside the neighbour dump.
    route_handle: Handle,
    bridge: String,
    proto: u8,
    sysctl_root: PathBuf,
}

impl Netlink {
    /// Opens a netlink socket in the current network namespace. Needs a tokio runtime.
    pub fn connect(bridge: &str, proto: u8) -> Result<Netlink> {
        let (conn, handle, _) = rtnetlink::new_connection().context("cannot open a netlink socket")?;
        tokio::spawn(conn);
        let (conn, route_handle, _) = rtnetlink::new_connection().context("cannot open a netlink socket")?;
        tokio::spawn(conn);
        Ok(Netlink {
            handle,
            route_handle,
            bridge: bridge.to_owned(),
            proto,
            sysctl_root: "/proc/sys".into(),
        })
    }

    /// What [`crate::plan::plan_vm`] needs (the libvirt hook): the bridge and the owned
    /// routes and neighbours. When the bridge exists, its sysctls, the redirect filter and
    /// the loopbacks are not observed (left empty: `plan_vm` changes nothing about an
    /// existing bridge), which spares the hook the redirect filter's `nft` fork. The guards
    /// are observed (one `nft` batch) only when one of `addrs` is routed here. When it is missing, this is
    /// the full [`Kernel::observe`], because the plan sets the bridge up.
    ///
    /// Routes and neighbours are looked up for `addrs` only, with one request per object
    /// instead of a dump of every VM's: at 1,000 VMs the dumps cost the hook 6 to 10 ms.
    /// A route lookup returns the route the kernel would use (`RTM_F_FIB_MATCH`), so of two
    /// owned routes for one address with different metrics it sees the preferred one; a
    /// neighbour lookup sees the bridge's entry. The daemon's full pass sees everything.
    pub async fn observe_for_vm(&mut self, desired: &Desired, addrs: &BTreeSet<IpAddr>) -> Result<Observed> {
        // The guards matter only for a VM with something routed here (not at `release`).
        let routed = addrs.iter().any(|a| desired.addrs.contains_key(a) || desired.pending.contains_key(a));
        let (bridge, guard) = self.observe_bridge_and_guards(routed, &peer_addrs(desired)).await?;
        let Some(bridge) = bridge else { return self.observe(desired).await };
        let (proto, ifindex) = (self.proto, bridge.ifindex);
        let this = &*self;
        let found: Vec<(Option<RouteKey>, Option<NeighEntry>)> = stream::iter(addrs)
            .map(|a| async move {
                let r = this.get_route(*a, proto).await?;
                let n = this.get_neigh(*a, ifindex, proto).await?;
                anyhow::Ok((r, n))
            })
            .buffer_unordered(PIPELINE)
            .try_collect()
            .await?;
        let routes = found.iter().filter_map(|(r, _)| *r).collect();
        let neighs = found.into_iter().filter_map(|(_, n)| n).collect();
        Ok(Observed { bridge: Some(bridge), routes, neighs, guard, ..Observed::default() })
    }

    /// `ip route get ADDR` by netlink: the kernel's answers. With `fib_match`, the route
    /// entry that matched (`RTM_F_FIB_MATCH`) rather than a synthesised result.
    fn route_get(
        &self,
        addr: IpAddr,
        fib_match: bool,
    ) -> std::result::Result<
        impl futures::Stream<
            Item = netlink_packet_core::NetlinkMessage<netlink_packet_route::RouteNetlinkMessage>,
        >,
        rtnetlink::Error,
    > {
        use netlink_packet_core::{NLM_F_REQUEST, NetlinkMessage};
        use netlink_packet_route::RouteNetlinkMessage as M;
        use netlink_packet_route::route::RouteFlags;
        let mut msg = RouteMessage::default();
        msg.header.address_family = family(addr);
        msg.header.destination_prefix_length = if addr.is_ipv4() { 32 } else { 128 };
        if fib_match {
            msg.header.flags = RouteFlags::FibMatch;
        }
        msg.attributes.push(RouteAttribute::Destination(match addr {
            IpAddr::V4(a) => RouteAddress::Inet(a),
            IpAddr::V6(a) => RouteAddress::Inet6(a),
        }));
        let mut req = NetlinkMessage::from(M::GetRoute(msg));
        req.header.flags = NLM_F_REQUEST;
        self.handle.clone().request(req)
    }

    /// The owned host route the kernel uses for ADDR, if that is one.
    async fn get_route(&self, addr: IpAddr, proto: u8) -> Result<Option<RouteKey>> {
        use netlink_packet_core::NetlinkPayload;
        use netlink_packet_route::RouteNetlinkMessage as M;
        let full = if addr.is_ipv4() { 32 } else { 128 };
        let mut resp = self.route_get(addr, true).context("cannot ask for a route")?;
        let mut out = None;
        while let Some(m) = resp.next().await {
            match m.payload {
                NetlinkPayload::InnerMessage(M::NewRoute(r)) => {
                    let (mut metric, mut ifindex, mut dst) = (0, 0, None);
                    for a in &r.attributes {
                        match a {
                            RouteAttribute::Priority(p) => metric = *p,
                            RouteAttribute::Oif(i) => ifindex = *i,
                            RouteAttribute::Destination(RouteAddress::Inet(v4)) => {
                                dst = Some(IpAddr::V4(*v4))
                            }
                            RouteAttribute::Destination(RouteAddress::Inet6(v6)) => {
                                dst = Some(IpAddr::V6(*v6))
                            }
                            _ => {}
                        }
                    }
                    if u8::from(r.header.protocol) == proto
                        && r.header.destination_prefix_length == full
                        && dst == Some(addr)
                        && route_table(&r) == u32::from(RouteHeader::RT_TABLE_MAIN)
                    {
                        out = Some(RouteKey { addr, metric, ifindex });
                    }
                }
                NetlinkPayload::Error(e) => {
                    let code = e.code.map_or(0, |c| -c.get());
                    // No route at all for the address: nothing of ours either.
                    if !matches!(code, libc::ENETUNREACH | libc::EHOSTUNREACH | libc::ENOENT | libc::ESRCH) {
                        anyhow::bail!(
                            "route lookup of {addr} failed: {}",
                            std::io::Error::from_raw_os_error(code)
                        );
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// The owned neighbour entry for ADDR on the bridge, if there is one.
    async fn get_neigh(&self, addr: IpAddr, ifindex: u32, proto: u8) -> Result<Option<NeighEntry>> {
        use netlink_packet_core::{NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
        use netlink_packet_route::RouteNetlinkMessage as M;
        let mut msg = NeighbourMessage::default();
        msg.header.family = family(addr);
        msg.header.ifindex = ifindex;
        msg.attributes.push(NeighbourAttribute::Destination(match addr {
            IpAddr::V4(a) => NeighbourAddress::Inet(a),
            IpAddr::V6(a) => NeighbourAddress::Inet6(a),
        }));
        let mut req = NetlinkMessage::from(M::GetNeighbour(msg));
        req.header.flags = NLM_F_REQUEST;
        let mut resp = self.handle.clone().request(req).context("cannot ask for a neighbour")?;
        let mut out = None;
        while let Some(m) = resp.next().await {
            match m.payload {
                NetlinkPayload::InnerMessage(M::NewNeighbour(n)) => {
                    let mut mac = None;
                    let mut owned = false;
                    for a in &n.attributes {
                        match a {
                            NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                                mac = Some(Mac(l[..6].try_into().expect("six bytes")))
                            }
                            NeighbourAttribute::Protocol(p) => owned = u8::from(*p) == proto,
                            _ => {}
                        }
                    }
                    if owned {
                        out = Some(((addr, n.header.ifindex), mac));
                    }
                }
                NetlinkPayload::Error(e) => {
                    let code = e.code.map_or(0, |c| -c.get());
                    if code != libc::ENOENT {
                        anyhow::bail!(
                            "neighbour lookup of {addr} failed: {}",
                            std::io::Error::from_raw_os_error(code)
                        );
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }

    async fn links(&self) -> Result<Vec<LinkMessage>> {
        self.handle.link().get().execute().try_collect().await.context("cannot list links")
    }

    async fn bridge_index(&self) -> Result<u32> {
        self.link_index(&self.bridge).await?.with_context(|| format!("bridge {} does not exist", self.bridge))
    }

    /// The bridge, and the guards' kernel side: isolated ports, the interfaces of the
    /// routes to `peer_addrs` (numbered BGP peers), and (with `nft`) hvroute's nftables
    /// guard objects.
    async fn observe_bridge_and_guards(
        &self,
        nft: bool,
        peer_addrs: &BTreeSet<IpAddr>,
    ) -> Result<(Option<BridgeObs>, crate::guard::GuardObs)> {
        let links = self.links().await?;
        let listed = nft.then(|| tokio::task::spawn_blocking(super::nft::observe_guards));
        let mut peer_ifaces = BTreeSet::new();
        for a in peer_addrs {
            if let Some(oif) = self.route_oif(*a).await
                && let Some(l) = links.iter().find(|l| l.header.index == oif)
                && let Some(n) = link_name(l)
            {
                peer_ifaces.insert(n.to_string());
            }
        }
        let mut guard = match listed {
            Some(task) => task.await.context("nft observation failed")?,
            None => crate::guard::GuardObs::default(),
        };
        guard.peer_ifaces = peer_ifaces;
        let br_index =
            links.iter().find(|l| link_name(l) == Some(self.bridge.as_str())).map(|l| l.header.index);
        if let Some(idx) = br_index {
            guard.isolated = links
                .iter()
                .filter(|l| {
                    l.attributes.iter().any(|a| matches!(a, LinkAttribute::Controller(c) if *c == idx))
                })
                .filter(|l| port_isolated(l))
                .filter_map(|l| link_name(l).map(str::to_string))
                .collect();
        }
        Ok((self.bridge_from_links(&links).await?, guard))
    }

    /// The interface the kernel's route to `addr` leaves by, if it has one.
    async fn route_oif(&self, addr: IpAddr) -> Option<u32> {
        use netlink_packet_core::NetlinkPayload;
        use netlink_packet_route::RouteNetlinkMessage as M;
        let mut resp = self.route_get(addr, false).ok()?;
        while let Some(m) = resp.next().await {
            if let NetlinkPayload::InnerMessage(M::NewRoute(r)) = m.payload {
                return r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(i) => Some(*i),
                    _ => None,
                });
            }
        }
        None
    }

    async fn bridge_from_links(&self, links: &[LinkMessage]) -> Result<Option<BridgeObs>> {
        let Some(br) = links.iter().find(|l| link_name(l) == Some(self.bridge.as_str())) else {
            return Ok(None);
        };
        let ifindex = br.header.index;
        let ports = links
            .iter()
            .filter(|l| {
                l.attributes.iter().any(|a| matches!(a, LinkAttribute::Controller(c) if *c == ifindex))
            })
            .map(|l| PortObs {
                name: link_name(l).unwrap_or_default().to_owned(),
                kind: match link_kind(l) {
                    Some(InfoKind::Tun) => PortKind::Tun,
                    Some(InfoKind::Veth) => PortKind::Veth,
                    Some(k) => PortKind::Other(k.to_string()),
                    None => PortKind::Other("device".into()),
                },
                mac: link_mac(l),
            })
            .collect();
        let addrs = self.if_addrs(ifindex).await.context("cannot list the bridge's addresses")?;
        Ok(Some(BridgeObs {
            ifindex,
            is_bridge: link_kind(br) == Some(&InfoKind::Bridge),
            up: br.header.flags.contains(LinkFlags::Up),
            mac: link_mac(br),
            mtu: br
                .attributes
                .iter()
                .find_map(|a| match a {
                    LinkAttribute::Mtu(m) => Some(*m),
                    _ => None,
                })
                .unwrap_or(0),
            addrs,
            ports,
        }))
    }

    /// The addresses on one interface.
    async fn if_addrs(&self, ifindex: u32) -> Result<BTreeSet<IfAddr>> {
        Ok(self
            .handle
            .address()
            .get()
            .set_link_index_filter(ifindex)
            .execute()
            .try_collect::<Vec<_>>()
            .await?
            .into_iter()
            .filter(|a| a.header.index == ifindex)
            .filter_map(|a| {
                a.attributes.iter().find_map(|attr| match attr {
                    AddressAttribute::Address(ip) => Some(IfAddr { addr: *ip, prefix: a.header.prefix_len }),
                    _ => None,
                })
            })
            .collect())
    }

    async fn link_index(&self, name: &str) -> Result<Option<u32>> {
        Ok(self.links().await?.iter().find(|l| link_name(l) == Some(name)).map(|l| l.header.index))
    }

    async fn lo_addrs(&self) -> Result<BTreeSet<IfAddr>> {
        match self.link_index("lo").await? {
            Some(lo) => self.if_addrs(lo).await.context("cannot list the loopback's addresses"),
            None => Ok(BTreeSet::new()),
        }
    }

    async fn observe_routes(handle: Handle, proto: u8) -> Result<BTreeSet<RouteKey>> {
        let mut out = BTreeSet::new();
        for query in [
            RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
            RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
        ] {
            let mut routes = handle.route().get(query).execute();
            while let Some(r) = routes.try_next().await.context("cannot list routes")? {
                if u8::from(r.header.protocol) != proto
                    || route_table(&r) != u32::from(RouteHeader::RT_TABLE_MAIN)
                {
                    continue;
                }
                let mut addr = None;
                let mut metric = 0;
                let mut ifindex = 0;
                for a in &r.attributes {
                    match a {
                        RouteAttribute::Destination(RouteAddress::Inet(v4)) => addr = Some(IpAddr::V4(*v4)),
                        RouteAttribute::Destination(RouteAddress::Inet6(v6)) => addr = Some(IpAddr::V6(*v6)),
                        RouteAttribute::Priority(p) => metric = *p,
                        RouteAttribute::Oif(i) => ifindex = *i,
                        _ => {}
                    }
                }
                let full = if r.header.address_family == AddressFamily::Inet { 32 } else { 128 };
                if let Some(addr) = addr
                    && r.header.destination_prefix_length == full
                {
                    out.insert(RouteKey { addr, metric, ifindex });
                }
            }
        }
        Ok(out)
    }

    async fn observe_neighs(&self) -> Result<BTreeMap<(IpAddr, u32), Option<Mac>>> {
        let mut out = BTreeMap::new();
        let mut neighs = self.handle.neighbours().get().execute();
        while let Some(n) = neighs.try_next().await.context("cannot list neighbours")? {
            let mut addr = None;
            let mut mac = None;
            let mut owned = false;
            for a in &n.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                        addr = Some(IpAddr::V4(*v4))
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                        addr = Some(IpAddr::V6(*v6))
                    }
                    NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                        mac = Some(Mac(l[..6].try_into().expect("six bytes")))
                    }
                    NeighbourAttribute::Protocol(p) => owned = u8::from(*p) == self.proto,
                    _ => {}
                }
            }
            if let (true, Some(addr)) = (owned, addr) {
                out.insert((addr, n.header.ifindex), mac);
            }
        }
        Ok(out)
    }

    fn read_sysctl(&self, key: &str) -> Option<String> {
        std::fs::read_to_string(self.sysctl_root.join(key)).ok().map(|s| s.trim().to_owned())
    }

    async fn exec_bridge_op(&self, op: &Op) -> Result<()> {
        let h = &self.handle;
        match op {
            Op::CreateBridge { name, mac, mtu } => {
                let msg = LinkBridge::new(name).down().address(mac.0.to_vec()).mtu(*mtu).build();
                h.link().add(msg).execute().await?;
            }
            Op::SetBridgeMac { mac } => {
                let idx = self.bridge_index().await?;
                h.link()
                    .set(LinkUnspec::new_with_index(idx).address(mac.0.to_vec()).build())
                    .execute()
                    .await?;
            }
            Op::SetBridgeMtu { mtu } => {
                let idx = self.bridge_index().await?;
                h.link().set(LinkUnspec::new_with_index(idx).mtu(*mtu).build()).execute().await?;
            }
            Op::SetBridgeUp => {
                let idx = self.bridge_index().await?;
                h.link().set(LinkUnspec::new_with_index(idx).up().build()).execute().await?;
            }
            Op::AddBridgeAddr { addr } => {
                let idx = self.bridge_index().await?;
                let mut req = h.address().add(idx, addr.addr, addr.prefix).replace();
                if addr.addr.is_ipv6() {
                    let m = req.message_mut();
                    m.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
                }
                req.execute().await?;
            }
            Op::AddLoopbackAddr { addr } => {
                let lo = self.link_index("lo").await?.context("no loopback interface")?;
                h.address().add(lo, addr.addr, addr.prefix).replace().execute().await?;
            }
            Op::InstallRedirectFilter => {
                let bridge = self.bridge.clone();
                tokio::task::spawn_blocking(move || super::nft::apply(&bridge)).await??;
            }
            Op::SetSysctl { key, value } => {
                let path = self.sysctl_root.join(key);
                std::fs::write(&path, value).with_context(|| format!("cannot write {}", path.display()))?;
            }
            other => anyhow::bail!("not a bridge op: {other:?}"),
        }
        Ok(())
    }

    /// Port isolation by netlink, then every nftables guard op in one transaction.
    async fn apply_guards(&self, ops: &[&Op]) -> Vec<OpError> {
        let mut errors = Vec::new();
        let fail = |op: &Op, e: &anyhow::Error| OpError { op: op.clone(), error: format!("{e:#}") };
        if ops.iter().any(|o| matches!(o, Op::IsolatePort { .. })) {
            // One link dump for all of them: at 1,000 new ports, one dump each was O(n²).
            let index: BTreeMap<String, u32> = match self.links().await {
                Ok(links) => links
                    .iter()
                    .filter_map(|l| link_name(l).map(|n| (n.to_string(), l.header.index)))
                    .collect(),
                Err(_) => BTreeMap::new(),
            };
            for op in ops {
                if let Op::IsolatePort { port } = op
                    && let Err(e) = self.isolate(port, index.get(port).copied()).await
                {
                    errors.push(fail(op, &e));
                }
            }
        }
        let nft_ops: Vec<Op> =
            ops.iter().filter(|o| !matches!(o, Op::IsolatePort { .. })).map(|o| (*o).clone()).collect();
        if let Some(script) = crate::guard::transaction(&nft_ops) {
            let r = tokio::task::spawn_blocking(move || super::nft::load_guards(&script)).await;
            let r = r.map_err(anyhow::Error::from).and_then(|r| r);
            if let Err(e) = r {
                errors.extend(nft_ops.iter().map(|op| fail(op, &e)));
            }
        }
        errors
    }

    /// `ip link set dev PORT type bridge_slave isolated on`, by netlink (RTM_NEWLINK: a
    /// port's settings are not taken by RTM_SETLINK).
    async fn isolate(&self, port: &str, idx: Option<u32>) -> Result<()> {
        use netlink_packet_route::link::InfoBridgePort;
        use rtnetlink::LinkBridgePort;
        let idx = idx.with_context(|| format!("port {port} does not exist"))?;
        let msg = LinkBridgePort::new(idx).append_info_data(InfoBridgePort::Isolated(true)).build();
        self.handle
            .link()
            .set_port(msg)
            .execute()
            .await
            .with_context(|| format!("cannot isolate port {port}"))?;
        Ok(())
    }

    async fn exec_entry_op(&self, op: &Op, bridge: u32) -> Result<()> {
        let h = &self.handle;
        let proto = RouteProtocol::from(self.proto);
        let res = match op {
            Op::ReplaceRoute { addr } => {
                let msg = route_message(*addr, bridge, proto, None);
                h.route().add(msg).replace().execute().await
            }
            Op::DelRoute { addr, metric, ifindex } => {
                let msg = route_message(*addr, *ifindex, proto, Some(*metric));
                h.route().del(msg).execute().await
            }
            Op::ReplaceNeigh { addr, mac } => {
                let mut req = h
                    .neighbours()
                    .add(bridge, *addr)
                    .link_layer_address(&mac.0)
                    .state(NeighbourState::Permanent)
                    .replace();
                req.message_mut().attributes.push(NeighbourAttribute::Protocol(proto));
                req.execute().await
            }
            Op::DelNeigh { addr, ifindex } => {
                let mut msg = NeighbourMessage::default();
                msg.header.family = family(*addr);
                msg.header.ifindex = *ifindex;
                msg.attributes.push(NeighbourAttribute::Destination(match addr {
                    IpAddr::V4(a) => NeighbourAddress::Inet(*a),
                    IpAddr::V6(a) => NeighbourAddress::Inet6(*a),
                }));
                h.neighbours().del(msg).execute().await
            }
            other => anyhow::bail!("not a route or neighbour op: {other:?}"),
        };
        match res {
            Ok(()) => Ok(()),
            // Idempotent deletes: already gone is success.
            Err(rtnetlink::Error::NetlinkError(e))
                if matches!(op, Op::DelRoute { .. } | Op::DelNeigh { .. })
                    && matches!(-e.raw_code(), libc::ESRCH | libc::ENOENT) =>
            {
                Ok(())
            }
            Err(rtnetlink::Error::NetlinkError(e)) => Err(e.to_io().into()),
            Err(e) => Err(e.into()),
        }
    }
}

fn family(addr: IpAddr) -> AddressFamily {
    if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 }
}

/// `A/32 dev BR proto P scope link` or `A/128 dev BR proto P` in the main table.
fn route_message(addr: IpAddr, oif: u32, proto: RouteProtocol, metric: Option<u32>) -> RouteMessage {
    let full = if addr.is_ipv4() { 32 } else { 128 };
    let scope = if addr.is_ipv4() { RouteScope::Link } else { RouteScope::Universe };
    RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(addr, full)
        .expect("host prefix is valid")
        .output_interface(oif)
        .protocol(proto)
        .scope(scope)
        .priority(metric.unwrap_or(default_metric(addr)))
        .build()
}

fn route_table(r: &RouteMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table))
}

fn link_name(l: &LinkMessage) -> Option<&str> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

fn link_mac(l: &LinkMessage) -> Option<Mac> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(m) if m.len() == 6 => Some(Mac(m[..6].try_into().expect("six bytes"))),
        _ => None,
    })
}

/// The numbered BGP peers, whose routes' interfaces are uplinks for the guards.
fn peer_addrs(desired: &Desired) -> BTreeSet<IpAddr> {
    desired.guard.as_ref().map(|g| g.peer_addrs.clone()).unwrap_or_default()
}

/// Whether a bridge port has `isolated on` (the port's slave data in a link dump).
fn port_isolated(l: &LinkMessage) -> bool {
    use netlink_packet_route::link::{InfoBridgePort, InfoPortData};
    l.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().any(|i| match i {
            LinkInfo::PortData(InfoPortData::BridgePort(d)) => {
                d.iter().any(|x| matches!(x, InfoBridgePort::Isolated(true)))
            }
            _ => false,
        }),
        _ => false,
    })
}

fn link_kind(l: &LinkMessage) -> Option<&InfoKind> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k),
            _ => None,
        }),
        _ => None,
    })
}

impl Kernel for Netlink {
    async fn observe_addrs(&mut self, desired: &Desired, addrs: &BTreeSet<IpAddr>) -> Result<Observed> {
        self.observe_for_vm(desired, addrs).await
    }

    async fn observe(&mut self, desired: &Desired) -> Result<Observed> {
        // hvroute's guard objects, with guards off too: what is left of them must go.
        let (bridge, guard) = self.observe_bridge_and_guards(true, &peer_addrs(desired)).await?;
        let sysctls = desired
            .bridge
            .sysctls
            .keys()
            .filter_map(|k| self.read_sysctl(k).map(|v| (k.clone(), v)))
            .collect();
        // The two big dumps run in parallel on their own sockets (two runtime workers).
        let bridge_name = self.bridge.clone();
        let filter = tokio::task::spawn_blocking(move || super::nft::observe(&bridge_name));
        let t = std::time::Instant::now();
        let routes = tokio::spawn(Self::observe_routes(self.route_handle.clone(), self.proto));
        let neighs = self.observe_neighs().await?;
        let neighs_ms = t.elapsed().as_secs_f64() * 1e3;
        let routes = routes.await.context("route dump task failed")??;
        let both_ms = t.elapsed().as_secs_f64() * 1e3;
        tracing::debug!(routes = routes.len(), neighs = neighs.len(), neighs_ms, both_ms, "observed");
        let redirect_filter = filter.await.context("nft check failed")?;
        let loopback_addrs =
            if desired.loopbacks.is_empty() { Default::default() } else { self.lo_addrs().await? };
        Ok(Observed { bridge, sysctls, routes, neighs, redirect_filter, loopback_addrs, guard })
    }

    async fn apply(&mut self, plan: &Plan) -> Vec<OpError> {
        let mut errors = Vec::new();
        let fail = |op: &Op, e: anyhow::Error| OpError { op: op.clone(), error: format!("{e:#}") };
        let (bridge_ops, rest): (Vec<&Op>, Vec<&Op>) = plan.ops.iter().partition(|o| o.kind() == "bridge");
        let (guard_ops, entry_ops): (Vec<&Op>, Vec<&Op>) =
            rest.into_iter().partition(|o| o.kind() == "guard");
        for op in bridge_ops {
            if let Err(e) = self.exec_bridge_op(op).await {
                errors.push(fail(op, e));
            }
        }
        // Guards before routes: a new VM is filtered before it is reachable, and a
        // removed one loses its routes after its port is back to default deny.
        errors.extend(self.apply_guards(&guard_ops).await);
        if entry_ops.is_empty() {
            return errors;
        }
        let bridge = match self.bridge_index().await {
            Ok(i) => i,
            Err(e) => {
                errors.extend(entry_ops.into_iter().map(|op| fail(op, anyhow::anyhow!("{e:#}"))));
                return errors;
            }
        };
        // Deletions first, then additions; within a phase, order does not matter.
        let (dels, adds): (Vec<&Op>, Vec<&Op>) =
            entry_ops.into_iter().partition(|o| matches!(o, Op::DelRoute { .. } | Op::DelNeigh { .. }));
        for phase in [dels, adds] {
            let this = &*self;
            let failed: Vec<OpError> = stream::iter(phase)
                .map(|op| async move { this.exec_entry_op(op, bridge).await.err().map(|e| fail(op, e)) })
                .buffer_unordered(PIPELINE)
                .filter_map(|r| async move { r })
                .collect()
                .await;
            errors.extend(failed);
        }
        errors
    }
}
