use super::*;

/// A structure read back: its type, formatted area and strings.
#[derive(Debug)]
struct Parsed {
    kind: u8,
    area: Vec<u8>,
    strings: Vec<String>,
}

impl Parsed {
    /// The string a field at `at` names (number 0: none).
    fn s(&self, at: usize) -> Option<&str> {
        match self.area[at] {
            0 => None,
            n => Some(self.strings[n as usize - 1].as_str()),
        }
    }

    fn u16(&self, at: usize) -> u16 {
        u16::from_le_bytes([self.area[at], self.area[at + 1]])
    }

    fn u32(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.area[at..at + 4].try_into().unwrap())
    }
}

/// Walks the structures as an OS does: the length byte, then the strings
/// up to a double NUL.
fn parse(t: &[u8]) -> Vec<Parsed> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < t.len() {
        let kind = t[at];
        let len = t[at + 1] as usize;
        let area = t[at..at + len].to_vec();
        let mut p = at + len;
        let mut strings = Vec::new();
        if t[p] == 0 && t[p + 1] == 0 {
            p += 2;
        } else {
            loop {
                let end = p + t[p..].iter().position(|&b| b == 0).unwrap();
                strings.push(String::from_utf8(t[p..end].to_vec()).unwrap());
                p = end + 1;
                if t[p] == 0 {
                    p += 1;
                    break;
                }
            }
        }
        out.push(Parsed { kind, area, strings });
        at = p;
        if kind == 127 {
            break;
        }
    }
    assert_eq!(at, t.len(), "nothing follows the end marker");
    out
}

fn machine(ram: Vec<(u64, u64)>) -> SmbiosMachine {
    SmbiosMachine { sockets: 1, cores: 2, threads: 1, processor_id: 0x0f8b_fbff_0000_06f1, mhz: 2000, ram }
}

fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |s, x| s.wrapping_add(*x))
}

#[test]
fn the_entry_point_describes_the_structures_and_checks_out() {
    let b = build_smbios(&SmbiosConfig::default(), &machine(vec![(0, 512 << 20)])).unwrap();
    let a = b.anchor_at(0x000f_1020);
    assert_eq!(a.len(), ENTRY_POINT_LEN);
    assert_eq!(&a[0..4], b"_SM_");
    assert_eq!(sum(&a), 0, "entry point checksum");
    assert_eq!(&a[0x10..0x15], b"_DMI_");
    assert_eq!(sum(&a[0x10..]), 0, "intermediate checksum");
    assert_eq!((a[6], a[7]), (2, 8));
    assert_eq!(u16::from_le_bytes([a[0x16], a[0x17]]) as usize, b.tables.len());
    assert_eq!(u32::from_le_bytes(a[0x18..0x1c].try_into().unwrap()), 0x000f_1020);
    let parsed = parse(&b.tables);
    assert_eq!(u16::from_le_bytes([a[0x1c], a[0x1d]]) as usize, parsed.len());
    let kinds: Vec<u8> = parsed.iter().map(|p| p.kind).collect();
    assert_eq!(kinds, [1, 3, 4, 16, 17, 19, 32, 127], "no type 0, 2 or 11 unless given");
    // The firmware's copy (address 0) checks out too.
    assert_eq!(sum(&b.anchor), 0);
    assert_eq!(sum(&b.anchor[0x10..]), 0);
}

#[test]
fn system_strings_and_uuid_are_where_linux_reads_them() {
    let uuid = parse_uuid("00112233-4455-6677-8899-aabbccddeeff").unwrap();
    let cfg = SmbiosConfig {
        system: SystemInfo {
            manufacturer: Some("ferrovm".into()),
            product: Some("Standard PC".into()),
            serial: Some("ds=nocloud;s=http://10.0.2.2:8000/".into()),
            uuid: Some(uuid),
            family: Some("F".into()),
            ..SystemInfo::default()
        },
        ..SmbiosConfig::default()
    };
    let b = build_smbios(&cfg, &machine(vec![(0, 64 << 20)])).unwrap();
    let t1 = parse(&b.tables).into_iter().find(|p| p.kind == 1).unwrap();
    assert_eq!(t1.area.len(), 0x1b);
    assert_eq!(t1.s(0x04), Some("ferrovm"));
    assert_eq!(t1.s(0x05), Some("Standard PC"));
    assert_eq!(t1.s(0x06), None);
    assert_eq!(t1.s(0x07), Some("ds=nocloud;s=http://10.0.2.2:8000/"));
    assert_eq!(t1.s(0x19), None);
    assert_eq!(t1.s(0x1a), Some("F"));
    // SMBIOS 2.6+: the first three fields little-endian.
    assert_eq!(
        t1.area[0x08..0x18],
        [0x33, 0x22, 0x11, 0x00, 0x55, 0x44, 0x77, 0x66, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff]
    );
}

#[test]
fn bios_baseboard_and_oem_strings_appear_when_given() {
    let cfg = SmbiosConfig {
        bios: Some(BiosInfo {
            vendor: Some("V".into()),
            version: Some("1.0".into()),
            date: Some("01/02/2026".into()),
            release: Some((1, 2)),
            uefi: true,
        }),
        baseboard: Some(Baseboard { product: Some("B".into()), ..Baseboard::default() }),
        oem_strings: vec!["io.systemd.credential:a=b".into(), "".into()],
        ..SmbiosConfig::default()
    };
    let b = build_smbios(&cfg, &machine(vec![(0, 64 << 20)])).unwrap();
    let p = parse(&b.tables);
    assert_eq!(p[0].kind, 0, "type 0 first");
    assert_eq!((p[0].s(4), p[0].s(5), p[0].s(8)), (Some("V"), Some("1.0"), Some("01/02/2026")));
    assert_eq!((p[0].area[0x14], p[0].area[0x15]), (1, 2));
    assert_ne!(p[0].area[0x13] & 0x08, 0, "UEFI bit");
    let t2 = p.iter().find(|s| s.kind == 2).unwrap();
    assert_eq!(t2.s(0x05), Some("B"));
    assert_eq!(t2.u16(0x0b), handle(3, 0), "inside the chassis");
    let t11 = p.iter().find(|s| s.kind == 11).unwrap();
    assert_eq!(t11.area[4], 2);
    assert_eq!(t11.strings, ["io.systemd.credential:a=b", " "]);
}

#[test]
fn memory_is_described_in_16_gib_devices_and_its_ranges() {
    let ram = vec![(0, 3 << 30), (4 << 30, 17 << 30)];
    let b = build_smbios(&SmbiosConfig::default(), &machine(ram)).unwrap();
    let p = parse(&b.tables);
    let t16 = p.iter().find(|s| s.kind == 16).unwrap();
    assert_eq!(t16.u32(0x07), (20u64 << 20) as u32, "20 GiB in KiB");
    assert_eq!(t16.u16(0x0d), 2);
    let dimms: Vec<u16> = p.iter().filter(|s| s.kind == 17).map(|s| s.u16(0x0c)).collect();
    assert_eq!(dimms, [16 << 10, 4 << 10], "MiB per device");
    let ranges: Vec<(u32, u32)> = p.iter().filter(|s| s.kind == 19).map(|s| (s.u32(4), s.u32(8))).collect();
    assert_eq!(ranges, [(0, (3 << 20) - 1), (4 << 20, (21 << 20) - 1)], "KiB, inclusive");
}

#[test]
fn a_processor_per_socket_with_its_cpuid_signature() {
    let mut m = machine(vec![(0, 64 << 20)]);
    m.sockets = 2;
    m.cores = 3;
    m.threads = 2;
    let b = build_smbios(&SmbiosConfig::default(), &m).unwrap();
    let t4: Vec<Parsed> = parse(&b.tables).into_iter().filter(|s| s.kind == 4).collect();
    assert_eq!(t4.len(), 2);
    assert_eq!(t4[1].s(0x04), Some("CPU 1"));
    assert_eq!(t4[0].area[0x08..0x10], 0x0f8b_fbff_0000_06f1u64.to_le_bytes());
    assert_eq!((t4[0].area[0x23], t4[0].area[0x24], t4[0].area[0x25]), (3, 3, 6));
    assert_eq!(t4[0].u16(0x16), 2000);
}

#[test]
fn bad_strings_and_oversized_tables_are_refused() {
    let nul = SmbiosConfig {
        system: SystemInfo { serial: Some("a\0b".into()), ..SystemInfo::default() },
        ..SmbiosConfig::default()
    };
    assert!(matches!(build_smbios(&nul, &machine(vec![(0, 1 << 20)])), Err(SmbiosError::Nul(_))));
    let long = SmbiosConfig { oem_strings: vec!["x".repeat(40_000), "y".repeat(40_000)], ..SmbiosConfig::default() };
    assert!(matches!(build_smbios(&long, &machine(vec![(0, 1 << 20)])), Err(SmbiosError::TooLong(_))));
    let many = SmbiosConfig { oem_strings: vec!["z".into(); 256], ..SmbiosConfig::default() };
    assert!(matches!(build_smbios(&many, &machine(vec![(0, 1 << 20)])), Err(SmbiosError::TooManyStrings(11, 256))));
    assert_eq!(build_smbios(&SmbiosConfig::default(), &machine(vec![])), Err(SmbiosError::Empty));
}

#[test]
fn written_tables_are_found_by_a_scan_of_the_bios_area() {
    let mem = GuestMemory::new(16 << 20).unwrap();
    let b = build_smbios(&SmbiosConfig::default(), &machine(vec![(0, 16 << 20)])).unwrap();
    let placed = write_smbios(&mem, 0xf_1000, &b).unwrap();
    let mut area = vec![0u8; 0x1_0000];
    mem.read(SCAN_START, &mut area).unwrap();
    // Linux's dmi_scan: 16-byte steps, "_SM_" with a valid checksum.
    let at = (0..area.len())
        .step_by(16)
        .find(|&i| &area[i..i + 4] == b"_SM_" && sum(&area[i..i + ENTRY_POINT_LEN]) == 0)
        .unwrap();
    assert_eq!(SCAN_START + at as u64, placed.anchor);
    let a = &area[at..at + ENTRY_POINT_LEN];
    let tables = u64::from(u32::from_le_bytes(a[0x18..0x1c].try_into().unwrap()));
    assert_eq!(tables, placed.tables);
    let mut t = vec![0u8; b.tables.len()];
    mem.read(tables, &mut t).unwrap();
    assert_eq!(t, b.tables);
    assert!(matches!(write_smbios(&mem, 0xf_1008, &b), Err(SmbiosError::DoesNotFit { .. })));
    assert!(matches!(write_smbios(&mem, 0xf_ff00, &b), Err(SmbiosError::DoesNotFit { .. })));
    assert!(matches!(write_smbios(&mem, 0xe_0000, &b), Err(SmbiosError::DoesNotFit { .. })));
}

#[test]
fn uuids_parse_as_qemu_writes_them() {
    assert_eq!(
        parse_uuid("6ba7b810-9dad-11d1-80b4-00c04fd430c8").unwrap(),
        [0x6b, 0xa7, 0xb8, 0x10, 0x9d, 0xad, 0x11, 0xd1, 0x80, 0xb4, 0x00, 0xc0, 0x4f, 0xd4, 0x30, 0xc8]
    );
    for bad in [
        "",
        "6ba7b810",
        "6ba7b810-9dad-11d1-80b4-00c04fd430c",
        "6ba7b810-9dad-11d1-80b4-00c04fd430cg",
        "6ba7b8109dad11d180b400c04fd430c8",
    ] {
        assert!(parse_uuid(bad).is_err(), "{bad}");
    }
}
