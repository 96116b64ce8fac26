//! Images made by qemu-img (when installed) read and written here, then
//! checked by qemu-img; hostile headers and chains refused.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

/// A fresh folder for one test.
fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ferrovm-block-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
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
