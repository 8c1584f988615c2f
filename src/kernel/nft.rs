//! hvroute's nftables tables. `inet hvroute` holds the rule that drops ICMPv6 redirects
//! out of the managed bridge (design.md §1) and the host protection; `bridge hvroute` the
//! per-port guards (docs/guards.md, decided in `guard.rs`, loaded here by
//! [`load_guards`] and read back by [`observe_guards`]). IPv6 has no `send_redirects`
//! sysctl; without the rule the host tells a guest to reach another guest directly at L2,
//! so VM-to-VM IPv6 stops being routed through the host (and breaks once ports are
//! isolated).
//!
//! Contract: only the table `inet hvroute` is ever written, in one `nft -f` transaction
//! (atomic: no window with a half-built chain). Foreign tables are never read or touched.
//! `nft` is forked once per pass to observe and only when needed to apply; neither is in
//! the per-route path.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

pub const TABLE: &str = "inet hvroute";
pub const CHAIN: &str = "bridge_out";

/// The rule that must be present, as `nft list` prints it.
pub fn redirect_rule(bridge: &str) -> String {
    format!("oifname \"{bridge}\" icmpv6 type nd-redirect drop")
}

/// The whole transaction: create the table and chain if missing, then replace the chain's
/// rules. `bridge` is a validated interface name, so it cannot break out of the quotes.
pub fn render(bridge: &str) -> String {
    format!(
        "table {TABLE} {{\n  chain {CHAIN} {{\n    type filter hook output priority 0; policy accept;\n  }}\n}}\n\
         flush chain {TABLE} {CHAIN}\n\
         table {TABLE} {{\n  chain {CHAIN} {{\n    {} comment \"VM-to-VM traffic is routed, never redirected\"\n  }}\n}}\n",
        redirect_rule(bridge)
    )
}

/// Whether the redirect rule is in place. A missing table, a missing `nft` or any other
/// failure reads as "not in place", so the plan installs it (and reports the error then).
pub fn observe(bridge: &str) -> bool {
    let out = Command::new("nft")
        .args(["list", "chain", "inet", "hvroute", CHAIN])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            text.contains("hook output") && text.lines().any(|l| l.trim().starts_with(&redirect_rule(bridge)))
        }
        _ => false,
    }
}

/// Loads the transaction with `nft -f -`.
pub fn apply(bridge: &str) -> Result<()> {
    load(&render(bridge), "the hvroute table")
}

/// Runs `nft ARGS` and returns its stdout; `None` when nft fails (a missing table reads
/// as nothing there).
fn nft_out(args: &[&str]) -> Option<String> {
    let o = Command::new("nft").args(args).stdin(Stdio::null()).stderr(Stdio::null()).output().ok()?;
    o.status.success().then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// hvroute's guard objects as nftables holds them: the base's fingerprint (when both
/// tables have their base), the bridge's port sets,
/// the NIC map and the NIC chains. One `nft -j -f -` batch of three lists; only hvroute's
/// tables are looked at.
pub fn observe_guards() -> crate::guard::GuardObs {
    use crate::guard::{has_unseen_chain, parse_chains, parse_map, parse_sets};
    let mut g = crate::guard::GuardObs::default();
    // One nft process for the three lists: a JSON batch prints one document each.
    let batch = r#"{"nftables":[{"list":{"sets":{}}},{"list":{"maps":{}}},{"list":{"chains":{}}}]}"#;
    let Some(out) = nft_with_stdin(&["-j", "-f", "-"], batch) else { return g };
    let items: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&out)
        .into_iter::<serde_json::Value>()
        .filter_map(Result::ok)
        .flat_map(|doc| doc["nftables"].as_array().cloned().unwrap_or_default())
        .collect();
    let all = serde_json::json!({ "nftables": items }).to_string();
    let sets = parse_sets(&all);
    let inet_base = sets.contains_key(&("inet".to_string(), "uplinks".to_string())) && has_unseen_chain(&all);
    if let Some(base) = sets.get(&("bridge".to_string(), "base".to_string()))
        && inet_base
    {
        g.base = base.iter().next().cloned();
    }
    g.ports = sets.get(&("bridge".to_string(), "bridge_ports".to_string())).cloned().unwrap_or_default();
    g.trusted = sets.get(&("bridge".to_string(), "trusted_ports".to_string())).cloned().unwrap_or_default();
    g.map = parse_map(&all);
    g.chains = parse_chains(&all);
    g
}

/// Runs `nft ARGS` with `input` on stdin and returns its stdout; `None` when nft fails.
fn nft_with_stdin(args: &[&str], input: &str) -> Option<String> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(input.as_bytes()).ok()?;
    let o = child.wait_with_output().ok()?;
    o.status.success().then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// The packets each of hvroute's named counters dropped (`drop-<mac hex>`, `drop-unbound`,
/// `drop-to-host`, `drop-forward`).
pub fn guard_drops() -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for family in ["bridge", "inet"] {
        if let Some(j) = nft_out(&["-j", "list", "counters", "table", family, "hvroute"]) {
            out.extend(crate::guard::parse_counters(&j));
        }
    }
    out
}

/// Loads a guard transaction (`guard::transaction`) with one `nft -f -`: all of it or none.
pub fn load_guards(script: &str) -> Result<()> {
    load(script, "hvroute's guards")
}

/// One `nft -f -` transaction; an error names `what` and nft's first line.
fn load(script: &str, what: &str) -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run nft (install nftables)")?;
    child.stdin.take().expect("piped").write_all(script.as_bytes()).context("cannot write to nft")?;
    let out = child.wait_with_output().context("nft did not finish")?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        anyhow::bail!("nft refused {what}: {}", err.lines().next().unwrap_or("").trim());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn render_is_one_transaction_for_our_table_only() {
        let s = super::render("cloudbr0");
        assert!(s.contains("oifname \"cloudbr0\" icmpv6 type nd-redirect drop"));
        for line in s.lines().filter(|l| l.starts_with("table") || l.starts_with("flush")) {
            assert!(line.contains("inet hvroute"), "{line}");
        }
    }
}
