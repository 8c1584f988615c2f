//! ConfigDrive images: what we write, software we did not write reads the same way, and what we
//! read from hostile images never panics, hangs or balloons.
//!
//! Needs xorriso, isoinfo (genisoimage), mtools, dosfstools and blkid (util-linux). The
//! kernel loop-mount checks are `#[ignore]`d: the CI kernel has neither iso9660 nor vfat
//! (`/proc/filesystems`), see `docs/configdrive-image.md`; run them with `--ignored` on a
//! hypervisor.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use hvroute::configdrive::image::{self, ImageError};
use hvroute::configdrive::{DriveFile, Format};

fn file(path: &str, data: impl Into<Vec<u8>>) -> DriveFile {
    DriveFile { path: path.to_string(), data: data.into() }
}

/// An OpenStack-layout drive: nested paths, an empty file and a 1 MiB user_data.
fn drive() -> Vec<DriveFile> {
    let big: Vec<u8> = (0..1024 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    vec![
        file("openstack/latest/meta_data.json", br#"{"uuid":"8d4c3a1e","name":"vm1"}"#.to_vec()),
        file("openstack/latest/network_data.json", br#"{"links":[],"networks":[],"services":[]}"#.to_vec()),
        file("openstack/latest/vendor_data.json", Vec::new()),
        file("openstack/latest/user_data", big),
        file("meta-data", b"instance-id: vm1\n".to_vec()),
    ]
}

fn sorted(files: &[DriveFile]) -> Vec<DriveFile> {
    let mut files = files.to_vec();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    files
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn write_tmp(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Every regular file under `dir`, by relative path.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(base, &path, out);
            } else {
                let rel = path.strip_prefix(base).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn as_map(files: &[DriveFile]) -> BTreeMap<String, Vec<u8>> {
    files.iter().map(|f| (f.path.clone(), f.data.clone())).collect()
}

fn blkid(img: &Path, tag: &str) -> String {
    run(Command::new("blkid").args(["-p", "-o", "value", "-s", tag]).arg(img)).trim().to_string()
}

// Round trip: what the guest's cloud-init reads must be what we meant to write.
#[test]
fn iso_round_trip_keeps_files_and_label() {
    let files = drive();
    let bytes = image::write(Format::Iso, "config-2", &files).unwrap();
    let img = image::read(&bytes).unwrap();
    assert_eq!(img.format, Format::Iso);
    assert_eq!(img.label, "config-2");
    assert_eq!(img.files, sorted(&files));
}

#[test]
fn vfat_round_trip_keeps_files_and_label() {
    let files = drive();
    for label in ["config-2", "cidata"] {
        let bytes = image::write(Format::Vfat, label, &files).unwrap();
        let img = image::read(&bytes).unwrap();
        assert_eq!(img.format, Format::Vfat);
        assert_eq!(img.label, label);
        assert_eq!(img.files, sorted(&files));
    }
}

// Determinism: a rebuilt drive must not look changed (and so not be re-attached) when nothing
// changed; a changed file must change the image.
#[test]
fn writes_are_byte_identical_and_follow_the_content() {
    for format in [Format::Iso, Format::Vfat] {
        let files = drive();
        let a = image::write(format, "config-2", &files).unwrap();
        let mut reversed = files.clone();
        reversed.reverse();
        let b = image::write(format, "config-2", &reversed).unwrap();
        assert!(a == b, "{format:?}: two writes of the same drive differ");
        let mut changed = files.clone();
        changed[0].data = br#"{"uuid":"8d4c3a1e","name":"vm2"}"#.to_vec();
        let c = image::write(format, "config-2", &changed).unwrap();
        assert!(a != c, "{format:?}: a changed file left the image unchanged");
    }
}

// Independent readers: xorriso (libisofs) and isoinfo (genisoimage's reader) must see our ISO's
// Rock Ridge and Joliet names and bytes; blkid must see the label cloud-init looks for.
#[test]
fn iso_reads_the_same_in_xorriso_isoinfo_and_blkid() {
    let files = drive();
    let tmp = tempfile::tempdir().unwrap();
    let img = write_tmp(tmp.path(), "drive.iso", &image::write(Format::Iso, "config-2", &files).unwrap());
    assert_eq!(blkid(&img, "LABEL"), "config-2");
    assert_eq!(blkid(&img, "TYPE"), "iso9660");

    let out = tmp.path().join("xorriso");
    run(Command::new("xorriso")
        .args(["-osirrox", "on", "-indev"])
        .arg(&img)
        .args(["-extract", "/"])
        .arg(&out)
        .stdin(std::process::Stdio::null()));
    assert_eq!(tree(&out), as_map(&files), "xorriso extract differs");

    let want: Vec<String> = {
        let mut paths: Vec<String> = Vec::new();
        for f in &files {
            let mut at = 0;
            for part in f.path.split('/') {
                at += part.len();
                paths.push(format!("/{}", &f.path[..at]));
                at += 1;
            }
        }
        paths.sort();
        paths.dedup();
        paths
    };
    for (flag, names) in [("-J", "Joliet"), ("-R", "Rock Ridge")] {
        let listed = run(Command::new("isoinfo").arg("-i").arg(&img).args([flag, "-f"]));
        let mut listed: Vec<String> = listed.lines().map(str::to_string).collect();
        listed.sort();
        assert_eq!(listed, want, "isoinfo's {names} names differ");
        for f in &files {
            let out = Command::new("isoinfo")
                .arg("-i")
                .arg(&img)
                .args([flag, "-x", &format!("/{}", f.path)])
                .output()
                .unwrap();
            assert!(out.status.success());
            assert!(out.stdout == f.data, "isoinfo {flag} -x /{} gives other bytes", f.path);
        }
    }
}

// Independent readers: mtools and fsck.fat must accept our FAT image and see its files; blkid
// must print the label exactly as cloud-init's `blkid -tLABEL=config-2` matches it.
#[test]
fn vfat_reads_the_same_in_mtools_fsck_and_blkid() {
    let files = drive();
    let tmp = tempfile::tempdir().unwrap();
    for label in ["config-2", "cidata"] {
        let img = write_tmp(
            tmp.path(),
            &format!("{label}.img"),
            &image::write(Format::Vfat, label, &files).unwrap(),
        );
        assert_eq!(blkid(&img, "LABEL"), label);
        assert_eq!(blkid(&img, "TYPE"), "vfat");
        run(Command::new("fsck.fat").arg("-n").arg(&img));
        let out = tmp.path().join(format!("{label}-mtools"));
        std::fs::create_dir(&out).unwrap();
        run(Command::new("mcopy").args(["-s", "-n", "-i"]).arg(&img).arg("::/").arg(&out));
        assert_eq!(tree(&out), as_map(&files), "mcopy's files differ");
        let label_seen = run(Command::new("mlabel").args(["-s", "-i"]).arg(&img).arg("::"));
        assert!(label_seen.contains(label), "mlabel shows {label_seen:?}, not {label}");
    }
}

/// A loop mount that is undone when dropped.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn kernel_mount_reads(format: Format, fstype: &str) {
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap();
    assert!(
        filesystems.split_whitespace().any(|f| f == fstype),
        "this kernel cannot mount {fstype} (not in /proc/filesystems)"
    );
    let free = run(Command::new("losetup").arg("-f"));
    assert!(!free.trim().is_empty(), "no free loop device");
    let files = drive();
    let tmp = tempfile::tempdir().unwrap();
    let img = write_tmp(tmp.path(), "drive", &image::write(format, "config-2", &files).unwrap());
    let dir = tmp.path().join("mnt");
    std::fs::create_dir(&dir).unwrap();
    run(Command::new("mount").args(["-o", "loop,ro", "-t", fstype]).arg(&img).arg(&dir));
    let mount = Mount(dir);
    // The default iso9660 mount shows Rock Ridge names; vfat shows the long names.
    assert_eq!(tree(&mount.0), as_map(&files), "the kernel sees other files");
}

// The kernel is the reader a guest uses. This machine's kernel has no iso9660 or vfat, so
// these run only with --ignored, on a host that has them.
#[test]
#[ignore = "needs iso9660 in the kernel and loop devices; the CI kernel has no iso9660"]
fn iso_reads_the_same_in_a_kernel_loop_mount() {
    kernel_mount_reads(Format::Iso, "iso9660");
}

#[test]
#[ignore = "needs vfat in the kernel and loop devices; the CI kernel has no vfat"]
fn vfat_reads_the_same_in_a_kernel_loop_mount() {
    kernel_mount_reads(Format::Vfat, "vfat");
}

// Writing refuses what cannot be stored the same way in both formats.
#[test]
fn write_refuses_bad_labels_and_paths() {
    let ok = [file("a", b"x".to_vec())];
    for label in ["", "config-2-too-long", "con fig", "config/2"] {
        let err = image::write(Format::Vfat, label, &ok).unwrap_err();
        assert!(matches!(err, ImageError::BadLabel(_)), "{label:?}: {err}");
    }
    for path in ["/abs", "a//b", "../x", "a/./b", "a b", "a\\b", ""] {
        let err = image::write(Format::Vfat, "cidata", &[file(path, Vec::new())]).unwrap_err();
        assert!(matches!(err, ImageError::BadPath { .. }), "{path:?}: {err}");
    }
    let twice = [file("a", Vec::new()), file("a", Vec::new())];
    assert!(image::write(Format::Vfat, "cidata", &twice).is_err());
    let file_and_dir = [file("a", Vec::new()), file("a/b", Vec::new())];
    assert!(image::write(Format::Iso, "cidata", &file_and_dir).is_err());
}

// Hostile input: every truncation of a real image is an error or a smaller image, never a
// panic (a guest's drive can be cut short by a full disk or a bad copy).
#[test]
fn truncated_images_never_panic() {
    for format in [Format::Iso, Format::Vfat] {
        let small =
            [file("openstack/latest/meta_data.json", b"{}".to_vec()), file("meta-data", b"x".to_vec())];
        let bytes = image::write(format, "config-2", &small).unwrap();
        let step = (bytes.len() / 400).max(1);
        for n in (0..bytes.len()).step_by(step) {
            let _ = image::read(&bytes[..n]);
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{needle:?} is not in the image"))
}

fn utf16be(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_be_bytes).collect()
}

// A directory that contains itself must be an error, not an endless walk.
#[test]
fn iso_directory_loop_is_an_error() {
    let bytes = image::write(Format::Iso, "config-2", &drive()).unwrap();
    let mut bad = bytes.clone();
    // The Joliet record of "latest" points back to the extent of "openstack".
    let openstack = find(&bad, &utf16be("openstack")) - 33;
    let latest = find(&bad, &utf16be("latest")) - 33;
    let extent: [u8; 8] = bad[openstack + 2..openstack + 10].try_into().unwrap();
    bad[latest + 2..latest + 10].copy_from_slice(&extent);
    let err = image::read(&bad).unwrap_err().to_string();
    assert!(err.contains("loops back"), "{err}");
}

#[test]
fn vfat_directory_loop_is_an_error() {
    let bytes = image::write(Format::Vfat, "config-2", &drive()).unwrap();
    let mut bad = bytes.clone();
    // "latest"'s short entry gets the cluster of the directory that holds it (its ".").
    let latest = find(&bad, b"LATEST     ");
    let mut dot = latest;
    while &bad[dot..dot + 11] != b".          " {
        dot -= 32;
    }
    let cluster: [u8; 2] = bad[dot + 26..dot + 28].try_into().unwrap();
    bad[latest + 26..latest + 28].copy_from_slice(&cluster);
    let err = image::read(&bad).unwrap_err().to_string();
    assert!(err.contains("loops back"), "{err}");
}

// A file that claims gigabytes must be refused before anything is allocated for it.
#[test]
fn huge_declared_file_size_is_an_error() {
    let files = [file("huge.bin", b"small".to_vec())];
    let mut iso = image::write(Format::Iso, "config-2", &files).unwrap();
    let rec = find(&iso, &utf16be("huge.bin")) - 33;
    iso[rec + 10..rec + 14].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    assert!(image::read(&iso).is_err());

    let mut fat = image::write(Format::Vfat, "config-2", &files).unwrap();
    let entry = find(&fat, b"HUGE    BIN");
    fat[entry + 28..entry + 32].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    let err = image::read(&fat).unwrap_err().to_string();
    assert!(err.contains("more than the whole image"), "{err}");
}

#[test]
fn zeroed_image_is_not_a_drive() {
    let err = image::read(&vec![0u8; 1024 * 1024]).unwrap_err().to_string();
    assert!(err.starts_with("not an ISO 9660 or FAT image"), "{err}");
    assert!(image::read(&[]).is_err());
}

// read_path checks before it reads: a 65 MiB sparse file is refused by its size, a FIFO
// (which would block a plain open or read forever) and a directory by their type.
#[test]
fn read_path_refuses_large_and_special_files_before_reading() {
    let tmp = tempfile::tempdir().unwrap();
    let big = tmp.path().join("big.img");
    std::fs::File::create(&big).unwrap().set_len(65 * 1024 * 1024).unwrap();
    let err = image::read_path(&big).unwrap_err().to_string();
    assert!(err.contains("image is 65 MiB, more than the 64 MiB") && err.contains("big.img"), "{err}");

    let fifo = tmp.path().join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let (tx, rx) = mpsc::channel();
    let path = fifo.clone();
    std::thread::spawn(move || {
        let _ = tx.send(image::read_path(&path).map(|_| ()).map_err(|e| e.to_string()));
    });
    let err = rx.recv_timeout(Duration::from_secs(5)).expect("read_path hung on a FIFO").unwrap_err();
    assert!(err.contains("is not a regular file (it is a FIFO)"), "{err}");

    let err = image::read_path(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("not a regular file (it is a directory)"), "{err}");

    let ok = write_tmp(
        tmp.path(),
        "ok.img",
        &image::write(Format::Vfat, "cidata", &[file("meta-data", b"x".to_vec())]).unwrap(),
    );
    assert_eq!(image::read_path(&ok).unwrap().label, "cidata");
}

// Drives made by other tools (xorriso with Rock Ridge only, plain ISO 9660, mkfs.vfat with
// mcopy) are read with the names their makers meant; the fuzz seeds are such drives, and the
// regression seeds (inputs that crashed cdfs and fatfs) are errors or images, not panics.
#[test]
fn reads_drives_made_by_other_tools() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/image_read");
    let names = |img: &image::Image| -> Vec<String> { img.files.iter().map(|f| f.path.clone()).collect() };
    let openstack = [
        "openstack/latest/meta_data.json",
        "openstack/latest/network_data.json",
        "openstack/latest/user_data",
        "openstack/latest/vendor_data.json",
    ];
    for (seed, format, label) in [
        ("openstack-joliet-rr.iso", Format::Iso, "config-2"),
        ("openstack-rr-only.iso", Format::Iso, "config-2"),
        ("openstack-fat12.img", Format::Vfat, "config-2"),
    ] {
        let img = image::read_path(&dir.join(seed)).unwrap();
        assert_eq!((img.format, img.label.as_str()), (format, label), "{seed}");
        assert_eq!(names(&img), openstack, "{seed}");
    }
    // Plain ISO 9660 names are 8.3 and upper case: read back lowercased, without ";1".
    let img = image::read_path(&dir.join("nocloud-plain.iso")).unwrap();
    assert_eq!(img.label, "cidata");
    assert_eq!(names(&img), ["meta_dat", "network_", "user_dat"]);
    let img = image::read_path(&dir.join("nocloud-fat12.img")).unwrap();
    assert_eq!(img.label, "cidata");
    assert_eq!(names(&img), ["meta-data", "network-config", "user-data"]);
    for seed in ["regress-cdfs-assert.iso", "regress-cdfs-unimplemented.iso", "regress-fatfs-overflow.img"] {
        let _ = image::read_path(&dir.join(seed));
    }
}
