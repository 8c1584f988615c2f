//! The vtysh driver: read FRR's running config, push one batch of changes, save.
//!
//! Every call has a hard timeout and its child is killed when it expires, so a hung vtysh
//! never blocks the caller for long; the daemon runs FRR work beside the kernel pass, never
//! inside it.

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
}

impl Vtysh {
    pub fn from_config(cfg: &Config) -> Vtysh {
        Vtysh {
            bin: cfg.frr.vtysh.clone(),
            pathspace: cfg.frr.pathspace.clone(),
            timeout: Duration::from_secs(30),
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
    pub async fn apply(&self, base: &str, batch: &str) -> Result<()> {
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
        if !batch.is_empty() {
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
        Ok(())
    }
}
