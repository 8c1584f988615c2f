//! The vtysh driver: read FRR's running config, push one batch of changes, save.
//!
//! Every call has a hard timeout and its child is killed when it expires, so a hung vtysh
//! never blocks the caller for long; the daemon runs FRR work beside the kernel pass, never
//! inside it.
//!
//! Batches of `network` lines up to [`VTY_BATCH_MAX`] lines go straight to bgpd's vty
//! socket, in the protocol vtysh itself speaks to each daemon (a command and a NUL; the
//! answer ends with three NULs and a status byte): that saves a vtysh process, about
//! 55 ms, on every VM change. Larger batches, the base config, reads and `write memory`
//! go through vtysh.

use std::path::PathBuf;

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::config::Config;

#[derive(Debug, Clone)]
pub struct Vtysh {
    bin: PathBuf,
    pathspace: String,
    timeout: Duration,
    /// bgpd's vty socket.
    bgpd_vty: PathBuf,
}

/// The largest batch sent over bgpd's vty socket; larger ones go through `vtysh -f`.
pub const VTY_BATCH_MAX: usize = 2000;

impl Vtysh {
    pub fn from_config(cfg: &Config) -> Vtysh {
        let run = if cfg.frr.pathspace.is_empty() {
            cfg.frr.run_dir.clone()
        } else {
            cfg.frr.run_dir.join(&cfg.frr.pathspace)
        };
        Vtysh {
            bin: cfg.frr.vtysh.clone(),
            pathspace: cfg.frr.pathspace.clone(),
            timeout: Duration::from_secs(30),
            bgpd_vty: run.join("bgpd.vty"),
        }
    }

    /// Sends config lines to bgpd over its vty socket: `enable`, `configure terminal`,
    /// the lines, `end`, written in one go while the answers are read. `Ok(false)` when
    /// the socket is not there to take them (the caller uses vtysh instead). Every line is
    /// sent even after a refusal, as `vtysh -f` does; then the first refusal is the error.
    pub async fn push_vty(&self, lines: &[&str]) -> Result<bool> {
        use tokio::io::AsyncReadExt;
        let stream = match tokio::net::UnixStream::connect(&self.bgpd_vty).await {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound
                        | std::io::ErrorKind::ConnectionRefused
                        | std::io::ErrorKind::PermissionDenied
                ) =>
            {
                return Ok(false);
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot connect to {}", self.bgpd_vty.display()));
            }
        };
        let mut cmds: Vec<&str> = vec!["enable", "configure terminal"];
        cmds.extend(lines.iter().copied());
        cmds.push("end");
        let mut out = Vec::new();
        for c in &cmds {
            out.extend_from_slice(c.as_bytes());
            out.push(0);
        }
        let (mut r, mut w) = stream.into_split();
        let write = async move { w.write_all(&out).await };
        let read = async {
            let mut buf: Vec<u8> = Vec::new();
            let mut chunk = vec![0u8; 64 * 1024];
            let mut answers = 0;
            let mut first_refusal: Option<String> = None;
            let mut start = 0;
            while answers < cmds.len() {
                let n = r.read(&mut chunk).await?;
                if n == 0 {
                    anyhow::bail!("bgpd closed its vty socket after {answers} of {} commands", cmds.len());
                }
                buf.extend_from_slice(&chunk[..n]);
                // Each answer: text, then 0 0 0 and a status byte.
                while let Some(k) = buf[start..].windows(3).position(|w| w == [0, 0, 0]) {
                    let end = start + k;
                    if end + 3 >= buf.len() {
                        break;
                    }
                    let status = buf[end + 3];
                    if status != 0 && first_refusal.is_none() {
                        let text = String::from_utf8_lossy(&buf[start..end]);
                        first_refusal = Some(format!(
                            "bgpd refused {:?}: {}",
                            cmds[answers],
                            text.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim()
                        ));
                    }
                    answers += 1;
                    start = end + 4;
                }
                if start > 0 {
                    buf.drain(..start);
                    start = 0;
                }
            }
            Ok(first_refusal)
        };
        let both = async { tokio::try_join!(async { write.await.map_err(anyhow::Error::from) }, read) };
        let ((), refusal) = tokio::time::timeout(self.timeout, both).await.with_context(|| {
            format!("bgpd's vty socket did not answer within {} s", self.timeout.as_secs())
        })??;
        match refusal {
            Some(e) => Err(anyhow::anyhow!(e)),
            None => Ok(true),
        }
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.bin);
        if !self.pathspace.is_empty() {
            c.args(["-N", &self.pathspace]);
        }
        c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        c
    }

    async fn run(&self, mut c: Command, input: Option<String>) -> Result<String> {
        let what = format!(
            "{} {}",
            self.bin.display(),
            if self.pathspace.is_empty() { "" } else { &self.pathspace }
        );
        if input.is_some() {
            c.stdin(Stdio::piped());
        }
        let mut child = c.spawn().with_context(|| format!("cannot run {}", self.bin.display()))?;
        if let Some(text) = input {
            let mut stdin = child.stdin.take().expect("piped");
            stdin.write_all(text.as_bytes()).await.context("cannot write to vtysh")?;
            drop(stdin);
        }
        let out = tokio::time::timeout(self.timeout, child.wait_with_output())
            .await
            .with_context(|| format!("{} did not answer within {} s", what.trim(), self.timeout.as_secs()))?
            .context("vtysh failed")?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let first = err.lines().chain(stdout.lines()).find(|l| !l.trim().is_empty()).unwrap_or("").trim();
            anyhow::bail!("vtysh exited with {}: {first}", out.status);
        }
        Ok(stdout)
    }

    /// `show running-config`.
    pub async fn running_config(&self) -> Result<String> {
        let mut c = self.command();
        c.args(["-c", "show running-config"]);
        self.run(c, None).await
    }

    /// A `show ... json` command, parsed.
    pub async fn show_json(&self, cmd: &str) -> Result<serde_json::Value> {
        let mut c = self.command();
        c.args(["-c", cmd]);
        let out = self.run(c, None).await?;
        serde_json::from_str(&out).with_context(|| format!("vtysh {cmd:?} did not print JSON"))
    }

    /// Applies config lines (frr.conf syntax) in one vtysh batch, then `write memory`.
    /// Lines that bgpd rejects make this fail; the caller re-reads the running config,
    /// because a batch can be partly applied.
    ///
    /// The base config (`base`, a few dozen lines) goes first, as `-c` commands of one vtysh
    /// session: bgpd brings up a peer created inside a `vtysh -f` batch only seconds after
    /// the batch ends (about 4.6 s, measured), but one created by `-c` commands at once
    /// (about 1.1 s). The `network` lines follow as one `vtysh -f` (fast for 20,000
    /// lines), and one `write memory` closes both.
    ///
    /// Returns how the `network` lines went: `"vty"`, `"vtysh"`, or `None` when there
    /// were none.
    pub async fn apply(&self, base: &str, batch: &str) -> Result<Option<&'static str>> {
        let lines: Vec<&str> =
            base.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('!')).collect();
        if !lines.is_empty() {
            let mut c = self.command();
            c.args(["-c", "configure terminal"]);
            for l in lines {
                c.arg("-c").arg(l);
            }
            self.run(c, None).await?;
        }
        let batch_lines: Vec<&str> =
            batch.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('!')).collect();
        let pushed = !batch_lines.is_empty()
            && batch_lines.len() <= VTY_BATCH_MAX
            && self.push_vty(&batch_lines).await?;
        if !batch.is_empty() && !pushed {
            // A fresh, private file (O_EXCL, mode 0600), removed when dropped.
            let mut file = tempfile::Builder::new()
                .prefix("hvroute-vtysh-")
                .suffix(".conf")
                .tempfile()
                .context("cannot create a temporary file for vtysh")?;
            std::io::Write::write_all(&mut file, batch.as_bytes()).context("cannot write the vtysh batch")?;
            let mut c = self.command();
            c.arg("-f").arg(file.path());
            self.run(c, None).await?;
        }
        let mut c = self.command();
        c.args(["-c", "write memory"]);
        self.run(c, None).await.context("write memory failed")?;
        Ok(match (batch.is_empty(), pushed) {
            (true, _) => None,
            (false, true) => Some("vty"),
            (false, false) => Some("vtysh"),
        })
    }
}
