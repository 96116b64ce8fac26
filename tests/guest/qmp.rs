//! A QMP client for tests: it speaks to the monitor over its Unix socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// A QMP session that keeps the events it reads until they are asked for.
pub struct Qmp {
    r: BufReader<UnixStream>,
    w: UnixStream,
    /// Events read and not taken yet.
    pub events: Vec<String>,
    /// The server's greeting line.
    pub greeting: String,
}

#[allow(dead_code, reason = "not every suite uses every call")]
impl Qmp {
    /// Connects to the socket at `path` (waiting up to 30 s for it),
    /// checks the greeting and negotiates capabilities.
    pub fn connect(path: &Path) -> Qmp {
        let until = Instant::now() + Duration::from_secs(30);
        let s = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) => {
                    assert!(Instant::now() < until, "QMP at {}: {e}", path.display());
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut q =
            Qmp { r: BufReader::new(s.try_clone().unwrap()), w: s, events: Vec::new(), greeting: String::new() };
        q.greeting = q.line();
        assert!(q.greeting.starts_with(r#"{"QMP":"#), "greeting: {}", q.greeting);
        assert_eq!(q.cmd(r#"{"execute":"qmp_capabilities"}"#), r#"{"return":{}}"#);
        q
    }

    /// The next line from the server.
    pub fn line(&mut self) -> String {
        let mut l = String::new();
        self.r.read_line(&mut l).expect("a QMP line");
        assert!(!l.is_empty(), "the monitor closed the connection");
        l.trim().to_string()
    }

    /// Sends `json` and returns the reply; the events that come before it
    /// are kept. One write: the monitor runs a command as soon as its JSON
    /// is whole, so after `quit` a second write for the newline could find
    /// the process gone.
    pub fn cmd(&mut self, json: &str) -> String {
        self.w.write_all(format!("{json}\n").as_bytes()).unwrap();
        loop {
            let l = self.line();
            if l.starts_with(r#"{"return""#) || l.starts_with(r#"{"error""#) {
                return l;
            }
            assert!(l.contains(r#""event":"#), "a reply or an event: {l}");
            self.events.push(l);
        }
    }

    /// Polls `query-migrate` until the migration completed or failed, or
    /// `within` passed; the last reply.
    pub fn migration_end(&mut self, within: Duration) -> String {
        let t = Instant::now();
        loop {
            let r = self.cmd(r#"{"execute":"query-migrate"}"#);
            let over = r.contains(r#""status":"completed""#) || r.contains(r#""status":"failed""#);
            if over || t.elapsed() >= within {
                return r;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The first event named `name` not taken yet, waiting for it.
    pub fn event(&mut self, name: &str) -> String {
        let tag = format!(r#""event":"{name}""#);
        loop {
            if let Some(i) = self.events.iter().position(|e| e.contains(&tag)) {
                return self.events.remove(i);
            }
            let l = self.line();
            assert!(l.contains(r#""event":"#), "an event: {l}");
            self.events.push(l);
        }
    }
}
