//! Guest announcements: the frames that show a guest runs on this host.
//!
//! After a live migration's switchover QEMU sends RARP self-announce frames from the VM's
//! MAC on its tap, and guests send gratuitous ARP, ARP requests, and IPv6 neighbour
//! solicitations or unsolicited advertisements. A paused VM sends nothing, so the first of
//! these frames from an incoming VM's MAC is the moment its destination must start to win
//! (design.md §5).
//!
//! Contract: one `AF_PACKET` socket on the managed bridge with a classic BPF filter, so
//! the kernel hands over only RARP (0x8035), ARP (0x0806) and ICMPv6 neighbour
//! solicitations and advertisements (types 135, 136) that arrive from the bridge's ports,
//! never routed VM traffic. Each such frame yields its source MAC; the daemon decides
//! whether that MAC belongs to an arriving VM. The socket is reopened when the bridge
//! appears, disappears or is re-created. Data flows one way: kernel to daemon.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use anyhow::{Result, bail};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use crate::model::Mac;

const ETH_P_ALL: u16 = 0x0003;

/// The classic BPF program: accept RARP, ARP, and ICMPv6 types 135 and 136 carried
/// directly after the IPv6 header; drop everything else.
fn filter() -> [libc::sock_filter; 11] {
    const LDH_ABS: u16 = 0x28; // BPF_LD | BPF_H | BPF_ABS
    const LDB_ABS: u16 = 0x30; // BPF_LD | BPF_B | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    let i = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    // Jump offsets count from the next instruction.
    [
        i(LDH_ABS, 0, 0, 12),        // 0: ethertype
        i(JEQ_K, 8, 0, 0x8035),      // 1: RARP: accept (10)
        i(JEQ_K, 7, 0, 0x0806),      // 2: ARP: accept (10)
        i(JEQ_K, 0, 5, 0x86dd),      // 3: not IPv6: drop (9)
        i(LDB_ABS, 0, 0, 20),        // 4: IPv6 next header
        i(JEQ_K, 0, 3, 58),          // 5: not ICMPv6: drop (9)
        i(LDB_ABS, 0, 0, 54),        // 6: ICMPv6 type
        i(JEQ_K, 2, 0, 135),         // 7: neighbour solicitation: accept (10)
        i(JEQ_K, 1, 0, 136),         // 8: neighbour advertisement: accept (10)
        i(RET_K, 0, 0, 0),           // 9: drop
        i(RET_K, 0, 0, 0x0004_0000), // 10: accept the whole frame
    ]
}

fn open(bridge: &str) -> Result<AsyncFd<OwnedFd>> {
    let name = std::ffi::CString::new(bridge)?;
    // SAFETY: a NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        bail!("bridge {bridge} does not exist");
    }
    // SAFETY: plain socket(2); the fd is owned at once.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            i32::from(ETH_P_ALL.to_be()),
        )
    };
    if raw < 0 {
        bail!("cannot open a packet socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh, valid fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let prog = filter();
    let fprog = libc::sock_fprog { len: prog.len() as u16, filter: prog.as_ptr() as *mut libc::sock_filter };
    // SAFETY: fprog points at `prog`, which outlives the call; the kernel copies it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            &fprog as *const libc::sock_fprog as *const libc::c_void,
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!("cannot attach the announcement filter: {}", std::io::Error::last_os_error());
    }
    // SAFETY: an all-zero sockaddr_ll is valid; the fields set below make it a bind address.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ETH_P_ALL.to_be();
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: sll is a valid sockaddr_ll of the size given.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!("cannot bind the packet socket to {bridge}: {}", std::io::Error::last_os_error());
    }
    // SAFETY: the AsyncFd owns the OwnedFd, which stays open and the same until dropped.
    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("cannot watch the packet socket: {}", e.into_parts().1))
}

/// Reads one frame: its source MAC, if it came in from a port (not sent by this host).
fn recv_one(fd: &OwnedFd) -> std::io::Result<Option<Mac>> {
    let mut buf = [0u8; 128];
    // SAFETY: zeroed sockaddr_ll is valid storage for recvfrom.
    let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: buf and from are valid for the sizes given.
    let n = unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
            libc::MSG_TRUNC,
            &mut from as *mut libc::sockaddr_ll as *mut libc::sockaddr,
            &mut len,
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if n < 14 || from.sll_pkttype == libc::PACKET_OUTGOING {
        return Ok(None);
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&buf[6..12]);
    Ok(Some(Mac(mac)))
}

/// Watches the bridge for announcements and sends each source MAC. Runs until the
/// receiver is dropped; while the bridge is missing it retries every second.
pub fn watch(bridge: String) -> mpsc::UnboundedReceiver<Mac> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut logged = false;
        loop {
            let afd = match open(&bridge) {
                Ok(a) => a,
                Err(e) => {
                    if !logged {
                        tracing::debug!(error = %format!("{e:#}"), "announcement watch waits for the bridge");
                        logged = true;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if tx.is_closed() {
                        return;
                    }
                    continue;
                }
            };
            logged = false;
            loop {
                let r = tokio::select! {
                    g = afd.readable() => g,
                    _ = tx.closed() => return,
                    // The bridge may have been re-created under the same name.
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {
                        if bridge_index(&bridge) != Some(bound_index(afd.get_ref())) { break; }
                        continue;
                    }
                };
                let Ok(mut guard) = r else { break };
                match guard.try_io(|fd| recv_one(fd.get_ref())) {
                    Ok(Ok(Some(mac))) => {
                        if tx.send(mac).is_err() {
                            return;
                        }
                    }
                    Ok(Ok(None)) => {}
                    Ok(Err(_)) => break, // the bridge went away (ENETDOWN and the like)
                    Err(_would_block) => {}
                }
            }
        }
    });
    rx
}

fn bridge_index(bridge: &str) -> Option<i32> {
    let name = std::ffi::CString::new(bridge).ok()?;
    // SAFETY: a NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (i != 0).then_some(i as i32)
}

fn bound_index(fd: &OwnedFd) -> i32 {
    // SAFETY: zeroed sockaddr_ll is valid storage for getsockname.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: sll is valid for len bytes.
    let rc = unsafe {
        libc::getsockname(fd.as_raw_fd(), &mut sll as *mut libc::sockaddr_ll as *mut libc::sockaddr, &mut len)
    };
    if rc == 0 { sll.sll_ifindex } else { -1 }
}
