//! The background compiler: regions go to a thread of their own, which
//! translates them into Cranelift IR and compiles them to machine code, while
//! the guest goes on in the interpreter. The code comes back as bytes; the
//! run loop copies it into its code cache.

use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use cranelift_codegen::binemit::Reloc as Reloc8;
use cranelift_codegen::control::ControlPlane;
use cranelift_codegen::ir::{types, AbiParam, ExternalName, Function, InstBuilder, Signature, UserFuncName};
use cranelift_codegen::isa::{CallConv, OwnedTargetIsa};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_codegen::Context;
use cranelift_codegen::FinalizedRelocTarget;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};

use cpu::Decoded;

use crate::ctx::region_signature;
use crate::reloc::{link, Import, Reloc};
use crate::shared::Shared;
use crate::translate::{translate, RegionSpec, TxStats};

/// Cranelift settings for the hot tier.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `none`, `speed` or `speed_and_size`.
    pub opt_level: String,
    /// `backtracking` or `single_pass`.
    pub regalloc: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { opt_level: "speed".into(), regalloc: "backtracking".into() }
    }
}

/// A region to compile.
pub struct Job {
    pub id: u64,
    pub spec: Arc<RegionSpec>,
}

/// A compiled region.
#[derive(Clone)]
pub struct Output {
    /// The machine code, linked ([`crate::reloc::link`]) for this process.
    pub code: Vec<u8>,
    /// Where the code holds addresses.
    pub relocs: Vec<Reloc>,
    /// The instructions its code runs through the interpreter; the code
    /// holds their addresses, so every copy of the code shares the table.
    pub fallbacks: Arc<Vec<Decoded>>,
    pub stats: TxStats,
}

/// What came back for a [`Job`].
pub struct Done {
    pub id: u64,
    pub result: Result<Output, String>,
    /// Time spent on the job, in nanoseconds.
    pub nanos: u64,
    /// The code is another vCPU's compile of the same region.
    pub shared: bool,
}

/// The ISA for this host, with `s`.
pub fn host_isa(s: &Settings) -> Result<OwnedTargetIsa, String> {
    let mut fb = settings::builder();
    let set = |fb: &mut settings::Builder, k: &str, v: &str| {
        fb.set(k, v).map_err(|e| format!("cranelift setting {k}={v}: {e}"))
    };
    set(&mut fb, "opt_level", &s.opt_level)?;
    set(&mut fb, "regalloc_algorithm", &s.regalloc)?;
    set(&mut fb, "enable_verifier", "false")?;
    // Tail calls between regions need frame pointers kept on x86-64.
    set(&mut fb, "preserve_frame_pointers", "true")?;
    let isa = cranelift_native::builder().map_err(|e| format!("no code generator for this host: {e}"))?;
    isa.finish(settings::Flags::new(fb)).map_err(|e| format!("cranelift: {e}"))
}

/// The trampoline from the host's convention into a region: a function
/// `(ctx, code, entry)` that calls `code(ctx, entry)` and returns.
pub fn compile_trampoline(isa: &OwnedTargetIsa) -> Result<Vec<u8>, String> {
    let ptr = isa.pointer_type();
    let mut sig = Signature::new(isa.default_call_conv());
    sig.params.extend([AbiParam::new(ptr), AbiParam::new(ptr), AbiParam::new(types::I32)]);
    compile_small(isa, 1, sig, |b, p| {
        let region = b.import_signature(region_signature(ptr));
        b.ins().call_indirect(region, p[1], &[p[0], p[2]]);
    })
}

/// A function in the register-preserving convention (`CallConv::PreserveAll`)
/// that calls the host-convention helper at `target` with its own
/// arguments (`params`, the first being the [`crate::ctx::JitCtx`]) and
/// leaves the helper's result, if `ret`, in the context's `result` word.
///
/// Compiled code calls a memory access's slow path through it. A call in the
/// host's convention clobbers every caller-saved register, so each value live
/// across any load or store of a region (the state and TLB pointers, the
/// guest registers held) had to sit in one of the few callee-saved registers
/// or on the stack, on the fast path too. This call clobbers nothing: the
/// trampoline saves what the helper may overwrite, and only on a miss.
pub fn compile_saving_call(
    isa: &OwnedTargetIsa,
    target: usize,
    params: &[types::Type],
    ret: Option<types::Type>,
) -> Result<Vec<u8>, String> {
    let ptr = isa.pointer_type();
    let mut sig = Signature::new(CallConv::PreserveAll);
    sig.params.extend(params.iter().map(|&t| AbiParam::new(t)));
    compile_small(isa, 2, sig, |b, args| {
        let mut hsig = Signature::new(isa.default_call_conv());
        hsig.params.extend(params.iter().map(|&t| AbiParam::new(t)));
        hsig.returns.extend(ret.map(AbiParam::new));
        let hsig = b.import_signature(hsig);
        let callee = b.ins().iconst(ptr, target as i64);
        let call = b.ins().call_indirect(hsig, callee, args);
        if let Some(t) = ret {
            let v = b.inst_results(call)[0];
            let v = if t == types::I64 { v } else { b.ins().uextend(types::I64, v) };
            b.ins().store(cranelift_codegen::ir::MemFlagsData::trusted(), v, args[0], crate::ctx::off::RESULT);
        }
    })
}

/// Compile a one-block function of signature `sig` whose body `body` emits
/// (given the parameters), followed by a return.
fn compile_small(
    isa: &OwnedTargetIsa,
    name: u32,
    sig: Signature,
    body: impl FnOnce(&mut FunctionBuilder, &[cranelift_codegen::ir::Value]),
) -> Result<Vec<u8>, String> {
    let mut func = Function::with_name_signature(UserFuncName::user(name, 0), sig);
    let mut fctx = FunctionBuilderContext::new();
    let mut b = FunctionBuilder::new(&mut func, &mut fctx);
    let blk = b.create_block();
    b.append_block_params_for_function_params(blk);
    b.switch_to_block(blk);
    b.seal_block(blk);
    let p = b.block_params(blk).to_vec();
    body(&mut b, &p);
    b.ins().return_(&[]);
    b.finalize(isa.frontend_config());
    let mut ctx = Context::for_function(func);
    let code = ctx.compile(&**isa, &mut ControlPlane::default()).map_err(|e| format!("cranelift: {:?}", e.inner))?;
    Ok(code.code_buffer().to_vec())
}

/// Cranelift's working memory, kept from one compile to the next so that a
/// region does not allocate its function, analyses and buffers afresh.
pub struct Workspace {
    ctx: Context,
    fctx: FunctionBuilderContext,
}

impl Default for Workspace {
    fn default() -> Self {
        Workspace { ctx: Context::new(), fctx: FunctionBuilderContext::new() }
    }
}

/// Compile one region with `isa`.
pub fn compile(isa: &OwnedTargetIsa, id: u64, spec: &RegionSpec) -> Result<Output, String> {
    compile_in(&mut Workspace::default(), isa, id, spec)
}

/// [`compile`] in a workspace that earlier compiles used.
pub fn compile_in(ws: &mut Workspace, isa: &OwnedTargetIsa, id: u64, spec: &RegionSpec) -> Result<Output, String> {
    let ptr = isa.pointer_type();
    let cc = isa.default_call_conv();
    ws.ctx.clear();
    let func = &mut ws.ctx.func;
    func.name = UserFuncName::user(0, id as u32);
    func.signature = region_signature(ptr);
    let mut b = FunctionBuilder::new(func, &mut ws.fctx);
    let t = translate(&mut b, spec, cc, ptr);
    b.finalize(isa.frontend_config());
    let dump = dump_dir().map(|d| {
        let mut text = String::new();
        let mut fmt = iced_x86::FastFormatter::new();
        for g in &spec.blocks {
            text.push_str(&format!("; block {:#x}\n", g.rip));
            for d in &g.insns {
                let mut s = String::new();
                fmt.format(&d.insn, &mut s);
                text.push_str(&format!(";   {:#x} {s}\n", d.insn.ip()));
            }
        }
        text.push_str(&ws.ctx.func.display().to_string());
        (d.join(format!("{:x}_{id}", spec.blocks.first().map_or(0, |g| g.rip))), text)
    });
    let code = ws.ctx.compile(&**isa, &mut ControlPlane::default()).map_err(|e| format!("cranelift: {:?}", e.inner))?;
    if let Some((base, ir)) = dump {
        // Best effort: a debugging aid, not part of the run.
        let _ = std::fs::write(base.with_extension("clif"), ir);
        let _ = std::fs::write(base.with_extension("bin"), code.code_buffer());
    }
    let mut bytes = code.code_buffer().to_vec();
    let found = code.buffer.relocs().to_vec();
    let mut relocs = Vec::with_capacity(found.len());
    for r in &found {
        let import = match (&r.kind, &r.target) {
            (Reloc8::Abs8, FinalizedRelocTarget::ExternalName(ExternalName::User(name))) => {
                Import::from_name(&ws.ctx.func.params.user_named_funcs()[*name])
            }
            _ => None,
        };
        let import = import.ok_or_else(|| format!("compiled code needs a relocation of an unknown kind: {r:?}"))?;
        relocs.push(Reloc { offset: r.offset, import, addend: r.addend });
    }
    let fallbacks = Arc::new(t.fallbacks);
    link(&mut bytes, &relocs, &spec.access, &fallbacks, spec.guest_base())?;
    Ok(Output { code: bytes, relocs, fallbacks, stats: t.stats })
}

/// `FERROVM_JIT_DUMP=DIR`: each region's IR (`RIP_ID.clif`) and machine
/// code (`RIP_ID.bin`) are written there, for reading the translation.
fn dump_dir() -> Option<&'static std::path::Path> {
    static DIR: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    DIR.get_or_init(|| std::env::var_os("FERROVM_JIT_DUMP").map(Into::into)).as_deref()
}

/// Regions waiting for the compiler thread. It takes the newest first: in
/// a burst (a new program starting, a new phase of one) the code that
/// became hot last is the likeliest to be running still, while older
/// requests may be for code that has stopped running.
#[derive(Default)]
struct Queue {
    jobs: parking_lot::Mutex<(Vec<Job>, bool)>,
    ready: parking_lot::Condvar,
}

impl Queue {
    /// The next job, newest first; `None` once closed.
    fn take(&self) -> Option<Job> {
        let mut q = self.jobs.lock();
        loop {
            if let Some(j) = q.0.pop() {
                return Some(j);
            }
            if q.1 {
                return None;
            }
            self.ready.wait(&mut q);
        }
    }

    fn close(&self) {
        self.jobs.lock().1 = true;
        self.ready.notify_all();
    }
}

/// The compiler thread and its queues.
pub struct Compiler {
    jobs: Arc<Queue>,
    done: Receiver<Done>,
    thread: Option<JoinHandle<()>>,
    /// Jobs sent and not yet received back.
    pub in_flight: usize,
}

impl Compiler {
    /// Start the thread; fails when this host has no code generator. It
    /// takes the regions that `shared`'s other vCPUs compiled.
    pub fn start(settings: Settings, shared: Arc<Shared>) -> Result<Self, String> {
        let isa = host_isa(&settings)?;
        let jobs = Arc::new(Queue::default());
        let jrx = jobs.clone();
        let (dtx, drx) = channel::<Done>();
        let thread = std::thread::Builder::new()
            .name("jit-compiler".into())
            .spawn(move || {
                let mut ws = Workspace::default();
                while let Some(job) = jrx.take() {
                    let t0 = Instant::now();
                    let (result, shared) = shared.compile(&mut ws, &isa, job.id, job.spec);
                    let nanos = t0.elapsed().as_nanos() as u64;
                    if dtx.send(Done { id: job.id, result, nanos, shared }).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| format!("cannot start the compiler thread: {e}"))?;
        Ok(Compiler { jobs, done: drx, thread: Some(thread), in_flight: 0 })
    }

    /// Queue a region.
    pub fn send(&mut self, job: Job) -> bool {
        {
            let mut q = self.jobs.jobs.lock();
            if q.1 {
                return false;
            }
            q.0.push(job);
        }
        self.jobs.ready.notify_one();
        self.in_flight += 1;
        true
    }

    /// A finished region, if one is ready.
    pub fn try_recv(&mut self) -> Option<Done> {
        let d = self.done.try_recv().ok()?;
        self.in_flight -= 1;
        Some(d)
    }

    /// Wait for a finished region (tests).
    pub fn recv(&mut self) -> Option<Done> {
        let d = self.done.recv().ok()?;
        self.in_flight -= 1;
        Some(d)
    }
}

impl Drop for Compiler {
    fn drop(&mut self) {
        self.jobs.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
