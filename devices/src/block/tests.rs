//! Images made by qemu-img (when installed) read and written here, then
//! checked by qemu-img; hostile headers and chains refused.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

/// A fresh folder for one test.
/// A test's own folder, held with the tests' lock: these tests spawn
/// qemu-img, and a child forked while another test holds an image open
/// keeps that open file, and its OFD lock, until it execs, so a test that
/// reopens an image it has just closed could find it still locked.
struct Dir {
    path: PathBuf,
    _one: std::sync::MutexGuard<'static, ()>,
}

impl std::ops::Deref for Dir {
    type Target = PathBuf;
    fn deref(&self) -> &PathBuf {
        &self.path
    }
}

static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn dir(name: &str) -> Dir {
    let one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let d = std::env::temp_dir().join(format!("ferrovm-block-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    Dir { path: d, _one: one }
}

/// Runs qemu-img; None (with a note) when it is not installed.
fn qemu_img(args: &[&str]) -> Option<String> {
    match Command::new("qemu-img").args(args).output() {
        Ok(o) => {
            assert!(o.status.success(), "qemu-img {args:?}: {}", String::from_utf8_lossy(&o.stderr));
            Some(String::from_utf8_lossy(&o.stdout).into_owned())
        }
        Err(_) => {
            eprintln!("skipping: qemu-img is not installed (Debian: qemu-utils)");
            None
        }
    }
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn spec(path: &Path, format: Option<ImageFormat>, read_only: bool) -> DiskSpec {
    DiskSpec { path: path.to_path_buf(), format, read_only, ..DiskSpec::default() }
}

/// `qemu-img check` finds nothing wrong.
fn check_clean(path: &Path) {
    let out = qemu_img(&["check", p(path)]).unwrap();
    assert!(out.contains("No errors were found"), "qemu-img check {}: {out}", path.display());
}

/// The guest's view of an image, through `qemu-img convert`.
fn converted(path: &Path, d: &Path) -> Vec<u8> {
    let out = d.join("converted.raw");
    qemu_img(&["convert", "-O", "raw", p(path), p(&out)]).unwrap();
    fs::read(out).unwrap()
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// Random writes, zeroes and discards, mirrored in `model`.
fn scribble(img: &mut Image, model: &mut [u8], seed: u64, ops: usize) {
    let size = model.len() as u64;
    let mut s = seed;
    for i in 0..ops {
        let off = (xorshift(&mut s) % size) & !511;
        let len = ((xorshift(&mut s) % (192 << 10)) & !511).clamp(512, size - off);
        let range = off as usize..(off + len) as usize;
        match i % 10 {
            7 => {
                img.write_zeroes(off, len, i % 20 == 7).unwrap();
                model[range].fill(0);
            }
            _ => {
                let byte = (i % 251 + 1) as u8;
                img.write_at(&vec![byte; len as usize], off).unwrap();
                model[range].fill(byte);
            }
        }
    }
    let mut back = vec![0u8; model.len()];
    img.read_at(&mut back, 0).unwrap();
    assert!(back == model, "reads return what was written");
    img.flush().unwrap();
}

#[test]
fn qcow2_v2_and_v3_writes_pass_qemu_img_check() {
    let d = dir("rw");
    for compat in ["0.10", "1.1"] {
        let path = d.join(format!("disk-{compat}.qcow2"));
        if qemu_img(&["create", "-q", "-f", "qcow2", "-o", &format!("compat={compat}"), p(&path), "32M"]).is_none() {
            return;
        }
        let mut model = vec![0u8; 32 << 20];
        {
            let mut img = open(&spec(&path, None, false), false).unwrap();
            assert_eq!(img.size(), 32 << 20);
            scribble(&mut img, &mut model, 0x1234_5678 + compat.len() as u64, 300);
        }
        check_clean(&path);
        assert!(converted(&path, &d) == model, "qemu-img reads what ferrovm wrote (compat={compat})");
        // Internal snapshot: every cluster shared (refcount 2); writes must
        // copy, and the snapshot keeps the old data.
        qemu_img(&["snapshot", "-c", "before", p(&path)]).unwrap();
        {
            let mut img = open(&spec(&path, Some(ImageFormat::Qcow2), false), false).unwrap();
            img.write_at(&vec![0xee; 1 << 20], 0).unwrap();
            img.flush().unwrap();
        }
        check_clean(&path);
        qemu_img(&["snapshot", "-a", "before", p(&path)]).unwrap();
        assert!(converted(&path, &d) == model, "the snapshot kept its data (compat={compat})");
    }
}

#[test]
fn compressed_clusters_read_and_copy_on_write() {
    let d = dir("compressed");
    let raw = d.join("src.raw");
    let mut data: Vec<u8> = (0..8u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    data.extend(std::iter::repeat_n(b'x', 4 << 20));
    fs::write(&raw, &data).unwrap();
    let path = d.join("c.qcow2");
    if qemu_img(&["convert", "-c", "-O", "qcow2", p(&raw), p(&path)]).is_none() {
        return;
    }
    let mut img = open(&spec(&path, None, false), false).unwrap();
    let mut back = vec![0u8; data.len()];
    img.read_at(&mut back, 0).unwrap();
    assert!(back == data, "compressed clusters read back");
    img.write_at(&[7; 4096], 9 << 20).unwrap();
    data[9 << 20..(9 << 20) + 4096].fill(7);
    img.flush().unwrap();
    drop(img);
    check_clean(&path);
    assert!(converted(&path, &d) == data);
}

#[test]
fn overlays_over_raw_and_qcow2_leave_the_base_unchanged() {
    let d = dir("chain");
    let base = d.join("base.raw");
    let data: Vec<u8> = (0..4u32 << 20).map(|i| (i >> 9) as u8).collect();
    fs::write(&base, &data).unwrap();
    let mid = d.join("mid.qcow2");
    let top = d.join("top.qcow2");
    if qemu_img(&["create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", p(&mid)]).is_none() {
        return;
    }
    // The middle layer holds some data of its own.
    {
        let mut img = open(&spec(&mid, None, false), false).unwrap();
        img.write_at(&[0x55; 65536], 1 << 20).unwrap();
    }
    qemu_img(&["create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", p(&top)]).unwrap();
    let mid_before = fs::read(&mid).unwrap();
    let mut model = data.clone();
    model[1 << 20..(1 << 20) + 65536].fill(0x55);
    {
        let mut img = open(&spec(&top, None, false), false).unwrap();
        assert_eq!(img.chain_len(), 3);
        let mut back = vec![0u8; model.len()];
        img.read_at(&mut back, 0).unwrap();
        assert!(back == model, "the chain reads through");
        // Partial-cluster writes copy the rest of the cluster from below;
        // zeroes hide the backing data.
        img.write_at(&[0xab; 1000 * 512 / 1000], 3 * 512).unwrap();
        model[3 * 512..4 * 512].fill(0xab);
        img.write_zeroes(2 << 20, 128 << 10, false).unwrap();
        model[2 << 20..(2 << 20) + (128 << 10)].fill(0);
        img.flush().unwrap();
        // The backing files are locked for reading: nobody may write them.
        let err = open(&spec(&base, Some(ImageFormat::Raw), false), false).unwrap_err();
        assert!(err.to_string().contains("in use"), "{err}");
    }
    check_clean(&top);
    assert!(converted(&top, &d) == model);
    assert!(fs::read(&base).unwrap() == data, "the raw base is unchanged");
    assert!(fs::read(&mid).unwrap() == mid_before, "the qcow2 middle layer is unchanged");
}

#[test]
fn snapshot_writes_go_to_a_temporary_overlay() {
    let d = dir("snapshot");
    let base = d.join("disk.raw");
    fs::write(&base, vec![1u8; 1 << 20]).unwrap();
    let before = fs::read(&base).unwrap();
    {
        let mut img = open(&spec(&base, Some(ImageFormat::Raw), false), true).unwrap();
        assert!(!img.read_only());
        img.write_at(&[9; 4096], 0).unwrap();
        let mut b = [0u8; 4096];
        img.read_at(&mut b, 0).unwrap();
        assert_eq!(b, [9; 4096]);
        img.flush().unwrap();
        // The base is only read: another reader may share it.
        let other = open(&spec(&base, Some(ImageFormat::Raw), true), false).unwrap();
        assert!(other.read_only());
    }
    assert!(fs::read(&base).unwrap() == before, "the base is unchanged");
    let leftovers: Vec<_> = fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(&format!("ferrovm-snapshot-{}-", std::process::id())))
        .collect();
    assert!(leftovers.is_empty(), "the overlay file is gone");
}

#[test]
fn raw_images_read_only_and_locked() {
    let d = dir("raw");
    let path = d.join("disk.img");
    fs::write(&path, vec![0u8; 1 << 20]).unwrap();
    let mut img = open(&spec(&path, None, false), false).unwrap();
    img.write_at(&[3; 512], 512).unwrap();
    img.discard(0, 4096).unwrap();
    img.flush().unwrap();
    // A second writer, and a reader, of the same image are refused while it is in use.
    let e = open(&spec(&path, None, false), false).unwrap_err();
    assert!(matches!(e, OpenError::Locked { .. }) && e.to_string().contains("in use"), "{e}");
    let e = open(&spec(&path, None, true), false).unwrap_err();
    assert!(e.to_string().contains("being written"), "{e}");
    drop(img);
    let mut ro = open(&spec(&path, Some(ImageFormat::Raw), true), false).unwrap();
    let mut b = [0u8; 1024];
    ro.read_at(&mut b, 0).unwrap();
    assert_eq!(&b[512..], &[0u8; 512][..], "discarded to zero");
    assert!(ro.write_at(&[1], 0).is_err());
    assert!(ro.write_zeroes(0, 512, false).is_err());
    // Readers share.
    open(&spec(&path, Some(ImageFormat::Raw), true), false).unwrap();
    // Missing file: the path is in the message.
    let e = open(&spec(&d.join("nope.img"), None, false), false).unwrap_err();
    assert!(e.to_string().contains("nope.img"), "{e}");
}

#[test]
fn backing_chain_loops_are_refused() {
    let d = dir("loop");
    let a = d.join("a.qcow2");
    let b = d.join("b.qcow2");
    if qemu_img(&["create", "-q", "-f", "qcow2", p(&a), "1M"]).is_none() {
        return;
    }
    qemu_img(&["create", "-q", "-f", "qcow2", "-b", "a.qcow2", "-F", "qcow2", p(&b)]).unwrap();
    qemu_img(&["rebase", "-u", "-b", "b.qcow2", "-F", "qcow2", p(&a)]).unwrap();
    for top in [&a, &b] {
        let e = open(&spec(top, None, true), false).unwrap_err();
        assert!(matches!(e, OpenError::BadChain { .. }) && e.to_string().contains("loops"), "{e}");
    }
    // A file that is its own backing file.
    qemu_img(&["rebase", "-u", "-b", "a.qcow2", "-F", "qcow2", p(&a)]).unwrap();
    let e = open(&spec(&a, None, true), false).unwrap_err();
    assert!(e.to_string().contains("loops"), "{e}");
}

/// A small valid image, as bytes.
fn small_qcow2(d: &Path) -> Option<Vec<u8>> {
    let path = d.join("small.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", p(&path), "8M"])?;
    let mut img = open(&spec(&path, None, false), false).unwrap();
    img.write_at(&[5; 65536], 0).unwrap();
    drop(img);
    Some(fs::read(&path).unwrap())
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

#[test]
fn hostile_headers_get_clear_errors() {
    let d = dir("headers");
    let Some(good) = small_qcow2(&d) else { return };
    let h = header::check_bytes(&good).unwrap();
    assert_eq!((h.version, h.cluster_bits), (3, 16));
    let len = good.len() as u64;
    type Edit = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: Vec<(&str, Edit)> = vec![
        ("version", Box::new(|b| put32(b, 4, 4))),
        ("cluster_bits", Box::new(|b| put32(b, 20, 30))),
        ("encrypted", Box::new(|b| put32(b, 32, 1))),
        ("L1 table", Box::new(move |b| put64(b, 40, len + 65536))),
        ("L1 table", Box::new(|b| put64(b, 40, 0x1234))),
        ("l1_size", Box::new(|b| put32(b, 36, 0))),
        ("L1 table", Box::new(|b| put32(b, 36, 0x1000_0000))),
        ("refcount table", Box::new(|b| put64(b, 48, 1 << 40))),
        ("refcount table", Box::new(|b| put64(b, 48, 65536 + 8))),
        ("refcount table", Box::new(|b| put32(b, 56, u32::MAX))),
        ("refcount table is empty", Box::new(|b| put32(b, 56, 0))),
        ("refcount_order", Box::new(|b| put32(b, 96, 7))),
        ("corrupt", Box::new(|b| put64(b, 72, 2))),
        ("external data file", Box::new(|b| put64(b, 72, 4))),
        ("unknown incompatible", Box::new(|b| put64(b, 72, 1 << 40))),
        (
            "backing file name",
            Box::new(|b| {
                put64(b, 8, 65530);
                put32(b, 16, 100);
            }),
        ),
        ("header_length", Box::new(|b| put32(b, 100, 12))),
        ("shorter", Box::new(|b| b.truncate(40))),
    ];
    for (want, edit) in &cases {
        let mut b = good.clone();
        edit(&mut b);
        let e = header::check_bytes(&b).unwrap_err();
        assert!(e.contains(want), "{want}: {e}");
        // Through open(): refused with the file named, nothing opened.
        let path = d.join("bad.qcow2");
        fs::write(&path, &b).unwrap();
        let e = open(&spec(&path, Some(ImageFormat::Qcow2), false), false).unwrap_err();
        assert!(e.to_string().contains("bad.qcow2"), "{e}");
    }
    // An L1 entry and a refcount table entry pointing past the end.
    let mut b = good.clone();
    let l1 = h.l1_table_offset as usize;
    put64(&mut b, l1, (len + (1 << 20)) | 1 << 63);
    assert!(header::check_bytes(&b).unwrap_err().contains("L1 table entry 0"));
    let mut b = good.clone();
    put64(&mut b, h.refcount_table_offset as usize + 8, len << 4);
    assert!(header::check_bytes(&b).unwrap_err().contains("refcount table entry 1"));
}

#[test]
fn mutated_images_never_panic() {
    // Random byte changes in the header and the first clusters: every open,
    // read and write returns (an error or data), and never panics or
    // overflows the stack.
    let d = dir("mutate");
    let Some(good) = small_qcow2(&d) else { return };
    let path = d.join("m.qcow2");
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let mut opened = 0;
    for _ in 0..300 {
        let mut b = good.clone();
        for _ in 0..1 + xorshift(&mut s) % 3 {
            let region = if xorshift(&mut s).is_multiple_of(2) { 112 } else { b.len().min(4 << 16) as u64 };
            let i = (xorshift(&mut s) % region) as usize;
            b[i] = xorshift(&mut s) as u8;
        }
        fs::write(&path, &b).unwrap();
        let Ok(mut img) = open(&spec(&path, Some(ImageFormat::Qcow2), false), false) else { continue };
        opened += 1;
        let mut buf = vec![0u8; 256 << 10];
        let _ = img.read_at(&mut buf, 0);
        let _ = img.write_at(&buf[..4096], 4096);
        let _ = img.write_at(&buf, 4 << 20);
        let _ = img.flush();
    }
    assert!(opened > 0, "some mutations leave a usable image");
}

#[test]
fn disk_specs_parse() {
    let s: DiskSpec = "a.img,format=qcow2,readonly=on,if=virtio".parse().unwrap();
    assert_eq!(
        s,
        DiskSpec { path: "a.img".into(), format: Some(ImageFormat::Qcow2), read_only: true, ..DiskSpec::default() }
    );
    assert!("a.img,snapshot=on".parse::<DiskSpec>().unwrap().snapshot);
    assert_eq!("file=b.raw".parse::<DiskSpec>().unwrap().path, PathBuf::from("b.raw"));
    let cd: DiskSpec = "x.iso,media=cdrom".parse().unwrap();
    assert_eq!((cd.interface, cd.media, cd.read_only, cd.index), (DiskInterface::Ide, DiskMedia::Cdrom, true, None));
    let hd: DiskSpec = "y.img,if=ide,index=1".parse().unwrap();
    assert_eq!((hd.interface, hd.media, hd.read_only, hd.index), (DiskInterface::Ide, DiskMedia::Disk, false, Some(1)));
    for (bad, why) in [
        ("", "missing"),
        ("a,format=vmdk", "unknown"),
        ("a,readonly=maybe", "readonly"),
        ("a,snapshot=sometimes", "snapshot"),
        ("a,if=scsi", "if=virtio, if=ide or if=floppy"),
        ("a,if=floppy,index=2", "A:"),
        ("a,media=cdrom,if=virtio", "if=ide"),
        ("a,index=1", "if=ide"),
        ("a,if=ide,index=4", "0 to 3"),
        ("a,media=floppy", "media=disk"),
        ("a,cache=none", "unknown"),
        ("a,junk", "KEY=VALUE"),
    ] {
        let e = bad.parse::<DiskSpec>().unwrap_err();
        assert!(e.contains(why), "{bad}: {e}");
    }
}

// ---- internal snapshots ------------------------------------------------------

/// The snapshot names `qemu-img snapshot -l` lists.
fn qemu_snapshot_names(path: &Path) -> Vec<String> {
    let out = qemu_img(&["snapshot", "-l", p(path)]).unwrap();
    out.lines().skip(2).filter_map(|l| l.split_whitespace().nth(1).map(str::to_string)).collect()
}

/// The disk as snapshot `name` holds it, through `qemu-img convert -l`.
fn converted_snapshot(path: &Path, name: &str, d: &Path) -> Vec<u8> {
    let out = d.join("snapshot.raw");
    let _ = fs::remove_file(&out);
    qemu_img(&["convert", "-O", "raw", "-l", &format!("snapshot.name={name}"), p(path), p(&out)]).unwrap();
    fs::read(out).unwrap()
}

fn new_snapshot(name: &str) -> internal::NewSnapshot {
    internal::NewSnapshot {
        name: name.into(),
        date_sec: 1_700_000_000,
        date_nsec: 5,
        vm_clock_nsec: 12_345_678_901,
        icount: u64::MAX,
    }
}

/// A VM state of `len` bytes: runs of a pattern with zero gaps (which are
/// not stored), as a RAM image has.
fn vmstate_bytes(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    for (i, b) in v.iter_mut().enumerate() {
        if (i / 65536) % 3 != 1 {
            *b = (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3];
        }
    }
    v
}

fn read_all(img: &mut Image) -> Vec<u8> {
    let mut b = vec![0u8; img.size() as usize];
    img.read_at(&mut b, 0).unwrap();
    b
}

#[test]
fn internal_snapshots_create_list_apply_delete() {
    let d = dir("internal");
    for compat in ["0.10", "1.1"] {
        let path = d.join(format!("disk-{compat}.qcow2"));
        if qemu_img(&["create", "-q", "-f", "qcow2", "-o", &format!("compat={compat}"), p(&path), "24M"]).is_none() {
            return;
        }
        let mut a = vec![0u8; 24 << 20];
        let state = vmstate_bytes(3 << 20 | 777);
        {
            let mut img = open(&spec(&path, None, false), false).unwrap();
            assert!(img.keeps_snapshots());
            scribble(&mut img, &mut a, 0xabcdef + compat.len() as u64, 120);
            let mut write_state = |w: &mut internal::VmStateWriter<'_>| {
                // In pieces, as a machine writes its state and its RAM.
                for (i, chunk) in state.chunks(100_000).enumerate() {
                    w.write(i as u64 * 100_000, chunk)?;
                }
                Ok(())
            };
            let sn = img.create_snapshot(&new_snapshot("s1"), Some(&mut write_state)).unwrap();
            assert_eq!((sn.id.as_str(), sn.name.as_str(), sn.vm_state_size), ("1", "s1", state.len() as u64));
            // The guest goes on writing: shared clusters are copied first.
            let mut b = a.clone();
            scribble(&mut img, &mut b, 0x1234 + compat.len() as u64, 120);
            let s2 = img.create_snapshot(&new_snapshot("s2"), None).unwrap();
            assert_eq!((s2.id.as_str(), s2.vm_state_size), ("2", 0));
            img.write_at(&[0x77; 65536 * 3], 65536 * 5 + 512).unwrap();
            img.flush().unwrap();
            drop(img);
            check_clean(&path);
            assert_eq!(qemu_snapshot_names(&path), ["s1", "s2"]);
            assert!(converted_snapshot(&path, "s1", &d) == a, "QEMU reads snapshot s1's disk as it was");
            assert!(converted_snapshot(&path, "s2", &d) == b, "and s2's");

            let mut img = open(&spec(&path, None, false), false).unwrap();
            let list = img.snapshots().unwrap();
            assert_eq!(list.len(), 2);
            assert_eq!(
                (list[0].date_sec, list[0].vm_clock_nsec, list[0].disk_size),
                (1_700_000_000, 12_345_678_901, 24 << 20)
            );
            let (_, vm) = img.snapshot_vmstate("s1").unwrap();
            let mut back = vec![0xffu8; state.len()];
            vm.read(0, &mut back).unwrap();
            assert!(back == state, "the VM state reads back");
            let stored: u64 = vm.allocated().map(|(_, n)| n).sum();
            assert!(stored < state.len() as u64, "runs of zeros are not stored ({stored} bytes)");
            assert!(vm.read(state.len() as u64 - 10, &mut [0; 11]).is_err(), "reads stop at the VM state's end");
            drop(vm);
            let e = img.snapshot_vmstate("s2").unwrap_err();
            assert!(e.contains("disk-only"), "{e}");

            // Back to s1 (by ID), then write: the snapshots keep their data.
            img.apply_snapshot("1").unwrap();
            assert!(read_all(&mut img) == a, "the disk is s1's again");
            let mut c = a.clone();
            scribble(&mut img, &mut c, 0x5555 + compat.len() as u64, 60);
            drop(img);
            check_clean(&path);
            assert!(converted(&path, &d) == c);
            assert!(converted_snapshot(&path, "s1", &d) == a);
            assert!(converted_snapshot(&path, "s2", &d) == b);

            // Delete both: every refcount goes back to one (no leaks).
            let mut img = open(&spec(&path, None, false), false).unwrap();
            img.delete_snapshot("s1").unwrap();
            assert!(img.delete_snapshot("s1").unwrap_err().contains("no snapshot 's1'"));
            drop(img);
            check_clean(&path);
            assert_eq!(qemu_snapshot_names(&path), ["s2"]);
            let mut img = open(&spec(&path, None, false), false).unwrap();
            img.apply_snapshot("s2").unwrap();
            assert!(read_all(&mut img) == b);
            img.delete_snapshot("s2").unwrap();
            assert!(read_all(&mut img) == b, "deleting the snapshot applied leaves the disk");
            img.write_at(&[9; 4096], 0).unwrap();
            drop(img);
            check_clean(&path);
            assert!(qemu_snapshot_names(&path).is_empty());
            let h = header::check_bytes(&fs::read(&path).unwrap()).unwrap();
            assert_eq!((h.nb_snapshots, h.snapshots_offset), (0, 0));
        }
    }
}

#[test]
fn qemu_snapshots_are_listed_applied_and_deleted() {
    let d = dir("qemu-snapshots");
    let path = d.join("q.qcow2");
    if qemu_img(&["create", "-q", "-f", "qcow2", p(&path), "8M"]).is_none() {
        return;
    }
    let mut a = vec![0u8; 8 << 20];
    {
        let mut img = open(&spec(&path, None, false), false).unwrap();
        scribble(&mut img, &mut a, 99, 40);
    }
    qemu_img(&["snapshot", "-c", "from-qemu", p(&path)]).unwrap();
    let mut img = open(&spec(&path, None, false), false).unwrap();
    let list = img.snapshots().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!((list[0].id.as_str(), list[0].name.as_str(), list[0].vm_state_size), ("1", "from-qemu", 0));
    assert_eq!(list[0].disk_size, 8 << 20);
    let mut b = a.clone();
    scribble(&mut img, &mut b, 7, 40);
    let mine = img.create_snapshot(&new_snapshot("from-ferrovm"), None).unwrap();
    assert_eq!(mine.id, "2", "IDs follow QEMU's numbering");
    img.apply_snapshot("from-qemu").unwrap();
    assert!(read_all(&mut img) == a);
    drop(img);
    check_clean(&path);
    assert_eq!(qemu_snapshot_names(&path), ["from-qemu", "from-ferrovm"]);
    // QEMU applies and deletes what ferrovm made.
    qemu_img(&["snapshot", "-a", "from-ferrovm", p(&path)]).unwrap();
    assert!(converted(&path, &d) == b);
    qemu_img(&["snapshot", "-d", "from-qemu", p(&path)]).unwrap();
    check_clean(&path);
    let img = open(&spec(&path, None, false), false).unwrap();
    assert_eq!(img.snapshots().unwrap().iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["from-ferrovm"]);
}

#[test]
fn small_clusters_grow_the_refcount_table() {
    // 512-byte clusters: one refcount block covers 128 KiB and the first
    // refcount table a few MiB, so a VM state of 12 MiB needs new blocks
    // and a larger table.
    let d = dir("grow");
    let path = d.join("small.qcow2");
    if qemu_img(&["create", "-q", "-f", "qcow2", "-o", "cluster_size=512", p(&path), "2M"]).is_none() {
        return;
    }
    let before = header::check_bytes(&fs::read(&path).unwrap()).unwrap();
    let state: Vec<u8> = (0..12u32 << 20).map(|i| (i % 251) as u8 | 1).collect();
    let mut a = vec![0u8; 2 << 20];
    {
        let mut img = open(&spec(&path, None, false), false).unwrap();
        scribble(&mut img, &mut a, 3, 30);
        let mut f = |w: &mut internal::VmStateWriter<'_>| w.write(0, &state);
        img.create_snapshot(&new_snapshot("big"), Some(&mut f)).unwrap();
        let (_, vm) = img.snapshot_vmstate("big").unwrap();
        let mut back = vec![0u8; state.len()];
        vm.read(0, &mut back).unwrap();
        assert!(back == state);
        img.write_at(&[1; 8192], 4096).unwrap();
    }
    let after = header::check_bytes(&fs::read(&path).unwrap()).unwrap();
    assert!(after.refcount_table_clusters > before.refcount_table_clusters, "{before:?} -> {after:?}");
    check_clean(&path);
    let mut img = open(&spec(&path, None, false), false).unwrap();
    img.delete_snapshot("big").unwrap();
    drop(img);
    check_clean(&path);
}

#[test]
fn failed_and_refused_snapshots_leave_the_image_as_it_was() {
    let d = dir("refused");
    let path = d.join("r.qcow2");
    if qemu_img(&["create", "-q", "-f", "qcow2", p(&path), "8M"]).is_none() {
        return;
    }
    let mut a = vec![0u8; 8 << 20];
    let mut img = open(&spec(&path, None, false), false).unwrap();
    scribble(&mut img, &mut a, 5, 30);
    // The VM state fails half-way: its clusters are given back.
    let mut fail = |w: &mut internal::VmStateWriter<'_>| {
        w.write(0, &vec![3u8; 1 << 20])?;
        Err("the machine refused".to_string())
    };
    let e = img.create_snapshot(&new_snapshot("x"), Some(&mut fail)).unwrap_err();
    assert!(e.contains("the machine refused"), "{e}");
    assert!(img.snapshots().unwrap().is_empty());
    assert!(read_all(&mut img) == a, "the disk still reads");
    let e = img.apply_snapshot("nope").unwrap_err();
    assert!(e.contains("no snapshot 'nope'"), "{e}");
    let e = img.create_snapshot(&new_snapshot(&"n".repeat(300)), None).unwrap_err();
    assert!(e.contains("longer than 255"), "{e}");
    drop(img);
    check_clean(&path);

    // Raw images, read-only images and temporary overlays keep none.
    let raw = d.join("r.raw");
    fs::write(&raw, vec![0u8; 1 << 20]).unwrap();
    let mut img = open(&spec(&raw, Some(ImageFormat::Raw), false), false).unwrap();
    assert!(!img.keeps_snapshots());
    assert!(img.create_snapshot(&new_snapshot("x"), None).unwrap_err().contains("raw image does not keep"));
    drop(img);
    let mut img = open(&spec(&path, None, true), false).unwrap();
    assert!(img.create_snapshot(&new_snapshot("x"), None).unwrap_err().contains("read-only"));
    drop(img);
    let mut img = open(&spec(&path, None, false), true).unwrap();
    assert!(img.create_snapshot(&new_snapshot("x"), None).unwrap_err().contains("temporary overlay"));
    drop(img);

    // 1-bit refcounts cannot share a cluster.
    let one = d.join("one-bit.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", "-o", "refcount_bits=1", p(&one), "4M"]).unwrap();
    let mut img = open(&spec(&one, None, false), false).unwrap();
    img.write_at(&[1; 65536], 0).unwrap();
    let before_bytes = {
        img.flush().unwrap();
        fs::read(&one).unwrap()
    };
    let e = img.create_snapshot(&new_snapshot("x"), None).unwrap_err();
    assert!(e.contains("1 bit wide"), "{e}");
    drop(img);
    assert!(fs::read(&one).unwrap() == before_bytes, "nothing was written");
    check_clean(&one);
}

/// Offsets of the first snapshot table entry's fields, in the file.
fn first_entry(image: &[u8]) -> usize {
    header::check_bytes(image).unwrap().snapshots_offset as usize
}

#[test]
fn corrupt_snapshot_tables_get_clear_errors() {
    let d = dir("corrupt-table");
    let path = d.join("c.qcow2");
    if qemu_img(&["create", "-q", "-f", "qcow2", p(&path), "8M"]).is_none() {
        return;
    }
    {
        let mut img = open(&spec(&path, None, false), false).unwrap();
        img.write_at(&[4; 200_000], 0).unwrap();
        let mut f = |w: &mut internal::VmStateWriter<'_>| w.write(0, &[1; 100_000]);
        img.create_snapshot(&new_snapshot("good"), Some(&mut f)).unwrap();
        img.write_at(&[5; 4096], 0).unwrap();
    }
    let good = fs::read(&path).unwrap();
    let at = first_entry(&good);
    let len = good.len() as u64;
    type Edit = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: Vec<(&str, &str, Edit)> = vec![
        ("apply", "not at a cluster boundary", Box::new(move |b| put64(b, at, 0x1234))),
        ("apply", "larger than QEMU allows", Box::new(move |b| put32(b, at + 8, 0x0800_0000))),
        ("apply", "past the end of the file", Box::new(move |b| put64(b, at, len.next_multiple_of(65536) + (1 << 30)))),
        ("apply", "disk now has", Box::new(move |b| put64(b, at + 48, 4 << 20))),
        ("list", "extra data", Box::new(move |b| put32(b, at + 36, 5000))),
        ("list", "snapshot table entry 1", Box::new(move |b| put32(b, 60, 40_000))),
        ("list", "more than the 65536", Box::new(move |b| put32(b, 60, 70_000))),
        (
            "vmstate",
            "outside the file",
            Box::new(move |b| {
                // The VM state's L1 entry (the snapshot's second) past the end.
                let l1 = u64::from_be_bytes(b[at..at + 8].try_into().unwrap()) as usize;
                put64(b, l1 + 8, (len + (1 << 20)).next_multiple_of(65536) | 1 << 63);
            }),
        ),
    ];
    for (op, want, edit) in &cases {
        let mut b = good.clone();
        edit(&mut b);
        let bad = d.join("bad.qcow2");
        fs::write(&bad, &b).unwrap();
        let mut img = match open(&spec(&bad, None, false), false) {
            Ok(img) => img,
            Err(e) => {
                assert!(e.to_string().contains(want), "{want}: {e}");
                continue;
            }
        };
        let e = match *op {
            "list" => img.snapshots().unwrap_err(),
            "vmstate" => img.snapshot_vmstate("good").err().unwrap(),
            _ => img.apply_snapshot("good").unwrap_err(),
        };
        assert!(e.contains(want), "{want}: {e}");
        // The image is as it was, and the disk goes on.
        let mut sector = [0u8; 512];
        img.read_at(&mut sector, 0).unwrap();
        assert_eq!(sector, [5; 512]);
        drop(img);
        assert!(fs::read(&bad).unwrap() == b, "{want}: the file is unchanged");
    }
}

#[test]
fn mutated_snapshot_tables_never_panic() {
    let d = dir("mutate-snapshots");
    let path = d.join("m.qcow2");
    if qemu_img(&["create", "-q", "-f", "qcow2", p(&path), "4M"]).is_none() {
        return;
    }
    {
        let mut img = open(&spec(&path, None, false), false).unwrap();
        img.write_at(&[6; 300_000], 0).unwrap();
        let mut f = |w: &mut internal::VmStateWriter<'_>| w.write(0, &[2; 70_000]);
        img.create_snapshot(&new_snapshot("a"), Some(&mut f)).unwrap();
        img.create_snapshot(&new_snapshot("b"), None).unwrap();
    }
    let good = fs::read(&path).unwrap();
    let h = header::check_bytes(&good).unwrap();
    let table = h.snapshots_offset as usize;
    let sn_l1 = u64::from_be_bytes(good[table..table + 8].try_into().unwrap()) as usize;
    let mut s = 0x2545_f491_4f6c_dd1du64;
    let m = d.join("m2.qcow2");
    for round in 0..200 {
        let mut b = good.clone();
        for _ in 0..1 + xorshift(&mut s) % 3 {
            let (base, span) = match xorshift(&mut s) % 3 {
                0 => (table, 160),
                1 => (sn_l1, 32),
                _ => (60, 12),
            };
            let i = base + (xorshift(&mut s) % span) as usize;
            if i < b.len() {
                b[i] = xorshift(&mut s) as u8;
            }
        }
        fs::write(&m, &b).unwrap();
        let Ok(mut img) = open(&spec(&m, None, false), false) else { continue };
        let _ = img.snapshots();
        let _ = img.snapshot_vmstate("a").map(|(_, vm)| vm.read(0, &mut [0u8; 4096]));
        let _ = match round % 3 {
            0 => img.apply_snapshot("a"),
            1 => img.delete_snapshot("b"),
            _ => img.create_snapshot(&new_snapshot("c"), None),
        };
        let _ = img.read_at(&mut [0u8; 4096], 0);
    }
}

/// `qemu-img check`'s verdict: `Ok((leaks, flags))` when no cluster is
/// referenced without its refcount and nothing else is wrong but
/// `QCOW_OFLAG_COPIED` flags that disagree with a refcount (`flags` of
/// them). QEMU's own order leaves those between writing the refcounts and
/// the tables that carry the flags: a flag set on a cluster whose
/// refcount was raised for a snapshot not yet in the table, or cleared on
/// one whose extra reference was already dropped. Neither loses data, and
/// `qemu-img check -r all` sets them right.
fn check_consistent(path: &Path) -> Result<(u64, u64), String> {
    let o = Command::new("qemu-img").args(["check", "--output=json", p(path)]).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let field = |k: &str| {
        out.split(&format!("\"{k}\": "))
            .nth(1)
            .and_then(|r| r.split([',', '\n', '}']).next())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let flags = err.lines().filter(|l| l.starts_with("ERROR OFLAG_COPIED")).count() as u64;
    let others = err.lines().filter(|l| l.starts_with("ERROR") && !l.starts_with("ERROR OFLAG_COPIED")).count();
    if others == 0 && field("check-errors") == 0 && field("corruptions") == flags {
        Ok((field("leaks"), flags))
    } else {
        Err(format!("{out}{err}"))
    }
}

#[test]
fn a_crash_at_any_write_leaves_a_consistent_image() {
    // Each operation is cut short after 0, 1, 2, ... of its writes (all
    // later writes fail, as if the process died there; the syncs between
    // them order them on disk). Whatever was written, `qemu-img check`
    // finds no corruption (leaked clusters at most), the active disk and
    // every snapshot the table lists read as they should.
    let d = dir("crash");
    let base = d.join("base.qcow2");
    if qemu_img(&["create", "-q", "-f", "qcow2", p(&base), "8M"]).is_none() {
        return;
    }
    let mut before = vec![0u8; 8 << 20];
    let mut s1 = before.clone();
    {
        let mut img = open(&spec(&base, None, false), false).unwrap();
        scribble(&mut img, &mut s1, 11, 40);
        let mut f = |w: &mut internal::VmStateWriter<'_>| w.write(0, &vmstate_bytes(300_000));
        img.create_snapshot(&new_snapshot("s1"), Some(&mut f)).unwrap();
        before.copy_from_slice(&s1);
        scribble(&mut img, &mut before, 12, 40);
    }
    check_clean(&base);
    type Op = fn(&mut internal::Qcow2Meta) -> Result<internal::Snapshot, String>;
    let ops: [(&str, Op); 3] = [
        ("create", |m| {
            let mut f = |w: &mut internal::VmStateWriter<'_>| w.write(0, &vmstate_bytes(200_000));
            m.create(&new_snapshot("s2"), Some(&mut f))
        }),
        ("apply", |m| m.apply("s1")),
        ("delete", |m| m.delete("s1")),
    ];
    let work = d.join("work.qcow2");
    for (name, op) in ops {
        let mut crashes = 0;
        for n in 0.. {
            fs::copy(&base, &work).unwrap();
            let file = fs::OpenOptions::new().read(true).write(true).open(&work).unwrap();
            let mut meta = internal::Qcow2Meta::open(file, true).unwrap();
            internal::WRITES_LEFT.with(|w| w.set(Some(n)));
            let r = op(&mut meta);
            internal::WRITES_LEFT.with(|w| w.set(None));
            drop(meta);
            let (leaks, flags) =
                check_consistent(&work).unwrap_or_else(|e| panic!("{name}, crash after {n} writes: {e}"));
            let names = qemu_snapshot_names(&work);
            let active = converted(&work, &d);
            match name {
                "apply" => {
                    assert!(active == before || active == s1, "{name} after {n} writes: the disk is one or the other")
                }
                _ => assert!(active == before, "{name} after {n} writes: the disk is unchanged"),
            }
            if names.iter().any(|s| s == "s1") {
                assert!(converted_snapshot(&work, "s1", &d) == s1, "{name} after {n} writes: s1 is whole");
            }
            if names.iter().any(|s| s == "s2") {
                assert!(converted_snapshot(&work, "s2", &d) == before, "{name} after {n} writes: s2 is whole");
            }
            if flags > 0 {
                assert!(r.is_err(), "{name}: a whole run leaves no flag wrong");
                let repaired = d.join("repaired.qcow2");
                fs::copy(&work, &repaired).unwrap();
                let _ = Command::new("qemu-img").args(["check", "-q", "-r", "all", p(&repaired)]).output().unwrap();
                check_clean(&repaired);
                assert!(converted(&repaired, &d) == active, "{name} after {n} writes: the repair keeps the disk");
            }
            match r {
                Ok(_) => {
                    assert_eq!((leaks, flags), (0, 0), "{name} runs through without leaks");
                    let want: &[&str] = match name {
                        "create" => &["s1", "s2"],
                        "apply" => &["s1"],
                        _ => &[],
                    };
                    assert_eq!(names, want, "{name}");
                    if name == "apply" {
                        assert!(active == s1);
                    }
                    break;
                }
                Err(e) => {
                    assert!(e.contains("injected"), "{name} after {n} writes: {e}");
                    crashes += 1;
                }
            }
        }
        assert!(crashes >= 2, "{name}: {crashes} points of crash tried");
        eprintln!("{name}: consistent after a crash at each of its {crashes} writes");
    }
}
