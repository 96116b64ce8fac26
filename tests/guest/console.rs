//! A running `ferrovm` whose serial console is its standard input and
//! output, for the tests that type at a guest and read what it prints.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running ferrovm whose serial console is its standard input and output.
pub struct Console {
    child: Child,
    out: Arc<Mutex<Vec<u8>>>,
}

impl Console {
    pub fn start(args: &[&str]) -> Console {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferrovm"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ferrovm runs");
        let mut stdout = child.stdout.take().expect("piped stdout");
        let out = Arc::new(Mutex::new(Vec::new()));
        let o = out.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                o.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Console { child, out }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    /// Waits until `want` has been printed `n` times, or the run ends, or
    /// `secs` pass (then it fails with what was printed).
    #[allow(dead_code, reason = "not every suite waits for a count of lines")]
    pub fn wait_for(&mut self, want: &str, n: usize, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let t = self.text();
            if t.matches(want).count() >= n {
                return t;
            }
            let ended = self.child.try_wait().ok().flatten().is_some();
            if ended || Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("no '{want}' (x{n}) within {secs} s:\n{t}\nstderr:\n{err}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn type_keys(&mut self, keys: &[u8]) {
        let stdin = self.child.stdin.as_mut().expect("piped stdin");
        stdin.write_all(keys).unwrap();
        stdin.flush().unwrap();
    }

    /// Types `keys`, then waits until the output holds `want` after what
    /// it held before (20 s at most); returns what came since.
    #[allow(dead_code, reason = "not every suite answers what it reads")]
    pub fn typed(&mut self, keys: &[u8], want: &str) -> String {
        let before = self.out.lock().unwrap().len();
        self.type_keys(keys);
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let now = String::from_utf8_lossy(&self.out.lock().unwrap()[before..]).into_owned();
            if now.contains(want) {
                return now;
            }
            assert!(Instant::now() < until, "after {keys:?}: {want:?} did not come; output since: {now:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the run to end by itself; its exit status and standard error.
    #[allow(dead_code, reason = "not every suite waits for the guest's end")]
    pub fn wait_end(mut self, secs: u64) -> (Option<i32>, String) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let status = self.child.wait().ok().and_then(|s| s.code());
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        (status, err)
    }
}

impl Console {
    /// Kills the run.
    #[allow(dead_code, reason = "not every suite stops a run before it drops it")]
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
