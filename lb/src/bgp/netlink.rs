//! The thin driver: the dummy interface and its host addresses, over rtnetlink as keel-vrrp adds
//! its VIPs. No decisions here.

use std::collections::BTreeSet;
use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkInfo};
use rtnetlink::packet_route::route::{RouteMessage, RouteScope, RouteType};

/// The kernel's `local` routing table.
const LOCAL_TABLE: u32 = 255;
/// The metric of keel-lb's local routes (the kernel's own are 0).
const HOLD_METRIC: u32 = 4242;

pub struct Netlink {
    h: rtnetlink::Handle,
}

fn err(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

fn host_prefix(a: IpAddr) -> u8 {
    if a.is_ipv4() {
        32
    } else {
        128
    }
}

/// The unused end of the fallback veth pair: the name with `.p` (cut to fit in 15 bytes).
pub fn veth_peer(name: &str) -> String {
    let keep: String = name.chars().take(13).collect();
    format!("{keep}.p")
}

impl Netlink {
    pub fn open() -> Result<Netlink, String> {
        let (conn, h, _) = rtnetlink::new_connection().map_err(|e| err("netlink", e))?;
        tokio::spawn(conn);
        Ok(Netlink { h })
    }

    /// The index of a link, None when there is none of that name.
    pub async fn link_index(&self, name: &str) -> Result<Option<u32>, String> {
        let mut s = self.h.link().get().match_name(name.to_string()).execute();
        match s.try_next().await {
            Ok(Some(m)) => Ok(Some(m.header.index)),
            Ok(None) => Ok(None),
            // ENODEV: no such link.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(e) => Err(err(&format!("link {name}"), e)),
        }
    }

    /// The kind of a link (`dummy`, `veth`, ...), None when it has no kind (a physical NIC).
    async fn link_kind(&self, name: &str) -> Result<Option<InfoKind>, String> {
        let mut s = self.h.link().get().match_name(name.to_string()).execute();
        let msg = s
            .try_next()
            .await
            .map_err(|e| err(&format!("link {name}"), e))?;
        Ok(msg.and_then(|m| {
            m.attributes.into_iter().find_map(|a| match a {
                LinkAttribute::LinkInfo(infos) => infos.into_iter().find_map(|i| match i {
                    LinkInfo::Kind(k) => Some(k),
                    _ => None,
                }),
                _ => None,
            })
        }))
    }

    /// The dummy interface, created when missing, and up. Returns its index. An existing link is
    /// taken only if it is one keel-lb makes (a dummy, or its fallback veth pair): keel-lb removes
    /// every address from it, so a mistyped `bgp.interface` naming a real NIC must not strip it.
    pub async fn ensure_dummy(&self, name: &str) -> Result<u32, String> {
        let index = match self.link_index(name).await? {
            Some(i) => {
                let kind = self.link_kind(name).await?;
                let ours = match &kind {
                    Some(InfoKind::Dummy) => true,
                    Some(InfoKind::Veth) => self.link_index(&veth_peer(name)).await?.is_some(),
                    _ => false,
                };
                if !ours {
                    let what = kind.map_or("a physical".to_string(), |k| format!("a {k:?}"));
                    return Err(format!(
                        "bgp.interface {name} exists and is {what} interface, not a dummy keel-lb made; keel-lb removes every address from that interface, so it will not take {name} over (choose another name, or delete it if it is a leftover)"
                    ));
                }
                i
            }
            None => {
                let made = self
                    .h
                    .link()
                    .add(rtnetlink::LinkDummy::new(name).up().build())
                    .execute()
                    .await;
                match made {
                    Ok(()) => {}
                    // A kernel built without CONFIG_DUMMY: a veth pair with its other end up and
                    // unused has a carrier too, which is all zebra needs to redistribute.
                    Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EOPNOTSUPP => {
                        let peer = veth_peer(name);
                        tracing::info!(interface = %name, %peer, "no dummy interfaces in this kernel; using a veth pair");
                        self.h
                            .link()
                            .add(rtnetlink::LinkVeth::new(name, &peer).up().build())
                            .execute()
                            .await
                            .map_err(|e| err(&format!("creating veth pair {name}/{peer}"), e))?;
                    }
                    Err(e) => return Err(err(&format!("creating dummy interface {name}"), e)),
                }
                self.link_index(name)
                    .await?
                    .ok_or_else(|| format!("dummy interface {name} vanished after creation"))?
            }
        };
        self.h
            .link()
            .set(rtnetlink::LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| err(&format!("setting {name} up"), e))?;
        if let Some(peer) = self.link_index(&veth_peer(name)).await? {
            self.h
                .link()
                .set(rtnetlink::LinkUnspec::new_with_index(peer).up().build())
                .execute()
                .await
                .map_err(|e| err(&format!("setting {}'s peer up", name), e))?;
        }
        Ok(index)
    }

    /// The addresses on a link, IPv6 link-local ones left out (the kernel's, not ours).
    pub async fn addresses(&self, index: u32) -> Result<BTreeSet<IpAddr>, String> {
        let msgs: Vec<AddressMessage> = self
            .h
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| err("listing addresses", e))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.index == index)
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(ip) => Some(*ip),
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            })
            .filter(|ip| !matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80))
            .collect())
    }

    /// Adds a host address (replacing one already there).
    pub async fn add(&self, index: u32, addr: IpAddr) -> Result<(), String> {
        let mut req = self
            .h
            .address()
            .add(index, addr, host_prefix(addr))
            .replace();
        if addr.is_ipv6() {
            // A tentative address cannot serve; the VIP is ours by config.
            let msg = req.message_mut();
            msg.header.flags |= AddressHeaderFlags::Nodad;
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        req.execute()
            .await
            .map_err(|e| err(&format!("adding {addr}"), e))
    }

    /// A `local` route for the VIP in the kernel's local table through `lo`: the host accepts the
    /// VIP's packets without holding it as an address (an address on `lo` would be a second
    /// connected route, which zebra may prefer over the dummy interface's and not announce). Its
    /// own metric keeps it apart from the kernel's route for the address on the dummy interface.
    fn local_route(lo: u32, addr: IpAddr) -> Result<RouteMessage, String> {
        Ok(rtnetlink::RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(addr, host_prefix(addr))
            .map_err(|e| err(&format!("local route for {addr}"), e))?
            .table_id(LOCAL_TABLE)
            .kind(RouteType::Local)
            .scope(RouteScope::Host)
            .output_interface(lo)
            .priority(HOLD_METRIC)
            .build())
    }

    pub async fn hold(&self, lo: u32, addr: IpAddr) -> Result<(), String> {
        self.h
            .route()
            .add(Self::local_route(lo, addr)?)
            .replace()
            .execute()
            .await
            .map_err(|e| err(&format!("holding {addr}"), e))
    }

    pub async fn unhold(&self, lo: u32, addr: IpAddr) -> Result<(), String> {
        self.h
            .route()
            .del(Self::local_route(lo, addr)?)
            .execute()
            .await
            .map_err(|e| err(&format!("releasing {addr}"), e))
    }

    pub async fn del(&self, index: u32, addr: IpAddr) -> Result<(), String> {
        let msg = match addr {
            IpAddr::V4(a) => rtnetlink::AddressMessageBuilder::<std::net::Ipv4Addr>::new()
                .index(index)
                .address(a, 32)
                .build(),
            IpAddr::V6(a) => rtnetlink::AddressMessageBuilder::<std::net::Ipv6Addr>::new()
                .index(index)
                .address(a, 128)
                .build(),
        };
        self.h
            .address()
            .del(msg)
            .execute()
            .await
            .map_err(|e| err(&format!("removing {addr}"), e))
    }
}
