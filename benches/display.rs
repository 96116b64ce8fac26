//! The display's costs, guest side excluded: the standard VGA's render of
//! a 1024x768x32 VBE mode (everything changed, and nothing changed), and
//! the latency of a full-screen change, from the guest's last store into
//! the framebuffer until a VNC client holds the whole new picture (the
//! server's refresh wait, the render, the encoding and the socket), with
//! Raw and with Tight.
//!
//! The adapter is driven through its bus devices, as a guest's port and
//! framebuffer accesses reach it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use devices::display::{StdVga, DEFAULT_VRAM};
use devices::SharedDevice;
use parking_lot::Mutex;

const W: u16 = 1024;
const H: u16 = 768;

/// The adapter in VBE 1024x768x32 with a linear framebuffer, and its LFB.
fn vbe_adapter() -> (Arc<Mutex<StdVga>>, SharedDevice) {
    let vga = Arc::new(Mutex::new(StdVga::new(DEFAULT_VRAM).unwrap()));
    let d = StdVga::bus_devices(&vga);
    let reg = |index: u16, value: u16| {
        d.vbe_ports.lock().write(0, &index.to_le_bytes());
        d.vbe_ports.lock().write(1, &value.to_le_bytes());
    };
    reg(4, 0); // disable
    reg(1, W);
    reg(2, H);
    reg(3, 32);
    reg(4, 0x41); // enabled, LFB
    (vga, d.lfb)
}

/// Fills the whole visible framebuffer with `pixel`, 8 bytes per store.
fn fill(lfb: &SharedDevice, pixel: u32) {
    let two = (u64::from(pixel) << 32) | u64::from(pixel);
    let mut l = lfb.lock();
    for off in (0..u64::from(W) * u64::from(H) * 4).step_by(8) {
        l.write(off, &two.to_le_bytes());
    }
}

fn render(c: &mut Criterion) {
    let (vga, lfb) = vbe_adapter();
    let mut pixels = Vec::new();
    let (w, h, first) = vga.lock().render(&mut pixels);
    assert_eq!((w, h), (u32::from(W), u32::from(H)), "the VBE mode is set: {first:?}");
    fill(&lfb, 0x00ff_00ff);
    let (_, _, rects) = vga.lock().render(&mut pixels);
    assert!(!rects.is_empty(), "a framebuffer store shows");
    let mut g = c.benchmark_group("vga_render_1024x768x32");
    // Criterion calls the closure again after its warm-up: the pixel value
    // goes on from where it was, so each fill changes every pixel (stores
    // of the same value change nothing, and show nothing).
    let mut n = 0u32;
    g.bench_function("everything_changed", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                n = n.wrapping_add(0x010203);
                fill(&lfb, n);
                let t = Instant::now();
                let (_, _, rects) = vga.lock().render(&mut pixels);
                spent += t.elapsed();
                assert!(!rects.is_empty());
            }
            spent
        });
    });
    g.bench_function("nothing_changed", |b| {
        b.iter(|| {
            let (_, _, rects) = vga.lock().render(&mut pixels);
            assert!(rects.is_empty());
        });
    });
    g.finish();
}

fn latency(c: &mut Criterion) {
    let mut g = c.benchmark_group("vnc_full_screen_change_1024x768");
    g.sample_size(20);
    for (name, encoding) in [("raw", vnc::client::ClientEncoding::Raw), ("tight", vnc::client::ClientEncoding::Tight)] {
        let (vga, lfb) = vbe_adapter();
        let screen = vmm::display::Screen::new(vga);
        let config = vnc::VncConfig {
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            unix: None,
            websocket: None,
            password: None,
            name: "bench".into(),
            refresh: Duration::from_millis(20),
        };
        struct NoInput;
        impl vnc::InputSink for NoInput {
            fn key(&self, _: u32, _: bool) {}
            fn pointer(&self, _: u16, _: u16, _: u8) {}
        }
        let server = vnc::VncServer::start(config, Box::new(screen.source()), Arc::new(NoInput)).unwrap();
        let addr = server.local_addrs()[0];
        let mut client = vnc::client::Client::connect(addr, None, encoding).unwrap();
        client.request(false).unwrap();
        while client.read_update().unwrap() < client.area() {}
        let mut n = 0u32;
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    client.request(true).unwrap();
                    n = n.wrapping_add(0x050709);
                    fill(&lfb, n);
                    let t = Instant::now();
                    let mut covered = 0;
                    loop {
                        covered += client.read_update().unwrap();
                        if covered >= client.area() {
                            break;
                        }
                        client.request(true).unwrap();
                    }
                    spent += t.elapsed();
                }
                spent
            });
        });
        drop(server);
    }
    g.finish();
}

criterion_group!(benches, render, latency);
criterion_main!(benches);
