//! End-to-end tests: a small RFB client against a real server on loopback.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use flate2::{Decompress, FlushDecompress};
use parking_lot::Mutex;
use vnc::{Frame, FrameSource, InputSink, Rect, VncConfig, VncServer};

// ---------------------------------------------------------------- test source and sink

#[derive(Default)]
struct SourceState {
    frame: Frame,
    pending: Vec<Rect>,
    resized: bool,
    calls: u64,
}

#[derive(Clone, Default)]
struct TestSource(Arc<Mutex<SourceState>>);

impl FrameSource for TestSource {
    fn update(&mut self, frame: &mut Frame) -> Vec<Rect> {
        let mut s = self.0.lock();
        s.calls += 1;
        if s.resized || frame.width != s.frame.width || frame.height != s.frame.height {
            s.resized = false;
            s.pending.clear();
            *frame = s.frame.clone();
            return vec![Rect { x: 0, y: 0, w: frame.width, h: frame.height }];
        }
        let rects = std::mem::take(&mut s.pending);
        for r in &rects {
            for y in r.y..r.y + r.h {
                for x in r.x..r.x + r.w {
                    let i = (y * frame.width + x) as usize;
                    frame.pixels[i] = s.frame.pixels[i];
                }
            }
        }
        rects
    }
}

impl TestSource {
    fn fill(&self, r: Rect, colour: u32) {
        let mut s = self.0.lock();
        let w = s.frame.width;
        for y in r.y..r.y + r.h {
            for x in r.x..r.x + r.w {
                s.frame.pixels[(y * w + x) as usize] = colour;
            }
        }
        s.pending.push(r);
    }
    fn frame(&self) -> Frame {
        self.0.lock().frame.clone()
    }
    fn calls(&self) -> u64 {
        self.0.lock().calls
    }
}

#[derive(Default)]
struct TestSink {
    keys: Mutex<Vec<(u32, bool)>>,
    pointer: Mutex<Vec<(u16, u16, u8)>>,
}

impl InputSink for TestSink {
    fn key(&self, keysym: u32, down: bool) {
        self.keys.lock().push((keysym, down));
    }
    fn pointer(&self, x: u16, y: u16, buttons: u8) {
        self.pointer.lock().push((x, y, buttons));
    }
}

/// A pattern with solid areas, gradients and noise.
fn pattern(w: u32, h: u32) -> Frame {
    let mut pixels = Vec::with_capacity((w * h) as usize);
    let mut seed = 0x1234_5678u32;
    for y in 0..h {
        for x in 0..w {
            let p = if y < h / 3 {
                0x00_20_40_80
            } else if y < 2 * h / 3 {
                ((x * 255 / w) << 16) | ((y * 255 / h) << 8) | ((x + y) & 0xff)
            } else {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                seed & 0x00ff_ffff
            };
            pixels.push(p);
        }
    }
    Frame { width: w, height: h, pixels }
}

struct Harness {
    server: VncServer,
    source: TestSource,
    sink: Arc<TestSink>,
}

fn start(w: u32, h: u32, password: Option<&str>, websocket: bool) -> Harness {
    let _ = tracing_subscriber::fmt().with_env_filter("vnc=debug").with_test_writer().try_init();
    let source = TestSource::default();
    source.0.lock().frame = pattern(w, h);
    let sink = Arc::new(TestSink::default());
    let config = VncConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        unix: None,
        websocket: websocket.then(|| "127.0.0.1:0".parse().unwrap()),
        password: password.map(str::to_string),
        name: "test vm".into(),
        refresh: Duration::from_millis(10),
    };
    let server = VncServer::start(config, Box::new(source.clone()), sink.clone()).unwrap();
    Harness { server, source, sink }
}

// ---------------------------------------------------------------- the client

struct Client {
    s: Box<dyn ReadWrite>,
    width: u32,
    height: u32,
    name: String,
    fb: Vec<u32>,
    zlib: Decompress,
    zrle: Decompress,
    tight: Vec<Decompress>,
    bpp16: bool,
}

trait ReadWrite: Read + Write + Send {}
impl<T: Read + Write + Send> ReadWrite for T {}

fn rd<const N: usize>(s: &mut dyn Read) -> [u8; N] {
    let mut b = [0u8; N];
    s.read_exact(&mut b).unwrap();
    b
}
fn rd_u8(s: &mut dyn Read) -> u8 {
    rd::<1>(s)[0]
}
fn rd_u16(s: &mut dyn Read) -> u16 {
    u16::from_be_bytes(rd(s))
}
fn rd_u32(s: &mut dyn Read) -> u32 {
    u32::from_be_bytes(rd(s))
}
fn rd_vec(s: &mut dyn Read, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    s.read_exact(&mut v).unwrap();
    v
}

fn inflate(d: &mut Decompress, input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() * 4 + 64);
    let mut pos = 0;
    loop {
        if out.capacity() - out.len() < 4096 {
            out.reserve(out.capacity());
        }
        let before_in = d.total_in();
        let before_out = d.total_out();
        d.decompress_vec(&input[pos..], &mut out, FlushDecompress::Sync).unwrap();
        pos += (d.total_in() - before_in) as usize;
        if pos >= input.len() && d.total_out() == before_out {
            break;
        }
        if pos >= input.len() && out.capacity() > out.len() {
            break;
        }
    }
    out
}

/// What security the test expects to do.
enum Auth<'a> {
    None,
    Password(&'a str),
}

/// Runs the 3.8 handshake; returns the SecurityResult failure reason when refused.
fn handshake(mut s: Box<dyn ReadWrite>, auth: Auth) -> Result<Client, String> {
    let v: [u8; 12] = rd(&mut s);
    assert_eq!(&v, b"RFB 003.008\n");
    s.write_all(b"RFB 003.008\n").unwrap();
    let n = rd_u8(&mut s);
    let types = rd_vec(&mut s, n as usize);
    match auth {
        Auth::None => {
            assert_eq!(types, vec![1]);
            s.write_all(&[1]).unwrap();
        }
        Auth::Password(pw) => {
            assert_eq!(types, vec![2]);
            s.write_all(&[2]).unwrap();
            let challenge: [u8; 16] = rd(&mut s);
            s.write_all(&vnc::vnc_auth_response(pw, &challenge)).unwrap();
        }
    }
    let result = rd_u32(&mut s);
    if result != 0 {
        let len = rd_u32(&mut s);
        return Err(String::from_utf8(rd_vec(&mut s, len as usize)).unwrap());
    }
    Ok(client_init(s))
}

fn client_init(mut s: Box<dyn ReadWrite>) -> Client {
    s.write_all(&[1]).unwrap();
    let width = rd_u16(&mut s) as u32;
    let height = rd_u16(&mut s) as u32;
    let pf: [u8; 16] = rd(&mut s);
    assert_eq!(&pf[..4], &[32, 24, 0, 1]);
    let len = rd_u32(&mut s);
    let name = String::from_utf8(rd_vec(&mut s, len as usize)).unwrap();
    Client {
        s,
        width,
        height,
        name,
        fb: vec![0; (width * height) as usize],
        zlib: Decompress::new(true),
        zrle: Decompress::new(true),
        tight: (0..4).map(|_| Decompress::new(true)).collect(),
        bpp16: false,
    }
}

fn tcp(addr: SocketAddr) -> Box<dyn ReadWrite> {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    Box::new(s)
}

fn connect(h: &Harness) -> Client {
    handshake(tcp(h.server.local_addrs()[0]), Auth::None).unwrap()
}

impl Client {
    fn set_encodings(&mut self, encs: &[i32]) {
        let mut m = vec![2, 0];
        m.extend_from_slice(&(encs.len() as u16).to_be_bytes());
        for e in encs {
            m.extend_from_slice(&e.to_be_bytes());
        }
        self.s.write_all(&m).unwrap();
    }

    fn request(&mut self, incremental: bool, x: u16, y: u16, w: u16, h: u16) {
        let mut m = vec![3, incremental as u8];
        for v in [x, y, w, h] {
            m.extend_from_slice(&v.to_be_bytes());
        }
        self.s.write_all(&m).unwrap();
    }

    fn full_request(&mut self, incremental: bool) {
        let (w, h) = (self.width as u16, self.height as u16);
        self.request(incremental, 0, 0, w, h);
    }

    fn tpixel(&mut self) -> u32 {
        let b: [u8; 3] = rd(&mut self.s);
        ((b[0] as u32) << 16) | ((b[1] as u32) << 8) | (b[2] as u32)
    }

    fn put(&mut self, r: (u32, u32, u32, u32), px: &[u32]) {
        let (x, y, w, h) = r;
        for j in 0..h {
            for i in 0..w {
                self.fb[((y + j) * self.width + x + i) as usize] = px[(j * w + i) as usize];
            }
        }
    }

    fn pixels_from(&self, data: &[u8]) -> Vec<u32> {
        if self.bpp16 {
            data.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as u32).collect()
        } else {
            data.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
        }
    }

    /// Reads one FramebufferUpdate, applies it, returns its rectangles with their encodings.
    fn read_update(&mut self) -> Vec<(Rect, i32)> {
        let t = rd_u8(&mut self.s);
        assert_eq!(t, 0, "expected FramebufferUpdate");
        rd_u8(&mut self.s);
        let n = rd_u16(&mut self.s);
        let bpp = if self.bpp16 { 2 } else { 4 };
        let mut out = Vec::new();
        for _ in 0..n {
            let x = rd_u16(&mut self.s) as u32;
            let y = rd_u16(&mut self.s) as u32;
            let w = rd_u16(&mut self.s) as u32;
            let h = rd_u16(&mut self.s) as u32;
            let enc = rd_u32(&mut self.s) as i32;
            out.push((Rect { x, y, w, h }, enc));
            let npx = (w * h) as usize;
            match enc {
                0 => {
                    let data = rd_vec(&mut self.s, npx * bpp);
                    let px = self.pixels_from(&data);
                    self.put((x, y, w, h), &px);
                }
                6 => {
                    let len = rd_u32(&mut self.s) as usize;
                    let z = rd_vec(&mut self.s, len);
                    let data = inflate(&mut self.zlib, &z);
                    assert_eq!(data.len(), npx * bpp);
                    let px = self.pixels_from(&data);
                    self.put((x, y, w, h), &px);
                }
                7 => {
                    let ctl = rd_u8(&mut self.s);
                    if ctl == 0x80 {
                        let p = self.tpixel();
                        self.put((x, y, w, h), &vec![p; npx]);
                    } else {
                        assert_eq!(ctl & 0xf0, 0, "basic compression without filter");
                        let stream = ((ctl >> 4) & 3) as usize;
                        let raw = npx * 3;
                        let data = if raw < 12 {
                            rd_vec(&mut self.s, raw)
                        } else {
                            let mut len = 0usize;
                            for i in 0..3 {
                                let b = rd_u8(&mut self.s);
                                if i == 2 {
                                    len |= (b as usize) << 14;
                                    break;
                                }
                                len |= ((b & 0x7f) as usize) << (7 * i);
                                if b & 0x80 == 0 {
                                    break;
                                }
                            }
                            let z = rd_vec(&mut self.s, len);
                            inflate(&mut self.tight[stream], &z)
                        };
                        assert_eq!(data.len(), raw);
                        let px: Vec<u32> = data
                            .chunks_exact(3)
                            .map(|c| ((c[0] as u32) << 16) | ((c[1] as u32) << 8) | (c[2] as u32))
                            .collect();
                        self.put((x, y, w, h), &px);
                    }
                }
                16 => {
                    let len = rd_u32(&mut self.s) as usize;
                    let z = rd_vec(&mut self.s, len);
                    let data = inflate(&mut self.zrle, &z);
                    let mut pos = 0;
                    let cpix = |pos: &mut usize| {
                        let c = &data[*pos..*pos + 3];
                        *pos += 3;
                        u32::from_le_bytes([c[0], c[1], c[2], 0])
                    };
                    for ty in (0..h).step_by(64) {
                        for tx in (0..w).step_by(64) {
                            let tw = (w - tx).min(64);
                            let th = (h - ty).min(64);
                            let sub = data[pos];
                            pos += 1;
                            let px: Vec<u32> = match sub {
                                0 => (0..tw * th).map(|_| cpix(&mut pos)).collect(),
                                1 => vec![cpix(&mut pos); (tw * th) as usize],
                                other => panic!("unexpected ZRLE subencoding {other}"),
                            };
                            self.put((x + tx, y + ty, tw, th), &px);
                        }
                    }
                    assert_eq!(pos, data.len());
                }
                -223 => {
                    self.width = w;
                    self.height = h;
                    self.fb = vec![0; npx];
                }
                other => panic!("unexpected encoding {other}"),
            }
        }
        out
    }

    /// Asserts that nothing arrives within `ms`.
    fn expect_silence(&mut self, s: &TcpStream, ms: u64) {
        s.set_read_timeout(Some(Duration::from_millis(ms))).unwrap();
        let mut b = [0u8; 1];
        match self.s.read(&mut b) {
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {}
            other => panic!("expected no data, got {other:?}"),
        }
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
}

fn connect_tcp(h: &Harness) -> (Client, TcpStream) {
    let s = TcpStream::connect(h.server.local_addrs()[0]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let ctl = s.try_clone().unwrap();
    (handshake(Box::new(s), Auth::None).unwrap(), ctl)
}

fn wait_until(mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("condition not reached");
}

// ---------------------------------------------------------------- tests

#[test]
fn none_auth_raw_full_update_matches_frame() {
    let h = start(100, 60, None, false);
    let mut c = connect(&h);
    assert_eq!((c.width, c.height, c.name.as_str()), (100, 60, "test vm"));
    c.set_encodings(&[0]);
    c.full_request(false);
    let rects = c.read_update();
    assert!(rects.iter().all(|(_, e)| *e == 0));
    assert_eq!(c.fb, h.source.frame().pixels);
    assert_eq!(h.server.clients(), 1);
    wait_until(|| h.server.stats().updates_sent == 1);
    let st = h.server.stats();
    assert!(st.bytes_sent >= 100 * 60 * 4);
}

fn check_encoding(enc: i32, w: u32, hgt: u32) {
    let h = start(w, hgt, None, false);
    let mut c = connect(&h);
    c.set_encodings(&[enc, 0, -223]);
    c.full_request(false);
    let rects = c.read_update();
    assert!(rects.iter().all(|(_, e)| *e == enc), "{rects:?}");
    assert_eq!(c.fb, h.source.frame().pixels);
    // A second update goes through the same zlib streams.
    h.source.fill(Rect { x: 5, y: 5, w: 30, h: 20 }, 0x00ff00ff);
    h.source.fill(Rect { x: 50, y: 40, w: 3, h: 1 }, 0x00123456);
    c.full_request(true);
    let mut got = 0;
    while got < 2 {
        got += c.read_update().len();
        if got < 2 {
            c.full_request(true);
        }
    }
    assert_eq!(c.fb, h.source.frame().pixels);
}

#[test]
fn zlib_decodes_to_frame() {
    check_encoding(6, 150, 90);
}

#[test]
fn tight_decodes_to_frame() {
    check_encoding(7, 150, 90);
}

#[test]
fn tight_large_frame_is_split() {
    check_encoding(7, 2500, 100);
}

#[test]
fn zrle_decodes_to_frame() {
    check_encoding(16, 150, 90);
}

#[test]
fn first_supported_encoding_in_client_order_wins() {
    let h = start(64, 32, None, false);
    let mut c = connect(&h);
    c.set_encodings(&[5, 1, 7, 6, 0]); // Hextile unsupported, CopyRect never sent
    c.full_request(false);
    let rects = c.read_update();
    assert!(rects.iter().all(|(_, e)| *e == 7));
}

#[test]
fn vnc_auth_right_password_is_accepted() {
    let h = start(32, 16, Some("pässwordXYZ"), false);
    let mut c = handshake(tcp(h.server.local_addrs()[0]), Auth::Password("pässwordXYZ")).unwrap();
    c.full_request(false);
    c.read_update();
    assert_eq!(c.fb, h.source.frame().pixels);
    // Only the first 8 bytes count.
    handshake(tcp(h.server.local_addrs()[0]), Auth::Password("pässwor")).unwrap();
}

#[test]
fn vnc_auth_wrong_password_is_refused_with_reason() {
    let h = start(32, 16, Some("secret"), false);
    let err = handshake(tcp(h.server.local_addrs()[0]), Auth::Password("wrong")).err().unwrap();
    assert_eq!(err, "Authentication failed");
    wait_until(|| h.server.stats().auth_failures == 1);
    // set_password takes effect for new connections.
    h.server.set_password(Some("other".into()));
    handshake(tcp(h.server.local_addrs()[0]), Auth::Password("other")).unwrap();
    h.server.set_password(None);
    handshake(tcp(h.server.local_addrs()[0]), Auth::None).unwrap();
    // Some("") requires authentication that always fails.
    h.server.set_password(Some(String::new()));
    assert!(handshake(tcp(h.server.local_addrs()[0]), Auth::Password("")).is_err());
}

#[test]
fn rfb_3_3_handshake() {
    let h = start(40, 30, None, false);
    let mut s = tcp(h.server.local_addrs()[0]);
    let _: [u8; 12] = rd(&mut s);
    s.write_all(b"RFB 003.003\n").unwrap();
    assert_eq!(rd_u32(&mut s), 1); // None, no SecurityResult follows
    let mut c = client_init(s);
    assert_eq!((c.width, c.height), (40, 30));
    c.full_request(false);
    c.read_update();
    assert_eq!(c.fb, h.source.frame().pixels);

    // 3.3 with a password: the server chooses VNC Authentication.
    h.server.set_password(Some("pw".into()));
    let mut s = tcp(h.server.local_addrs()[0]);
    let _: [u8; 12] = rd(&mut s);
    s.write_all(b"RFB 003.003\n").unwrap();
    assert_eq!(rd_u32(&mut s), 2);
    let ch: [u8; 16] = rd(&mut s);
    s.write_all(&vnc::vnc_auth_response("pw", &ch)).unwrap();
    assert_eq!(rd_u32(&mut s), 0);
    client_init(s);
}

#[test]
fn rfb_3_7_handshake_without_security_result_for_none() {
    let h = start(40, 30, None, false);
    let mut s = tcp(h.server.local_addrs()[0]);
    let _: [u8; 12] = rd(&mut s);
    s.write_all(b"RFB 003.007\n").unwrap();
    assert_eq!(rd_u8(&mut s), 1);
    assert_eq!(rd_u8(&mut s), 1);
    s.write_all(&[1]).unwrap();
    let c = client_init(s);
    assert_eq!(c.width, 40);
}

#[test]
fn incremental_update_sends_only_changed_rect_and_nothing_when_static() {
    let h = start(120, 80, None, false);
    let (mut c, ctl) = connect_tcp(&h);
    c.set_encodings(&[0]);
    c.full_request(false);
    c.read_update();
    // Nothing changes: an incremental request stays unanswered.
    c.full_request(true);
    c.expect_silence(&ctl, 200);
    let r = Rect { x: 10, y: 20, w: 7, h: 5 };
    h.source.fill(r, 0x00abcdef);
    let rects = c.read_update();
    assert_eq!(rects, vec![(r, 0)]);
    assert_eq!(c.fb, h.source.frame().pixels);
    // A change outside the requested area waits for a request covering it.
    h.source.fill(Rect { x: 100, y: 70, w: 5, h: 5 }, 0x00111111);
    c.request(true, 0, 0, 50, 50);
    c.expect_silence(&ctl, 150);
    c.full_request(true);
    let rects = c.read_update();
    assert_eq!(rects, vec![(Rect { x: 100, y: 70, w: 5, h: 5 }, 0)]);
}

#[test]
fn request_rectangles_are_clipped_to_the_frame() {
    let h = start(50, 40, None, false);
    let mut c = connect(&h);
    c.request(false, 40, 30, 60000, 60000);
    let rects = c.read_update();
    assert_eq!(rects, vec![(Rect { x: 40, y: 30, w: 10, h: 10 }, 0)]);
    c.request(false, 60000, 60000, 10, 10);
    assert_eq!(c.read_update(), vec![]);
}

#[test]
fn set_pixel_format_16_bit() {
    let h = start(64, 48, None, false);
    let mut c = connect(&h);
    // RGB565 little-endian.
    let mut m = vec![0, 0, 0, 0, 16, 16, 0, 1];
    m.extend_from_slice(&31u16.to_be_bytes());
    m.extend_from_slice(&63u16.to_be_bytes());
    m.extend_from_slice(&31u16.to_be_bytes());
    m.extend_from_slice(&[11, 5, 0, 0, 0, 0]);
    c.s.write_all(&m).unwrap();
    c.bpp16 = true;
    c.set_encodings(&[0]);
    c.full_request(false);
    c.read_update();
    let expect: Vec<u32> = h
        .source
        .frame()
        .pixels
        .iter()
        .map(|&p| {
            let r = ((p >> 16) & 0xff) * 31 + 127;
            let g = ((p >> 8) & 0xff) * 63 + 127;
            let b = (p & 0xff) * 31 + 127;
            ((r / 255) << 11) | ((g / 255) << 5) | (b / 255)
        })
        .collect();
    assert_eq!(c.fb, expect);
}

#[test]
fn colour_map_pixel_format_closes_the_client() {
    let h = start(16, 16, None, false);
    let mut c = connect(&h);
    let mut m = vec![0, 0, 0, 0, 8, 8, 0, 0];
    m.extend_from_slice(&[0; 12]);
    c.s.write_all(&m).unwrap();
    let mut b = [0u8; 1];
    assert_eq!(c.s.read(&mut b).unwrap_or(0), 0);
    wait_until(|| h.server.clients() == 0);
}

#[test]
fn key_and_pointer_events_reach_the_sink() {
    let h = start(16, 16, None, false);
    let mut c = connect(&h);
    c.s.write_all(&[4, 1, 0, 0, 0, 0, 0, 0x61]).unwrap();
    c.s.write_all(&[4, 0, 0, 0, 0, 0, 0xff, 0x0d]).unwrap();
    c.s.write_all(&[5, 0b101, 0, 10, 0, 12]).unwrap();
    // A cut text in between is skipped.
    c.s.write_all(&[6, 0, 0, 0, 0, 0, 0, 3, b'a', b'b', b'c']).unwrap();
    c.s.write_all(&[5, 0, 0x12, 0x34, 0, 1]).unwrap();
    wait_until(|| h.sink.pointer.lock().len() == 2);
    assert_eq!(*h.sink.keys.lock(), vec![(0x61, true), (0xff0d, false)]);
    assert_eq!(*h.sink.pointer.lock(), vec![(10, 12, 5), (0x1234, 1, 0)]);
}

#[test]
fn two_clients_at_once() {
    let h = start(80, 50, None, false);
    let mut a = connect(&h);
    let mut b = connect(&h);
    a.set_encodings(&[6]);
    b.set_encodings(&[16]);
    a.full_request(false);
    b.full_request(false);
    a.read_update();
    b.read_update();
    assert_eq!(h.server.clients(), 2);
    h.source.fill(Rect { x: 1, y: 2, w: 3, h: 4 }, 0x00ffffff);
    a.full_request(true);
    b.full_request(true);
    a.read_update();
    b.read_update();
    assert_eq!(a.fb, h.source.frame().pixels);
    assert_eq!(b.fb, h.source.frame().pixels);
}

#[test]
fn client_vanishing_mid_update_leaves_others_served() {
    let h = start(1024, 768, None, false);
    let mut good = connect(&h);
    {
        let mut bad = connect(&h);
        bad.full_request(false);
        // Read a few bytes of the 3 MB update, then vanish.
        let _: [u8; 100] = rd(&mut bad.s);
    }
    wait_until(|| h.server.clients() == 1);
    good.full_request(false);
    good.read_update();
    assert_eq!(good.fb, h.source.frame().pixels);
}

#[test]
fn stalled_client_does_not_hold_up_others() {
    let h = start(1600, 1200, None, false);
    let mut good = connect(&h);
    good.set_encodings(&[7]);
    good.full_request(false);
    good.read_update();
    // This one asks for full updates of noise (in Raw) and never reads them.
    let mut stalled = connect(&h);
    for _ in 0..50 {
        stalled.full_request(false);
    }
    std::thread::sleep(Duration::from_millis(100));
    for i in 0..20 {
        h.source.fill(Rect { x: i * 10, y: 5, w: 8, h: 8 }, 0x00010101 * i);
        good.full_request(true);
        good.read_update();
    }
    good.full_request(false);
    good.read_update();
    assert_eq!(good.fb, h.source.frame().pixels);
    assert_eq!(h.server.clients(), 2);
    drop(stalled);
}

#[test]
fn malformed_messages_close_only_that_client() {
    let h = start(32, 32, None, false);
    let mut good = connect(&h);
    let cases: Vec<Vec<u8>> = vec![
        vec![0xaa, 1, 2, 3],                      // unknown message type
        vec![6, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff], // cut text far too long
        vec![6, 0, 0, 0, 0xff, 0xff, 0xff, 0xff], // negative (extended) cut text
    ];
    for bytes in cases {
        let mut bad = connect(&h);
        bad.s.write_all(&bytes).unwrap();
        let mut b = [0u8; 1];
        assert_eq!(bad.s.read(&mut b).unwrap_or(0), 0, "{bytes:?}");
    }
    // A huge SetEncodings is read and bounded.
    let mut big = connect(&h);
    let mut m = vec![2, 0, 0xff, 0xff];
    for i in 0..65535u32 {
        m.extend_from_slice(&(i as i32 - 1000).to_be_bytes());
    }
    big.s.write_all(&m).unwrap();
    big.full_request(false);
    big.read_update();
    good.full_request(false);
    good.read_update();
    assert_eq!(good.fb, h.source.frame().pixels);
}

#[test]
fn bad_version_and_garbage_handshakes_are_dropped() {
    let h = start(8, 8, None, false);
    let mut s = tcp(h.server.local_addrs()[0]);
    let _: [u8; 12] = rd(&mut s);
    s.write_all(b"GET / HTTP/1.1\r\n").unwrap();
    let mut b = [0u8; 1];
    assert_eq!(s.read(&mut b).unwrap_or(0), 0);
    let mut c = connect(&h);
    c.full_request(false);
    c.read_update();
}

#[test]
fn resize_sends_desktop_size() {
    let h = start(40, 30, None, false);
    let mut c = connect(&h);
    c.set_encodings(&[0, -223]);
    c.full_request(false);
    c.read_update();
    {
        let mut s = h.source.0.lock();
        s.frame = pattern(64, 20);
        s.resized = true;
    }
    c.full_request(true);
    let rects = c.read_update();
    assert_eq!(rects[0], (Rect { x: 0, y: 0, w: 64, h: 20 }, -223));
    assert_eq!((c.width, c.height), (64, 20));
    assert_eq!(c.fb, h.source.frame().pixels);
}

#[test]
fn resize_without_desktop_size_clips_to_the_old_size() {
    let h = start(40, 30, None, false);
    let mut c = connect(&h);
    c.full_request(false);
    c.read_update();
    {
        let mut s = h.source.0.lock();
        s.frame = pattern(64, 20);
        s.resized = true;
    }
    c.full_request(true);
    let rects = c.read_update();
    assert_eq!(rects, vec![(Rect { x: 0, y: 0, w: 40, h: 20 }, 0)]);
}

#[test]
fn refresh_runs_only_with_clients() {
    let h = start(16, 16, None, false);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(h.source.calls(), 0);
    let c = connect(&h);
    wait_until(|| h.source.calls() >= 3);
    drop(c);
    wait_until(|| h.server.clients() == 0);
    std::thread::sleep(Duration::from_millis(50));
    let n = h.source.calls();
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(h.source.calls(), n);
}

#[test]
fn drop_stops_the_server() {
    let h = start(16, 16, None, true);
    let addr = h.server.local_addrs()[0];
    let _c = connect(&h);
    let t = std::time::Instant::now();
    drop(h);
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(TcpStream::connect(addr).is_err());
}

#[test]
fn port_in_use_is_an_error() {
    let h = start(16, 16, None, false);
    let config = VncConfig {
        listen: h.server.local_addrs(),
        unix: None,
        websocket: None,
        password: None,
        name: "x".into(),
        refresh: Duration::from_millis(30),
    };
    assert!(VncServer::start(config, Box::new(TestSource::default()), Arc::new(TestSink::default())).is_err());
}

// ---------------------------------------------------------------- WebSocket

/// A client-side WebSocket byte stream (masked binary frames out, frames unwrapped in).
struct WsClient {
    s: TcpStream,
    buf: Vec<u8>,
    pos: usize,
}

impl WsClient {
    fn send_frame(&mut self, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut f = vec![0x80 | opcode];
        if payload.len() < 126 {
            f.push(0x80 | payload.len() as u8);
        } else {
            f.push(0x80 | 126);
            f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        self.s.write_all(&f)
    }

    /// Reads one server frame: (opcode, payload).
    fn read_frame(&mut self) -> (u8, Vec<u8>) {
        let h: [u8; 2] = rd(&mut self.s);
        assert_eq!(h[1] & 0x80, 0, "server frames are unmasked");
        let mut len = (h[1] & 0x7f) as usize;
        if len == 126 {
            len = rd_u16(&mut self.s) as usize;
        } else if len == 127 {
            len = u64::from_be_bytes(rd(&mut self.s)) as usize;
        }
        (h[0] & 0x0f, rd_vec(&mut self.s, len))
    }
}

impl Read for WsClient {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos >= self.buf.len() {
            let (op, payload) = self.read_frame();
            assert_eq!(op, 2, "binary frames only");
            self.buf = payload;
            self.pos = 0;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Write for WsClient {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.send_frame(2, b)?;
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn ws_connect(addr: SocketAddr) -> (WsClient, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    write!(
        s,
        "GET /websockify HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: binary\r\n\r\n"
    )
    .unwrap();
    let mut resp = Vec::new();
    while !resp.ends_with(b"\r\n\r\n") {
        resp.push(rd_u8(&mut s));
    }
    (WsClient { s, buf: Vec::new(), pos: 0 }, String::from_utf8(resp).unwrap())
}

#[test]
fn websocket_rfb_session() {
    assert_eq!(vnc::websocket_accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    let h = start(90, 70, Some("wspass"), true);
    let addr = h.server.websocket_addr().unwrap();
    let (ws, resp) = ws_connect(addr);
    assert!(resp.starts_with("HTTP/1.1 101"), "{resp}");
    assert!(resp.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    assert!(resp.contains("Sec-WebSocket-Protocol: binary\r\n"));
    let ctl = ws.s.try_clone().unwrap();
    let mut c = handshake(Box::new(ws), Auth::Password("wspass")).unwrap();
    c.set_encodings(&[7, 16, 0]);
    c.full_request(false);
    c.read_update();
    assert_eq!(c.fb, h.source.frame().pixels);
    // A ping is answered with a pong carrying the same payload.
    let mut raw = WsClient { s: ctl.try_clone().unwrap(), buf: Vec::new(), pos: 0 };
    raw.send_frame(9, b"hi").unwrap();
    assert_eq!(raw.read_frame(), (10, b"hi".to_vec()));
    // Close is answered with close, and the client goes away.
    raw.send_frame(8, &1000u16.to_be_bytes()).unwrap();
    assert_eq!(raw.read_frame().0, 8);
    wait_until(|| h.server.clients() == 0);
}

#[test]
fn websocket_rejects_plain_http() {
    let h = start(8, 8, None, true);
    let mut s = TcpStream::connect(h.server.websocket_addr().unwrap()).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 400"));
}

// ---------------------------------------------------------------- Unix socket

fn sock_path(name: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("ferrovm-vnc-{}-{name}.sock", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

fn start_unix(path: &std::path::Path, password: Option<&str>) -> std::io::Result<(VncServer, TestSource)> {
    let source = TestSource::default();
    source.0.lock().frame = pattern(40, 24);
    let config = VncConfig {
        listen: Vec::new(),
        unix: Some(path.to_path_buf()),
        websocket: None,
        password: password.map(str::to_string),
        name: "unix".into(),
        refresh: Duration::from_millis(10),
    };
    VncServer::start(config, Box::new(source.clone()), Arc::new(TestSink::default())).map(|s| (s, source))
}

#[test]
fn a_client_reads_the_framebuffer_over_a_unix_socket() {
    use std::os::unix::fs::FileTypeExt;
    use vnc::client::{Client as RfbClient, ClientEncoding};
    let path = sock_path("fb");
    let (server, source) = start_unix(&path, Some("pw")).unwrap();
    assert_eq!(server.unix_path(), Some(path.as_path()));
    assert!(server.local_addrs().is_empty(), "no TCP listener");
    assert!(std::fs::symlink_metadata(&path).unwrap().file_type().is_socket());
    let mut c = RfbClient::connect_unix(&path, Some("pw"), ClientEncoding::Raw).unwrap();
    assert_eq!(c.size, (40, 24));
    c.request(false).unwrap();
    assert_eq!(c.read_update().unwrap(), 40 * 24);
    assert_eq!(c.pixels, source.frame().pixels, "the whole frame, pixel for pixel");
    // A change comes as an incremental update.
    source.fill(Rect { x: 2, y: 3, w: 5, h: 4 }, 0x00ab_cdef);
    c.request(true).unwrap();
    let mut covered = 0;
    while c.pixels != source.frame().pixels {
        covered += c.read_update().unwrap();
        c.request(true).unwrap();
    }
    assert!(covered >= 20, "the changed rectangle came: {covered} pixels");
    drop(c);
    drop(server);
    assert!(std::fs::symlink_metadata(&path).is_err(), "the socket is removed when the server goes");
}

#[test]
fn a_unix_socket_replaces_a_stale_socket_but_no_other_file() {
    // A socket with nobody behind it (its listener closed) is replaced.
    let path = sock_path("stale");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let (server, _) = start_unix(&path, None).unwrap();
    let c = vnc::client::Client::connect_unix(&path, None, vnc::client::ClientEncoding::Raw).unwrap();
    assert_eq!(c.size, (40, 24));
    // A second server on a live socket fails and leaves it alone.
    let e = start_unix(&path, None).err().expect("a live socket is in use");
    assert_eq!(e.kind(), ErrorKind::AddrInUse, "{e}");
    assert!(vnc::client::Client::connect_unix(&path, None, vnc::client::ClientEncoding::Raw).is_ok());
    // An explicit removal (at exit) leaves a socket another process made there alone.
    server.remove_unix_socket();
    assert!(!path.exists());
    let other = std::os::unix::net::UnixListener::bind(&path).unwrap();
    drop(server);
    assert!(path.exists(), "someone else's socket at the path stays");
    drop(other);
    let _ = std::fs::remove_file(&path);
    // A regular file is never replaced.
    let file = sock_path("file");
    std::fs::write(&file, b"keep me").unwrap();
    let e = start_unix(&file, None).err().expect("a regular file is not replaced");
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    let _ = std::fs::remove_file(&file);
}

// ---------------------------------------------------------------- failed logins

/// Connects with `password` until the server stops refusing for recent
/// failures; the time that took.
fn wait_until_taken(addr: std::net::SocketAddr, password: &str) -> Duration {
    let t = std::time::Instant::now();
    loop {
        match vnc::client::Client::connect(addr, Some(password), vnc::client::ClientEncoding::Raw) {
            Ok(_) => return t.elapsed(),
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
                assert!(e.to_string().contains("Too many authentication failures"), "{e}");
            }
        }
        assert!(t.elapsed() < Duration::from_secs(10), "the refusal ends");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn failed_logins_lock_out_every_client_for_a_doubling_interval() {
    use vnc::client::{Client as RfbClient, ClientEncoding};
    let h = start(16, 16, Some("right"), false);
    let addr = h.server.local_addrs()[0];
    let attempt = |pw: &str| RfbClient::connect(addr, Some(pw), ClientEncoding::Raw).err().map(|e| e.to_string());
    assert_eq!(vnc::AUTH_LOCK_FIRST, Duration::from_secs(1));
    // One failure: even the right password is refused for about a second.
    let e = attempt("wrong").expect("a wrong password fails");
    assert!(e.contains("Authentication failed"), "{e}");
    let e = attempt("right").expect("refused during the lock-out");
    assert!(e.contains("Too many authentication failures; try again in"), "{e}");
    let took = wait_until_taken(addr, "right");
    assert!(took >= Duration::from_millis(850) && took < Duration::from_millis(1600), "1 s lock-out: {took:?}");
    // The success reset the series: a failure locks for 1 s, the next for 2 s.
    attempt("wrong").expect("fails");
    std::thread::sleep(Duration::from_millis(1100));
    let e = attempt("wrong").expect("fails");
    assert!(e.contains("Authentication failed"), "after the lock-out, a password is checked again: {e}");
    let took = wait_until_taken(addr, "right");
    assert!(took >= Duration::from_millis(1850) && took < Duration::from_millis(2700), "2 s lock-out: {took:?}");
    let s = h.server.stats();
    assert_eq!(s.auth_failures, 3);
    assert!(s.auth_refused >= 3, "{s:?}");
    // A new password ends a lock-out.
    attempt("wrong").expect("fails");
    h.server.set_password(Some("new".into()));
    assert!(attempt("new").is_none(), "set_password lifts the lock-out");
}
