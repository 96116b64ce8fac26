//! Parsing of QEMU's monitor-related command-line options.

use std::path::PathBuf;

use crate::{ChardevSpec, Endpoint, Mode};

/// Parses a QEMU boolean option value.
fn parse_bool(key: &str, v: &str) -> Result<bool, String> {
    match v {
        "on" | "yes" | "true" | "y" => Ok(true),
        "off" | "no" | "false" | "n" => Ok(false),
        _ => Err(format!("Parameter '{key}' expects 'on' or 'off'")),
    }
}

/// Splits `a=b,c,d=e` into (key, value) pairs; `,,` is a literal comma.
fn split_opts(s: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    let mut parts = Vec::new();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                cur.push(',');
            } else {
                parts.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
    }
    parts.push(cur);
    for p in parts {
        match p.split_once('=') {
            Some((k, v)) => out.push((k.to_string(), Some(v.to_string()))),
            None => out.push((p, None)),
        }
    }
    out
}

/// Splits `PATH,opt,opt` at the first unescaped comma (`,,` is a literal comma).
fn split_first(s: &str) -> (String, &str) {
    let bytes = s.as_bytes();
    let mut head = String::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b',' {
            if bytes.get(i + 1) == Some(&b',') {
                head.push(',');
                i += 2;
                continue;
            }
            return (head, &s[i + 1..]);
        }
        let ch = s[i..].chars().next().unwrap_or(',');
        head.push(ch);
        i += ch.len_utf8();
    }
    (head, "")
}

/// Server/wait options shared by both syntaxes.
struct ServerOpts {
    server: Option<bool>,
    wait: Option<bool>,
}

impl ServerOpts {
    fn new() -> Self {
        ServerOpts { server: None, wait: None }
    }

    /// Handles `server`, `wait`, `nowait`, `nodelay`; returns false for other keys.
    fn handle(&mut self, k: &str, v: Option<&str>) -> Result<bool, String> {
        match (k, v) {
            ("server", None) => self.server = Some(true),
            ("server", Some(v)) => self.server = Some(parse_bool(k, v)?),
            ("wait", None) => self.wait = Some(true),
            ("wait", Some(v)) => self.wait = Some(parse_bool(k, v)?),
            ("nowait", None) => self.wait = Some(false),
            ("nodelay", None) => {}
            ("nodelay", Some(v)) => {
                parse_bool(k, v)?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn finish(self, endpoint: Endpoint) -> Result<ChardevSpec, String> {
        if self.server != Some(true) {
            return Err("client mode sockets (server=off) are not supported; use server=on".into());
        }
        Ok(ChardevSpec { endpoint, server: true, wait: self.wait.unwrap_or(true) })
    }
}

fn unsupported(k: &str) -> String {
    match k {
        "telnet" | "tn3270" | "websocket" | "reconnect" | "tls-creds" | "tls-authz" | "mux" | "logfile"
        | "logappend" | "ipv4" | "ipv6" | "to" | "abstract" | "tight" | "fd" => {
            format!("monitor socket option '{k}' is not supported")
        }
        _ => format!("Invalid parameter '{k}'"),
    }
}

fn parse_port(p: &str) -> Result<u16, String> {
    p.parse::<u16>().map_err(|_| format!("invalid port '{p}'"))
}

/// Parses QEMU's `-qmp` / `-monitor` / `-serial mon:` device specs:
/// `unix:PATH,server=on,wait=off`, `unix:PATH,server,nowait`,
/// `tcp:HOST:PORT,server=on,wait=off` (`tcp::PORT` means all interfaces),
/// `stdio`, and `none` (→ `Ok(None)`). A leading `mon:` is accepted and
/// ignored. Client mode (no `server`) and options such as `telnet`,
/// `websocket` or `reconnect` are refused with an error naming them.
pub fn parse_chardev_uri(spec: &str) -> Result<Option<ChardevSpec>, String> {
    let spec = spec.strip_prefix("mon:").unwrap_or(spec);
    if spec == "none" {
        return Ok(None);
    }
    if spec == "stdio" {
        return Ok(Some(ChardevSpec { endpoint: Endpoint::Stdio, server: false, wait: false }));
    }
    let (endpoint, rest) = if let Some(rest) = spec.strip_prefix("unix:") {
        let (path, rest) = split_first(rest);
        if path.is_empty() {
            return Err(format!("'{spec}': missing socket path"));
        }
        (Endpoint::Unix(PathBuf::from(path)), rest)
    } else if let Some(rest) = spec.strip_prefix("tcp:") {
        let (addr, rest) = split_first(rest);
        let (host, port) = addr.rsplit_once(':').ok_or_else(|| format!("'{spec}': expected tcp:HOST:PORT"))?;
        if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
            return Err(format!("'{spec}': IPv6 addresses must be written in brackets"));
        }
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        (Endpoint::Tcp(host.to_string(), parse_port(port)?), rest)
    } else {
        let kind = spec.split([':', ',']).next().unwrap_or(spec);
        return Err(format!("monitor device '{kind}' is not supported (use unix:, tcp:, stdio or none)"));
    };
    let mut opts = ServerOpts::new();
    if !rest.is_empty() {
        for (k, v) in split_opts(rest) {
            if !opts.handle(&k, v.as_deref())? {
                return Err(unsupported(&k));
            }
        }
    }
    opts.finish(endpoint).map(Some)
}

/// Parses `-chardev socket,id=ID,path=P,server=on,wait=off`,
/// `-chardev socket,id=ID,host=H,port=N,server=on,wait=off` and
/// `-chardev stdio,id=ID` into (id, spec).
pub fn parse_chardev(spec: &str) -> Result<(String, ChardevSpec), String> {
    let mut opts = split_opts(spec).into_iter();
    let backend = match opts.next() {
        Some((b, None)) if !b.is_empty() => b,
        Some((k, Some(v))) if k == "backend" => v,
        _ => return Err("chardev: missing backend type".into()),
    };
    let mut id = None;
    let mut path = None;
    let mut host = None;
    let mut port = None;
    let mut so = ServerOpts::new();
    for (k, v) in opts {
        match (k.as_str(), v) {
            ("id", Some(v)) => id = Some(v),
            ("path", Some(v)) if backend == "socket" => path = Some(v),
            ("host", Some(v)) if backend == "socket" => host = Some(v),
            ("port", Some(v)) if backend == "socket" => port = Some(v),
            ("signal", Some(v)) if backend == "stdio" => {
                parse_bool("signal", &v)?;
            }
            (k, v) if backend == "socket" => {
                if !so.handle(k, v.as_deref())? {
                    return Err(unsupported(k));
                }
            }
            (k, _) => return Err(unsupported(k)),
        }
    }
    let id = id.filter(|i| !i.is_empty()).ok_or_else(|| "Parameter 'id' is missing".to_string())?;
    match backend.as_str() {
        "stdio" => Ok((id, ChardevSpec { endpoint: Endpoint::Stdio, server: false, wait: false })),
        "socket" => {
            let endpoint = match (path, host, port) {
                (Some(p), None, None) => Endpoint::Unix(PathBuf::from(p)),
                (Some(_), _, _) => return Err("chardev: socket: 'path' cannot be combined with 'host'/'port'".into()),
                (None, None, _) => return Err("chardev: socket: no host given".into()),
                (None, Some(_), None) => return Err("chardev: socket: no port given".into()),
                (None, Some(h), Some(p)) => {
                    let h = h.strip_prefix('[').and_then(|x| x.strip_suffix(']')).unwrap_or(&h).to_string();
                    Endpoint::Tcp(h, parse_port(&p)?)
                }
            };
            Ok((id, so.finish(endpoint)?))
        }
        other => Err(format!("chardev backend '{other}' is not supported for monitors (use socket or stdio)")),
    }
}

/// Parses `-mon chardev=ID,mode=control|readline[,pretty=on|off]` into
/// (chardev id, mode). The default mode is `readline`, as in QEMU; `pretty`
/// has no effect on `readline`.
pub fn parse_mon(spec: &str) -> Result<(String, Mode), String> {
    let mut chardev = None;
    let mut mode = None;
    let mut pretty = false;
    for (k, v) in split_opts(spec) {
        match (k.as_str(), v) {
            ("chardev", Some(v)) => chardev = Some(v),
            ("mode", Some(v)) => match v.as_str() {
                "control" => mode = Some(true),
                "readline" => mode = Some(false),
                _ => return Err(format!("Parameter 'mode' does not accept value '{v}'")),
            },
            ("pretty", Some(v)) => pretty = parse_bool("pretty", &v)?,
            ("pretty", None) => pretty = true,
            ("id", Some(_)) => {}
            (k, _) => return Err(format!("Invalid parameter '{k}'")),
        }
    }
    let chardev = chardev.filter(|c| !c.is_empty()).ok_or_else(|| "Parameter 'chardev' is missing".to_string())?;
    let mode = if mode.unwrap_or(false) { Mode::Control { pretty } } else { Mode::Readline };
    Ok((chardev, mode))
}
