//! QEMU-style `-vnc` display specifications.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

/// First TCP port of the RFB displays (display N listens on 5900+N).
pub const RFB_BASE_PORT: u16 = 5900;
/// First TCP port of the WebSocket displays (`websocket=on` listens on 5700+N).
pub const WEBSOCKET_BASE_PORT: u16 = 5700;

/// Where the RFB listener goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VncListen {
    /// `HOST:N`: TCP port 5900+N on HOST (empty host: all interfaces).
    Tcp {
        /// Host name or address (brackets removed); empty for all interfaces.
        host: String,
        /// Display number.
        display: u16,
    },
    /// `unix:PATH`.
    Unix(PathBuf),
    /// `none`: no RFB listener (the display exists and a password can be set).
    None,
}

/// A parsed display specification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VncSpec {
    /// The RFB listener.
    pub listen: VncListen,
    /// WebSocket listener: host (empty: same as the RFB host) and port.
    pub websocket: Option<(String, u16)>,
    /// `password=on`: VNC Authentication is required (the password is set later).
    pub password: bool,
    /// `to=L`: when the display's port is taken, try the following displays up to L.
    pub to: Option<u16>,
}

impl VncSpec {
    /// The RFB port of display `display`.
    pub fn port_for(display: u16) -> Option<u16> {
        RFB_BASE_PORT.checked_add(display)
    }

    /// The displays to try in order (just the display unless `to` is given).
    pub fn displays(&self) -> Vec<u16> {
        match &self.listen {
            VncListen::Tcp { display, .. } => {
                let last = self.to.unwrap_or(*display).max(*display);
                (*display..=last).collect()
            }
            _ => Vec::new(),
        }
    }

    /// The socket addresses for the RFB listener of `display` (usually from [`Self::displays`]).
    pub fn rfb_addrs(&self, display: u16) -> io::Result<Vec<SocketAddr>> {
        match &self.listen {
            VncListen::Tcp { host, .. } => {
                let port = Self::port_for(display)
                    .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "display number too large"))?;
                resolve(host, port)
            }
            _ => Ok(Vec::new()),
        }
    }

    /// The socket address of the WebSocket listener, if any.
    pub fn websocket_addr(&self) -> io::Result<Option<SocketAddr>> {
        let Some((host, port)) = &self.websocket else { return Ok(None) };
        let host = if host.is_empty() {
            match &self.listen {
                VncListen::Tcp { host, .. } => host.as_str(),
                _ => "",
            }
        } else {
            host.as_str()
        };
        Ok(resolve(host, *port)?.into_iter().next())
    }
}

fn resolve(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    if host.is_empty() {
        return Ok(vec![SocketAddr::from(([0, 0, 0, 0], port))]);
    }
    Ok((host, port).to_socket_addrs()?.collect())
}

/// Splits `HOST:PORT`, with brackets around IPv6 hosts.
fn split_host(s: &str) -> Result<(String, &str), String> {
    let (host, rest) = if let Some(inner) = s.strip_prefix('[') {
        let (h, r) = inner.split_once(']').ok_or_else(|| format!("missing ']' in {s:?}"))?;
        (h.to_string(), r.strip_prefix(':').ok_or_else(|| format!("missing ':' after ']' in {s:?}"))?)
    } else {
        let (h, r) = s.rsplit_once(':').ok_or_else(|| format!("expected HOST:DISPLAY, got {s:?}"))?;
        (h.to_string(), r)
    };
    Ok((host, rest))
}

fn number(what: &str, s: &str) -> Result<u16, String> {
    s.parse::<u16>().map_err(|_| format!("invalid {what} {s:?}"))
}

fn on_off(name: &str, v: Option<&str>) -> Result<bool, String> {
    match v {
        None | Some("on") | Some("yes") | Some("true") => Ok(true),
        Some("off") | Some("no") | Some("false") => Ok(false),
        Some(other) => Err(format!("invalid value {other:?} for {name} (expected on or off)")),
    }
}

/// Parses a QEMU-style display spec: `HOST:N`, `:N`, `unix:PATH` or `none`, followed by
/// comma-separated options `websocket` / `websocket=on|PORT|HOST:PORT` (bare or `on`: port
/// 5700+N), `password[=on|off]` and `to=L`. Unknown options are an error that names them;
/// as in QEMU, `unix:` takes neither `to=` nor `websocket=on` (a WebSocket port is TCP).
pub fn parse_vnc_spec(spec: &str) -> Result<VncSpec, String> {
    let mut parts = spec.split(',');
    let head = parts.next().unwrap_or("").trim();
    let listen = if head == "none" {
        VncListen::None
    } else if let Some(path) = head.strip_prefix("unix:") {
        if path.is_empty() {
            return Err("empty unix socket path".into());
        }
        VncListen::Unix(PathBuf::from(path))
    } else {
        let (host, d) = split_host(head)?;
        let display = number("display number", d)?;
        if VncSpec::port_for(display).is_none() {
            return Err(format!("display number {display} is too large"));
        }
        VncListen::Tcp { host, display }
    };
    let mut out = VncSpec { listen, websocket: None, password: false, to: None };
    let mut unknown = Vec::new();
    for opt in parts {
        let opt = opt.trim();
        if opt.is_empty() {
            continue;
        }
        let (name, value) = match opt.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (opt, None),
        };
        match name {
            "websocket" => {
                out.websocket = match value {
                    None | Some("on") => {
                        let VncListen::Tcp { display, .. } = out.listen else {
                            return Err("websocket=on needs a TCP display; give websocket=PORT".into());
                        };
                        let port = WEBSOCKET_BASE_PORT
                            .checked_add(display)
                            .ok_or_else(|| format!("display number {display} is too large"))?;
                        Some((String::new(), port))
                    }
                    Some("off") => None,
                    Some(v) if v.contains(':') => {
                        let (h, p) = split_host(v)?;
                        Some((h, number("websocket port", p)?))
                    }
                    Some(v) => Some((String::new(), number("websocket port", v)?)),
                }
            }
            "password" => out.password = on_off("password", value)?,
            "to" => {
                let v = value.ok_or("to= needs a display number")?;
                out.to = Some(number("to= display number", v)?);
            }
            _ => unknown.push(name.to_string()),
        }
    }
    if !unknown.is_empty() {
        return Err(format!("unsupported VNC option(s): {}", unknown.join(", ")));
    }
    if matches!(out.listen, VncListen::Unix(_)) && out.to.is_some() {
        return Err("Port range not supported with a UNIX socket (to=)".into());
    }
    Ok(out)
}
