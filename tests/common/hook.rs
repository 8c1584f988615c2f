//! Helpers for driving `hvroute hook qemu` the way libvirt does: the domain XML on stdin,
//! `NAME OP SUBOP EXTRA` as arguments, stdout and stderr captured.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use super::BIN;

/// One `<interface type='bridge'>` of a test domain.
pub struct XmlNic<'a> {
    pub mac: &'a str,
    pub bridge: &'a str,
    /// `<target dev>`: libvirt fills it in once the tap exists (`started`).
    pub target: Option<&'a str>,
}

/// A libvirt domain XML like the one libvirt hands its hooks: name, hvroute metadata (one
/// `<hvroute:interface>` per `(mac, addresses)`, or none) and bridge interfaces.
pub fn domain_xml(name: &str, meta: Option<&[(&str, &[&str])]>, nics: &[XmlNic]) -> String {
    let meta = meta
        .map(|m| {
            let ifs: String = m
                .iter()
                .map(|(mac, addrs)| {
                    let a: String =
                        addrs.iter().map(|a| format!("        <hvroute:address>{a}</hvroute:address>\n")).collect();
                    format!("      <hvroute:interface mac=\"{mac}\">\n{a}      </hvroute:interface>\n")
                })
                .collect();
            format!(
                "  <metadata>\n    <hvroute:vm xmlns:hvroute=\"urn:hvroute:metadata:1\">\n{ifs}    </hvroute:vm>\n  </metadata>\n"
            )
        })
        .unwrap_or_default();
    let devs: String = nics
        .iter()
        .map(|n| {
            let t = n.target.map(|t| format!("      <target dev='{t}'/>\n")).unwrap_or_default();
            format!(
                "    <interface type='bridge'>\n      <mac address='{}'/>\n      <source bridge='{}'/>\n{t}      <model type='virtio'/>\n    </interface>\n",
                n.mac, n.bridge
            )
        })
        .collect();
    format!(
        "<domain type='kvm' id='7'>\n  <name>{name}</name>\n  <uuid>6e2f0c1a-0000-4000-8000-000000000001</uuid>\n{meta}  <memory unit='KiB'>65536</memory>\n  <devices>\n{devs}  </devices>\n</domain>\n"
    )
}

/// A single-NIC domain on `cloudbr0` with its metadata.
pub fn simple_xml(name: &str, mac: &str, addrs: &[&str], target: Option<&str>) -> String {
    domain_xml(name, Some(&[(mac, addrs)]), &[XmlNic { mac, bridge: super::BRIDGE, target }])
}

/// What is on the hook's stdin.
#[derive(Clone, Copy)]
pub enum Stdin<'a> {
    Bytes(&'a [u8]),
    /// `/dev/null`.
    Null,
    /// File descriptor 0 closed.
    Closed,
}

/// Runs `[PREFIX...] hvroute --config CFG hook qemu NAME OP SUBOP EXTRA`, feeding STDIN.
pub fn hook_cmd(prefix: &[&str], cfg: &Path, args: [&str; 4], stdin: Stdin) -> Output {
    let cfg = cfg.to_str().expect("utf-8 path");
    let mut argv: Vec<&str> = prefix.to_vec();
    argv.extend([BIN, "--config", cfg, "hook", "qemu"]);
    argv.extend(args);
    let mut cmd = match stdin {
        // `sh -c 'exec "$@" <&-' sh ARGV...`: the hook starts with fd 0 closed.
        Stdin::Closed => {
            let mut c = Command::new("sh");
            c.args(["-c", "exec \"$@\" <&-", "sh"]).args(&argv);
            c
        }
        _ => {
            let mut c = Command::new(argv[0]);
            c.args(&argv[1..]);
            c
        }
    };
    cmd.env("NO_COLOR", "1").env_remove("RUST_LOG").stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(match stdin {
        Stdin::Bytes(_) => Stdio::piped(),
        _ => Stdio::null(),
    });
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run the hook: {e}"));
    if let Stdin::Bytes(b) = stdin {
        let mut w = child.stdin.take().expect("piped");
        let b = b.to_vec();
        // A writer of its own, as libvirt's event loop: the hook may stop reading early
        // (a too large XML), and that must not block the test.
        std::thread::spawn(move || {
            let _ = w.write_all(&b);
        });
    }
    child.wait_with_output().expect("hook output")
}

/// The hook inside namespace NS, as libvirtd in that namespace runs it.
pub fn hook_in(ns: &str, cfg: &Path, args: [&str; 4], xml: &str) -> Output {
    hook_cmd(&["ip", "netns", "exec", ns], cfg, args, Stdin::Bytes(xml.as_bytes()))
}

/// As [`hook_in`]; panics unless it exits 0 with nothing on stdout.
pub fn hook_ok_in(ns: &str, cfg: &Path, args: [&str; 4], xml: &str) {
    let o = hook_in(ns, cfg, args, xml);
    assert!(o.status.success() && o.stdout.is_empty(), "hook {args:?} failed: {}", super::show(&o));
}
