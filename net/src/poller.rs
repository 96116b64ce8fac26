//! An edge-triggered epoll set over the host sockets of a backend.
//!
//! Edge-triggered, so that a socket the backend cannot serve yet (the guest
//! is not reading) does not keep the machine awake: the owner remembers
//! "readable"/"writable" until a read or write reports `WouldBlock`.
//! The epoll fd itself is the backend's wake fd.

use std::os::fd::{AsFd, BorrowedFd};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

use crate::Error;

/// What a registered fd belongs to; packed into the epoll token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Token {
    /// A TCP flow's host socket.
    Tcp(u64),
    /// A UDP flow's host socket.
    Udp(u64),
    /// An ICMP echo socket.
    Icmp(u64),
    /// The DNS forwarder's upstream socket (0: IPv4, 1: IPv6).
    Dns(u64),
    /// A host port forward's listener (its index).
    Listener(u64),
}

const KIND_SHIFT: u32 = 56;
const ID_MASK: u64 = (1 << KIND_SHIFT) - 1;

impl Token {
    fn pack(self) -> u64 {
        let (kind, id) = match self {
            Token::Tcp(id) => (1, id),
            Token::Udp(id) => (2, id),
            Token::Icmp(id) => (3, id),
            Token::Dns(id) => (4, id),
            Token::Listener(id) => (5, id),
        };
        (kind << KIND_SHIFT) | (id & ID_MASK)
    }

    fn unpack(v: u64) -> Option<Token> {
        let id = v & ID_MASK;
        Some(match v >> KIND_SHIFT {
            1 => Token::Tcp(id),
            2 => Token::Udp(id),
            3 => Token::Icmp(id),
            4 => Token::Dns(id),
            5 => Token::Listener(id),
            _ => return None,
        })
    }
}

/// One readiness report.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ready {
    pub token: Token,
    pub readable: bool,
    pub writable: bool,
    /// Error or hang-up: the owner should look (a read or `take_error`).
    pub error: bool,
}

pub(crate) struct Poller {
    epoll: Epoll,
    events: Vec<EpollEvent>,
}

impl Poller {
    pub fn new() -> Result<Self, Error> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(|e| Error::os("epoll_create", e))?;
        Ok(Poller { epoll, events: vec![EpollEvent::empty(); 256] })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.epoll.0.as_fd()
    }

    /// Watches `fd` for input and output, edge-triggered.
    pub fn add(&self, fd: impl AsFd, token: Token) -> std::io::Result<()> {
        let flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLET;
        self.epoll.add(fd, EpollEvent::new(flags, token.pack())).map_err(std::io::Error::from)
    }

    /// Stops watching `fd` (closing it does as well; this is for fds that live on).
    pub fn remove(&self, fd: impl AsFd) {
        let _ = self.epoll.delete(fd);
    }

    /// Collects what became ready since the last call, without waiting.
    /// Bounded: at most `rounds` batches of 256.
    pub fn drain(&mut self, out: &mut Vec<Ready>, rounds: usize) {
        for _ in 0..rounds {
            let n = match self.epoll.wait(&mut self.events, EpollTimeout::ZERO) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!(target: "net", "epoll_wait: {e}");
                    return;
                }
            };
            for ev in &self.events[..n] {
                let Some(token) = Token::unpack(ev.data()) else { continue };
                let f = ev.events();
                out.push(Ready {
                    token,
                    readable: f.intersects(EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLHUP),
                    writable: f.contains(EpollFlags::EPOLLOUT),
                    error: f.intersects(EpollFlags::EPOLLERR | EpollFlags::EPOLLHUP),
                });
            }
            if n < self.events.len() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        for t in [Token::Tcp(0), Token::Udp(ID_MASK), Token::Icmp(7), Token::Dns(1), Token::Listener(3)] {
            assert_eq!(Token::unpack(t.pack()), Some(t));
        }
        assert_eq!(Token::unpack(0), None);
    }
}
