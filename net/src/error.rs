//! The crate's one error type: every message names the thing and the fix.

use std::io;
use std::path::PathBuf;

/// Why a backend could not be configured or opened. Once running, backends
/// never fail: bad frames and host socket errors are counted and logged.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A `--nic` option string could not be parsed.
    #[error("--nic {option}: {reason}")]
    BadOption {
        /// The offending `key=value` (or the whole string).
        option: String,
        /// What is wrong and what is accepted.
        reason: String,
    },

    /// The addresses given for the NAT do not fit together.
    #[error("user network: {0}")]
    BadConfig(String),

    /// A host port forward could not bind its listener.
    #[error("hostfwd {proto}:{addr}: cannot bind: {source}; pick a free port or another address")]
    HostFwdBind {
        /// "tcp" or "udp".
        proto: &'static str,
        /// The host address and port.
        addr: std::net::SocketAddr,
        /// The bind error.
        #[source]
        source: io::Error,
    },

    /// The hub's socket directory or socket could not be set up.
    #[error("hub {id}: {path}: {source}")]
    Hub {
        /// The hub id.
        id: String,
        /// The socket directory or socket path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A host interface backend (TAP or bridge) could not be set up.
    #[error("{backend}: {reason}")]
    Backend {
        /// "tap" or "bridge".
        backend: String,
        /// What failed, and what would fix it.
        reason: String,
    },

    /// The pcap file could not be created or written.
    #[error("pcap {path}: {source}; check that the directory exists and is writable")]
    Pcap {
        /// The capture file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// An operating-system call the backend needs failed (epoll, sockets).
    #[error("{what}: {source}")]
    Os {
        /// The call that failed.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl Error {
    pub(crate) fn os(what: &'static str, source: impl Into<io::Error>) -> Self {
        Error::Os { what, source: source.into() }
    }
}
