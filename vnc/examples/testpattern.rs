//! Serves a moving test pattern over VNC for trying clients by hand.
//!
//! `cargo run -p vnc --example testpattern -- [ADDR] [SECONDS] [PASSWORD] [WS_ADDR]`
//! (defaults: 127.0.0.1:5900, 60 s, no password, no WebSocket). Exits after SECONDS.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vnc::{Frame, FrameSource, InputSink, Rect, VncConfig, VncServer};

struct Pattern {
    start: Instant,
    last_box: Option<Rect>,
}

const W: u32 = 640;
const H: u32 = 400;

impl FrameSource for Pattern {
    fn update(&mut self, frame: &mut Frame) -> Vec<Rect> {
        let mut changed = Vec::new();
        if frame.width != W || frame.height != H {
            frame.width = W;
            frame.height = H;
            frame.pixels = (0..W * H)
                .map(|i| {
                    let (x, y) = (i % W, i / W);
                    if y < 100 {
                        [0x00ff0000, 0x0000ff00, 0x000000ff, 0x00ffffff][(x * 4 / W) as usize]
                    } else {
                        ((x * 255 / W) << 16) | ((y * 255 / H) << 8) | ((x ^ y) & 0xff)
                    }
                })
                .collect();
            changed.push(Rect { x: 0, y: 0, w: W, h: H });
        }
        // A small box that moves once a second.
        let t = self.start.elapsed().as_secs() as u32;
        let b = Rect { x: 20 + (t * 40) % (W - 60), y: 300, w: 20, h: 20 };
        if self.last_box != Some(b) {
            if let Some(old) = self.last_box {
                fill(frame, old, 0x00000000);
                changed.push(old);
            }
            fill(frame, b, 0x00ffff00);
            changed.push(b);
            self.last_box = Some(b);
        }
        changed
    }
}

fn fill(frame: &mut Frame, r: Rect, c: u32) {
    for y in r.y..r.y + r.h {
        for x in r.x..r.x + r.w {
            frame.pixels[(y * frame.width + x) as usize] = c;
        }
    }
}

struct PrintInput;

impl InputSink for PrintInput {
    fn key(&self, keysym: u32, down: bool) {
        println!("key {keysym:#x} {} -> set1 {:?}", if down { "down" } else { "up" }, vnc::keysym_to_set1(keysym));
    }
    fn pointer(&self, x: u16, y: u16, buttons: u8) {
        println!("pointer {x},{y} buttons {buttons:#b}");
    }
}

fn main() {
    let _ = tracing_subscriber::fmt().with_env_filter("vnc=debug").try_init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr = args.first().map(String::as_str).unwrap_or("127.0.0.1:5900").parse().expect("address");
    let secs: u64 = args.get(1).map(|s| s.parse().expect("seconds")).unwrap_or(60);
    let password = args.get(2).filter(|s| !s.is_empty() && *s != "-").cloned();
    let websocket = args.get(3).map(|s| s.parse().expect("websocket address"));
    let config = VncConfig {
        listen: vec![addr],
        unix: None,
        websocket,
        password,
        name: "vnc test pattern".into(),
        refresh: Duration::from_millis(30),
    };
    let server =
        VncServer::start(config, Box::new(Pattern { start: Instant::now(), last_box: None }), Arc::new(PrintInput))
            .expect("start");
    println!("listening on {:?}, websocket {:?}", server.local_addrs(), server.websocket_addr());
    std::thread::sleep(Duration::from_secs(secs));
    println!("{:?}", server.stats());
}
