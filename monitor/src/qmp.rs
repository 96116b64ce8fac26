//! QMP: request framing, envelope checks, argument validation, dispatch.

use std::io::{self, BufRead};

use serde_json::{json, Map, Value};

use crate::json::{Item, Splitter};
use crate::{hmp, Command, ErrorClass, Monitor, QmpError, QmpOut, MAX_QMP_MESSAGE};

/// Commands answered after negotiation, as listed by `query-commands`.
pub(crate) const COMMANDS: &[&str] = &[
    "qmp_capabilities",
    "query-commands",
    "query-version",
    "query-status",
    "query-name",
    "query-kvm",
    "query-cpus-fast",
    "query-block",
    "query-migrate",
    "stop",
    "cont",
    "system_reset",
    "system_powerdown",
    "system_wakeup",
    "inject-nmi",
    "quit",
    "screendump",
    "eject",
    "blockdev-change-medium",
    "migrate",
    "migrate-incoming",
    "migrate_cancel",
    "migrate-set-capabilities",
    "migrate-set-parameters",
    "set_password",
    "expire_password",
    "human-monitor-command",
];

/// What a request turned into.
enum Action {
    Run(Command),
    Hmp(String),
    Capabilities,
}

/// Members of an `arguments` object, consumed in schema order like QAPI's
/// input visitor: missing and mistyped members fail as they are reached,
/// leftovers fail in [`Args::finish`].
pub(crate) struct Args {
    m: Map<String, Value>,
    prefix: String,
}

fn missing(name: &str) -> QmpError {
    QmpError::generic(format!("Parameter '{name}' is missing"))
}

fn bad_type(name: &str, expected: &str) -> QmpError {
    QmpError::generic(format!("Invalid parameter type for '{name}', expected: {expected}"))
}

impl Args {
    pub(crate) fn new(m: Map<String, Value>, prefix: String) -> Self {
        Args { m, prefix }
    }

    fn full(&self, k: &str) -> String {
        format!("{}{}", self.prefix, k)
    }

    fn opt_str(&mut self, k: &str) -> Result<Option<String>, QmpError> {
        match self.m.remove(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(bad_type(&self.full(k), "string")),
        }
    }

    fn req_str(&mut self, k: &str) -> Result<String, QmpError> {
        self.opt_str(k)?.ok_or_else(|| missing(&self.full(k)))
    }

    fn opt_bool(&mut self, k: &str) -> Result<Option<bool>, QmpError> {
        match self.m.remove(k) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(_) => Err(bad_type(&self.full(k), "boolean")),
        }
    }

    fn req_bool(&mut self, k: &str) -> Result<bool, QmpError> {
        self.opt_bool(k)?.ok_or_else(|| missing(&self.full(k)))
    }

    fn opt_int(&mut self, k: &str) -> Result<Option<i64>, QmpError> {
        match self.m.remove(k) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(i) => Ok(Some(i)),
                None => Err(bad_type(&self.full(k), "integer")),
            },
            Some(_) => Err(bad_type(&self.full(k), "integer")),
        }
    }

    fn check_enum(&self, k: &str, v: &str, allowed: &[&str]) -> Result<(), QmpError> {
        if allowed.contains(&v) {
            Ok(())
        } else {
            Err(QmpError::generic(format!("Parameter '{}' does not accept value '{v}'", self.full(k))))
        }
    }

    fn opt_enum(&mut self, k: &str, allowed: &[&str]) -> Result<Option<String>, QmpError> {
        let v = self.opt_str(k)?;
        if let Some(v) = &v {
            self.check_enum(k, v, allowed)?;
        }
        Ok(v)
    }

    fn req_enum(&mut self, k: &str, allowed: &[&str]) -> Result<String, QmpError> {
        let v = self.req_str(k)?;
        self.check_enum(k, &v, allowed)?;
        Ok(v)
    }

    fn opt_array(&mut self, k: &str) -> Result<Option<Vec<Value>>, QmpError> {
        match self.m.remove(k) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(_) => Err(bad_type(&self.full(k), "array")),
        }
    }

    fn finish(self) -> Result<(), QmpError> {
        match self.m.keys().next() {
            Some(k) => Err(QmpError::generic(format!("Parameter '{}{}' is unexpected", self.prefix, k))),
            None => Ok(()),
        }
    }
}

/// Validates `name` with `args` into an action; `Ok(None)` if there is no such command.
fn parse_command(name: &str, args: Map<String, Value>) -> Result<Option<Action>, QmpError> {
    let mut a = Args::new(args, String::new());
    let simple = match name {
        "query-status" => Some(Command::QueryStatus),
        "query-version" => Some(Command::QueryVersion),
        "query-commands" => Some(Command::QueryCommands),
        "query-cpus-fast" => Some(Command::QueryCpusFast),
        "query-block" => Some(Command::QueryBlock),
        "query-name" => Some(Command::QueryName),
        "query-kvm" => Some(Command::QueryKvm),
        "query-migrate" => Some(Command::QueryMigrate),
        "stop" => Some(Command::Stop),
        "cont" => Some(Command::Cont),
        "system_reset" => Some(Command::SystemReset),
        "system_powerdown" => Some(Command::SystemPowerdown),
        "system_wakeup" => Some(Command::SystemWakeup),
        "inject-nmi" => Some(Command::InjectNmi),
        "quit" => Some(Command::Quit),
        "migrate_cancel" => Some(Command::MigrateCancel),
        _ => None,
    };
    if let Some(c) = simple {
        a.finish()?;
        return Ok(Some(Action::Run(c)));
    }
    let action = match name {
        "qmp_capabilities" => {
            // No optional capability is offered, so any listed one is refused
            // (the first one is reported, as QEMU does).
            let list = a.opt_array("enable")?.unwrap_or_default();
            if let Some(v) = list.first() {
                return Err(match v {
                    Value::String(s) if s == "oob" => QmpError::generic("Capability oob not available"),
                    Value::String(s) => QmpError::generic(format!("Parameter 'enable[0]' does not accept value '{s}'")),
                    _ => bad_type("enable[0]", "string"),
                });
            }
            Action::Capabilities
        }
        "human-monitor-command" => {
            let line = a.req_str("command-line")?;
            let _cpu = a.opt_int("cpu-index")?;
            Action::Hmp(line)
        }
        "screendump" => {
            let filename = a.req_str("filename")?;
            let device = a.opt_str("device")?;
            let head = a.opt_int("head")?;
            let format = a.opt_enum("format", &["ppm", "png"])?;
            if let Some(h) = head.filter(|&h| h != 0) {
                return Err(QmpError::generic(format!("Display head {h} does not exist")));
            }
            Action::Run(Command::Screendump { filename, format, device })
        }
        "eject" => {
            let device = a.opt_str("device")?;
            let id = a.opt_str("id")?;
            let force = a.opt_bool("force")?.unwrap_or(false);
            Action::Run(Command::Eject { device, id, force })
        }
        "blockdev-change-medium" => {
            let device = a.opt_str("device")?;
            let id = a.opt_str("id")?;
            let filename = a.req_str("filename")?;
            let format = a.opt_str("format")?;
            let read_only_mode = a.opt_enum("read-only-mode", &["retain", "read-only", "read-write"])?;
            Action::Run(Command::BlockdevChangeMedium { device, id, filename, format, read_only_mode })
        }
        "migrate" => {
            let uri = a.req_str("uri")?;
            let blk = a.opt_bool("blk")?.unwrap_or(false);
            let inc = a.opt_bool("inc")?.unwrap_or(false);
            let _detach = a.opt_bool("detach")?;
            let resume = a.opt_bool("resume")?.unwrap_or(false);
            if blk || inc {
                return Err(QmpError::generic("Block migration is not supported"));
            }
            if resume {
                return Err(QmpError::generic("Postcopy migration resume is not supported"));
            }
            Action::Run(Command::Migrate { uri })
        }
        "migrate-incoming" => Action::Run(Command::MigrateIncoming { uri: a.req_str("uri")? }),
        "migrate-set-capabilities" => {
            let list = a.opt_array("capabilities")?.ok_or_else(|| missing("capabilities"))?;
            let mut capabilities = Vec::new();
            for (i, v) in list.into_iter().enumerate() {
                let el = format!("capabilities[{i}]");
                let Value::Object(m) = v else {
                    return Err(bad_type(&el, "object"));
                };
                let mut sub = Args::new(m, format!("{el}."));
                let cap = sub.req_str("capability")?;
                let state = sub.req_bool("state")?;
                sub.finish()?;
                capabilities.push((cap, state));
            }
            Action::Run(Command::MigrateSetCapabilities { capabilities })
        }
        "migrate-set-parameters" => {
            let mut parameters = Vec::new();
            for k in crate::MIGRATION_PARAMETERS {
                if let Some(v) = a.opt_int(k)? {
                    let v = u64::try_from(v)
                        .map_err(|_| QmpError::generic(format!("Parameter '{k}' expects a non-negative integer")))?;
                    parameters.push((k.to_string(), v));
                }
            }
            Action::Run(Command::MigrateSetParameters { parameters })
        }
        "set_password" | "expire_password" => {
            let protocol = a.req_enum("protocol", &["vnc", "spice"])?;
            let secret = if name == "set_password" { a.req_str("password")? } else { a.req_str("time")? };
            if protocol == "vnc" {
                let _display = a.opt_str("display")?;
            } else if name == "set_password" {
                let _connected = a.opt_enum("connected", &["keep", "disconnect", "fail"])?;
            }
            if name == "set_password" {
                Action::Run(Command::SetPassword { protocol, password: secret })
            } else {
                Action::Run(Command::ExpirePassword { protocol, time: secret })
            }
        }
        _ => return Ok(None),
    };
    a.finish()?;
    Ok(Some(action))
}

fn error_reply(e: &QmpError, id: Option<Value>) -> Value {
    let mut m = Map::new();
    m.insert("error".into(), e.to_json());
    if let Some(id) = id {
        m.insert("id".into(), id);
    }
    Value::Object(m)
}

fn return_reply(v: Value, id: Option<Value>) -> Value {
    let mut m = Map::new();
    m.insert("return".into(), v);
    if let Some(id) = id {
        m.insert("id".into(), id);
    }
    Value::Object(m)
}

/// What the session does after sending a reply.
enum After {
    Continue,
    /// Flush, then call the backend's `quit`.
    Quit,
}

/// Handles one parsed request; returns the reply.
fn handle(mon: &Monitor, req: Value, negotiated: &mut bool) -> (Value, After) {
    let Value::Object(mut obj) = req else {
        return (error_reply(&QmpError::generic("QMP input must be a JSON object"), None), After::Continue);
    };
    let id = obj.remove("id");
    let mut execute = None;
    let mut arguments = None;
    for (k, v) in obj {
        match k.as_str() {
            "execute" => match v {
                Value::String(s) => execute = Some(s),
                _ => {
                    let e = QmpError::generic("QMP input member 'execute' must be a string");
                    return (error_reply(&e, id), After::Continue);
                }
            },
            "arguments" => match v {
                Value::Object(m) => arguments = Some(m),
                _ => {
                    let e = QmpError::generic("QMP input member 'arguments' must be an object");
                    return (error_reply(&e, id), After::Continue);
                }
            },
            other => {
                let e = QmpError::generic(format!("QMP input member '{other}' is unexpected"));
                return (error_reply(&e, id), After::Continue);
            }
        }
    }
    let Some(name) = execute else {
        return (error_reply(&QmpError::generic("QMP input lacks member 'execute'"), id), After::Continue);
    };
    let args = arguments.unwrap_or_default();
    if !*negotiated && name != "qmp_capabilities" {
        let e =
            QmpError::new(ErrorClass::CommandNotFound, "Expecting capabilities negotiation with 'qmp_capabilities'");
        return (error_reply(&e, id), After::Continue);
    }
    let action = match parse_command(&name, args) {
        Ok(Some(a)) => a,
        Ok(None) => {
            let e = QmpError::new(ErrorClass::CommandNotFound, format!("The command {name} has not been found"));
            return (error_reply(&e, id), After::Continue);
        }
        Err(e) => return (error_reply(&e, id), After::Continue),
    };
    match action {
        Action::Capabilities => {
            if *negotiated {
                let e = QmpError::new(
                    ErrorClass::CommandNotFound,
                    "Capabilities negotiation is already complete, command ignored",
                );
                (error_reply(&e, id), After::Continue)
            } else {
                *negotiated = true;
                (return_reply(json!({}), id), After::Continue)
            }
        }
        Action::Run(Command::Quit) => (return_reply(json!({}), id), After::Quit),
        Action::Run(cmd) => match mon.execute(cmd) {
            Ok(v) => (return_reply(v, id), After::Continue),
            Err(e) => (error_reply(&e, id), After::Continue),
        },
        Action::Hmp(line) => match hmp::run_line(mon, &line) {
            hmp::LineResult::Output(s) => (return_reply(Value::String(s), id), After::Continue),
            hmp::LineResult::Quit => (return_reply(Value::String(String::new()), id), After::Quit),
        },
    }
}

/// Runs a QMP session: greeting, then requests until end of input, `quit`
/// or an oversized message.
pub(crate) fn session<R: BufRead>(mon: &Monitor, r: R, out: &dyn QmpOut) -> io::Result<()> {
    let greeting = json!({"QMP": {"version": mon.version.to_json(), "capabilities": []}});
    if !out.reply(&greeting) {
        return Ok(());
    }
    let mut negotiated = false;
    let mut sp = Splitter::new(r, MAX_QMP_MESSAGE);
    loop {
        let reply = match sp.next_item()? {
            Item::Eof => return Ok(()),
            Item::TooLarge => {
                let e = QmpError::generic(format!("JSON parse error, message exceeds {MAX_QMP_MESSAGE} bytes"));
                out.reply(&error_reply(&e, None));
                out.flush();
                return Ok(());
            }
            Item::Error(msg) => error_reply(&QmpError::generic(msg), None),
            Item::Message(bytes) => match serde_json::from_slice::<Value>(&bytes) {
                Err(e) => error_reply(&QmpError::generic(format!("JSON parse error, {e}")), None),
                Ok(v) => {
                    let was = negotiated;
                    let (reply, after) = handle(mon, v, &mut negotiated);
                    // Events flow from the moment the client can see the
                    // reply to qmp_capabilities, never later.
                    if negotiated && !was {
                        out.set_negotiated();
                    }
                    if !out.reply(&reply) {
                        return Ok(());
                    }
                    if let After::Quit = after {
                        out.flush();
                        let _ = mon.backend.execute(Command::Quit);
                        return Ok(());
                    }
                    continue;
                }
            },
        };
        if !out.reply(&reply) {
            return Ok(());
        }
    }
}
