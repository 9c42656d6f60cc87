//! `udp.audit`: the routed UDP flows in the audit. The kernel's connection tracking says when
//! a flow of the ruleset starts and ends (netlink events; the ruleset's conntrack marks name
//! the flow), and the ruleset's refused packets come up through NFLOG. Needs CAP_NET_ADMIN.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use netlink_sys::{protocols::NETLINK_NETFILTER, AsyncSocket, AsyncSocketExt, TokioSocket};
use tokio_util::sync::CancellationToken;

use crate::firewall;
use crate::record::{AuditEvent, Decision, EventKind, Reason};
use crate::runtime::Shared;

const NFNL_SUBSYS_CTNETLINK: u8 = 1;
const NFNL_SUBSYS_ULOG: u8 = 4;
const IPCTNL_MSG_CT_NEW: u8 = 0;
const IPCTNL_MSG_CT_DELETE: u8 = 2;
const NFULNL_MSG_PACKET: u8 = 0;
const NFULNL_MSG_CONFIG: u8 = 1;
const NFNLGRP_CONNTRACK_NEW: u32 = 1;
const NFNLGRP_CONNTRACK_DESTROY: u32 = 3;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
/// Flows followed at once, at most (a flood of new flows cannot grow memory without bound).
const MAX_TRACKED: usize = 65_536;

/// Why the followers could not start.
#[derive(Debug, thiserror::Error)]
#[error("udp.audit: {what}: {source} (the service needs CAP_NET_ADMIN for it)")]
pub struct UdpAuditError {
    what: &'static str,
    #[source]
    source: std::io::Error,
}

fn error(what: &'static str) -> impl FnOnce(std::io::Error) -> UdpAuditError {
    move |source| UdpAuditError { what, source }
}

/// The two netlink sockets: conntrack events, and the ruleset's NFLOG group.
pub struct Followers {
    conntrack: TokioSocket,
    nflog: TokioSocket,
}

impl Followers {
    /// Subscribes to conntrack's new and destroy events and binds the NFLOG group.
    pub async fn open() -> Result<Followers, UdpAuditError> {
        let mut conntrack =
            TokioSocket::new(NETLINK_NETFILTER).map_err(error("cannot open a netlink socket"))?;
        let socket = conntrack.socket_mut();
        socket
            .bind(&netlink_sys::SocketAddr::new(0, 0))
            .map_err(error("cannot bind the conntrack socket"))?;
        let _ = socket.set_rx_buf_sz(4 << 20);
        for group in [NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_DESTROY] {
            socket
                .add_membership(group)
                .map_err(error("cannot follow conntrack events"))?;
        }
        let mut nflog =
            TokioSocket::new(NETLINK_NETFILTER).map_err(error("cannot open a netlink socket"))?;
        nflog
            .socket_mut()
            .bind_auto()
            .map_err(error("cannot bind the NFLOG socket"))?;
        let _ = nflog.socket_mut().set_rx_buf_sz(1 << 20);
        for request in nflog_bind(firewall::NFLOG_GROUP) {
            nflog
                .send(&request)
                .await
                .map_err(error("cannot bind the NFLOG group"))?;
            let (answer, _) = nflog
                .recv_from_full()
                .await
                .map_err(error("no answer binding the NFLOG group"))?;
            if let Some(code) = netlink_error(&answer) {
                return Err(UdpAuditError {
                    what: "the kernel refused the NFLOG group",
                    source: std::io::Error::from_raw_os_error(code),
                });
            }
        }
        Ok(Followers { conntrack, nflog })
    }

    /// Writes the records until `closing`.
    pub async fn run(self, shared: Arc<Shared>, closing: CancellationToken) {
        let mut tracked: HashMap<u32, Instant> = HashMap::new();
        let mut lost_said = Instant::now() - Duration::from_secs(3600);
        loop {
            tokio::select! {
                _ = closing.cancelled() => return,
                got = self.conntrack.recv_from_full() => match got {
                    Ok((buf, _)) => {
                        for (kind, payload) in messages(&buf) {
                            if let Some(t) = parse_conntrack(kind, payload) {
                                follow(&shared, &mut tracked, t);
                            }
                        }
                    }
                    // ENOBUFS: the kernel dropped events faster than we read them.
                    Err(e) => {
                        if lost_said.elapsed() > Duration::from_secs(60) {
                            tracing::warn!("udp.audit: conntrack events lost ({e}); some UDP flows may go unrecorded");
                            lost_said = Instant::now();
                        }
                    }
                },
                got = self.nflog.recv_from_full() => if let Ok((buf, _)) = got {
                    for (kind, payload) in messages(&buf) {
                        if let Some(r) = parse_nflog(kind, payload) {
                            refused(&shared, r);
                        }
                    }
                },
            }
        }
    }
}

fn follow(shared: &Shared, tracked: &mut HashMap<u32, Instant>, t: Tracked) {
    let runtime = shared.runtime.load();
    let Some(flow) = firewall::flow_of_mark(&runtime.config, t.mark) else {
        return;
    };
    if !t.destroyed {
        if tracked.len() < MAX_TRACKED {
            tracked.insert(t.id, Instant::now());
            shared.audit.tunnel_opened(flow, t.src.ip());
        }
        return;
    }
    // A flow that began before Passerelle started has no known duration.
    let duration_ms = match tracked.remove(&t.id) {
        Some(since) => {
            shared.audit.tunnel_closed(flow, t.src.ip());
            since.elapsed().as_millis() as u64
        }
        None => 0,
    };
    shared.audit.event(AuditEvent {
        event: EventKind::Udp,
        id: format!("udp-{:08x}", t.id),
        client: Some(t.src.to_string()),
        scheme: Some("udp".into()),
        host: Some(t.dst.ip().to_string()),
        port: Some(t.dst.port()),
        decision: Some(Decision::Allow),
        flow: Some(flow.id.clone()),
        route: Some("routed".into()),
        bytes_up: t.bytes_orig,
        bytes_down: t.bytes_reply,
        duration_ms,
        ..AuditEvent::default()
    });
}

fn refused(shared: &Shared, r: Refused) {
    let protocol = match r.protocol {
        6 => "tcp",
        17 => "udp",
        1 | 58 => "icmp",
        _ => "ip",
    };
    let target = match r.dport {
        Some(port) => format!("{}:{port}/{protocol}", bracket(r.dst)),
        None => format!("{} ({protocol})", r.dst),
    };
    shared.audit.refusal(AuditEvent {
        event: EventKind::Udp,
        id: format!(
            "udp-refused-{}",
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_micros()
        ),
        client: Some(match r.sport {
            Some(port) => SocketAddr::new(r.src, port).to_string(),
            None => r.src.to_string(),
        }),
        scheme: Some(protocol.into()),
        host: Some(r.dst.to_string()),
        port: r.dport,
        decision: Some(Decision::Deny),
        reason: Some(Reason::NoFlow),
        detail: Some(format!(
            "forwarded by the jump host to {target}: no routed flow allows it"
        )),
        ..AuditEvent::default()
    });
}

fn bracket(ip: IpAddr) -> String {
    match ip {
        IpAddr::V6(v6) => format!("[{v6}]"),
        IpAddr::V4(v4) => v4.to_string(),
    }
}

/// A conntrack entry as an event tells it: the original direction's tuple, the mark, the
/// counters (with `net.netfilter.nf_conntrack_acct = 1`).
#[derive(Debug, PartialEq, Eq)]
pub struct Tracked {
    pub id: u32,
    pub destroyed: bool,
    pub protocol: u8,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub mark: u32,
    pub bytes_orig: u64,
    pub bytes_reply: u64,
}

/// A packet the ruleset refused, from its IP header.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: u8,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
}

/// The netlink messages in a datagram: (type, payload after the 16-byte header).
fn messages(mut buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < 16 || len > buf.len() {
            break;
        }
        out.push((u16::from_ne_bytes([buf[4], buf[5]]), &buf[16..len]));
        buf = &buf[align(len).min(buf.len())..];
    }
    out
}

fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// The attributes in `data`: (type without the nested/byte-order flags, value).
fn attributes(mut data: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while data.len() >= 4 {
        let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
        if len < 4 || len > data.len() {
            break;
        }
        let kind = u16::from_ne_bytes([data[2], data[3]]) & 0x3fff;
        out.push((kind, &data[4..len]));
        data = &data[align(len).min(data.len())..];
    }
    out
}

fn find<'a>(attrs: &[(u16, &'a [u8])], kind: u16) -> Option<&'a [u8]> {
    attrs.iter().find(|(k, _)| *k == kind).map(|(_, v)| *v)
}

fn be16(v: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(v.get(..2)?.try_into().ok()?))
}

fn be32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?))
}

fn be64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.get(..8)?.try_into().ok()?))
}

/// A conntrack event (subsystem CTNETLINK, new or delete), or `None` for anything else.
pub fn parse_conntrack(kind: u16, payload: &[u8]) -> Option<Tracked> {
    if (kind >> 8) as u8 != NFNL_SUBSYS_CTNETLINK {
        return None;
    }
    let destroyed = match kind as u8 {
        IPCTNL_MSG_CT_NEW => false,
        IPCTNL_MSG_CT_DELETE => true,
        _ => return None,
    };
    let attrs = attributes(payload.get(4..)?);
    let tuple = attributes(find(&attrs, 1)?); // CTA_TUPLE_ORIG
    let ip = attributes(find(&tuple, 1)?); // CTA_TUPLE_IP
    let proto = attributes(find(&tuple, 2)?); // CTA_TUPLE_PROTO
    let (src, dst) = match (find(&ip, 1), find(&ip, 2), find(&ip, 3), find(&ip, 4)) {
        (Some(s), Some(d), _, _) => (
            IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(s).ok()?)),
            IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(d).ok()?)),
        ),
        (_, _, Some(s), Some(d)) => (
            IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(s).ok()?)),
            IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(d).ok()?)),
        ),
        _ => return None,
    };
    let protocol = *find(&proto, 1)?.first()?;
    let sport = find(&proto, 2).and_then(be16).unwrap_or(0);
    let dport = find(&proto, 3).and_then(be16).unwrap_or(0);
    let bytes = |kind| {
        find(&attrs, kind)
            .map(attributes)
            .and_then(|c| find(&c, 2).and_then(be64))
            .unwrap_or(0)
    };
    Some(Tracked {
        id: find(&attrs, 12).and_then(be32).unwrap_or(0),
        destroyed,
        protocol,
        src: SocketAddr::new(src, sport),
        dst: SocketAddr::new(dst, dport),
        mark: find(&attrs, 8).and_then(be32).unwrap_or(0),
        bytes_orig: bytes(9),
        bytes_reply: bytes(10),
    })
}

/// A packet NFLOG passed up (subsystem ULOG, packet), read from its IP header.
pub fn parse_nflog(kind: u16, payload: &[u8]) -> Option<Refused> {
    if (kind >> 8) as u8 != NFNL_SUBSYS_ULOG || kind as u8 != NFULNL_MSG_PACKET {
        return None;
    }
    let attrs = attributes(payload.get(4..)?);
    let packet = find(&attrs, 9)?; // NFULA_PAYLOAD
    let (src, dst, protocol, transport) = match packet.first()? >> 4 {
        4 => {
            let ihl = ((packet[0] & 0x0f) as usize) * 4;
            (
                IpAddr::V4(Ipv4Addr::from(
                    <[u8; 4]>::try_from(packet.get(12..16)?).ok()?,
                )),
                IpAddr::V4(Ipv4Addr::from(
                    <[u8; 4]>::try_from(packet.get(16..20)?).ok()?,
                )),
                *packet.get(9)?,
                packet.get(ihl..),
            )
        }
        6 => (
            IpAddr::V6(Ipv6Addr::from(
                <[u8; 16]>::try_from(packet.get(8..24)?).ok()?,
            )),
            IpAddr::V6(Ipv6Addr::from(
                <[u8; 16]>::try_from(packet.get(24..40)?).ok()?,
            )),
            *packet.get(6)?,
            packet.get(40..),
        ),
        _ => return None,
    };
    let ports = match (protocol, transport) {
        (6 | 17, Some(t)) => be16(t).zip(t.get(2..).and_then(be16)),
        _ => None,
    };
    Some(Refused {
        src,
        dst,
        protocol,
        sport: ports.map(|p| p.0),
        dport: ports.map(|p| p.1),
    })
}

/// The kernel's error code in an acknowledgement, if it is one that failed.
fn netlink_error(buf: &[u8]) -> Option<i32> {
    let (kind, payload) = *messages(buf).first()?;
    if kind != NLMSG_ERROR {
        return None;
    }
    let code = i32::from_ne_bytes(payload.get(..4)?.try_into().ok()?);
    (code != 0).then_some(-code)
}

/// The two NFLOG configuration requests: bind `group`, then copy packets (their first 128
/// bytes: the headers are all the audit reads).
fn nflog_bind(group: u16) -> [Vec<u8>; 2] {
    let message = |attr_type: u16, value: &[u8]| {
        let attr_len = 4 + value.len();
        let len = 16 + 4 + align(attr_len);
        let mut m = Vec::with_capacity(len);
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(
            &(((NFNL_SUBSYS_ULOG as u16) << 8) | NFULNL_MSG_CONFIG as u16).to_ne_bytes(),
        );
        m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        m.extend_from_slice(&1u32.to_ne_bytes()); // seq
        m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
        m.extend_from_slice(&[0, 0]); // AF_UNSPEC, NFNETLINK_V0
        m.extend_from_slice(&group.to_be_bytes());
        m.extend_from_slice(&(attr_len as u16).to_ne_bytes());
        m.extend_from_slice(&attr_type.to_ne_bytes());
        m.extend_from_slice(value);
        m.resize(len, 0);
        m
    };
    [
        message(1, &[1]),                  // NFULA_CFG_CMD: NFULNL_CFG_CMD_BIND
        message(2, &[0, 0, 0, 128, 2, 0]), // NFULA_CFG_MODE: copy_range 128, COPY_PACKET
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(value);
        a.resize(align(a.len()), 0);
        a
    }

    fn nested(kind: u16, parts: &[Vec<u8>]) -> Vec<u8> {
        attr(kind | 0x8000, &parts.concat())
    }

    /// A destroy event as the kernel writes it for a UDP flow 198.18.0.2:40000 →
    /// 198.19.0.2:3478, mark 0x50530001, 100 bytes out and 60 back.
    fn destroy_event() -> Vec<u8> {
        let tuple = nested(
            1,
            &[
                nested(1, &[attr(1, &[198, 18, 0, 2]), attr(2, &[198, 19, 0, 2])]),
                nested(
                    2,
                    &[
                        attr(1, &[17]),
                        attr(2, &40000u16.to_be_bytes()),
                        attr(3, &3478u16.to_be_bytes()),
                    ],
                ),
            ],
        );
        let counters = |bytes: u64| {
            nested(
                0,
                &[attr(1, &2u64.to_be_bytes()), attr(2, &bytes.to_be_bytes())],
            )
        };
        let mut orig = counters(100);
        orig[2] = 9;
        let mut reply = counters(60);
        reply[2] = 10;
        let body = [
            vec![2, 0, 0, 0],
            tuple,
            attr(8, &0x5053_0001u32.to_be_bytes()),
            orig,
            reply,
            attr(12, &0xdead_beefu32.to_be_bytes()),
        ]
        .concat();
        let mut msg = Vec::new();
        msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(
            &(((NFNL_SUBSYS_CTNETLINK as u16) << 8) | IPCTNL_MSG_CT_DELETE as u16).to_ne_bytes(),
        );
        msg.extend_from_slice(&[0; 10]);
        msg.extend_from_slice(&body);
        msg
    }

    #[test]
    fn a_destroy_event_gives_the_flow_its_mark_and_counters() {
        let buf = destroy_event();
        let msgs = messages(&buf);
        assert_eq!(msgs.len(), 1);
        let t = parse_conntrack(msgs[0].0, msgs[0].1).unwrap();
        assert_eq!(
            t,
            Tracked {
                id: 0xdead_beef,
                destroyed: true,
                protocol: 17,
                src: "198.18.0.2:40000".parse().unwrap(),
                dst: "198.19.0.2:3478".parse().unwrap(),
                mark: 0x5053_0001,
                bytes_orig: 100,
                bytes_reply: 60,
            }
        );
        // Cut anywhere, it is never a panic.
        for cut in 0..buf.len() {
            for (kind, payload) in messages(&buf[..cut]) {
                let _ = parse_conntrack(kind, payload);
            }
        }
    }

    #[test]
    fn a_refused_packet_is_read_from_its_headers() {
        let mut ip = vec![
            0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 198, 18, 0, 2, 198, 19, 0, 2,
        ];
        ip.extend_from_slice(&40000u16.to_be_bytes());
        ip.extend_from_slice(&9999u16.to_be_bytes());
        ip.extend_from_slice(&[0, 8, 0, 0]);
        let payload = [vec![2, 0, 0x13, 0xbd], attr(9, &ip)].concat();
        let r = parse_nflog(
            ((NFNL_SUBSYS_ULOG as u16) << 8) | NFULNL_MSG_PACKET as u16,
            &payload,
        )
        .unwrap();
        assert_eq!(
            r,
            Refused {
                src: "198.18.0.2".parse().unwrap(),
                dst: "198.19.0.2".parse().unwrap(),
                protocol: 17,
                sport: Some(40000),
                dport: Some(9999),
            }
        );
        for cut in 0..ip.len() {
            let payload = [vec![2, 0, 0x13, 0xbd], attr(9, &ip[..cut])].concat();
            let _ = parse_nflog(
                ((NFNL_SUBSYS_ULOG as u16) << 8) | NFULNL_MSG_PACKET as u16,
                &payload,
            );
        }
    }

    #[test]
    fn the_bind_requests_are_well_formed() {
        for request in nflog_bind(5053) {
            let msgs = messages(&request);
            assert_eq!(msgs.len(), 1);
            assert_eq!(msgs[0].0, 0x0401);
            assert_eq!(&msgs[0].1[2..4], &5053u16.to_be_bytes());
            assert_eq!(attributes(&msgs[0].1[4..]).len(), 1);
        }
    }
}
