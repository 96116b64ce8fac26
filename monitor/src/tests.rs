use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::*;

/// Records commands; keeps a running flag for `query-status`.
struct Mock {
    log: Mutex<Vec<Command>>,
    running: Mutex<bool>,
}

impl Mock {
    fn new() -> Arc<Mock> {
        Arc::new(Mock { log: Mutex::new(Vec::new()), running: Mutex::new(true) })
    }

    fn log(&self) -> Vec<Command> {
        self.log.lock().clone()
    }

    fn wait_for(&self, c: &Command) -> bool {
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if self.log.lock().contains(c) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

impl Backend for Mock {
    fn execute(&self, cmd: Command) -> Result<Value, QmpError> {
        self.log.lock().push(cmd.clone());
        match cmd {
            Command::QueryStatus => {
                let r = *self.running.lock();
                Ok(json!({"running": r, "singlestep": false, "status": if r { "running" } else { "paused" }}))
            }
            Command::Stop => {
                *self.running.lock() = false;
                Ok(json!({}))
            }
            Command::Cont => {
                *self.running.lock() = true;
                Ok(json!({}))
            }
            Command::QueryCpusFast => Ok(json!([
                {"cpu-index": 0, "thread-id": 100, "target": "x86_64"},
                {"cpu-index": 1, "thread-id": 101, "target": "x86_64"}
            ])),
            Command::QueryBlock => Ok(json!([
                {"device": "ide0-hd0", "qdev": "/machine/unattached/device[20]", "removable": false, "locked": false,
                 "inserted": {"file": "disk.img", "drv": "raw", "ro": false, "encrypted": false,
                              "cache": {"writeback": true, "direct": false, "no-flush": false}}},
                {"device": "ide1-cd0", "qdev": "/machine/unattached/device[21]", "removable": true, "locked": false,
                 "tray_open": false}
            ])),
            Command::InfoSnapshots => Ok(json!([
                {"id": "1", "name": "snap1", "vm-state-size": 1_572_864, "date-sec": 1_700_000_000, "date-nsec": 0,
                 "vm-clock-sec": 3725, "vm-clock-nsec": 500_000_000}
            ])),
            Command::Eject { ref device, .. } if device.as_deref() == Some("nodev") => {
                Err(QmpError::new(ErrorClass::DeviceNotFound, "Device 'nodev' not found"))
            }
            _ => Ok(json!({})),
        }
    }
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A fresh empty directory under the system temp dir.
fn temp_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "monitor-test-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn monitor() -> (Arc<Mock>, Arc<Monitor>) {
    let mock = Mock::new();
    let mon = Monitor::new(mock.clone(), Version::qemu_7_2(" (test)"));
    (mock, mon)
}

struct Client {
    r: BufReader<Box<dyn Read + Send>>,
    w: Box<dyn Write + Send>,
}

impl Client {
    fn unix(path: &std::path::Path) -> Client {
        let s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Client { r: BufReader::new(Box::new(s.try_clone().unwrap())), w: Box::new(s) }
    }

    fn tcp(addr: std::net::SocketAddr) -> Client {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Client { r: BufReader::new(Box::new(s.try_clone().unwrap())), w: Box::new(s) }
    }

    fn send(&mut self, s: &str) {
        self.w.write_all(s.as_bytes()).unwrap();
        self.w.flush().unwrap();
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.r.read_line(&mut l).unwrap();
        l
    }

    fn recv(&mut self) -> Value {
        let l = self.line();
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("bad reply {l:?}: {e}"))
    }

    fn cmd(&mut self, s: &str) -> Value {
        self.send(s);
        self.send("\n");
        self.recv()
    }

    /// Reads the greeting and negotiates.
    fn negotiate(&mut self) {
        let g = self.recv();
        assert!(g.get("QMP").is_some(), "{g}");
        assert_eq!(self.cmd(r#"{"execute":"qmp_capabilities"}"#), json!({"return": {}}));
    }

    /// True if the peer closed the connection.
    fn at_eof(&mut self) -> bool {
        let mut l = String::new();
        // A close with unread input may show up as a reset.
        match self.r.read_line(&mut l) {
            Ok(n) => n == 0,
            Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
        }
    }
}

fn err(class: &str, desc: &str) -> Value {
    json!({"error": {"class": class, "desc": desc}})
}

fn unix_qmp(mon: &Arc<Monitor>) -> (PathBuf, PathBuf) {
    let dir = temp_dir();
    let path = dir.join("qmp.sock");
    let spec = ChardevSpec { endpoint: Endpoint::Unix(path.clone()), server: true, wait: false };
    mon.listen(&spec, Mode::Control { pretty: false }).unwrap();
    (dir, path)
}

fn tcp_qmp(mon: &Arc<Monitor>) -> std::net::SocketAddr {
    let spec = ChardevSpec { endpoint: Endpoint::Tcp("127.0.0.1".into(), 0), server: true, wait: false };
    mon.listen(&spec, Mode::Control { pretty: false }).unwrap().unwrap()
}

#[test]
fn greeting_and_negotiation_unix() {
    let (mock, mon) = monitor();
    let (dir, path) = unix_qmp(&mon);
    let mut c = Client::unix(&path);
    assert_eq!(
        c.recv(),
        json!({"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": " (test)"},
                        "capabilities": []}})
    );
    assert_eq!(
        c.cmd(r#"{"execute":"query-status","id":1}"#),
        json!({"error": {"class": "CommandNotFound", "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}, "id": 1})
    );
    assert_eq!(
        c.cmd(r#"{"execute":"qmp_capabilities","arguments":{"enable":["oob"]}}"#),
        err("GenericError", "Capability oob not available")
    );
    assert_eq!(
        c.cmd(r#"{"execute":"qmp_capabilities","arguments":{"enable":["bogus"]}}"#),
        err("GenericError", "Parameter 'enable[0]' does not accept value 'bogus'")
    );
    assert_eq!(c.cmd(r#"{"execute":"qmp_capabilities","id":"neg"}"#), json!({"return": {}, "id": "neg"}));
    assert_eq!(
        c.cmd(r#"{"execute":"qmp_capabilities"}"#),
        err("CommandNotFound", "Capabilities negotiation is already complete, command ignored")
    );
    assert_eq!(
        c.cmd(r#"{"execute":"query-status"}"#),
        json!({"return": {"running": true, "singlestep": false, "status": "running"}})
    );
    assert_eq!(mock.log(), vec![Command::QueryStatus]);
    let v = c.cmd(r#"{"execute":"query-version"}"#);
    assert_eq!(v["return"]["qemu"]["major"], 7);
    let cmds = c.cmd(r#"{"execute":"query-commands"}"#);
    let names: Vec<&str> = cmds["return"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    for n in ["query-status", "stop", "cont", "quit", "screendump", "human-monitor-command", "qmp_capabilities"] {
        assert!(names.contains(&n), "{n} missing");
    }
    // The monitor answers these itself.
    assert_eq!(mock.log(), vec![Command::QueryStatus]);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn envelope_and_argument_validation_tcp() {
    let (mock, mon) = monitor();
    let addr = tcp_qmp(&mon);
    let mut c = Client::tcp(addr);
    c.negotiate();
    let g = "GenericError";
    let cases: &[(&str, Value)] = &[
        (r#"[1,2]"#, err(g, "QMP input must be a JSON object")),
        (r#""stop""#, err(g, "QMP input must be a JSON object")),
        (r#"{"id": 5}"#, json!({"error": {"class": g, "desc": "QMP input lacks member 'execute'"}, "id": 5})),
        (r#"{"execute": 1}"#, err(g, "QMP input member 'execute' must be a string")),
        (r#"{"execute": "stop", "arguments": []}"#, err(g, "QMP input member 'arguments' must be an object")),
        (r#"{"execute": "stop", "foo": 1}"#, err(g, "QMP input member 'foo' is unexpected")),
        (r#"{"exec-oob": "stop"}"#, err(g, "QMP input member 'exec-oob' is unexpected")),
        (
            r#"{"execute": "nosuch", "id": {"a": [1]}}"#,
            json!({"error": {"class": "CommandNotFound", "desc": "The command nosuch has not been found"}, "id": {"a": [1]}}),
        ),
        (r#"{"execute": "stop", "arguments": {"x": 1}}"#, err(g, "Parameter 'x' is unexpected")),
        (r#"{"execute": "screendump"}"#, err(g, "Parameter 'filename' is missing")),
        (
            r#"{"execute": "screendump", "arguments": {"filename": 3}}"#,
            err(g, "Invalid parameter type for 'filename', expected: string"),
        ),
        (
            r#"{"execute": "screendump", "arguments": {"filename": "a", "format": "jpg"}}"#,
            err(g, "Parameter 'format' does not accept value 'jpg'"),
        ),
        (
            r#"{"execute": "eject", "arguments": {"device": "cd", "force": "yes"}}"#,
            err(g, "Invalid parameter type for 'force', expected: boolean"),
        ),
        (
            r#"{"execute": "blockdev-change-medium", "arguments": {"id": "cd"}}"#,
            err(g, "Parameter 'filename' is missing"),
        ),
        (
            r#"{"execute": "blockdev-change-medium", "arguments": {"id": "cd", "filename": "x", "read-only-mode": "rw"}}"#,
            err(g, "Parameter 'read-only-mode' does not accept value 'rw'"),
        ),
        (r#"{"execute": "migrate", "arguments": {}}"#, err(g, "Parameter 'uri' is missing")),
        (r#"{"execute": "migrate-set-capabilities"}"#, err(g, "Parameter 'capabilities' is missing")),
        (
            r#"{"execute": "migrate-set-capabilities", "arguments": {"capabilities": [{"capability": "xbzrle"}]}}"#,
            err(g, "Parameter 'capabilities[0].state' is missing"),
        ),
        (
            r#"{"execute": "migrate-set-capabilities", "arguments": {"capabilities": [{"capability": "x", "state": true, "z": 1}]}}"#,
            err(g, "Parameter 'capabilities[0].z' is unexpected"),
        ),
        (
            r#"{"execute": "set_password", "arguments": {"protocol": "rdp", "password": "x"}}"#,
            err(g, "Parameter 'protocol' does not accept value 'rdp'"),
        ),
        (r#"{"execute": "set_password", "arguments": {"protocol": "vnc"}}"#, err(g, "Parameter 'password' is missing")),
        (r#"{"execute": "human-monitor-command"}"#, err(g, "Parameter 'command-line' is missing")),
        (
            r#"{"execute": "eject", "arguments": {"device": "nodev"}, "id": "e"}"#,
            json!({"error": {"class": "DeviceNotFound", "desc": "Device 'nodev' not found"}, "id": "e"}),
        ),
    ];
    for (req, want) in cases {
        assert_eq!(&c.cmd(req), want, "request {req}");
    }
    // Only the last (valid) eject reached the backend.
    assert_eq!(mock.log(), vec![Command::Eject { device: Some("nodev".into()), id: None, force: false }]);
    mock.log.lock().clear();

    let ok = json!({"return": {}});
    let valid = [
        r#"{"execute": "stop"}"#,
        r#"{"execute": "cont"}"#,
        r#"{"execute": "system_reset"}"#,
        r#"{"execute": "system_powerdown"}"#,
        r#"{"execute": "screendump", "arguments": {"filename": "/tmp/x.png", "format": "png"}}"#,
        r#"{"execute": "eject", "arguments": {"id": "cd0", "force": true}}"#,
        r#"{"execute": "blockdev-change-medium", "arguments": {"device": "ide1-cd0", "filename": "a.iso", "format": "raw", "read-only-mode": "read-only"}}"#,
        r#"{"execute": "migrate", "arguments": {"uri": "exec:cat > /dev/null"}}"#,
        r#"{"execute": "migrate_cancel"}"#,
        r#"{"execute": "migrate-incoming", "arguments": {"uri": "tcp:0:4444"}}"#,
        r#"{"execute": "migrate-set-capabilities", "arguments": {"capabilities": [{"capability": "xbzrle", "state": true}]}}"#,
        r#"{"execute": "set_password", "arguments": {"protocol": "vnc", "password": "secret"}}"#,
    ];
    for req in valid {
        assert_eq!(c.cmd(req), ok, "request {req}");
    }
    assert_eq!(
        mock.log(),
        vec![
            Command::Stop,
            Command::Cont,
            Command::SystemReset,
            Command::SystemPowerdown,
            Command::Screendump { filename: "/tmp/x.png".into(), format: Some("png".into()), device: None },
            Command::Eject { device: None, id: Some("cd0".into()), force: true },
            Command::BlockdevChangeMedium {
                device: Some("ide1-cd0".into()),
                id: None,
                filename: "a.iso".into(),
                format: Some("raw".into()),
                read_only_mode: Some("read-only".into()),
            },
            Command::Migrate { uri: "exec:cat > /dev/null".into() },
            Command::MigrateCancel,
            Command::MigrateIncoming { uri: "tcp:0:4444".into() },
            Command::MigrateSetCapabilities { capabilities: vec![("xbzrle".into(), true)] },
            Command::SetPassword { protocol: "vnc".into(), password: "secret".into() },
        ]
    );
    // ids of every JSON type are echoed.
    for id in [r#""s""#, "7", "1.5", "null", "true", "[1,{}]"] {
        let v = c.cmd(&format!(r#"{{"execute": "query-kvm", "id": {id}}}"#));
        assert_eq!(v["id"], serde_json::from_str::<Value>(id).unwrap());
    }
}

#[test]
fn malformed_json_then_valid_command() {
    let (_mock, mon) = monitor();
    let addr = tcp_qmp(&mon);
    let mut c = Client::tcp(addr);
    c.negotiate();
    let v = c.cmd(r#"{"execute": "stop",, }"#);
    assert_eq!(v["error"]["class"], "GenericError");
    assert!(v["error"]["desc"].as_str().unwrap().starts_with("JSON parse error"), "{v}");
    // Unterminated string: the newline resyncs.
    let v = c.cmd("{\"execute\": \"sto");
    assert!(v["error"]["desc"].as_str().unwrap().starts_with("JSON parse error"), "{v}");
    let v = c.cmd("}");
    assert!(v["error"]["desc"].as_str().unwrap().starts_with("JSON parse error"), "{v}");
    let v = c.cmd("\u{1}");
    assert!(v["error"]["desc"].as_str().unwrap().starts_with("JSON parse error"), "{v}");
    assert_eq!(c.cmd(r#"{"execute": "stop", "id": 2}"#), json!({"return": {}, "id": 2}));
    // Two requests in one write, one split over two writes.
    c.send(r#"{"execute":"cont","id":"a"}{"execute":"cont","#);
    c.send(r#""id":"b"}"#);
    assert_eq!(c.recv()["id"], "a");
    assert_eq!(c.recv()["id"], "b");
}

#[test]
fn oversized_message_closes_connection() {
    let (_mock, mon) = monitor();
    let addr = tcp_qmp(&mon);
    let mut c = Client::tcp(addr);
    c.negotiate();
    let mut big = String::from(r#"{"execute": "stop", "arguments": {"x": ""#);
    big.push_str(&"a".repeat(MAX_QMP_MESSAGE + 10));
    // The server may close before reading everything; ignore write errors.
    let _ = c.w.write_all(big.as_bytes());
    let v = c.recv();
    assert_eq!(v["error"]["class"], "GenericError");
    assert!(v["error"]["desc"].as_str().unwrap().contains("exceeds"), "{v}");
    assert!(c.at_eof());
    // The listener still serves the next client.
    let mut c2 = Client::tcp(addr);
    c2.negotiate();
}

#[test]
fn client_disconnect_mid_command_then_next_client() {
    let (mock, mon) = monitor();
    let (dir, path) = unix_qmp(&mon);
    let mut c = Client::unix(&path);
    c.negotiate();
    c.send(r#"{"execute": "stop", "argu"#);
    drop(c);
    let mut c2 = Client::unix(&path);
    c2.negotiate();
    assert_eq!(c2.cmd(r#"{"execute":"cont"}"#), json!({"return": {}}));
    assert_eq!(mock.log(), vec![Command::Cont]);
    // A client that never reads its replies and leaves.
    let mut c3 = Client::unix(&path);
    drop(c2);
    c3.negotiate();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn events_reach_only_negotiated_clients() {
    let (_mock, mon) = monitor();
    let addr1 = tcp_qmp(&mon);
    let addr2 = tcp_qmp(&mon);
    let mut a = Client::tcp(addr1);
    a.negotiate();
    let mut b = Client::tcp(addr2);
    let _greeting = b.recv();
    // Make sure b's session is registered before emitting.
    assert_eq!(b.cmd(r#"{"execute":"stop"}"#)["error"]["class"], "CommandNotFound");
    mon.emit(Event::Stop);
    mon.emit(Event::Shutdown { guest: false, reason: "host-qmp-quit".into() });
    mon.emit(Event::DeviceTrayMoved { device: "ide1-cd0".into(), id: "cd0".into(), tray_open: true });
    mon.emit(Event::Migration { status: "completed".into() });
    let e = a.recv();
    assert_eq!(e["event"], "STOP");
    assert!(e.get("data").is_none());
    assert!(e["timestamp"]["seconds"].as_u64().unwrap() > 1_600_000_000);
    assert!(e["timestamp"]["microseconds"].as_u64().unwrap() < 1_000_000);
    let e = a.recv();
    assert_eq!(e["event"], "SHUTDOWN");
    assert_eq!(e["data"], json!({"guest": false, "reason": "host-qmp-quit"}));
    let e = a.recv();
    assert_eq!(e["data"], json!({"device": "ide1-cd0", "id": "cd0", "tray-open": true}));
    let e = a.recv();
    assert_eq!(e["data"], json!({"status": "completed"}));
    // b gets no events: its next line is the reply to its next request.
    assert_eq!(b.cmd(r#"{"execute":"qmp_capabilities","id":9}"#), json!({"return": {}, "id": 9}));
    mon.emit(Event::Reset { guest: true, reason: "guest-reset".into() });
    assert_eq!(b.recv()["data"], json!({"guest": true, "reason": "guest-reset"}));
    assert_eq!(a.recv()["event"], "RESET");
}

#[test]
fn quit_replies_before_backend_quits() {
    let (mock, mon) = monitor();
    let addr = tcp_qmp(&mon);
    let mut c = Client::tcp(addr);
    c.negotiate();
    assert_eq!(c.cmd(r#"{"execute":"quit","id":1}"#), json!({"return": {}, "id": 1}));
    assert!(mock.wait_for(&Command::Quit));
    assert!(c.at_eof());
}

#[test]
fn human_monitor_command() {
    let (mock, mon) = monitor();
    let addr = tcp_qmp(&mon);
    let mut c = Client::tcp(addr);
    c.negotiate();
    let hmp = |c: &mut Client, line: &str| {
        c.cmd(
            &serde_json::to_string(&json!({"execute": "human-monitor-command", "arguments": {"command-line": line}}))
                .unwrap(),
        )
    };
    assert_eq!(hmp(&mut c, "info status"), json!({"return": "VM status: running\r\n"}));
    assert_eq!(hmp(&mut c, "stop"), json!({"return": ""}));
    assert_eq!(hmp(&mut c, "info status"), json!({"return": "VM status: paused\r\n"}));
    assert_eq!(hmp(&mut c, "bogus"), json!({"return": "unknown command: 'bogus'\r\n"}));
    assert_eq!(hmp(&mut c, "info version"), json!({"return": "7.2.0 (test)\r\n"}));
    assert_eq!(mock.log(), vec![Command::QueryStatus, Command::Stop, Command::QueryStatus]);
}

#[test]
fn hmp_session_over_unix_socket() {
    let (mock, mon) = monitor();
    let dir = temp_dir();
    let path = dir.join("hmp.sock");
    let spec = ChardevSpec { endpoint: Endpoint::Unix(path.clone()), server: true, wait: false };
    mon.listen(&spec, Mode::Readline).unwrap();
    let mut c = Client::unix(&path);
    assert_eq!(c.line(), "ferrovm monitor - type 'help' for more information\r\n");
    let expect = |c: &mut Client, line: &str, want: &str| {
        c.send(line);
        c.send("\r\n");
        let mut got = vec![0u8; "(qemu) ".len() + want.len()];
        c.r.read_exact(&mut got).unwrap();
        assert_eq!(String::from_utf8(got).unwrap(), format!("(qemu) {want}"), "line {line}");
    };
    expect(&mut c, "info status", "VM status: running\r\n");
    expect(&mut c, "stop", "");
    expect(&mut c, "info status", "VM status: paused\r\n");
    expect(&mut c, "c", "");
    expect(&mut c, "xyz 1 2", "unknown command: 'xyz'\r\n");
    expect(&mut c, "info nothing", "unknown command: 'info nothing'\r\n");
    expect(&mut c, "loadvm", "loadvm: string expected\r\n");
    expect(&mut c, "stop now", "stop: extraneous characters at the end of line\r\n");
    expect(&mut c, "eject nodev", "Error: Device 'nodev' not found\r\n");
    expect(&mut c, "", "");
    c.send("quit\n");
    let mut rest = String::new();
    let _ = c.r.read_to_string(&mut rest);
    assert_eq!(rest, "(qemu) ");
    assert!(mock.wait_for(&Command::Quit));
    assert_eq!(
        mock.log(),
        vec![
            Command::QueryStatus,
            Command::Stop,
            Command::QueryStatus,
            Command::Cont,
            Command::Eject { device: Some("nodev".into()), id: None, force: false },
            Command::Quit
        ]
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn hmp_commands_map_to_commands() {
    let (mock, mon) = monitor();
    for line in [
        "savevm s1",
        "loadvm s1",
        "delvm s1",
        "migrate -d tcp:localhost:4444",
        "migrate_cancel",
        "screendump /tmp/a.png -f png",
        "screendump /tmp/a.ppm",
        "eject -f ide1-cd0",
        "change ide1-cd0 /tmp/b.iso raw",
        "change vnc password s3cret",
        "set_password vnc \"two words\"",
        "system_reset",
        "system_powerdown",
        "migrate_set_capability auto-converge on",
        "migrate_set_parameter downtime-limit 50",
        "migrate_set_parameter max-bandwidth 100",
        "migrate_set_parameter max-bandwidth 512K",
        "migrate_set_parameter cpu-throttle-increment 5",
    ] {
        assert_eq!(mon.hmp_command(line), "", "{line}");
    }
    assert_eq!(
        mock.log(),
        vec![
            Command::SaveVm { name: "s1".into() },
            Command::LoadVm { name: "s1".into() },
            Command::DelVm { name: "s1".into() },
            Command::Migrate { uri: "tcp:localhost:4444".into() },
            Command::MigrateCancel,
            Command::Screendump { filename: "/tmp/a.png".into(), format: Some("png".into()), device: None },
            Command::Screendump { filename: "/tmp/a.ppm".into(), format: None, device: None },
            Command::Eject { device: Some("ide1-cd0".into()), id: None, force: true },
            Command::BlockdevChangeMedium {
                device: Some("ide1-cd0".into()),
                id: None,
                filename: "/tmp/b.iso".into(),
                format: Some("raw".into()),
                read_only_mode: None,
            },
            Command::SetPassword { protocol: "vnc".into(), password: "s3cret".into() },
            Command::SetPassword { protocol: "vnc".into(), password: "two words".into() },
            Command::SystemReset,
            Command::SystemPowerdown,
            Command::MigrateSetCapabilities { capabilities: vec![("auto-converge".into(), true)] },
            Command::MigrateSetParameters { parameters: vec![("downtime-limit".into(), 50)] },
            Command::MigrateSetParameters { parameters: vec![("max-bandwidth".into(), 100 << 20)] },
            Command::MigrateSetParameters { parameters: vec![("max-bandwidth".into(), 512 << 10)] },
            Command::MigrateSetParameters { parameters: vec![("cpu-throttle-increment".into(), 5)] },
        ]
    );
    mock.log.lock().clear();
    for (line, error) in [
        ("migrate_set_capability auto-converge maybe", "Parameter 'state' expects 'on' or 'off', not 'maybe'"),
        ("migrate_set_parameter downtime-limit 1.5", "Parameter 'downtime-limit' expects a non-negative integer"),
        ("migrate_set_parameter max-bandwidth 10X", "Parameter 'max-bandwidth' expects a size, such as 100M"),
        ("migrate_set_parameter max-bandwidth 99999999999T", "Parameter 'max-bandwidth' expects a size, such as 100M"),
        ("migrate_set_parameter multifd-channels 4", "'multifd-channels' is not a parameter ferrovm takes"),
    ] {
        let out = mon.hmp_command(line);
        assert!(out.starts_with("Error: ") && out.contains(error), "{line}: {out}");
    }
    assert!(mock.log().is_empty(), "a refused line runs nothing");
    mock.log.lock().clear();
    assert_eq!(mon.hmp_command("savevm"), "");
    assert!(matches!(&mock.log()[0], Command::SaveVm { name } if name.starts_with("vm-2") && name.len() == 17));
    assert_eq!(mon.hmp_command("info cpus"), "* CPU #0: thread_id=100\r\n  CPU #1: thread_id=101\r\n");
    assert_eq!(
        mon.hmp_command("info block"),
        "ide0-hd0: disk.img (raw)\r\n    Attached to:      /machine/unattached/device[20]\r\n    Cache mode:       writeback\r\n\
         \r\nide1-cd0: [not inserted]\r\n    Attached to:      /machine/unattached/device[21]\r\n    Removable device: not locked, tray closed\r\n"
    );
    let snaps = mon.hmp_command("info snapshots");
    assert!(snaps.starts_with("List of snapshots present on all disks:\r\nID"), "{snaps}");
    assert!(snaps.contains("snap1"), "{snaps}");
    assert!(snaps.contains("1.5 MiB"), "{snaps}");
    assert!(snaps.contains(&crate::local_time(1_700_000_000, "%Y-%m-%d %H:%M:%S")), "{snaps}");
    assert!(snaps.contains("0001:02:05.500"), "{snaps}");
    assert!(mon.hmp_command("help").contains("info [subcommand]"));
    assert!(mon.hmp_command("info").contains("info status"));
    assert_eq!(mon.hmp_command("change vnc foo"), "Error: Expected 'password' after 'vnc'\r\n");
    assert_eq!(mon.hmp_command("screendump a -f gif"), "Error: Parameter 'format' does not accept value 'gif'\r\n");
    assert_eq!(mon.hmp_command("migrate -b x"), "migrate: unsupported option -b\r\n");
    assert_eq!(mon.hmp_command("\"unterminated"), "unterminated string\r\n");
}

#[test]
fn run_hmp_in_memory_and_long_lines() {
    let (mock, mon) = monitor();
    let mut input = Vec::new();
    input.extend_from_slice(b"info status\n");
    input.extend(std::iter::repeat_n(b'x', 10_000));
    input.extend_from_slice(b"\nq\ninfo status\n");
    let mut out = Vec::new();
    mon.run_hmp(&input[..], &mut out).unwrap();
    let out = String::from_utf8(out).unwrap();
    assert_eq!(
        out,
        "ferrovm monitor - type 'help' for more information\r\n(qemu) VM status: running\r\n\
         (qemu) Error: command line too long\r\n(qemu) "
    );
    assert_eq!(mock.log(), vec![Command::QueryStatus, Command::Quit]);
}

#[test]
fn hmp_on_a_shared_raw_terminal() {
    let (mock, mon) = monitor();
    let mut t = HmpTerminal::new(mon);
    assert_eq!(t.focus_in(), "ferrovm monitor - type 'help' for more information\r\n(qemu) ");
    // Keys echo; Enter (CR LF is one) runs the line.
    assert_eq!(t.input(b"info st"), "info st");
    assert_eq!(t.input(b"atus\r\n"), "atus\r\nVM status: running\r\n(qemu) ");
    // Backspace and Ctrl-U erase; the arrow keys' sequences and Tab do nothing.
    assert_eq!(t.input(b"stoq\x7fp\x1b[A\x1bOB\t"), "stoq\x08 \x08p");
    assert_eq!(t.input(b"\r"), "\r\n(qemu) ");
    assert_eq!(t.input(b"xyz\x15"), "xyz\x08 \x08\x08 \x08\x08 \x08");
    assert_eq!(t.input(b"info status\n"), "info status\r\nVM status: paused\r\n(qemu) ");
    // A multi-byte character echoes whole, and goes whole at Backspace.
    assert_eq!(t.input("\u{e9}".as_bytes()), "\u{e9}");
    assert_eq!(t.input(b"\x08\r"), "\x08 \x08\r\n(qemu) ");
    // Back to the guest and here again: the prompt, without the banner.
    assert_eq!(t.focus_out(), "\r\n");
    assert_eq!(t.focus_in(), "(qemu) ");
    let long = vec![b'x'; 5000];
    assert!(t.input(&long).len() < 4100, "the echo stops at the longest line");
    assert_eq!(t.input(b"\r"), "\r\nError: command line too long\r\n(qemu) ");
    assert_eq!(t.input(b"nosuch\r"), "nosuch\r\nunknown command: 'nosuch'\r\n(qemu) ");
    assert_eq!(t.input(b"quit\rinfo status\r"), "quit\r\n", "quit ends the monitor");
    assert_eq!(t.focus_in(), "");
    assert_eq!(mock.log(), vec![Command::QueryStatus, Command::Stop, Command::QueryStatus, Command::Quit]);
}

#[test]
fn pretty_mode() {
    let (_mock, mon) = monitor();
    let (tx, rx) = std::sync::mpsc::channel();
    struct W(std::sync::mpsc::Sender<Vec<u8>>);
    impl Write for W {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.send(b.to_vec());
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    mon.run_qmp(&b"{\"execute\":\"qmp_capabilities\"}"[..], W(tx), true).unwrap();
    let all: Vec<u8> = rx.iter().flatten().collect();
    let s = String::from_utf8(all).unwrap();
    assert!(s.starts_with("{\n  \"QMP\": {"), "{s}");
    assert!(s.ends_with("{\n  \"return\": {}\n}\n"), "{s}");
}

#[test]
fn unix_socket_path_rules() {
    let (_mock, mon) = monitor();
    let dir = temp_dir();
    // A regular file is never replaced.
    let file = dir.join("file");
    std::fs::write(&file, b"keep").unwrap();
    let spec =
        |p: &std::path::Path| ChardevSpec { endpoint: Endpoint::Unix(p.to_path_buf()), server: true, wait: false };
    let e = mon.listen(&spec(&file), Mode::Readline).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
    assert_eq!(std::fs::read(&file).unwrap(), b"keep");
    // A stale socket is replaced.
    let stale = dir.join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    mon.listen(&spec(&stale), Mode::Control { pretty: false }).unwrap();
    let mut c = Client::unix(&stale);
    assert!(c.recv().get("QMP").is_some());
    // A live socket is in use.
    let e = mon.listen(&spec(&stale), Mode::Readline).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
    // A busy TCP port.
    let addr = tcp_qmp(&mon);
    let e = mon
        .listen(
            &ChardevSpec { endpoint: Endpoint::Tcp("127.0.0.1".into(), addr.port()), server: true, wait: false },
            Mode::Readline,
        )
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn wait_on_blocks_until_client_connects() {
    let (_mock, mon) = monitor();
    let dir = temp_dir();
    let path = dir.join("wait.sock");
    let spec = ChardevSpec { endpoint: Endpoint::Unix(path.clone()), server: true, wait: true };
    let (tx, rx) = std::sync::mpsc::channel();
    let m2 = mon.clone();
    let t = std::thread::spawn(move || {
        let r = m2.listen(&spec, Mode::Control { pretty: false });
        tx.send(r.is_ok()).unwrap();
    });
    // Not returned while nobody has connected.
    let end = Instant::now() + Duration::from_secs(5);
    while !path.exists() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
    let mut c = Client::unix(&path);
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(true));
    t.join().unwrap();
    c.negotiate();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn parse_uri_forms() {
    let unix = |p: &str, wait| Ok(Some(ChardevSpec { endpoint: Endpoint::Unix(p.into()), server: true, wait }));
    assert_eq!(parse_chardev_uri("unix:/tmp/q.sock,server=on,wait=off"), unix("/tmp/q.sock", false));
    assert_eq!(parse_chardev_uri("unix:/tmp/q.sock,server,nowait"), unix("/tmp/q.sock", false));
    assert_eq!(parse_chardev_uri("unix:/tmp/q.sock,server"), unix("/tmp/q.sock", true));
    assert_eq!(parse_chardev_uri("unix:/tmp/a,,b,server=on,wait=off"), unix("/tmp/a,b", false));
    assert_eq!(
        parse_chardev_uri("tcp:127.0.0.1:4444,server=on,wait=off"),
        Ok(Some(ChardevSpec { endpoint: Endpoint::Tcp("127.0.0.1".into(), 4444), server: true, wait: false }))
    );
    assert_eq!(
        parse_chardev_uri("tcp::4444,server,nowait,nodelay"),
        Ok(Some(ChardevSpec { endpoint: Endpoint::Tcp(String::new(), 4444), server: true, wait: false }))
    );
    assert_eq!(
        parse_chardev_uri("tcp:[::1]:5555,server=on,wait=off"),
        Ok(Some(ChardevSpec { endpoint: Endpoint::Tcp("::1".into(), 5555), server: true, wait: false }))
    );
    assert_eq!(
        parse_chardev_uri("stdio"),
        Ok(Some(ChardevSpec { endpoint: Endpoint::Stdio, server: false, wait: false }))
    );
    assert_eq!(
        parse_chardev_uri("mon:stdio"),
        Ok(Some(ChardevSpec { endpoint: Endpoint::Stdio, server: false, wait: false }))
    );
    assert_eq!(parse_chardev_uri("none"), Ok(None));
    for (bad, needle) in [
        ("unix:/tmp/q.sock", "client mode"),
        ("unix:/tmp/q.sock,server=off", "client mode"),
        ("tcp:localhost:4444,server,telnet", "telnet"),
        ("tcp:localhost:4444,server,websocket", "websocket"),
        ("tcp:localhost:4444,server,reconnect=1", "reconnect"),
        ("unix:/x,server,frob=1", "frob"),
        ("unix:/x,server=maybe", "server"),
        ("tcp:localhost:99999,server", "99999"),
        ("tcp:localhost,server", "tcp:HOST:PORT"),
        ("udp:1.2.3.4:5", "udp"),
        ("vc", "vc"),
        ("unix:,server", "path"),
    ] {
        let e = parse_chardev_uri(bad).unwrap_err();
        assert!(e.contains(needle), "{bad}: {e}");
    }
}

#[test]
fn parse_chardev_and_mon_forms() {
    assert_eq!(
        parse_chardev("socket,id=qmp0,path=/tmp/q.sock,server=on,wait=off"),
        Ok(("qmp0".into(), ChardevSpec { endpoint: Endpoint::Unix("/tmp/q.sock".into()), server: true, wait: false }))
    );
    assert_eq!(
        parse_chardev("socket,id=m,host=127.0.0.1,port=4445,server=on,wait=off"),
        Ok(("m".into(), ChardevSpec { endpoint: Endpoint::Tcp("127.0.0.1".into(), 4445), server: true, wait: false }))
    );
    assert_eq!(
        parse_chardev("socket,id=m,path=/s,server"),
        Ok(("m".into(), ChardevSpec { endpoint: Endpoint::Unix("/s".into()), server: true, wait: true }))
    );
    assert_eq!(
        parse_chardev("stdio,id=c0"),
        Ok(("c0".into(), ChardevSpec { endpoint: Endpoint::Stdio, server: false, wait: false }))
    );
    for (bad, needle) in [
        ("socket,path=/s,server=on", "'id'"),
        ("socket,id=x,path=/s", "client mode"),
        ("socket,id=x,port=4,server=on", "no host"),
        ("socket,id=x,host=h,server=on", "no port"),
        ("socket,id=x,path=/s,host=h,port=1,server=on", "path"),
        ("socket,id=x,path=/s,server=on,telnet=on", "telnet"),
        ("pty,id=x", "pty"),
        ("stdio,id=x,mux=on", "mux"),
        ("", "backend"),
    ] {
        let e = parse_chardev(bad).unwrap_err();
        assert!(e.contains(needle), "{bad}: {e}");
    }
    assert_eq!(parse_mon("chardev=qmp0,mode=control"), Ok(("qmp0".into(), Mode::Control { pretty: false })));
    assert_eq!(parse_mon("chardev=qmp0,mode=control,pretty=on"), Ok(("qmp0".into(), Mode::Control { pretty: true })));
    assert_eq!(parse_mon("chardev=h,mode=readline"), Ok(("h".into(), Mode::Readline)));
    assert_eq!(parse_mon("chardev=h"), Ok(("h".into(), Mode::Readline)));
    assert!(parse_mon("mode=control").unwrap_err().contains("chardev"));
    assert!(parse_mon("chardev=h,mode=json").unwrap_err().contains("json"));
    assert!(parse_mon("chardev=h,bogus=1").unwrap_err().contains("bogus"));
}

/// xorshift64*: deterministic pseudo-random bytes without extra dependencies.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn fuzz_qmp_input_pseudo_random() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let seeds: &[&[u8]] = &[
        br#"{"execute":"qmp_capabilities"}"#,
        br#"{"execute":"screendump","arguments":{"filename":"a","format":"png"},"id":[1]}"#,
        br#"{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"x","state":true}]}}"#,
        br#"{"execute":"human-monitor-command","arguments":{"command-line":"info block"}}"#,
        br#"{"execute":"blockdev-change-medium","arguments":{"id":"cd","filename":"f","read-only-mode":"retain"}}"#,
        b"[[[[{\"a\":\"\\u0000\"}]]]] 1e400 \"\\ud800\" -0 tru nul",
    ];
    let alphabet = b"{}[]\":,\\ \n\r\tabcdefghijklmnopqrstuvwxyz0123456789-+.eE\x00\xff\xc3";
    for i in 0..3000 {
        let mut data = Vec::new();
        // Always negotiate so that later commands reach dispatch.
        data.extend_from_slice(seeds[0]);
        let n = (rng.next() % 8) as usize;
        for _ in 0..n {
            let seed = seeds[(rng.next() as usize) % seeds.len()];
            let mut s = seed.to_vec();
            let muts = (rng.next() % 4) as usize;
            for _ in 0..muts {
                if s.is_empty() {
                    break;
                }
                let pos = (rng.next() as usize) % s.len();
                match rng.next() % 3 {
                    0 => s[pos] = alphabet[(rng.next() as usize) % alphabet.len()],
                    1 => {
                        s.remove(pos);
                    }
                    _ => s.insert(pos, alphabet[(rng.next() as usize) % alphabet.len()]),
                }
            }
            data.extend_from_slice(&s);
        }
        if i % 10 == 0 {
            for _ in 0..(rng.next() % 200) {
                data.push(rng.next() as u8);
            }
        }
        fuzz_qmp_input(&data);
    }
    // Deep nesting and an oversized message.
    fuzz_qmp_input(&[b'['; 5000]);
    let mut big = b"{\"execute\":\"".to_vec();
    big.extend(std::iter::repeat_n(b'a', MAX_QMP_MESSAGE + 1));
    fuzz_qmp_input(&big);
}
