//! The state store under crashes and concurrency, through the real binary.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("boot_id"), "boot-1\n").unwrap();
    let cfg = format!(
        "state_dir = \"{d}/state\"\nsocket = \"{d}/hvroute.sock\"\nboot_id_path = \"{d}/boot_id\"\n\
         [pools]\nipv4 = [\"192.0.2.0/24\"]\nipv6 = [\"2001:db8:100::/40\"]\n\
         [bgp]\nasn = 65001\nrouter_id = \"10.255.0.1\"\n",
        d = dir.path().display()
    );
    std::fs::write(dir.path().join("hvroute.toml"), cfg).unwrap();
    dir
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_hvroute")
}

/// A tiny deterministic generator, so failures reproduce.
struct Lcg(u64);
impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// A host that loses power or an OOM-killed shim mid-write must not leave a torn state
/// file: hvroute would then hold back every deletion and report the VM in error.
///
/// A writer loop alternates two specs of one VM with `--replace`; it is killed with
/// SIGKILL at random moments. After each kill the file is exactly one of the two specs.
#[test]
fn kill_9_during_writes_leaves_old_or_new_never_torn() {
    let dir = setup();
    let cfg = dir.path().join("hvroute.toml");
    let spec_a = ["--mac", "52:54:00:00:00:01", "--ip", "192.0.2.10", "--ip", "2001:db8:100::10"];
    let spec_b = [
        "--nic",
        "mac=52:54:00:00:00:02,ip=192.0.2.11",
        "--nic",
        "mac=52:54:00:00:00:03,ip=2001:db8:100::11",
    ];
    let add = |spec: &[&str]| {
        let mut c = vec![
            bin().to_string(),
            "--config".into(),
            cfg.display().to_string(),
            "vm".into(),
            "add".into(),
            "x".into(),
        ];
        c.extend(spec.iter().map(|s| s.to_string()));
        c.push("--replace".into());
        c.iter().map(|a| format!("'{a}'")).collect::<Vec<_>>().join(" ")
    };
    // Seed both forms, remembering the exact bytes of each.
    let read = || std::fs::read(dir.path().join("state/x.json")).unwrap();
    let run = |cmd: &str| assert!(Command::new("sh").arg("-c").arg(cmd).status().unwrap().success());
    run(&add(&spec_a));
    let bytes_a = read();
    run(&add(&spec_b));
    let bytes_b = read();
    assert_ne!(bytes_a, bytes_b);

    let script = format!("while :; do {} >/dev/null; {} >/dev/null; done", add(&spec_a), add(&spec_b));
    let mut rng = Lcg(0x5eed);
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while kills < 60 && Instant::now() < deadline {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(2_000 + rng.below(40_000)));
        // SIGKILL the whole group: the loop and the hvroute writer inside it.
        unsafe {
            libc::kill(-(child.id() as i32), libc::SIGKILL);
        }
        child.wait().unwrap();
        kills += 1;
        let now = read();
        assert!(
            now == bytes_a || now == bytes_b,
            "torn state file after kill {kills}: {:?}",
            String::from_utf8_lossy(&now)
        );
        // Every file the reader sees parses; a stale temp file is ignored.
        let list = Command::new(bin())
            .args(["--config", &cfg.display().to_string(), "vm", "list", "--json"])
            .output()
            .unwrap();
        assert!(list.status.success());
        let v: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
        assert_eq!(v["errors"], serde_json::json!([]), "after kill {kills}");
        assert_eq!(v["vms"].as_array().unwrap().len(), 1);
    }
    assert!(kills >= 20, "only {kills} kills in the time allowed");
}

/// libvirt starts 50 VMs at once and CloudStack retries; two writers must never both
/// claim one address.
#[test]
fn concurrent_writers_never_both_claim_an_address() {
    let dir = setup();
    let cfg = dir.path().join("hvroute.toml");
    let children: Vec<_> = (0..16)
        .map(|i| {
            Command::new(bin())
                .args(["--config", &cfg.display().to_string(), "vm", "add", &format!("vm{i}")])
                .args(["--mac", &format!("52:54:00:00:01:{i:02x}"), "--ip", "192.0.2.77"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let codes: Vec<i32> =
        children.into_iter().map(|c| c.wait_with_output().unwrap().status.code().unwrap()).collect();
    assert_eq!(codes.iter().filter(|c| **c == 0).count(), 1, "{codes:?}");
    assert!(codes.iter().all(|c| *c == 0 || *c == 2), "{codes:?}");
    let files: Vec<_> = std::fs::read_dir(dir.path().join("state"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .collect();
    assert_eq!(files.len(), 1);
    assert!(!Path::new(&dir.path().join("state/.vm0.json.tmp")).exists());
}
