//! Keysym table, image writers, display specs and the fuzz entry point.

use vnc::{keysym_to_set1, parse_vnc_spec, Frame, VncListen};

#[test]
fn keysym_spot_checks() {
    assert_eq!(keysym_to_set1('a' as u32), Some(0x1e));
    assert_eq!(keysym_to_set1('A' as u32), keysym_to_set1('a' as u32));
    assert_eq!(keysym_to_set1('z' as u32), Some(0x2c));
    assert_eq!(keysym_to_set1('1' as u32), Some(0x02));
    assert_eq!(keysym_to_set1('!' as u32), Some(0x02));
    assert_eq!(keysym_to_set1('0' as u32), Some(0x0b));
    assert_eq!(keysym_to_set1(' ' as u32), Some(0x39));
    assert_eq!(keysym_to_set1(0xff0d), Some(0x1c)); // Return
    assert_eq!(keysym_to_set1(0xff1b), Some(0x01)); // Escape
    assert_eq!(keysym_to_set1(0xff51), Some(0xe04b)); // Left
    assert_eq!(keysym_to_set1(0xff54), Some(0xe050)); // Down
    assert_eq!(keysym_to_set1(0xffbe), Some(0x3b)); // F1
    assert_eq!(keysym_to_set1(0xffc7), Some(0x44)); // F10
    assert_eq!(keysym_to_set1(0xffc9), Some(0x58)); // F12
    assert_eq!(keysym_to_set1(0xffe1), Some(0x2a)); // Shift_L
    assert_eq!(keysym_to_set1(0xffe2), Some(0x36)); // Shift_R
    assert_eq!(keysym_to_set1(0xffe3), Some(0x1d)); // Control_L
    assert_eq!(keysym_to_set1(0xffe4), Some(0xe01d)); // Control_R
    assert_eq!(keysym_to_set1(0xffe9), Some(0x38)); // Alt_L
    assert_eq!(keysym_to_set1(0xffea), Some(0xe038)); // Alt_R
    assert_eq!(keysym_to_set1(0xffff), Some(0xe053)); // Delete
    assert_eq!(keysym_to_set1(0xff8d), Some(0xe01c)); // KP_Enter
    assert_eq!(keysym_to_set1(vnc::XK_PAUSE), None);
    assert_eq!(keysym_to_set1(0x20ac), None); // EuroSign
    assert_eq!(vnc::PAUSE_SET1[0], 0xe1);
}

fn test_frame() -> Frame {
    let (w, h) = (37, 19);
    Frame { width: w, height: h, pixels: (0..w * h).map(|i| i.wrapping_mul(0x9e3779b9) & 0x00ff_ffff).collect() }
}

#[test]
fn png_round_trip() {
    let f = test_frame();
    let dir = std::env::temp_dir().join(format!("vnc-png-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("shot.png");
    vnc::write_png(&f, &path).unwrap();
    let decoder = png::Decoder::new(std::fs::File::open(&path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (37, 19));
    assert_eq!(info.color_type, png::ColorType::Rgb);
    let px: Vec<u32> = buf[..info.buffer_size()]
        .chunks_exact(3)
        .map(|c| ((c[0] as u32) << 16) | ((c[1] as u32) << 8) | (c[2] as u32))
        .collect();
    assert_eq!(px, f.pixels);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ppm_layout() {
    let f = test_frame();
    let ppm = vnc::encode_ppm(&f);
    let header = b"P6\n37 19\n255\n";
    assert_eq!(&ppm[..header.len()], header);
    assert_eq!(ppm.len(), header.len() + 37 * 19 * 3);
    let p = f.pixels[5];
    assert_eq!(&ppm[header.len() + 15..header.len() + 18], &[(p >> 16) as u8, (p >> 8) as u8, p as u8]);
}

#[test]
fn vnc_specs() {
    let s = parse_vnc_spec(":0").unwrap();
    assert_eq!(s.listen, VncListen::Tcp { host: String::new(), display: 0 });
    assert_eq!(s.rfb_addrs(0).unwrap(), vec!["0.0.0.0:5900".parse().unwrap()]);
    assert_eq!(s.displays(), vec![0]);
    let s = parse_vnc_spec("127.0.0.1:3,websocket=on,password=on,to=5").unwrap();
    assert_eq!(s.listen, VncListen::Tcp { host: "127.0.0.1".into(), display: 3 });
    assert_eq!(s.websocket, Some((String::new(), 5703)));
    assert_eq!(s.websocket_addr().unwrap(), Some("127.0.0.1:5703".parse().unwrap()));
    assert!(s.password);
    assert_eq!(s.displays(), vec![3, 4, 5]);
    assert_eq!(s.rfb_addrs(4).unwrap(), vec!["127.0.0.1:5904".parse().unwrap()]);
    let s = parse_vnc_spec("[::1]:1,websocket=5800,password=off").unwrap();
    assert_eq!(s.listen, VncListen::Tcp { host: "::1".into(), display: 1 });
    assert_eq!(s.websocket, Some((String::new(), 5800)));
    assert!(!s.password);
    let s = parse_vnc_spec(":2,websocket=0.0.0.0:6080").unwrap();
    assert_eq!(s.websocket_addr().unwrap(), Some("0.0.0.0:6080".parse().unwrap()));
    assert_eq!(parse_vnc_spec("unix:/tmp/vnc.sock").unwrap().listen, VncListen::Unix("/tmp/vnc.sock".into()));
    // QEMU's rules for a Unix socket: a password, a WebSocket on an explicit TCP port, no range.
    let u = parse_vnc_spec("unix:/tmp/vnc.sock,password=on,websocket=5701").unwrap();
    assert!(u.password && u.websocket == Some((String::new(), 5701)) && u.displays().is_empty());
    assert!(parse_vnc_spec("unix:/tmp/vnc.sock,to=3").unwrap_err().contains("Port range"));
    assert!(parse_vnc_spec("unix:/tmp/vnc.sock,websocket=on").is_err());
    assert_eq!(parse_vnc_spec("none,password").unwrap().listen, VncListen::None);
    let e = parse_vnc_spec(":0,lossy,sasl=on").unwrap_err();
    assert!(e.contains("lossy") && e.contains("sasl"), "{e}");
    assert!(parse_vnc_spec("0").is_err());
    assert!(parse_vnc_spec(":x").is_err());
    assert!(parse_vnc_spec(":70000").is_err());
    assert!(parse_vnc_spec(":0,password=maybe").is_err());
}

/// A deterministic xorshift generator.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn fuzz_random_inputs() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..5000 {
        let len = (rng.next() % 300) as usize;
        let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        vnc::fuzz_client_messages(&data);
    }
}

/// A well-formed session (no handshake) with every message type.
fn valid_session(mode: u8) -> Vec<u8> {
    let mut d = vec![mode];
    // SetPixelFormat: 16 bpp big-endian, odd shifts.
    d.extend_from_slice(&[0, 0, 0, 0, 16, 15, 1, 1, 0, 31, 0, 31, 0, 31, 10, 5, 0, 0, 0, 0]);
    d.extend_from_slice(&[2, 0, 0, 5]);
    for e in [16i32, 7, 6, 0, -223] {
        d.extend_from_slice(&e.to_be_bytes());
    }
    d.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
    d.extend_from_slice(&[4, 1, 0, 0, 0, 0, 0, 0x61]);
    d.extend_from_slice(&[5, 1, 0, 5, 0, 6]);
    d.extend_from_slice(&[6, 0, 0, 0, 0, 0, 0, 2, b'h', b'i']);
    d.extend_from_slice(&[3, 1, 0, 0, 0, 0, 0, 40, 0, 40]);
    // 8 bpp and 32 bpp big-endian formats.
    d.extend_from_slice(&[0, 0, 0, 0, 8, 8, 0, 1, 0, 7, 0, 7, 0, 3, 0, 3, 6, 0, 0, 0]);
    d.extend_from_slice(&[3, 0, 0, 1, 0, 1, 0, 30, 0, 30]);
    d.extend_from_slice(&[0, 0, 0, 0, 32, 24, 1, 1, 0, 255, 0, 255, 0, 255, 0, 8, 16, 0, 0, 0]);
    d.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0, 37, 0, 23]);
    d
}

#[test]
fn fuzz_truncated_and_mutated_valid_sessions() {
    let mut rng = Rng(42);
    for mode in [0u8, 4, 8, 12, 0x3c, 0xf8] {
        let d = valid_session(mode);
        vnc::fuzz_client_messages(&d);
        for cut in 0..d.len() {
            vnc::fuzz_client_messages(&d[..cut]);
        }
        for _ in 0..500 {
            let mut m = d.clone();
            let i = 1 + (rng.next() as usize) % (m.len() - 1);
            m[i] = rng.next() as u8;
            vnc::fuzz_client_messages(&m);
        }
    }
    // Through the handshake (mode bit 1), with and without a password (bit 0).
    for mode in [2u8, 3, 6, 0xfa] {
        let mut d = vec![mode];
        d.extend_from_slice(b"RFB 003.008\n");
        d.push(if mode & 1 == 1 { 2 } else { 1 });
        if mode & 1 == 1 {
            d.extend_from_slice(&[0; 16]);
        }
        d.push(1);
        d.extend_from_slice(&valid_session(0)[1..]);
        for cut in 0..d.len() {
            vnc::fuzz_client_messages(&d[..cut]);
        }
    }
}
