//! A flow through the NAT to a host socket on loopback, with a guest
//! stack (smoltcp) on the other side of the NAT's frames.

use std::io::Write;
use std::net::{Ipv4Addr, Shutdown, TcpListener};
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, IpEndpoint};

use crate::{NetBackend, UserNet, UserNetConfig};

use crate::user::test_wire::Wire;

/// The host sends after the guest half-closed (busybox `nc` with its input
/// at /dev/null does so at once), into a guest whose small receive buffer
/// it fills again and again: each time the guest empties it, a pure window
/// update (an ACK of nothing new) reopens the window. Those that come after
/// the host's EOF must not be lost: smoltcp in LAST-ACK ignores them, and
/// each would cost a zero-window probe a second later.
#[test]
fn a_half_closed_guest_gets_the_rest_after_the_host_eof_without_stalls() {
    const N: usize = 256 * 1024;
    const GUEST_BUF: usize = 4096;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let host = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(&vec![0x5a; N]).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        // Keep the socket until the guest is done with it.
        let mut b = [0u8; 16];
        let _ = std::io::Read::read(&mut s, &mut b);
    });

    let mut nat = UserNet::new(UserNetConfig::default()).unwrap();
    let mac = EthernetAddress([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    let mut wire = Wire::default();
    let epoch = Instant::now();
    let ts = || smoltcp::time::Instant::from_micros(epoch.elapsed().as_micros() as i64);
    let mut iface = Interface::new(Config::new(HardwareAddress::Ethernet(mac)), &mut wire, ts());
    iface.update_ip_addrs(|a| a.push(IpCidr::new(Ipv4Addr::new(10, 0, 2, 15).into(), 24)).unwrap());
    iface.routes_mut().add_default_ipv4_route(Ipv4Addr::new(10, 0, 2, 2)).unwrap();
    let mut sockets = SocketSet::new(Vec::new());
    let sock = tcp::Socket::new(tcp::SocketBuffer::new(vec![0; GUEST_BUF]), tcp::SocketBuffer::new(vec![0; GUEST_BUF]));
    let h = sockets.add(sock);
    let remote = IpEndpoint::new(Ipv4Addr::new(10, 0, 2, 2).into(), port);
    sockets.get_mut::<tcp::Socket>(h).connect(iface.context(), remote, 40000).unwrap();

    let start = Instant::now();
    let mut got = 0;
    let mut closed = false;
    while got < N && start.elapsed() < Duration::from_secs(20) {
        iface.poll(ts(), &mut wire, &mut sockets);
        while let Some(f) = wire.tx.pop_front() {
            nat.send(&f);
        }
        nat.poll(Instant::now());
        let mut buf = [0u8; 2048];
        while let Some(n) = nat.recv(&mut buf) {
            wire.rx.push_back(buf[..n].to_vec());
        }
        iface.poll(ts(), &mut wire, &mut sockets);
        let s = sockets.get_mut::<tcp::Socket>(h);
        if s.may_send() && !closed {
            s.close();
            closed = true;
        }
        // Read only a full buffer, so that the window closes each time.
        if s.recv_queue() == GUEST_BUF || (s.recv_queue() > 0 && !s.may_recv()) {
            got += s.recv(|b| (b.len(), b.len())).unwrap();
        }
        std::thread::sleep(Duration::from_micros(50));
    }
    let took = start.elapsed();
    assert_eq!(got, N, "the guest got {got} of {N} bytes in {took:?}");
    assert!(took < Duration::from_secs(1), "{N} bytes took {took:?}: a window update was lost");
    drop(nat);
    host.join().unwrap();
}
