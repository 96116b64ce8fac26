//! The JIT against the interpreter: the same code runs in both, and the
//! architectural state and memory must come out equal.

use cpu::ops::testutil::*;
use cpu::state::{flags, sreg};
use cpu::{Cpu, StopReason};
use iced_x86::code_asm::*;

use super::*;

fn cfg() -> Config {
    Config { threshold: 2, synchronous: true, ..Config::default() }
}

/// Whether a run that stopped for `r` has ended: a HLT, or a shutdown
/// (a triple fault), after which no instruction runs again.
fn ended(r: &StopReason) -> bool {
    matches!(r, StopReason::Halted | StopReason::Shutdown(_))
}

/// Run until HLT or a shutdown (or `limit` instructions) in the interpreter.
fn run_interp(c: &mut Cpu, limit: u64) -> u64 {
    let start = c.stats.instructions;
    while c.stats.instructions - start < limit {
        if ended(&c.run(10_000)) {
            break;
        }
    }
    c.stats.instructions - start
}

/// Run until HLT or a shutdown (or `limit` instructions) with the JIT.
fn run_jit(c: &mut Cpu, jit: &mut Jit, limit: u64) -> u64 {
    let start = jit.instructions(c);
    while jit.instructions(c) - start < limit {
        if ended(&jit.run(c, 10_000)) {
            break;
        }
    }
    jit.instructions(c) - start
}

fn same_state(a: &mut Cpu, b: &mut Cpu) {
    a.state.materialize_flags();
    b.state.materialize_flags();
    let (x, y) = (&a.state, &b.state);
    for i in 0..16 {
        assert_eq!(x.gpr[i], y.gpr[i], "gpr {i}");
    }
    assert_eq!(x.xmm, y.xmm, "xmm");
    assert_eq!(x.ymm_hi, y.ymm_hi, "ymm_hi");
    assert_eq!(x.rip, y.rip, "rip");
    assert_eq!(x.rflags, y.rflags, "rflags");
    assert_eq!(x.mxcsr, y.mxcsr, "mxcsr");
    assert_eq!(x.cr2, y.cr2, "cr2");
    assert_eq!(x.cpl, y.cpl, "cpl");
    for (lo, len) in [(DATA, 0x2000u64), (KSTACK - 0x1000, 0x1000), (CODE, 0x2000)] {
        let mut p = vec![0u8; len as usize];
        let mut q = vec![0u8; len as usize];
        a.mem().read(lo, &mut p).unwrap();
        b.mem().read(lo, &mut q).unwrap();
        assert!(p == q, "memory at {lo:#x} differs");
    }
}

/// RSI at DATA and a loop of `passes` passes (ECX counting down) over
/// `body`, then HLT.
fn data_loop(
    a: &mut CodeAssembler,
    passes: u32,
    body: impl Fn(&mut CodeAssembler) -> Result<(), IcedError>,
) -> Result<(), IcedError> {
    let mut top = a.create_label();
    a.mov(rsi, DATA)?;
    a.mov(ecx, passes)?;
    a.set_label(&mut top)?;
    body(a)?;
    a.dec(ecx)?;
    a.jnz(top)?;
    a.hlt()
}

/// A loop of 100 passes (ECX counting down) that runs `body` on the pass
/// where ECX is 10 only, then HLT.
fn on_pass_ten(
    a: &mut CodeAssembler,
    body: impl Fn(&mut CodeAssembler) -> Result<(), IcedError>,
) -> Result<(), IcedError> {
    let mut top = a.create_label();
    let mut skip = a.create_label();
    a.mov(ecx, 100)?;
    a.set_label(&mut top)?;
    a.cmp(ecx, 10)?;
    a.jne(skip)?;
    body(a)?;
    a.set_label(&mut skip)?;
    a.dec(ecx)?;
    a.jnz(top)?;
    a.hlt()
}

/// The run ended without an exception (not in a handler stub), with at
/// least `percent` of its instructions run in compiled code.
fn ran_compiled(b: &Cpu, jit: &Jit, percent: u64) {
    assert!(b.state.rip < stub(0) || b.state.rip > stub(31), "faulted: {:#x}", b.state.rip);
    assert!(jit.stats.native_insns * 100 / jit.instructions(b) >= percent, "{:?}", jit.stats);
}

/// `code` placed at CODE and the CPU at CPL 3 in 64-bit code, with a JIT.
fn at_user(c: &mut Cpu, code: &[u8]) -> Jit {
    place(c, code);
    to_user(c, SEL_UCODE64);
    Jit::new(c, cfg()).unwrap()
}

/// Run `code` (assembled at CODE for `make`'s mode) in both tiers.
fn both(
    make: fn() -> Cpu,
    prep: impl Fn(&mut Cpu),
    code: impl Fn(&mut CodeAssembler) -> Result<(), IcedError>,
) -> (Cpu, Cpu, Jit) {
    both_with(cfg(), make, prep, code)
}

/// [`both`] with the JIT configured by `jit_cfg`.
fn both_with(
    jit_cfg: Config,
    make: fn() -> Cpu,
    prep: impl Fn(&mut Cpu),
    code: impl Fn(&mut CodeAssembler) -> Result<(), IcedError>,
) -> (Cpu, Cpu, Jit) {
    let (a, mut b) = pair(make, prep, code);
    let jit = Jit::new(&mut b, jit_cfg).unwrap();
    run_both(a, b, jit)
}

/// Two CPUs from `make` with `code` placed at their entry and `prep` run
/// on each: one for the interpreter, one for the JIT.
fn pair(
    make: fn() -> Cpu,
    prep: impl Fn(&mut Cpu),
    code: impl Fn(&mut CodeAssembler) -> Result<(), IcedError>,
) -> (Cpu, Cpu) {
    let mut a = make();
    let bytes = assemble(&a, &code);
    place(&mut a, &bytes);
    prep(&mut a);
    let mut b = make();
    place(&mut b, &bytes);
    prep(&mut b);
    (a, b)
}

/// Runs `a` in the interpreter and `b` under `jit`, and checks that they
/// end the same.
fn run_both(mut a: Cpu, mut b: Cpu, mut jit: Jit) -> (Cpu, Cpu, Jit) {
    let na = run_interp(&mut a, 5_000_000);
    let nb = run_jit(&mut b, &mut jit, 5_000_000);
    same_state(&mut a, &mut b);
    assert_eq!(na, nb, "instruction counts");
    (a, b, jit)
}

/// A loop over an array with calls, memory operands, flags and all
/// operand sizes.
fn mixed(a: &mut CodeAssembler) -> Result<(), IcedError> {
    let mut top = a.create_label();
    let mut func = a.create_label();
    let mut skip = a.create_label();
    let mut done = a.create_label();
    a.mov(rsi, DATA)?;
    a.mov(ecx, 300)?;
    a.xor(eax, eax)?;
    a.mov(rbx, 0x1234_5678_9abc_def0u64)?;
    a.set_label(&mut top)?;
    a.mov(rdx, rcx)?;
    a.and(edx, 7)?;
    a.mov(dword_ptr(rsi + rdx * 4), ecx)?;
    a.add(eax, dword_ptr(rsi + rdx * 4))?;
    a.adc(rbx, rax)?;
    a.sbb(bx, cx)?;
    a.rol(rbx, 3)?; // an instruction the region runs through the interpreter
    a.imul_3(r8d, eax, 13)?;
    a.imul_2(r9, rbx)?;
    a.shl(r9, 5)?;
    a.sar(r8d, 2)?;
    a.movzx(r10d, bl)?;
    a.movsx(r11, byte_ptr(rsi + 1))?;
    a.movsxd(r12, r8d)?;
    a.lea(r13, qword_ptr(rax + rbx * 2 + 0x40))?;
    a.mov(byte_ptr(rsi + 0x100), ah)?;
    a.inc(byte_ptr(rsi + 0x101))?;
    a.neg(r10)?;
    a.not(r11d)?;
    a.cmp(ecx, 150)?;
    a.setb(byte_ptr(rsi + 0x102))?;
    a.cmovae(r14, rbx)?;
    a.test(cl, 3)?;
    a.jnz(skip)?;
    a.call(func)?;
    a.set_label(&mut skip)?;
    a.push(rax)?;
    a.push(0x55)?;
    a.pop(r15)?;
    a.pop(rdx)?;
    a.dec(ecx)?;
    a.jnz(top)?;
    a.cdqe()?;
    a.cqo()?;
    a.jmp(done)?;
    a.set_label(&mut func)?;
    a.push(rbp)?;
    a.mov(rbp, rsp)?;
    a.sub(rsp, 16)?;
    a.mov(qword_ptr(rbp - 8), rcx)?;
    a.xor(qword_ptr(rbp - 8), rax)?;
    a.mov(rdi, qword_ptr(rbp - 8))?;
    a.leave()?;
    a.ret()?;
    a.set_label(&mut done)?;
    a.hlt()
}

/// A triple fault after a compiled loop: both tiers stop at the shutdown,
/// after the same instructions (the run helpers once went on calling a
/// CPU that no longer runs anything).
#[test]
fn a_triple_fault_ends_the_run_in_both_tiers() {
    let mut a = long_mode();
    let code = assemble(&a, |asm| {
        let mut top = asm.create_label();
        asm.mov(ecx, 100)?;
        asm.set_label(&mut top)?;
        asm.dec(ecx)?;
        asm.jnz(top)?;
        asm.ud2()
    });
    place(&mut a, &code);
    // No gate at all: #UD, then #DF, then the shutdown.
    a.state.idtr.limit = 0;
    let mut b = long_mode();
    place(&mut b, &code);
    b.state.idtr.limit = 0;
    let mut jit = Jit::new(&mut b, cfg()).unwrap();
    assert_eq!(run_interp(&mut a, 1_000_000), 201);
    assert_eq!(run_jit(&mut b, &mut jit, 1_000_000), 201);
    assert!(jit.stats.native_insns > 0, "{:?}", jit.stats);
    same_state(&mut a, &mut b);
}

#[test]
fn a_mixed_loop_gives_the_interpreters_results() {
    let (_, b, jit) = both(long_mode, |_| {}, mixed);
    assert!(jit.stats.regions_compiled >= 1, "{:?}", jit.stats);
    let all = jit.instructions(&b);
    assert!(jit.stats.native_insns * 100 / all >= 80, "{:?} of {all}", jit.stats);
}

#[test]
fn flat_32_bit_code_gives_the_interpreters_results() {
    let (_, _, jit) = both(
        prot_mode,
        |_| {},
        |a| {
            let mut top = a.create_label();
            a.mov(esi, DATA as u32)?;
            a.mov(ecx, 500)?;
            a.xor(eax, eax)?;
            a.set_label(&mut top)?;
            a.mov(edx, ecx)?;
            a.and(edx, 15)?;
            a.add(dword_ptr(esi + edx * 4), ecx)?;
            a.add(eax, dword_ptr(esi + edx * 4))?;
            a.push(eax)?;
            a.pop(ebx)?;
            a.cmp(ebx, 0x1000)?;
            a.setg(dl)?;
            a.movzx(edi, dl)?;
            a.add(ebp, edi)?;
            a.loop_(top)?; // through the interpreter
            a.hlt()
        },
    );
    assert!(jit.stats.regions_compiled >= 1);
}

/// A load and a store in the middle of a compiled loop fault on their
/// 200th run (RDI points at the unmapped page): the exception frame, CR2
/// and every register match the interpreter's.
#[test]
fn faults_in_compiled_code_deliver_like_the_interpreter() {
    let prep = |c: &mut Cpu| c.state.gpr[7] = UNMAPPED;
    for store in [false, true] {
        let (a, b, jit) = both(long_mode, prep, |a| {
            let mut top = a.create_label();
            a.mov(rsi, DATA)?;
            a.mov(ecx, 1000)?;
            a.set_label(&mut top)?;
            a.add(rax, rcx)?;
            a.cmp(ecx, 800)?;
            a.cmove(rsi, rdi)?;
            if store {
                a.mov(qword_ptr(rsi + 8), rax)?;
            } else {
                a.add(rbx, qword_ptr(rsi + 8))?;
            }
            a.inc(r8)?;
            a.dec(ecx)?;
            a.jnz(top)?;
            a.hlt()
        });
        assert_eq!(a.state.cr2, UNMAPPED + 8);
        assert_eq!(b.state.rip, stub(14) + 1, "halted in the #PF handler");
        assert_eq!(b.state.gpr[1], 800);
        if store {
            // A store's miss runs the instruction through the interpreter,
            // which raises the fault.
            assert!(jit.stats.fault_exits == 0 && jit.stats.fallback_insns == 1, "{:?}", jit.stats);
        } else {
            assert!(jit.stats.fault_exits == 1, "{:?}", jit.stats);
        }
    }
}

/// INC and DEC keep CF; at the start of a block the translation leaves
/// the CF before them in the state's record and computes it only where it
/// is read: by ADC, by a fault's pushed RFLAGS, at the block's end.
#[test]
fn inc_and_dec_keep_the_carry_from_the_block_before() {
    let prep = |c: &mut Cpu| c.state.gpr[7] = UNMAPPED;
    for variant in 0..3 {
        let (a, b, _) = both(long_mode, prep, |a| {
            let mut top = a.create_label();
            let mut next = a.create_label();
            let mut after = a.create_label();
            a.mov(rsi, DATA)?;
            a.mov(ecx, 600)?;
            a.set_label(&mut top)?;
            // CF = (ecx < 300) as a SUB leaves it, in the block before.
            a.cmp(ecx, 300)?;
            a.jmp(next)?;
            a.set_label(&mut next)?;
            a.inc(r8)?;
            a.dec(r9d)?;
            match variant {
                // ADC reads the carry through both.
                0 => a.adc(r10, 0)?,
                // A fault pushes RFLAGS with the carry (rsi becomes
                // unmapped at ecx == 200).
                1 => {
                    a.cmp(ecx, 200)?;
                    a.cmove(rsi, rdi)?;
                    a.inc(r8)?;
                    a.mov(rax, qword_ptr(rsi))?;
                }
                // The block ends with the INC's record: the next block
                // reads the carry.
                _ => {
                    a.jmp(after)?;
                    a.set_label(&mut after)?;
                    a.setb(al)?;
                    a.add(r11, rax)?;
                }
            }
            a.dec(ecx)?;
            a.jnz(top)?;
            a.hlt()
        });
        assert_eq!(a.state.gpr[8], b.state.gpr[8]);
        if variant == 1 {
            assert_eq!(b.state.rip, stub(14) + 1, "halted in the #PF handler");
        }
        if variant == 0 {
            assert_eq!(b.state.gpr[10], 299, "ADC added the carry of each CMP below 300");
        }
    }
}

/// An edge into a block that sets every flag before anything can read
/// them leaves the lazy record unstored; the other edges store it, so a
/// PUSHF, a fault's pushed RFLAGS and a SETcc behind them see the
/// interpreter's flags.
#[test]
fn flags_are_stored_on_the_edges_that_need_them() {
    let prep = |c: &mut Cpu| c.state.gpr[7] = UNMAPPED;
    for variant in 0..3 {
        let (a, b, _) = both(long_mode, prep, |a| {
            data_loop(a, 600, |a| {
                let mut kill = a.create_label();
                let mut join = a.create_label();
                // RSI becomes unmapped at ECX == 150.
                a.cmp(ecx, 150)?;
                a.cmove(rsi, rdi)?;
                // CF = ECX < 300, for the way below 300.
                a.cmp(ecx, 300)?;
                a.jae(kill)?;
                match variant {
                    0 => {
                        a.lea(rax, qword_ptr(rcx + 3))?;
                        a.pushfq()?;
                        a.pop(rdx)?;
                        a.add(r11, rdx)?;
                    }
                    1 => a.add(r11, qword_ptr(rsi))?,
                    _ => {
                        a.setb(al)?;
                        a.add(r11, rax)?;
                    }
                }
                a.jmp(join)?;
                // Flags dead on entry: a move, then an ADD that sets them.
                a.set_label(&mut kill)?;
                a.mov(edx, ecx)?;
                a.add(edx, 7)?;
                a.add(r10, rdx)?;
                a.set_label(&mut join)
            })
        });
        assert_eq!(a.state.gpr[11], b.state.gpr[11]);
        if variant == 1 {
            assert_eq!(b.state.rip, stub(14) + 1, "halted in the #PF handler");
            assert_eq!(b.state.gpr[1], 150);
        } else {
            assert!(b.state.gpr[10] > 0);
        }
    }
}

/// Shifts by an immediate, IMUL and MUL set every flag, kept as SSA values
/// until something needs them: a PUSHF, a fault's pushed RFLAGS, a SETcc
/// after a rotate (which keeps SF, ZF and PF of the shift), or nothing, when
/// the next producer replaces them. Each way gives the interpreter's flags.
#[test]
fn deferred_shift_and_multiply_flags_give_the_interpreters_flags() {
    let prep = |c: &mut Cpu| c.state.gpr[7] = UNMAPPED;
    for producer in 0..4 {
        for reader in 0..4 {
            let (a, b, _) = both(long_mode, prep, |a| {
                data_loop(a, 400, |a| {
                    // RSI becomes unmapped at ECX == 120.
                    a.cmp(ecx, 120)?;
                    a.cmove(rsi, rdi)?;
                    a.lea(edx, qword_ptr(rcx * 8 + 0x7f))?;
                    match producer {
                        0 => a.shr(edx, 3)?,
                        1 => a.shl(rdx, 61)?,
                        2 => a.imul_3(edx, edx, 0x0100_0001)?,
                        _ => {
                            a.mov(eax, edx)?;
                            a.mul(ecx)?;
                        }
                    }
                    a.rol(r8d, 5)?;
                    match reader {
                        0 => {
                            a.pushfq()?;
                            a.pop(rax)?;
                            a.add(r11, rax)?;
                        }
                        1 => a.add(r11, qword_ptr(rsi))?,
                        2 => {
                            a.sete(al)?;
                            a.setp(bl)?;
                            a.sets(r9b)?;
                            a.add(r11b, al)?;
                            a.add(r12b, bl)?;
                            a.add(r13b, r9b)?;
                        }
                        _ => {
                            a.xor(eax, edx)?;
                            a.add(r11, rax)?;
                        }
                    }
                    Ok(())
                })
            });
            assert_eq!(a.state.gpr[11], b.state.gpr[11], "producer {producer}, reader {reader}");
            if reader == 1 {
                assert_eq!(b.state.rip, stub(14) + 1, "halted in the #PF handler");
                assert_eq!(b.state.gpr[1], 120);
            }
        }
    }
}

/// MUL and DIV of 32 and 64 bits, from registers and memory; a DIV with a
/// 128-bit dividend divides in a helper, an overflowing one takes the
/// interpreter (#DE).
#[test]
fn multiplies_and_divides_give_the_interpreters_results() {
    let (_, b, jit) = both(
        long_mode,
        |_| {},
        |a| {
            let mut top = a.create_label();
            a.mov(rsi, DATA)?;
            a.mov(ecx, 500)?;
            a.mov(rbx, 0x9e37_79b9_7f4a_7c15u64)?;
            a.set_label(&mut top)?;
            a.mov(rax, rbx)?;
            a.mul(rcx)?;
            a.add(r8, rdx)?;
            a.adc(r9, rax)?;
            a.mov(eax, ebx)?;
            a.mul(ecx)?;
            a.seto(r10b)?;
            a.add(r11, rdx)?;
            a.mov(qword_ptr(rsi), rcx)?;
            a.mov(rax, rbx)?;
            a.mul(qword_ptr(rsi))?;
            a.sbb(r12, rax)?;
            // 64-bit: RDX = 0 (fast), then RDX = 3 (128-bit, slow).
            a.xor(edx, edx)?;
            a.mov(rax, rbx)?;
            a.div(rcx)?;
            a.add(r13, rax)?;
            a.add(r14, rdx)?;
            a.mov(edx, 3)?;
            a.mov(rax, rbx)?;
            a.div(rcx)?;
            a.add(r13, rax)?;
            // 32-bit with a high half below the divisor.
            a.mov(edx, ecx)?;
            a.shr(edx, 2)?;
            a.mov(eax, ebx)?;
            a.div(ecx)?;
            a.add(r15, rax)?;
            a.add(r15, rdx)?;
            a.mov(dword_ptr(rsi + 8), ecx)?;
            a.xor(edx, edx)?;
            a.mov(eax, ebx)?;
            a.div(dword_ptr(rsi + 8))?;
            a.add(r15, rax)?;
            a.rol(rbx, 7)?;
            a.bswap(r8)?;
            a.bswap(r9d)?;
            a.dec(ecx)?;
            a.jnz(top)?;
            // Overflow: #DE from compiled code.
            a.mov(edx, 10)?;
            a.mov(ecx, 5)?;
            a.div(ecx)?;
            a.hlt()
        },
    );
    assert_eq!(b.state.rip, stub(0) + 1, "halted in the #DE handler");
    assert!(jit.stats.native_insns * 100 / jit.instructions(&b) >= 90, "{:?}", jit.stats);
}

/// A loop of `passes` passes (ECX counting down) that runs `body` in each
/// and sets CR0.TS when ECX reaches `at`, run in both tiers: the CPU
/// after it (an x87 or SSE `body` raises #NM from compiled code there).
fn ts_set_midway(
    prep: fn(&mut Cpu),
    passes: u32,
    at: u32,
    body: impl Fn(&mut CodeAssembler) -> Result<(), IcedError>,
) -> Cpu {
    let (_, b, _) = both(long_mode, prep, |a| {
        let mut top = a.create_label();
        let mut skip = a.create_label();
        a.mov(ecx, passes)?;
        a.set_label(&mut top)?;
        a.cmp(ecx, at)?;
        a.jne(skip)?;
        a.mov(rax, cr0)?;
        a.or(rax, 8)?;
        a.mov(cr0, rax)?;
        a.set_label(&mut skip)?;
        body(a)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.hlt()
    });
    b
}

/// SHLD and SHRD (by CL, zero included, and by immediates), TZCNT,
/// LZCNT and POPCNT (zero sources included), shifts of 8- and 16-bit
/// registers and of memory, FNSTCW, and DIV with a 128-bit dividend:
/// registers, memory and every flag as the interpreter gives them; then
/// FNSTCW's #NM.
#[test]
fn double_shifts_bit_counts_and_narrow_and_memory_shifts_give_the_interpreters_results() {
    let (_, b, jit) = both(
        long_mode,
        |_| {},
        |a| {
            let mut top = a.create_label();
            a.mov(rsi, DATA)?;
            a.mov(ecx, 300)?;
            a.mov(rbx, 0x9e37_79b9_7f4a_7c15u64)?;
            a.mov(rdi, 0x0123_4567_89ab_cdefu64)?;
            a.set_label(&mut top)?;
            a.shrd(rbx, rdi, cl)?;
            a.adc(r8, 0)?;
            a.seto(byte_ptr(rsi + rcx))?;
            a.shld(rdi, rbx, cl)?;
            a.sets(byte_ptr(rsi + rcx + 0x200))?;
            a.setp(byte_ptr(rsi + rcx + 0x400))?;
            a.shrd(r10d, ebx, 7)?;
            a.seto(byte_ptr(rsi + rcx + 0x600))?;
            a.shld(r11d, edi, cl)?;
            a.adc(r8, 0)?;
            a.shrd(r9d, r11d, cl)?;
            a.setz(byte_ptr(rsi + rcx + 0x800))?;
            a.shld(r12, rbx, 1)?;
            a.seto(byte_ptr(rsi + rcx + 0xa00))?;
            a.mov(edx, ecx)?;
            a.and(edx, 3)?;
            a.shl(rdx, 62)?;
            a.tzcnt(r13, rdx)?;
            a.adc(r8, 0)?;
            a.setz(byte_ptr(rsi + rcx + 0xc00))?;
            a.lzcnt(r14d, edx)?;
            a.adc(r8, r14)?;
            a.popcnt(r15, rdi)?;
            a.setz(byte_ptr(rsi + rcx + 0xe00))?;
            a.popcnt(eax, edx)?;
            a.add(r15, rax)?;
            a.tzcnt(eax, dword_ptr(rsi + rcx * 4 + 0x1000))?;
            a.add(r15, rax)?;
            a.mov(eax, ebx)?;
            a.shl(al, 3)?;
            a.adc(r8, 0)?;
            a.shr(ah, 1)?;
            a.seto(byte_ptr(rsi + rcx + 0x1400))?;
            a.sar(dx, 5)?;
            a.sets(byte_ptr(rsi + rcx + 0x1600))?;
            a.shr(r9w, 15)?;
            a.adc(r8, rax)?;
            a.sar(sil, 2)?;
            a.mov(rsi, DATA)?;
            // Memory destinations, by immediates.
            a.shl(byte_ptr(rsi + rcx + 0x1800), 1)?;
            a.adc(r8, 0)?;
            a.shr(dword_ptr(rsi + rcx * 4 + 0x1000), 5)?;
            a.seto(byte_ptr(rsi + rcx + 0x1a00))?;
            a.sar(qword_ptr(rsi + 0x1c00), 63)?;
            a.sets(byte_ptr(rsi + rcx + 0x1b00))?;
            a.shl(word_ptr(rsi + rcx * 2 + 0x1400), 15)?;
            a.setp(byte_ptr(rsi + rcx + 0x1d00))?;
            a.fnstcw(word_ptr(rsi + rcx + 0x1e00))?;
            // 128 by 64 bits, the high half below the divisor.
            a.mov(rdx, rcx)?;
            a.mov(rax, rbx)?;
            a.mov(r9, rdi)?;
            a.or(r9, 0x1000)?;
            a.div(r9)?;
            a.add(r14, rax)?;
            a.add(r13, rdx)?;
            a.dec(ecx)?;
            a.jnz(top)?;
            a.hlt()
        },
    );
    ran_compiled(&b, &jit, 95);

    // FNSTCW under CR0.TS: #NM from compiled code.
    let b = ts_set_midway(
        |_| {},
        100,
        10,
        |a| {
            a.mov(rsi, DATA)?;
            a.fnstcw(word_ptr(rsi + rcx * 2))
        },
    );
    assert_eq!(b.state.rip, stub(7) + 1, "halted in the #NM handler");
}

/// COMISD, UCOMISD, COMISS, UCOMISS from registers and memory, over
/// zeros of both signs, normals, infinities, a denormal and NaNs (the
/// last two through the slow path, which sets MXCSR flags): the flags
/// and MXCSR as the interpreter gives them.
#[test]
fn scalar_compares_give_the_interpreters_results() {
    let prep = |c: &mut Cpu| {
        sse_on(c);
        let d = [0.0f64, -0.0, 1.5, -2.25, f64::INFINITY, f64::NEG_INFINITY, 5e-320, f64::NAN];
        let f = [0.0f32, -0.0, 1.5, -2.25, f32::INFINITY, f32::NEG_INFINITY, 1e-40, f32::NAN];
        for i in 0..8 {
            c.mem().write(DATA + 8 * i as u64, &d[i].to_le_bytes()).unwrap();
            c.mem().write(DATA + 0x100 + 4 * i as u64, &f[i].to_le_bytes()).unwrap();
        }
    };
    let (_, b, jit) = both(long_mode, prep, |a| {
        let mut top = a.create_label();
        a.mov(rsi, DATA)?;
        a.mov(ecx, 64)?;
        a.set_label(&mut top)?;
        a.mov(eax, ecx)?;
        a.and(eax, 7)?;
        a.mov(edx, ecx)?;
        a.shr(edx, 3)?;
        a.and(edx, 7)?;
        a.movsd_2(xmm0, qword_ptr(rsi + rax * 8))?;
        a.movsd_2(xmm1, qword_ptr(rsi + rdx * 8))?;
        a.comisd(xmm0, xmm1)?;
        a.adc(r8, 0)?;
        a.setz(byte_ptr(rsi + rcx + 0x200))?;
        a.setp(byte_ptr(rsi + rcx + 0x300))?;
        a.ucomisd(xmm1, qword_ptr(rsi + rax * 8))?;
        a.adc(r9, 0)?;
        a.setz(byte_ptr(rsi + rcx + 0x400))?;
        a.movss(xmm2, dword_ptr(rsi + rax * 4 + 0x100))?;
        a.movss(xmm3, dword_ptr(rsi + rdx * 4 + 0x100))?;
        a.ucomiss(xmm2, xmm3)?;
        a.adc(r10, 0)?;
        a.setz(byte_ptr(rsi + rcx + 0x500))?;
        a.comiss(xmm3, dword_ptr(rsi + rax * 4 + 0x100))?;
        a.adc(r11, 0)?;
        a.setp(byte_ptr(rsi + rcx + 0x600))?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.hlt()
    });
    assert_ne!(b.state.mxcsr & 0x3f, 0, "the slow path set MXCSR flags");
    // Close to half the pairs hold a NaN or the denormal: slow.
    ran_compiled(&b, &jit, 75);
}

/// ADDSD/SUBSD/MULSD/DIVSD, their single forms and CVTSI2SD/SS over
/// zeros, normals, infinities, a denormal, a NaN, and values whose
/// products overflow and underflow, first with PE clear, then set, then
/// with another rounding mode: results and MXCSR as the interpreter
/// gives them.
#[test]
fn scalar_arithmetic_gives_the_interpreters_results() {
    let prep = |c: &mut Cpu| {
        sse_on(c);
        let d = [0.0f64, -0.0, 1.5, -2.25, 1e300, 1e-300, f64::INFINITY, 5e-320, f64::NAN, 3.0];
        let f = [0.0f32, -0.0, 1.5, -2.25, 1e30, 1e-30, f32::INFINITY, 1e-40, f32::NAN, 3.0];
        for i in 0..10 {
            c.mem().write(DATA + 8 * i as u64, &d[i].to_le_bytes()).unwrap();
            c.mem().write(DATA + 0x100 + 4 * i as u64, &f[i].to_le_bytes()).unwrap();
        }
        // MXCSR images: round down, then round to nearest again.
        c.mem().write(DATA + 0x180, &0x3fa0u32.to_le_bytes()).unwrap();
        c.mem().write(DATA + 0x184, &0x1fa0u32.to_le_bytes()).unwrap();
    };
    let (_, b, jit) = both(long_mode, prep, |a| {
        let mut top = a.create_label();
        let mut keep = a.create_label();
        let mut keep2 = a.create_label();
        a.mov(rsi, DATA)?;
        a.mov(ecx, 300)?;
        a.set_label(&mut top)?;
        a.mov(eax, ecx)?;
        a.xor(edx, edx)?;
        a.mov(r8d, 10)?;
        a.div(r8d)?;
        // rdx = ecx % 10, rax = (ecx / 10) % 10 below.
        a.xor(edx, edx)?;
        a.div(r8d)?;
        a.mov(eax, ecx)?;
        a.and(eax, 7)?;
        a.add(eax, 2)?;
        a.movsd_2(xmm0, qword_ptr(rsi + rdx * 8))?;
        a.movsd_2(xmm1, qword_ptr(rsi + rax * 8))?;
        a.movapd(xmm2, xmm0)?;
        a.addsd(xmm2, xmm1)?;
        a.movapd(xmm3, xmm0)?;
        a.subsd(xmm3, qword_ptr(rsi + rax * 8))?;
        a.movapd(xmm4, xmm0)?;
        a.mulsd(xmm4, xmm1)?;
        a.movapd(xmm5, xmm0)?;
        a.divsd(xmm5, xmm1)?;
        a.movss(xmm6, dword_ptr(rsi + rdx * 4 + 0x100))?;
        a.mulss(xmm6, dword_ptr(rsi + rax * 4 + 0x100))?;
        a.addss(xmm7, xmm6)?;
        a.divss(xmm6, dword_ptr(rsi + rax * 4 + 0x100))?;
        a.subss(xmm7, xmm6)?;
        a.mov(r9, rcx)?;
        a.imul_2(r9, r9)?;
        a.shl(r9, 30)?;
        a.cvtsi2sd(xmm8, r9)?;
        a.cvtsi2ss(xmm9, r9d)?;
        a.cvtsi2sd(xmm10, dword_ptr(rsi + rcx * 4))?;
        a.cvtsi2ss(xmm11, qword_ptr(rsi + rcx * 8))?;
        a.movsd_2(qword_ptr(rsi + rcx * 8 + 0x800), xmm2)?;
        a.addsd(xmm12, xmm3)?;
        a.addsd(xmm13, xmm4)?;
        a.addsd(xmm14, xmm5)?;
        a.addsd(xmm15, xmm8)?;
        a.cmp(ecx, 100)?;
        a.jne(keep)?;
        a.ldmxcsr(dword_ptr(rsi + 0x180))?;
        a.set_label(&mut keep)?;
        a.cmp(ecx, 50)?;
        a.jne(keep2)?;
        a.ldmxcsr(dword_ptr(rsi + 0x184))?;
        a.set_label(&mut keep2)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.hlt()
    });
    ran_compiled(&b, &jit, 60);
}

/// REP STOSB/STOSQ and REP MOVSB/MOVSQ of every length from 0 up, at
/// offsets that cross a page on some passes, with a destination just
/// above the source (a repeated pattern), and backwards (DF set): memory,
/// registers and the instruction count as the interpreter gives them.
#[test]
fn rep_stores_and_moves_give_the_interpreters_results() {
    let prep = |c: &mut Cpu| {
        let bytes: Vec<u8> = (0..0x2000u32).map(|i| (i * 7 + 1) as u8).collect();
        c.mem().write(DATA, &bytes).unwrap();
    };
    let (_, b, jit) = both(long_mode, prep, |a| {
        let mut top = a.create_label();
        let mut fwd = a.create_label();
        a.mov(r8d, 120)?;
        a.set_label(&mut top)?;
        a.mov(eax, r8d)?;
        a.imul_3(eax, eax, 37)?;
        a.and(eax, 0xfff)?;
        a.lea(rdi, qword_ptr(rax + DATA))?;
        a.mov(ecx, r8d)?;
        a.mov(rax, 0x1122_3344_5566_7788u64)?;
        a.add(rax, r8)?;
        a.rep().stosb()?;
        a.lea(rdi, qword_ptr(r8 * 8 + DATA + 0x800))?;
        a.mov(ecx, r8d)?;
        a.shr(ecx, 2)?;
        a.rep().stosq()?;
        a.lea(rsi, qword_ptr(r8 * 4 + DATA))?;
        a.lea(rdi, qword_ptr(r8 * 4 + DATA + 0x1000 - 600))?;
        a.mov(ecx, r8d)?;
        a.imul_3(ecx, ecx, 5)?;
        a.rep().movsb()?;
        // Just above the source: a repeated pattern.
        a.lea(rsi, qword_ptr(r8 + DATA + 0x100))?;
        a.lea(rdi, qword_ptr(rsi + 3))?;
        a.mov(ecx, 40)?;
        a.rep().movsb()?;
        a.lea(rsi, qword_ptr(r8 * 8 + DATA + 0x400))?;
        a.lea(rdi, qword_ptr(r8 * 8 + DATA + 0x10))?;
        a.mov(ecx, r8d)?;
        a.and(ecx, 15)?;
        a.rep().movsq()?;
        a.test(r8d, 7)?;
        a.jnz(fwd)?;
        a.std()?;
        a.lea(rdi, qword_ptr(r8 + DATA + 0x1800))?;
        a.mov(ecx, 9)?;
        a.rep().stosb()?;
        a.cld()?;
        a.set_label(&mut fwd)?;
        a.dec(r8d)?;
        a.jnz(top)?;
        a.hlt()
    });
    ran_compiled(&b, &jit, 80);
}

/// PUSHFQ after every kind of flag producer, CLI and SWAPGS at CPL 0
/// (GS-relative loads see each swap); selector reads, prefetches and
/// fences; then CLI and SWAPGS at CPL 3: #GP.
#[test]
fn flag_pushes_cli_swapgs_and_selector_reads_give_the_interpreters_results() {
    let prep = |c: &mut Cpu| {
        let bytes: Vec<u8> = (0..0x400u32).map(|i| (i * 11 + 7) as u8).collect();
        c.mem().write(DATA, &bytes).unwrap();
        c.state.seg[sreg::GS].base = DATA;
        c.state.msr.kernel_gs_base = DATA + 0x100;
    };
    let (_, b, jit) = both(long_mode, prep, |a| {
        let mut top = a.create_label();
        a.mov(ecx, 200)?;
        a.mov(rbx, 0x9e37_79b9_7f4a_7c15u64)?;
        a.set_label(&mut top)?;
        a.add(ebx, ecx)?;
        a.pushfq()?;
        a.pop(rax)?;
        a.add(r8, rax)?;
        a.inc(rbx)?;
        a.pushfq()?;
        a.pop(rax)?;
        a.add(r9, rax)?;
        a.bt(rbx, 5)?;
        a.pushfq()?;
        a.pop(rax)?;
        a.add(r10, rax)?;
        a.cli()?;
        a.swapgs()?;
        a.add(r11, qword_ptr(rcx * 2).gs())?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.pushfq()?;
        a.pop(r12)?;
        a.hlt()
    });
    ran_compiled(&b, &jit, 95);

    // Selector reads into registers of each size and memory, between
    // prefetches and fences.
    let (_, b, jit) = both(
        long_mode,
        |_| {},
        |a| {
            a.mov(rbx, u64::MAX)?;
            a.mov(rdx, u64::MAX)?;
            data_loop(a, 100, |a| {
                a.prefetcht0(byte_ptr(rsi + rcx * 8))?;
                a.prefetchw(byte_ptr(rsi + 0x40))?;
                a.mov(eax, ds)?;
                a.add(r8, rax)?;
                a.mov(bx, ss)?;
                a.mov(rdx, cs)?;
                a.lfence()?;
                a.mov(word_ptr(rsi + rcx * 2), es)?;
                a.mfence()?;
                a.sfence()
            })
        },
    );
    assert_eq!(b.state.gpr[3] & 0xffff, u64::from(b.state.seg[sreg::SS].selector));
    assert_eq!(b.state.gpr[3] >> 16, 0xffff_ffff_ffff, "a 16-bit destination merges");
    assert_eq!(b.state.gpr[2], u64::from(b.state.seg[sreg::CS].selector));
    assert!(jit.stats.native_insns * 100 / jit.instructions(&b) >= 95, "{:?}", jit.stats);

    for cli in [true, false] {
        let mut c = long_mode();
        let code = assemble(&c, |a| on_pass_ten(a, |a| if cli { a.cli() } else { a.swapgs() }));
        let mut jit = at_user(&mut c, &code);
        run_jit(&mut c, &mut jit, 100_000);
        assert_eq!(c.state.rip, stub(13) + 1, "halted in the #GP handler");
        assert_eq!(c.state.gpr[1], 10);
    }
}

/// Rotates, BT and BSF change some flags only; after an unknown producer
/// (the block before) the translation takes the others from the state
/// only where they are read: by a condition, a fault's pushed RFLAGS, an
/// exit. After a producer in the same block (variants 4 to 7: a SUB, an
/// INC whose carry-in is the block before's, a logic operation) they come
/// from the producer's values, again only where read.
#[test]
fn partial_flag_writers_keep_the_other_flags() {
    let prep = |c: &mut Cpu| c.state.gpr[7] = UNMAPPED;
    for variant in 0..8 {
        let (a, b, _) = both(long_mode, prep, |a| {
            let mut top = a.create_label();
            let mut next = a.create_label();
            a.mov(rsi, DATA)?;
            a.mov(ecx, 500)?;
            a.mov(rbx, 0x8000_0000_0000_0001u64)?;
            a.set_label(&mut top)?;
            // Every flag from a SUB, in the block before.
            a.mov(eax, ecx)?;
            a.and(eax, 7)?;
            a.sub(eax, 3)?;
            a.jmp(next)?;
            a.set_label(&mut next)?;
            match variant {
                0 => {
                    a.ror(rbx, 3)?;
                    a.rol(rbx, 1)?;
                    a.setz(dl)?;
                    a.sets(dh)?;
                    a.seto(r8b)?;
                    a.add(r9w, dx)?;
                    a.adc(r10, 0)?;
                }
                1 => {
                    a.bt(ecx, 1)?;
                    a.adc(r10, 0)?;
                    a.bts(r11, rcx)?;
                    a.setbe(dl)?;
                    a.setl(dh)?;
                    a.add(r9w, dx)?;
                }
                2 => {
                    a.bsf(r12, rcx)?;
                    a.sbb(r10, 0)?;
                    a.seto(dl)?;
                    a.add(r9b, dl)?;
                }
                3 => {
                    // A fault pushes RFLAGS (rsi unmapped at ecx == 100).
                    a.ror(rbx, 5)?;
                    a.cmp(ecx, 100)?;
                    a.cmove(rsi, rdi)?;
                    a.bt(ecx, 2)?;
                    a.mov(rax, qword_ptr(rsi))?;
                }
                4 => {
                    a.sub(eax, 2)?;
                    a.ror(rbx, 3)?;
                    a.rol(rbx, 1)?;
                    a.setz(dl)?;
                    a.sets(dh)?;
                    a.seto(r8b)?;
                    a.add(r9w, dx)?;
                    a.adc(r10, 0)?;
                    a.setp(dl)?;
                    a.add(r9b, dl)?;
                }
                5 => {
                    // The INC's carry-in is the SUB's, from the block before.
                    a.inc(eax)?;
                    a.ror(rbx, 1)?;
                    a.bt(ecx, 0)?;
                    a.setz(dl)?;
                    a.setbe(dh)?;
                    a.add(r9w, dx)?;
                    a.inc(r10d)?;
                    a.rol(r11, 7)?;
                    a.adc(r10, 0)?;
                }
                6 => {
                    a.xor(eax, ecx)?;
                    a.bsf(r12, rcx)?;
                    a.ror(rbx, 9)?;
                    a.setl(dl)?;
                    a.setle(dh)?;
                    a.add(r9w, dx)?;
                    // Leaves with the flags pending (the jnz reads ZF of the
                    // DEC below, the rest go to the state at the exit).
                    a.pushfq()?;
                    a.pop(rdx)?;
                    a.add(r9, rdx)?;
                }
                _ => {
                    // A fault pushes RFLAGS made from the producer and the
                    // rotate (rsi unmapped at ecx == 100).
                    a.cmp(ecx, 100)?;
                    a.cmove(rsi, rdi)?;
                    a.add(eax, ecx)?;
                    a.ror(rbx, 5)?;
                    a.mov(rax, qword_ptr(rsi))?;
                }
            }
            a.dec(ecx)?;
            a.jnz(top)?;
            a.hlt()
        });
        assert_eq!(a.state.gpr[9], b.state.gpr[9]);
        if variant == 3 || variant == 7 {
            assert_eq!(b.state.rip, stub(14) + 1, "halted in the #PF handler");
        }
    }
}

/// XCHG, CMPXCHG (both outcomes, register and memory, with LOCK) and
/// BT/BTS/BTR/BTC run translated and give the interpreter's results; a
/// LOCK on a register form still raises #UD.
#[test]
fn exchanges_and_bit_tests_give_the_interpreters_results() {
    let (_, b, jit) = both(
        long_mode,
        |_| {},
        |a| {
            let mut top = a.create_label();
            a.mov(rsi, DATA)?;
            a.mov(ecx, 400)?;
            a.mov(rbx, 0x0123_4567_89ab_cdefu64)?;
            a.set_label(&mut top)?;
            a.mov(rdx, rcx)?;
            a.and(edx, 7)?;
            a.xchg(qword_ptr(rsi + rdx * 8), rbx)?;
            a.xchg(rbx, r10)?;
            a.xchg(al, ah)?;
            a.xchg(r9d, r10d)?;
            // Equal on every fourth pass (the slot holds what RAX holds).
            a.mov(eax, ecx)?;
            a.and(eax, 3)?;
            a.mov(r8d, ecx)?;
            a.lock().cmpxchg(dword_ptr(rsi + 0x100), r8d)?;
            a.setz(byte_ptr(rsi + 0x104))?;
            a.cmpxchg(r11d, r8d)?;
            a.cmpxchg(r12w, cx)?;
            a.cmpxchg(ah, cl)?;
            a.bt(ecx, 3)?;
            a.adc(r13, 0)?;
            a.bts(r14, rcx)?;
            a.btr(r14d, 5)?;
            a.btc(r15w, cx)?;
            a.lock().bts(dword_ptr(rsi + 0x108), 9)?;
            a.btc(qword_ptr(rsi + 0x110), 63)?;
            a.bt(word_ptr(rsi + 0x108), 9)?;
            a.setc(byte_ptr(rsi + 0x118))?;
            a.dec(ecx)?;
            a.jnz(top)?;
            a.hlt()
        },
    );
    ran_compiled(&b, &jit, 95);

    // LOCK with a register destination: #UD from compiled code.
    let (_, b, _) = both(long_mode, |_| {}, |a| on_pass_ten(a, |a| a.lock().xchg(eax, ebx)));
    assert_eq!(b.state.rip, stub(6) + 1, "halted in the #UD handler");
}

#[test]
fn divide_error_and_invalid_opcode_from_compiled_code() {
    let (_, b, _) = both(
        long_mode,
        |_| {},
        |a| {
            let mut top = a.create_label();
            a.mov(ecx, 100)?;
            a.mov(ebx, 50)?;
            a.set_label(&mut top)?;
            a.mov(eax, 1000)?;
            a.xor(edx, edx)?;
            a.div(ebx)?; // through the interpreter; #DE when EBX reaches 0
            a.dec(ebx)?;
            a.dec(ecx)?;
            a.jnz(top)?;
            a.hlt()
        },
    );
    assert_eq!(b.state.rip, stub(0) + 1);
    let (_, b, _) = both(
        long_mode,
        |_| {},
        |a| {
            let mut top = a.create_label();
            let mut skip = a.create_label();
            a.mov(ecx, 100)?;
            a.set_label(&mut top)?;
            a.add(eax, ecx)?;
            a.cmp(ecx, 10)?;
            a.jne(skip)?;
            a.ud2()?;
            a.set_label(&mut skip)?;
            a.dec(ecx)?;
            a.jnz(top)?;
            a.hlt()
        },
    );
    assert_eq!(b.state.rip, stub(6) + 1);
}

/// The one-operand multiplies and the divides of every size, from
/// registers and memory, over many inputs (a generator in the guest):
/// IDIV of 32 and 64 bits with negative dividends and divisors, dividends
/// wider than the divisor that do not overflow (64-bit ones through the
/// helper), quotients of exactly -2^31 and -2^63; DIV and IDIV of 8 and 16
/// bits (AH as AL's neighbour, wide dividends); MUL and IMUL of each size
/// (AH as a source) with their flags read, and the flags a divide leaves
/// read after it: every register and flag as the interpreter gives them,
/// none of them through its handler.
#[test]
fn signed_and_narrow_multiplies_and_divides_give_the_interpreters_results() {
    use iced_x86::Mnemonic as M;
    let (_, b, jit) = both(long_mode, sse_on, |a| {
        let mut top = a.create_label();
        a.mov(rsi, DATA)?;
        a.mov(ebp, 300)?;
        a.mov(rbx, 0x2545_f491_4f6c_dd1du64)?;
        a.mov(r12, -3i64)?;
        a.set_label(&mut top)?;
        // The generator: RBX = RBX * A + C.
        a.mov(rax, 0x5851_f42d_4c95_7f2du64)?;
        a.imul_2(rbx, rax)?;
        a.mov(rcx, 0x1405_7b7e_f767_814fu64)?;
        a.add(rbx, rcx)?;
        // IDIV r32: a CDQ dividend, a divisor of any size (not 0), then a
        // byte's; the flags of the CMP before it read after it.
        a.mov(rcx, rbx)?;
        a.shr(rcx, 32)?;
        a.test(ecx, ecx)?;
        a.cmovz(ecx, r12d)?;
        a.cmp(ebx, ecx)?;
        a.mov(eax, ebx)?;
        a.cdq()?;
        a.idiv(ecx)?;
        a.setl(r9b)?;
        a.add(r15b, r9b)?;
        a.add(r13, rax)?;
        a.add(r14, rdx)?;
        a.movsx(edi, bl)?;
        a.test(edi, edi)?;
        a.cmovz(edi, r12d)?;
        a.mov(eax, ebx)?;
        a.ror(eax, 7)?;
        a.cdq()?;
        a.idiv(edi)?;
        a.add(r13, rax)?;
        a.xor(r14, rdx)?;
        // IDIV m32 of a dividend wider than 32 bits (EDX from -8 to 7) by a
        // divisor of 2^30 or more either way.
        a.mov(rcx, rbx)?;
        a.shr(rcx, 32)?;
        a.and(ecx, 0x3fff_ffff)?;
        a.or(ecx, 0x4000_0000)?;
        a.mov(edi, ecx)?;
        a.neg(edi)?;
        a.test(bl, 2)?;
        a.cmovnz(ecx, edi)?;
        a.mov(dword_ptr(rsi), ecx)?;
        a.movsx(edx, bh)?;
        a.sar(edx, 4)?;
        a.mov(eax, ebx)?;
        a.idiv(dword_ptr(rsi))?;
        a.add(r13, rax)?;
        a.add(r14, rdx)?;
        // -2^32 / 2 and 2^32 / -2: a quotient of -2^31.
        a.mov(edx, -1i32)?;
        a.xor(eax, eax)?;
        a.mov(ecx, 2)?;
        a.idiv(ecx)?;
        a.add(r13, rax)?;
        a.mov(edx, 1)?;
        a.xor(eax, eax)?;
        a.mov(ecx, -2i32)?;
        a.idiv(ecx)?;
        a.add(r13, rax)?;
        // IDIV r64: a CQO dividend by a divisor of any size, then a byte's.
        a.mov(rcx, rbx)?;
        a.rol(rcx, 17)?;
        a.test(rcx, rcx)?;
        a.cmovz(rcx, r12)?;
        a.mov(rax, rbx)?;
        a.cqo()?;
        a.idiv(rcx)?;
        a.add(r13, rax)?;
        a.add(r14, rdx)?;
        a.movsx(rdi, bl)?;
        a.test(rdi, rdi)?;
        a.cmovz(rdi, r12)?;
        a.mov(rax, rbx)?;
        a.ror(rax, 13)?;
        a.cqo()?;
        a.idiv(rdi)?;
        a.add(r13, rax)?;
        a.xor(r14, rdx)?;
        // IDIV m64 of a 128-bit dividend (RDX from -8 to 7: mostly not
        // RAX's sign, the helper) by a divisor of 2^62 or more either way.
        a.mov(rcx, rbx)?;
        a.shl(rcx, 2)?;
        a.shr(rcx, 2)?;
        a.bts(rcx, 62)?;
        a.mov(rdi, rcx)?;
        a.neg(rdi)?;
        a.test(bl, 4)?;
        a.cmovnz(rcx, rdi)?;
        a.mov(qword_ptr(rsi + 8), rcx)?;
        a.movsx(edx, bh)?;
        a.sar(edx, 4)?;
        a.movsxd(rdx, edx)?;
        a.mov(rax, rbx)?;
        a.rol(rax, 29)?;
        a.idiv(qword_ptr(rsi + 8))?;
        a.add(r13, rax)?;
        a.add(r14, rdx)?;
        // -2^64 / 2 and 2^64 / -2: a quotient of -2^63 from the helper.
        a.mov(rdx, -1i64)?;
        a.xor(eax, eax)?;
        a.mov(ecx, 2)?;
        a.idiv(rcx)?;
        a.add(r13, rax)?;
        a.mov(edx, 1)?;
        a.xor(eax, eax)?;
        a.mov(rcx, -2i64)?;
        a.idiv(rcx)?;
        a.add(r13, rax)?;
        // DIV r8 with AH 0, then 1 (a divisor of 2 or more); IDIV r8 of a
        // CBW dividend, then of one of 12 bits by a divisor of 64 or more
        // either way, from memory.
        a.movzx(eax, bl)?;
        a.mov(cl, bh)?;
        a.or(cl, 1)?;
        a.div(cl)?;
        a.add(r13, rax)?;
        a.movzx(eax, bl)?;
        a.mov(ah, 1)?;
        a.or(cl, 2)?;
        a.div(cl)?;
        a.add(r14, rax)?;
        a.mov(al, bl)?;
        a.sar(al, 1)?;
        a.cbw()?;
        a.mov(ecx, ebx)?;
        a.shr(ecx, 8)?;
        a.or(cl, 1)?;
        a.idiv(cl)?;
        a.add(r13, rax)?;
        a.mov(eax, ebx)?;
        a.shl(ax, 4)?;
        a.sar(ax, 4)?;
        a.mov(ecx, ebx)?;
        a.shr(ecx, 16)?;
        a.and(ecx, 0x3f)?;
        a.or(ecx, 0x40)?;
        a.mov(edi, ecx)?;
        a.neg(edi)?;
        a.test(bl, 8)?;
        a.cmovnz(ecx, edi)?;
        a.mov(byte_ptr(rsi + 16), cl)?;
        a.idiv(byte_ptr(rsi + 16))?;
        a.add(r14, rax)?;
        // DIV r16 with DX below a divisor of 2^15 or more; IDIV m16 of a
        // dividend of 20 bits by a divisor of 2^14 or more either way; IDIV
        // r16 of a CWD dividend.
        a.mov(ecx, ebx)?;
        a.shr(ecx, 16)?;
        a.or(cx, 0x8000u32 as i32)?;
        a.mov(edx, ebx)?;
        a.and(edx, 0x7fff)?;
        a.mov(rax, rbx)?;
        a.ror(rax, 40)?;
        a.div(cx)?;
        a.add(r13, rax)?;
        a.add(r14, rdx)?;
        a.mov(ecx, ebx)?;
        a.shr(ecx, 20)?;
        a.and(ecx, 0x3fff)?;
        a.or(ecx, 0x4000)?;
        a.mov(edi, ecx)?;
        a.neg(edi)?;
        a.test(bl, 16)?;
        a.cmovnz(ecx, edi)?;
        a.mov(word_ptr(rsi + 24), cx)?;
        a.movsx(edx, bh)?;
        a.sar(edx, 4)?;
        a.mov(eax, ebx)?;
        a.idiv(word_ptr(rsi + 24))?;
        a.add(r13, rax)?;
        a.add(r14, rdx)?;
        a.mov(eax, ebx)?;
        a.sar(ax, 1)?;
        a.cwd()?;
        a.movsx(ecx, bh)?;
        a.or(ecx, 1)?;
        a.idiv(cx)?;
        a.add(r13, rax)?;
        a.xor(r14, rdx)?;
        // MUL and IMUL of each size, their flags kept.
        a.mov(rcx, rbx)?;
        a.rol(rcx, 23)?;
        a.mov(qword_ptr(rsi + 32), rcx)?;
        a.mov(rax, rbx)?;
        a.mul(rcx)?;
        a.pushfq()?;
        a.add(r13, rax)?;
        a.add(r14, rdx)?;
        a.mov(rax, rbx)?;
        a.imul(qword_ptr(rsi + 32))?;
        a.pushfq()?;
        a.add(r13, rax)?;
        a.add(r14, rdx)?;
        a.movsx(rax, bl)?;
        a.movsx(ecx, bh)?;
        a.movsxd(rcx, ecx)?;
        a.imul(rcx)?;
        a.pushfq()?;
        a.add(r13, rax)?;
        a.mov(eax, ebx)?;
        a.mul(dword_ptr(rsi + 32))?;
        a.pushfq()?;
        a.add(r13, rax)?;
        a.add(r14, rdx)?;
        a.mov(eax, ebx)?;
        a.imul(ecx)?;
        a.pushfq()?;
        a.add(r13, rax)?;
        a.add(r14, rdx)?;
        a.mov(rax, rbx)?;
        a.mul(cx)?;
        a.pushfq()?;
        a.add(r13, rax)?;
        a.add(r14, rdx)?;
        a.mov(rax, rbx)?;
        a.imul(word_ptr(rsi + 34))?;
        a.pushfq()?;
        a.add(r13, rax)?;
        a.add(r14, rdx)?;
        a.mov(rax, rbx)?;
        a.mul(ah)?;
        a.pushfq()?;
        a.add(r13, rax)?;
        a.mov(rax, rbx)?;
        a.imul(byte_ptr(rsi + 35))?;
        a.pushfq()?;
        a.add(r13, rax)?;
        a.mov(rax, rbx)?;
        a.imul(ch)?;
        a.pushfq()?;
        a.add(r13, rax)?;
        a.movsx(eax, bl)?;
        a.sar(eax, 4)?;
        a.imul(cl)?;
        a.pushfq()?;
        a.add(r13, rax)?;
        // The ten flag images, masked to the arithmetic flags.
        for _ in 0..10 {
            a.pop(rax)?;
            a.and(eax, 0x8d5)?;
            a.add(r15, rax)?;
            a.rol(r15, 5)?;
        }
        a.dec(ebp)?;
        a.jnz(top)?;
        a.hlt()
    });
    ran_compiled(&b, &jit, 95);
    for m in [M::Div, M::Idiv, M::Mul, M::Imul] {
        assert_eq!(handler_runs(&jit, m), 0, "{m:?} ran through the interpreter");
    }
}

/// IDIV, DIV and the one-operand IMUL in flat 32-bit code.
#[test]
fn divides_in_32_bit_code_give_the_interpreters_results() {
    use iced_x86::Mnemonic as M;
    let (_, b, jit) = both(
        prot_mode,
        |_| {},
        |a| {
            let mut top = a.create_label();
            a.mov(esi, DATA as u32)?;
            a.mov(ebp, 300)?;
            a.mov(ebx, 0x4f6c_dd1du32)?;
            a.set_label(&mut top)?;
            a.imul_3(ebx, ebx, 0x0019_660d)?;
            a.add(ebx, 0x3c6e_f35f)?;
            a.mov(ecx, ebx)?;
            a.rol(ecx, 11)?;
            a.or(ecx, 1)?;
            a.mov(dword_ptr(esi), ecx)?;
            a.mov(eax, ebx)?;
            a.cdq()?;
            a.idiv(dword_ptr(esi))?;
            a.add(edi, eax)?;
            a.add(edi, edx)?;
            a.mov(eax, ebx)?;
            a.imul(ecx)?;
            a.add(edi, edx)?;
            a.movzx(eax, bx)?;
            a.and(ah, 0x7f)?;
            a.mov(ecx, ebx)?;
            a.shr(ecx, 24)?;
            a.or(cl, 0x80u32 as i32)?;
            a.div(cl)?;
            a.add(edi, eax)?;
            a.mov(eax, ebx)?;
            a.sar(ax, 2)?;
            a.cwd()?;
            a.mov(ecx, ebx)?;
            a.shr(ecx, 12)?;
            a.or(cx, 3)?;
            a.idiv(cx)?;
            a.add(edi, eax)?;
            a.add(edi, edx)?;
            a.dec(ebp)?;
            a.jnz(top)?;
            a.hlt()
        },
    );
    ran_compiled(&b, &jit, 95);
    for m in [M::Div, M::Idiv, M::Imul] {
        assert_eq!(handler_runs(&jit, m), 0, "{m:?} ran through the interpreter");
    }
}

/// Every way a divide raises #DE, from compiled code: a zero divisor
/// (register and memory, narrow and 128-bit dividends), -2^31 / -1,
/// -2^63 / -1 of 32 bits (EDX:EAX) and of 64, 128-bit and 64-bit dividends whose quotient is 2^63 or
/// 2^31, -128 / -1 and -32768 / -1, DIV of 8 and 16 bits with the high
/// half not below the divisor. Each loop divides on every pass and
/// raises on the pass where ECX is 10 (the divide compiled by then): the
/// #DE is delivered as the interpreter delivers it, and the handler ran
/// from compiled code for that pass alone.
#[test]
fn divide_errors_from_compiled_code_deliver_like_the_interpreter() {
    use iced_x86::Mnemonic as M;
    type Body = fn(&mut CodeAssembler) -> Result<(), IcedError>;
    let cases: [(&str, M, Body); 15] = [
        ("IDIV r32 by 0", M::Idiv, |a| {
            a.mov(eax, 1000)?;
            a.cdq()?;
            a.lea(r8d, dword_ptr(rcx - 10))?;
            a.idiv(r8d)
        }),
        ("IDIV m64 by 0", M::Idiv, |a| {
            a.mov(rax, -1000i64)?;
            a.cqo()?;
            a.lea(r8, qword_ptr(rcx - 10))?;
            a.mov(qword_ptr(rsi), r8)?;
            a.idiv(qword_ptr(rsi))
        }),
        ("IDIV r64 of 128 bits by 0", M::Idiv, |a| {
            a.mov(edx, 5)?;
            a.xor(eax, eax)?;
            a.lea(r8, qword_ptr(rcx - 10))?;
            a.shl(r8, 8)?;
            a.idiv(r8)
        }),
        ("-2^31 / -1", M::Idiv, |a| {
            a.mov(eax, 0x8000_0000u32)?;
            a.cdq()?;
            a.mov(r8d, 9)?;
            a.sub(r8d, ecx)?;
            a.idiv(r8d)
        }),
        // (The one 32-bit dividend whose quotient overflows 64 bits.)
        ("EDX:EAX of -2^63 / -1", M::Idiv, |a| {
            a.xor(edx, edx)?;
            a.mov(r9d, 0x8000_0000u32)?;
            a.cmp(ecx, 10)?;
            a.cmove(edx, r9d)?;
            a.xor(eax, eax)?;
            a.mov(r8d, -1i32)?;
            a.idiv(r8d)
        }),
        ("-2^63 / -1", M::Idiv, |a| {
            a.mov(rax, i64::MIN)?;
            a.cqo()?;
            a.mov(r8d, 9)?;
            a.sub(r8, rcx)?;
            a.idiv(r8)
        }),
        ("2^64 / 2", M::Idiv, |a| {
            a.mov(edx, 1)?;
            a.xor(eax, eax)?;
            a.lea(r8, qword_ptr(rcx - 8))?;
            a.idiv(r8)
        }),
        ("-2^64 / -2", M::Idiv, |a| {
            a.mov(rdx, -1i64)?;
            a.xor(eax, eax)?;
            a.mov(r8d, 8)?;
            a.sub(r8, rcx)?;
            a.idiv(r8)
        }),
        ("2^32 / 2", M::Idiv, |a| {
            a.mov(edx, 1)?;
            a.xor(eax, eax)?;
            a.lea(r8d, dword_ptr(rcx - 8))?;
            a.idiv(r8d)
        }),
        ("-128 / -1", M::Idiv, |a| {
            a.mov(eax, 0xff80)?;
            a.mov(r8d, 9)?;
            a.sub(r8d, ecx)?;
            a.idiv(r8b)
        }),
        ("-32768 / -1 from memory", M::Idiv, |a| {
            a.mov(eax, 0x8000)?;
            a.cwd()?;
            a.mov(r8d, 9)?;
            a.sub(r8d, ecx)?;
            a.mov(word_ptr(rsi), r8w)?;
            a.idiv(word_ptr(rsi))
        }),
        ("DIV r8 with AH 5 by 5", M::Div, |a| {
            a.mov(eax, 0x500)?;
            a.lea(r8d, dword_ptr(rcx - 5))?;
            a.div(r8b)
        }),
        ("DIV r16 with DX 5 by 5", M::Div, |a| {
            a.mov(edx, 5)?;
            a.xor(eax, eax)?;
            a.lea(r8d, dword_ptr(rcx - 5))?;
            a.div(r8w)
        }),
        ("DIV m8 by 0", M::Div, |a| {
            a.mov(eax, 77)?;
            a.lea(r8d, dword_ptr(rcx - 10))?;
            a.mov(byte_ptr(rsi), r8b)?;
            a.div(byte_ptr(rsi))
        }),
        ("IDIV r16 by 0", M::Idiv, |a| {
            a.mov(eax, 5)?;
            a.cwd()?;
            a.lea(r8d, dword_ptr(rcx - 10))?;
            a.idiv(r8w)
        }),
    ];
    for (name, m, body) in cases {
        let (_, b, jit) = both(
            long_mode,
            |_| {},
            |a| {
                let mut top = a.create_label();
                a.mov(rsi, DATA)?;
                a.mov(ecx, 100)?;
                a.set_label(&mut top)?;
                body(a)?;
                a.add(r13, rax)?;
                a.add(r14, rdx)?;
                a.dec(ecx)?;
                a.jnz(top)?;
                a.hlt()
            },
        );
        assert_eq!(b.state.rip, stub(0) + 1, "{name}: halted in the #DE handler");
        assert_eq!(b.state.gpr[1], 10, "{name}: on the pass where ECX is 10");
        assert_eq!(handler_runs(&jit, m), 1, "{name}: the handler ran for the #DE alone");
    }
}

fn sse_on(c: &mut Cpu) {
    c.state.cr4 |= cpu::state::cr::CR4_OSFXSR;
}

/// PCMPISTRI in compiled code (register and unaligned memory operands,
/// byte and word formats, each aggregation, both index selections): ECX
/// and the flags as the interpreter gives them.
#[test]
fn string_compares_give_the_interpreters_results() {
    let prep = |c: &mut Cpu| {
        sse_on(c);
        let bytes: Vec<u8> = (0..0x400u32).map(|i| (i * 13 + 5) as u8 % 61 + 32).collect();
        c.mem().write(DATA, &bytes).unwrap();
        for z in [0x47u64, 0x93, 0x150, 0x1ff, 0x2a1] {
            c.mem().write(DATA + z, &[0]).unwrap();
        }
        c.mem().write(DATA + 0x800, b"aeiou\0..AZaz09\0").unwrap();
    };
    let (_, b, jit) = both(long_mode, prep, |a| {
        let mut top = a.create_label();
        a.mov(rsi, DATA)?;
        a.mov(r8d, 0x300)?;
        a.movdqu(xmm7, xmmword_ptr(rsi + 0x800))?;
        a.movdqu(xmm6, xmmword_ptr(rsi + 0x806))?;
        a.set_label(&mut top)?;
        a.movdqu(xmm1, xmmword_ptr(rsi + r8))?;
        for (i, imm) in [0x00u32, 0x40, 0x04, 0x08, 0x0c, 0x18, 0x3a, 0x01, 0x4d].into_iter().enumerate() {
            let set = if imm & 4 != 0 && imm & 8 == 0 { xmm6 } else { xmm7 };
            if i % 2 == 0 {
                a.pcmpistri(set, xmm1, imm)?;
            } else {
                a.pcmpistri(set, xmmword_ptr(rsi + r8 + 1), imm)?;
            }
            a.lea(r9, qword_ptr(rcx + rcx * 2))?;
            a.adc(r10, r9)?;
            a.setz(al)?;
            a.sets(bl)?;
            a.seto(dl)?;
            a.add(r11b, al)?;
            a.add(r12b, bl)?;
            a.add(r13b, dl)?;
            a.add(r14, rcx)?;
        }
        a.dec(r8d)?;
        a.jnz(top)?;
        a.hlt()
    });
    assert!(b.state.halted != 0, "ran to the end");
    assert!(jit.stats.native_insns * 100 / jit.instructions(&b) >= 95, "{:?}", jit.stats);
}

/// SHUFPS and SHUFPD from registers and aligned memory, with a spread of
/// immediates (for SHUFPD, the bits it ignores set too) and a destination
/// that is also the source, give the interpreter's lanes without its
/// handler; a misaligned memory operand raises the interpreter's #GP.
#[test]
fn shufps_and_shufpd_give_the_interpreters_results() {
    use iced_x86::Mnemonic as M;
    let prep = |c: &mut Cpu| {
        sse_on(c);
        let bytes: Vec<u8> = (0..0x800u32).map(|i| (i * 29 + 11) as u8 ^ (i >> 3) as u8).collect();
        c.mem().write(DATA, &bytes).unwrap();
    };
    let (_, b, jit) = both(long_mode, prep, |a| {
        let mut top = a.create_label();
        a.mov(rsi, DATA)?;
        a.mov(ecx, 100)?;
        a.movdqa(xmm0, xmmword_ptr(rsi + 0x600))?;
        a.movdqa(xmm1, xmmword_ptr(rsi + 0x610))?;
        a.movdqa(xmm2, xmmword_ptr(rsi + 0x620))?;
        a.set_label(&mut top)?;
        let regs = [xmm0, xmm1, xmm2, xmm3, xmm4, xmm5];
        for (i, imm) in (0..=255u32).step_by(13).chain([0x1b, 0xe4, 0xff, 0x00]).enumerate() {
            let (d, s) = (regs[i % 6], regs[(i * 5 + 1) % 6]);
            match i % 3 {
                0 => a.shufps(d, xmmword_ptr(rsi + 16 * (i % 4) as i32), imm)?,
                1 => a.shufps(d, s, imm)?,
                _ => a.shufps(d, d, imm)?,
            }
            a.paddd(regs[(i + 3) % 6], d)?;
        }
        for (i, imm) in [0u32, 1, 2, 3, 0xfe, 0x81].into_iter().enumerate() {
            let (d, s) = (regs[(i + 2) % 6], regs[i % 6]);
            match i % 3 {
                0 => a.shufpd(d, xmmword_ptr(rsi + 0x40), imm)?,
                1 => a.shufpd(d, s, imm)?,
                _ => a.shufpd(d, d, imm)?,
            }
            a.paddq(regs[(i + 4) % 6], d)?;
        }
        a.add(rsi, 16)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.hlt()
    });
    assert!(b.state.halted != 0, "ran to the end");
    ran_compiled(&b, &jit, 95);
    assert_eq!(handler_runs(&jit, M::Shufps) + handler_runs(&jit, M::Shufpd), 0, "through the interpreter");
    // Misaligned: #GP(0) from the slow path.
    let (_, b, jit) = both_compiled(long_mode, sse_on, |a| {
        a.mov(rsi, DATA + 8)?;
        on_pass_ten(a, |a| a.shufpd(xmm1, xmmword_ptr(rsi), 1))
    });
    assert_eq!(b.state.rip, stub(13) + 1, "halted in the #GP handler");
    assert_eq!(handler_runs(&jit, M::Shufpd), 1);
}

/// PCMPESTRI and its REX.W form in compiled code (register and unaligned
/// memory operands, byte and word formats, each aggregation and polarity,
/// both index selections) with explicit lengths that are negative, zero,
/// within and past the element count, and 64-bit lengths whose low halves
/// differ from them: ECX and the flags as the interpreter gives them, and
/// (where the host has SSE4.2) none through its handler.
#[test]
fn explicit_length_string_compares_give_the_interpreters_results() {
    use iced_x86::Mnemonic as M;
    let prep = |c: &mut Cpu| {
        sse_on(c);
        let bytes: Vec<u8> = (0..0x400u32).map(|i| (i * 13 + 5) as u8 % 61 + 32).collect();
        c.mem().write(DATA, &bytes).unwrap();
        for z in [0x47u64, 0x93, 0x150, 0x1ff, 0x2a1, 0x2a3] {
            c.mem().write(DATA + z, &[0]).unwrap();
        }
        c.mem().write(DATA + 0x800, b"aeiou\0..AZaz09\0").unwrap();
    };
    let (_, b, jit) = both(long_mode, prep, |a| {
        let mut top = a.create_label();
        a.mov(rsi, DATA)?;
        a.mov(r8d, 0x300)?;
        a.movdqu(xmm7, xmmword_ptr(rsi + 0x800))?;
        a.movdqu(xmm6, xmmword_ptr(rsi + 0x806))?;
        a.set_label(&mut top)?;
        a.movdqu(xmm1, xmmword_ptr(rsi + r8))?;
        let imms = [0x00u32, 0x40, 0x04, 0x08, 0x0c, 0x18, 0x3a, 0x01, 0x4d, 0x14, 0x34, 0x7c];
        for (i, imm) in imms.into_iter().enumerate() {
            // The lengths: EAX from -8 to 23 and EDX from -4 to 27, each
            // pass its own.
            a.lea(eax, dword_ptr(r8 + 3 * i as i32))?;
            a.and(eax, 31)?;
            a.sub(eax, 8)?;
            a.lea(edx, dword_ptr(r8 * 4 + i as i32))?;
            a.and(edx, 31)?;
            a.sub(edx, 4)?;
            let set = if imm & 4 != 0 && imm & 8 == 0 { xmm6 } else { xmm7 };
            match i % 3 {
                0 => a.pcmpestri(set, xmm1, imm)?,
                1 => a.pcmpestri(set, xmmword_ptr(rsi + r8 + 1), imm)?,
                _ => {
                    // RAX and RDX of 64 bits: the low halves are the
                    // lengths of the 32-bit form only.
                    a.mov(r9, 0x1_0000_0000u64)?;
                    a.or(rax, r9)?;
                    a.test(r8d, 1)?;
                    a.cmovnz(rax, r9)?;
                    a.neg(rdx)?;
                    a.pcmpestri64(set, xmm1, imm)?
                }
            }
            a.lea(r9, qword_ptr(rcx + rcx * 2))?;
            a.adc(r10, r9)?;
            a.setz(al)?;
            a.sets(bl)?;
            a.seto(dl)?;
            a.add(r11b, al)?;
            a.add(r12b, bl)?;
            a.add(r13b, dl)?;
            a.add(r14, rcx)?;
        }
        a.dec(r8d)?;
        a.jnz(top)?;
        a.hlt()
    });
    assert!(b.state.halted != 0, "ran to the end");
    ran_compiled(&b, &jit, 95);
    if ctx::host_pcmp::pcmpestri(0, 0, 0, 0, 0).is_some() {
        let runs = handler_runs(&jit, M::Pcmpestri) + handler_runs(&jit, M::Pcmpestri64);
        assert_eq!(runs, 0, "PCMPESTRI ran through the interpreter");
    }
}

/// The PCMPESTRI helper gives the interpreter's ECX and flags for every
/// control byte, on strings with nulls and repeated and signed elements,
/// with 32- and 64-bit lengths of every sign and size; so does the
/// software compare wherever it gives a result (no null within a length).
#[test]
fn the_pcmpestri_helper_matches_the_interpreter() {
    let mut next = xorshift(0x2545_f491_4f6c_dd1d);
    let alphabet = [0u8, b'a', b'b', b'c', 0x7f, 0x80, 0xff, b'a'];
    let string = |next: &mut dyn FnMut() -> u64| {
        let mut v = [0u8; 16];
        for byte in &mut v {
            *byte = alphabet[(next() % 8) as usize];
        }
        if next().is_multiple_of(2) {
            for byte in &mut v {
                if *byte == 0 {
                    *byte = b'c';
                }
            }
        }
        u128::from_le_bytes(v)
    };
    // Any, small of either sign, and (for the REX.W form) 64 bits whose
    // low half alone is small.
    let length = |next: &mut dyn FnMut() -> u64| match next() % 6 {
        0 => next(),
        1 => (next() % 40).wrapping_sub(20),
        2 => (next() << 32) | (next() % 20),
        3 => ((next() << 32) | (next() % 20)).wrapping_neg(),
        _ => next() % 18,
    };
    let mut c = long_mode();
    sse_on(&mut c);
    let (mut soft, mut checked) = (0, 0);
    for wide in [false, true] {
        for imm in 0..=255u8 {
            let bytes = assemble(&c, |a| {
                if wide {
                    a.pcmpestri64(xmm1, xmm2, u32::from(imm))
                } else {
                    a.pcmpestri(xmm1, xmm2, u32::from(imm))
                }
            });
            for _ in 0..60 {
                let (x, y) = (string(&mut next), string(&mut next));
                let (la, lb) = (length(&mut next), length(&mut next));
                c.state.xmm[1] = x;
                c.state.xmm[2] = y;
                c.state.gpr[0] = la;
                c.state.gpr[2] = lb;
                c.state.gpr[1] = u64::MAX;
                exec_bytes(&mut c, &bytes).unwrap();
                let want = (c.state.gpr[1], c.state.flags() & flags::ARITH);
                let (px, py) = (x.to_le_bytes(), y.to_le_bytes());
                let ctl = u32::from(imm) | if wide { 0x100 } else { 0 };
                // SAFETY: each pointer is to 16 bytes of a local array.
                let r = unsafe { ctx::pcmpestri(px.as_ptr(), py.as_ptr(), ctl, la, lb) };
                if r != ctx::PCMPESTRI_SLOW {
                    assert_eq!((r & 0xffff_ffff, r >> 32), want, "imm {imm:#x} wide {wide} {x:#x} {y:#x} {la} {lb}");
                    checked += 1;
                }
                let count = if imm & 1 != 0 { 8 } else { 16 };
                let len = |v: u64| {
                    let abs = if wide { (v as i64).unsigned_abs() } else { u64::from((v as i32).unsigned_abs()) };
                    abs.min(count) as usize
                };
                if let Some((i, f)) = ctx::pcmpestri_soft(x, y, len(la), len(lb), imm) {
                    assert_eq!((u64::from(i), f), want, "software: imm {imm:#x} wide {wide} {x:#x} {y:#x} {la} {lb}");
                    soft += 1;
                }
            }
        }
    }
    assert!(soft > 5_000, "{soft} software compares");
    if ctx::host_pcmp::pcmpestri(0, 0, 0, 0, 0).is_some() {
        assert_eq!(checked, 2 * 256 * 60);
    }
}

/// CR4.PKE set under the model with the protection keys.
fn pkeys_on(c: &mut Cpu) {
    c.set_model(cpu::cpuid::Model::Max);
    c.write_cr4(c.state.cr4 | cpu::state::cr::CR4_PKE).unwrap();
}

/// RDPKRU in compiled code reads PKRU (changed by WRPKRU every 16th pass)
/// into EAX and zeroes EDX, with bits of RCX above ECX set, without its
/// handler; with ECX not 0 it raises the interpreter's #GP, and with
/// CR4.PKE clear its #UD.
#[test]
fn rdpkru_gives_the_interpreters_results_and_faults() {
    use iced_x86::Mnemonic as M;
    let (_, b, jit) = both(long_mode, pkeys_on, |a| {
        let mut top = a.create_label();
        let mut keep = a.create_label();
        a.mov(r8d, 200)?;
        a.set_label(&mut top)?;
        a.test(r8d, 15)?;
        a.jnz(keep)?;
        // Rights for keys 1-15 only (key 0's pages stay accessible).
        a.imul_3(eax, r8d, 0x9e37_79b1u32 as i32)?;
        a.and(eax, !3)?;
        a.xor(ecx, ecx)?;
        a.xor(edx, edx)?;
        a.wrpkru()?;
        a.set_label(&mut keep)?;
        a.mov(rcx, 0xffff_ffff_0000_0000u64)?;
        a.mov(rax, -1i64)?;
        a.mov(rdx, rax)?;
        a.rdpkru()?;
        a.add(r10, rax)?;
        a.add(r11, rdx)?;
        a.rol(r10, 3)?;
        a.dec(r8d)?;
        a.jnz(top)?;
        a.hlt()
    });
    assert!(b.state.halted != 0, "ran to the end");
    assert_ne!(b.state.gpr[10], 0);
    assert_eq!(handler_runs(&jit, M::Rdpkru), 0, "RDPKRU ran through the interpreter");
    let faulting = |a: &mut CodeAssembler| {
        let mut top = a.create_label();
        a.mov(r8d, 100)?;
        a.set_label(&mut top)?;
        // ECX is 1 on the pass where R8D is 10.
        a.xor(ecx, ecx)?;
        a.cmp(r8d, 10)?;
        a.sete(cl)?;
        a.rdpkru()?;
        a.add(r10, rax)?;
        a.dec(r8d)?;
        a.jnz(top)?;
        a.hlt()
    };
    let (_, b, jit) = both_compiled(long_mode, pkeys_on, faulting);
    assert_eq!(b.state.rip, stub(13) + 1, "halted in the #GP handler");
    assert_eq!(b.state.gpr[8], 10);
    assert_eq!(handler_runs(&jit, M::Rdpkru), 1);
    let (_, b, jit) = both_compiled(long_mode, |c| c.set_model(cpu::cpuid::Model::Max), faulting);
    assert_eq!(b.state.rip, stub(6) + 1, "halted in the #UD handler");
    assert_eq!(handler_runs(&jit, M::Rdpkru), 1);
}

/// MOV from CR0, CR2, CR3 and CR4 at CPL 0 in 64- and 32-bit code reads
/// the state without the handler; at CPL 3 it raises the interpreter's
/// #GP.
#[test]
fn control_register_reads_give_the_interpreters_results() {
    use iced_x86::Mnemonic as M;
    let prep = |c: &mut Cpu| c.state.cr2 = 0xffff_8000_1234_5678;
    let (_, b, jit) = both(long_mode, prep, |a| {
        let mut top = a.create_label();
        a.mov(r8d, 100)?;
        a.set_label(&mut top)?;
        a.mov(rax, cr0)?;
        a.mov(rdx, cr2)?;
        a.mov(r9, cr3)?;
        a.mov(r10, cr4)?;
        a.add(r11, rax)?;
        a.xor(r11, rdx)?;
        a.add(r11, r9)?;
        a.rol(r11, 7)?;
        a.add(r11, r10)?;
        a.dec(r8d)?;
        a.jnz(top)?;
        a.hlt()
    });
    assert!(b.state.halted != 0, "ran to the end");
    assert_eq!(b.state.gpr[2], 0xffff_8000_1234_5678);
    assert_eq!(handler_runs(&jit, M::Mov), 0, "MOV from a CR ran through the interpreter");
    let prep = |c: &mut Cpu| c.state.cr2 = 0x1234_5678;
    let (_, b, jit) = both(prot_mode, prep, |a| {
        let mut top = a.create_label();
        a.mov(ebp, 100)?;
        a.set_label(&mut top)?;
        a.mov(eax, cr0)?;
        a.mov(edx, cr2)?;
        a.mov(ecx, cr3)?;
        a.mov(ebx, cr4)?;
        a.add(edi, eax)?;
        a.xor(edi, edx)?;
        a.add(edi, ecx)?;
        a.add(edi, ebx)?;
        a.dec(ebp)?;
        a.jnz(top)?;
        a.hlt()
    });
    assert!(b.state.halted != 0, "ran to the end");
    assert_eq!(handler_runs(&jit, M::Mov), 0, "MOV from a CR ran through the interpreter");
    let (_, b, jit) = both_compiled(
        long_mode,
        |c| to_user(c, SEL_UCODE64),
        |a| {
            let mut top = a.create_label();
            a.mov(r8d, 100)?;
            a.set_label(&mut top)?;
            a.mov(rax, cr3)?;
            a.dec(r8d)?;
            a.jnz(top)?;
            a.hlt()
        },
    );
    assert_eq!(b.state.rip, stub(13) + 1, "halted in the #GP handler");
    assert_eq!(b.state.cpl, 0);
    assert_eq!(handler_runs(&jit, M::Mov), 1);
}

/// A strlen-like scan with the SSE2 forms the JIT translates (aligned and
/// unaligned loads and stores, compares, logic, PMOVMSKB, PSHUFB, MOVD/MOVQ)
/// and BSF/BSR and shifts by CL on the results.
#[test]
fn sse_scans_give_the_interpreters_results() {
    let prep = |c: &mut Cpu| {
        sse_on(c);
        let bytes: Vec<u8> = (0..0x800u32).map(|i| (i * 7 + 3) as u8 | 1).collect();
        c.mem().write(DATA, &bytes).unwrap();
        c.mem().write(DATA + 0x5a3, &[0]).unwrap();
    };
    let (_, b, jit) = both(long_mode, prep, |a| {
        let mut top = a.create_label();
        let mut found = a.create_label();
        let mut outer = a.create_label();
        a.mov(r8d, 40)?;
        a.set_label(&mut outer)?;
        a.mov(rsi, DATA)?;
        a.pxor(xmm0, xmm0)?;
        a.movq(xmm5, r8)?;
        a.set_label(&mut top)?;
        a.movdqa(xmm1, xmmword_ptr(rsi))?;
        a.movdqu(xmm2, xmmword_ptr(rsi + 3))?;
        a.pminub(xmm2, xmm1)?;
        a.pcmpeqb(xmm1, xmm0)?;
        a.por(xmm3, xmm2)?;
        a.paddd(xmm4, xmm2)?;
        a.pshufb(xmm3, xmm5)?;
        a.pand(xmm4, xmm3)?;
        a.pandn(xmm6, xmm4)?;
        a.movdqu(xmmword_ptr(rsi + 0x1001), xmm4)?;
        a.pmovmskb(eax, xmm1)?;
        a.add(rsi, 16)?;
        a.test(eax, eax)?;
        a.jz(top)?;
        a.set_label(&mut found)?;
        a.bsf(ecx, eax)?;
        a.bsr(edx, eax)?;
        a.movd(ebx, xmm4)?;
        a.shl(rbx, cl)?;
        a.sar(edx, cl)?;
        a.shr(r9, cl)?;
        a.add(r10, rbx)?;
        a.movaps(xmmword_ptr(rsi + 0x1000), xmm6)?;
        a.dec(r8d)?;
        a.jnz(outer)?;
        a.hlt()
    });
    assert!(b.state.gpr[1] != 0);
    assert!(jit.stats.native_insns * 100 / jit.instructions(&b) >= 80, "{:?}", jit.stats);
}

/// PUNPCKL*/PUNPCKH* and PSHUFD, from registers and memory, in compiled
/// code give the interpreter's lanes.
#[test]
fn sse_unpacks_and_dword_shuffles_give_the_interpreters_results() {
    let prep = |c: &mut Cpu| {
        sse_on(c);
        let bytes: Vec<u8> = (0..0x400u32).map(|i| (i * 13 + 5) as u8).collect();
        c.mem().write(DATA, &bytes).unwrap();
    };
    let (_, b, jit) = both(long_mode, prep, |a| {
        let mut top = a.create_label();
        a.mov(rsi, DATA)?;
        a.mov(ecx, 30)?;
        a.movdqa(xmm0, xmmword_ptr(rsi + 0x100))?;
        a.movdqa(xmm7, xmmword_ptr(rsi + 0x200))?;
        a.set_label(&mut top)?;
        a.movdqa(xmm1, xmmword_ptr(rsi))?;
        a.movdqa(xmm2, xmm1)?;
        a.punpcklbw(xmm1, xmm0)?;
        a.punpckhbw(xmm2, xmm0)?;
        a.punpcklwd(xmm3, xmm1)?;
        a.punpckhwd(xmm4, xmmword_ptr(rsi + 0x10))?;
        a.punpckldq(xmm5, xmm2)?;
        a.punpckhdq(xmm6, xmm3)?;
        a.punpcklqdq(xmm7, xmm4)?;
        a.punpckhqdq(xmm0, xmm5)?;
        a.pshufd(xmm1, xmm6, 0x1b)?;
        a.pshufd(xmm2, xmmword_ptr(rsi + 0x20), 0xe4)?;
        a.pshufd(xmm3, xmm3, 0x00)?;
        a.pshufd(xmm4, xmm7, 0x9c)?;
        a.paddb(xmm0, xmm1)?;
        a.pxor(xmm7, xmm2)?;
        a.paddd(xmm6, xmm4)?;
        a.add(rsi, 16)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.hlt()
    });
    assert!(b.state.xmm.iter().any(|x| *x != Default::default()));
    assert!(jit.stats.native_insns * 100 / jit.instructions(&b) >= 80, "{:?}", jit.stats);
}

/// SSE faults raised from compiled code go through the interpreter's slow
/// path: a misaligned MOVDQA (#GP) and SSE with CR0.TS set (#NM).
#[test]
fn sse_faults_in_compiled_code_deliver_like_the_interpreter() {
    let (_, b, jit) = both(long_mode, sse_on, |a| {
        let mut top = a.create_label();
        let mut skip = a.create_label();
        a.mov(rsi, DATA)?;
        a.mov(ecx, 300)?;
        a.set_label(&mut top)?;
        a.cmp(ecx, 100)?;
        a.jne(skip)?;
        a.inc(rsi)?;
        a.set_label(&mut skip)?;
        a.movdqa(xmm1, xmmword_ptr(rsi))?;
        a.paddb(xmm0, xmm1)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.hlt()
    });
    assert_eq!(b.state.rip, stub(13) + 1, "#GP");
    assert!(jit.stats.native_insns > 0);
    let b = ts_set_midway(sse_on, 300, 100, |a| a.pxor(xmm2, xmm3));
    assert_eq!(b.state.rip, stub(7) + 1, "#NM");
    assert_eq!(b.state.gpr[1], 100);
}

/// 64-bit long mode with the full CPU model (AVX on).
fn avx_long_mode() -> Cpu {
    let mut c = long_mode();
    c.set_model(cpu::cpuid::Model::Max);
    c
}

/// Flat 32-bit protected mode with the full CPU model.
fn avx_prot_mode() -> Cpu {
    let mut c = prot_mode();
    c.set_model(cpu::cpuid::Model::Max);
    c
}

/// The AVX state enabled (CR4.OSXSAVE, XCR0 = x87|SSE|YMM), busy upper
/// halves in every YMM register, and data at DATA: odd bytes with a few
/// zeros.
fn avx_on(c: &mut Cpu) {
    c.state.cr4 |= cpu::state::cr::CR4_OSFXSR | cpu::state::cr::CR4_OSXSAVE;
    c.state.xcr0 = 7;
    for i in 0..16 {
        c.state.ymm_hi[i] = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210u128.rotate_left(8 * i as u32) | 1;
        c.state.xmm[i] = 0x1111_2222_3333_4444_5555_6666_7777_8888u128.rotate_right(4 * i as u32);
    }
    let bytes: Vec<u8> = (0..0x2000u32).map(|i| (i * 7 + 3) as u8 | 1).collect();
    c.mem().write(DATA, &bytes).unwrap();
    for z in [0x5a3u64, 0x611, 0x12f, 0x7c0, 0xfff] {
        c.mem().write(DATA + z, &[0]).unwrap();
    }
}

/// [`both`], with the region at the entry compiled before the run (every
/// block of its page, run or not): code that runs once, late, runs
/// compiled.
fn both_compiled(
    make: fn() -> Cpu,
    prep: impl Fn(&mut Cpu),
    code: impl Fn(&mut CodeAssembler) -> Result<(), IcedError>,
) -> (Cpu, Cpu, Jit) {
    let (a, mut b) = pair(make, prep, code);
    let mut jit = Jit::new(&mut b, cfg()).unwrap();
    assert!(jit.compile_now(&mut b), "the entry compiles");
    run_both(a, b, jit)
}

/// How often compiled code ran the interpreter's handler for `m`.
fn handler_runs(jit: &Jit, m: iced_x86::Mnemonic) -> u64 {
    jit.ctx.by_mnemonic[m as usize]
}

/// An AVX2 scan in the manner of the C library's string functions: VEX
/// loads (aligned and not) and stores of 32 and 16 bytes (VMOVNTDQ too),
/// three-operand compares, logic, minima, adds, shuffles and unpacks of
/// both widths from registers and memory, the broadcasts, VMOVD/VMOVQ,
/// VPMOVMSKB, VPTEST and VZEROUPPER, with BZHI, SARX/SHLX/SHRX, RORX,
/// BLSI/BLSMSK/BLSR, ANDN and MOVBE on the masks, and the flags read:
/// every register half, flag and byte as the interpreter gives them, none
/// of these forms run through the interpreter.
#[test]
fn avx2_scans_give_the_interpreters_results() {
    use iced_x86::Mnemonic as M;
    let (_, b, jit) = both(avx_long_mode, avx_on, |a| {
        let mut outer = a.create_label();
        let mut top = a.create_label();
        a.mov(r8d, 24)?;
        a.set_label(&mut outer)?;
        a.mov(rsi, DATA)?;
        a.mov(ecx, 40)?;
        a.vmovd(xmm0, r8d)?;
        a.vpbroadcastb(ymm0, xmm0)?;
        // A VEX.128 write zeroes the upper half.
        a.vpxor(xmm9, xmm9, xmm9)?;
        a.vpbroadcastd(ymm10, dword_ptr(rsi + 0x40))?;
        a.vpbroadcastb(xmm11, byte_ptr(rsi + 0x41))?;
        a.vpbroadcastw(ymm12, xmm3)?;
        a.vpbroadcastq(ymm13, qword_ptr(rsi + 0x48))?;
        a.set_label(&mut top)?;
        a.vmovdqu(ymm1, ymmword_ptr(rsi + 3))?;
        a.vmovdqa(ymm2, ymmword_ptr(rsi))?;
        a.vpcmpeqb(ymm3, ymm0, ymm1)?;
        a.vpcmpeqb(ymm4, ymm9, ymmword_ptr(rsi + 5))?;
        a.vpminub(ymm5, ymm1, ymm2)?;
        a.vpor(ymm6, ymm3, ymm4)?;
        a.vpand(ymm7, ymm6, ymm5)?;
        a.vpandn(ymm8, ymm7, ymm1)?;
        a.vpaddd(ymm14, ymm14, ymm8)?;
        a.vpsubb(xmm15, xmm15, xmmword_ptr(rsi + 7))?;
        a.vpcmpgtb(ymm13, ymm13, ymm1)?;
        a.vpcmpeqd(xmm12, xmm12, xmm2)?;
        a.vpshufb(ymm12, ymm12, ymm2)?;
        a.vpshufd(ymm11, ymm1, 0x1b)?;
        a.vpshufd(xmm10, xmmword_ptr(rsi + 9), 0x93)?;
        a.vpunpcklbw(ymm10, ymm10, ymm3)?;
        a.vpunpckhwd(xmm9, xmm5, xmm1)?;
        a.vpmaxub(xmm9, xmm9, xmm9)?;
        a.vxorps(ymm15, ymm15, ymm14)?;
        a.vmovdqu(ymmword_ptr(rsi + 0x1001), ymm7)?;
        a.vmovdqu(xmmword_ptr(rsi + 0x1031), xmm8)?;
        a.vmovntdq(ymmword_ptr(rsi + 0x1040), ymm6)?;
        a.vmovdqa(ymm5, ymm15)?;
        a.vmovdqa(xmm4, xmm14)?;
        a.vpmovmskb(eax, ymm6)?;
        a.vpmovmskb(edx, xmm7)?;
        a.vpmovmskb(r9, ymm5)?;
        a.xor(r11, r9)?;
        a.vptest(ymm6, ymm6)?;
        a.setz(bl)?;
        a.adc(r10, 0)?;
        a.vptest(xmm1, xmmword_ptr(rsi))?;
        a.setz(bh)?;
        a.adc(r10, rbx)?;
        a.bzhi(r9d, eax, ecx)?;
        a.setc(bl)?;
        a.sets(bh)?;
        a.add(r10, rbx)?;
        a.add(r11, r9)?;
        a.bzhi(r9, qword_ptr(rsi + 1), rcx)?;
        a.adc(r11, r9)?;
        a.blsr(r12d, eax)?;
        a.setc(bl)?;
        a.blsmsk(r13, rdx)?;
        a.setz(bh)?;
        a.blsi(r14d, dword_ptr(rsi + 2))?;
        a.adc(r10, rbx)?;
        a.andn(r15, rax, rdx)?;
        a.setz(bl)?;
        a.add(r10, rbx)?;
        a.sarx(r9, rax, rcx)?;
        a.shlx(r12d, edx, ecx)?;
        a.shrx(r13, qword_ptr(rsi + 3), rcx)?;
        a.rorx(r14, rax, 13)?;
        a.rorx(r15d, dword_ptr(rsi + 4), 7)?;
        a.add(r11, r12)?;
        a.add(r11, r13)?;
        a.xor(r11, r14)?;
        a.add(r11, r15)?;
        a.movbe(dword_ptr(rsi + 0x1080), eax)?;
        a.movbe(rdx, qword_ptr(rsi + 9))?;
        a.movbe(r9w, word_ptr(rsi + 10))?;
        a.movbe(qword_ptr(rsi + 0x1090), r11)?;
        a.add(r11, rdx)?;
        a.xor(r11, r9)?;
        a.vmovq(r12, xmm6)?;
        a.vmovd(r13d, xmm7)?;
        a.add(r11, r12)?;
        a.add(r11, r13)?;
        a.vmovq(xmm3, r11)?;
        a.vmovd(xmm2, r10d)?;
        a.vmovq(xmm1, qword_ptr(rsi + 0x11))?;
        a.vmovd(xmm14, dword_ptr(rsi + 0x13))?;
        a.vmovq(xmm13, xmm12)?;
        a.vmovd(dword_ptr(rsi + 0x10a0), xmm3)?;
        a.vmovq(qword_ptr(rsi + 0x10a4), xmm2)?;
        a.add(rsi, 32)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.vzeroupper()?;
        a.dec(r8d)?;
        a.jnz(outer)?;
        // Upper halves for the final comparison.
        a.vmovdqu(ymm1, ymmword_ptr(rsi + 6))?;
        a.vpcmpeqb(ymm3, ymm1, ymmword_ptr(rsi))?;
        a.vpaddq(ymm4, ymm3, ymm1)?;
        a.vpsubq(ymm5, ymm4, ymm3)?;
        a.hlt()
    });
    assert!(b.state.ymm_hi.iter().any(|&y| y != 0));
    ran_compiled(&b, &jit, 97);
    for m in [
        M::Vmovdqu,
        M::Vmovdqa,
        M::Vpcmpeqb,
        M::Vpminub,
        M::Vpor,
        M::Vpand,
        M::Vpandn,
        M::Vpxor,
        M::Vpmovmskb,
        M::Vptest,
        M::Vpbroadcastb,
        M::Vmovd,
        M::Vmovq,
        M::Vmovntdq,
        M::Vzeroupper,
        M::Bzhi,
        M::Movbe,
        M::Blsr,
        M::Sarx,
        M::Andn,
        M::Rorx,
    ] {
        // (A first access of a page misses the TLB and takes the slow path.)
        assert!(handler_runs(&jit, m) <= 4, "{m:?} ran through the interpreter {} times", handler_runs(&jit, m));
    }
}

/// The same forms in flat 32-bit code: eight vector registers, so
/// VZEROUPPER leaves YMM8-15 alone (as the interpreter does).
#[test]
fn avx2_in_32_bit_code_gives_the_interpreters_results() {
    let (_, b, jit) = both(avx_prot_mode, avx_on, |a| {
        let mut top = a.create_label();
        a.mov(esi, DATA as u32)?;
        a.mov(ecx, 60)?;
        a.vpxor(xmm0, xmm0, xmm0)?;
        a.set_label(&mut top)?;
        a.vmovdqu(ymm1, ymmword_ptr(esi + 1))?;
        a.vpcmpeqb(ymm2, ymm0, ymmword_ptr(esi))?;
        a.vpminub(ymm3, ymm1, ymm2)?;
        a.vpmovmskb(eax, ymm2)?;
        a.vpmovmskb(edx, xmm3)?;
        a.bzhi(edi, edx, ecx)?;
        a.adc(ebx, edi)?;
        a.movbe(dword_ptr(esi + 0x1004), eax)?;
        a.movbe(edi, dword_ptr(esi + 3))?;
        a.add(ebx, edi)?;
        a.vmovdqu(ymmword_ptr(esi + 0x1010), ymm3)?;
        a.vmovd(xmm4, ebx)?;
        a.vpbroadcastd(ymm5, xmm4)?;
        a.vpaddd(ymm6, ymm5, ymm1)?;
        a.vzeroupper()?;
        a.vpor(ymm7, ymm6, ymm1)?;
        a.add(esi, 32)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.hlt()
    });
    assert!(b.state.ymm_hi[8..].iter().all(|&y| y != 0), "VZEROUPPER in 32-bit code keeps YMM8-15");
    ran_compiled(&b, &jit, 90);
}

/// AVX memory operands that cross a page, miss the TLB or fault: the slow
/// path runs the instruction in the interpreter (page-crossing loads,
/// stores, broadcasts and MOVBE give its results), and a #PF (a load from
/// an unmapped page, a 32-byte store running into one) or the #GP of a
/// misaligned VMOVDQA or VMOVNTDQ arrives as the interpreter raises it.
#[test]
fn avx_memory_crossing_pages_and_faulting_falls_back_to_the_interpreter() {
    // Page crossings: RDI from DATA + 0x12c0 down to DATA + 8 in steps of
    // 8, so that accesses of 4 to 32 bytes start before the page end at
    // DATA + 0x1000 and run into the next page.
    let (_, b, jit) = both(avx_long_mode, avx_on, |a| {
        let mut top = a.create_label();
        a.mov(rsi, DATA)?;
        a.mov(ecx, 600)?;
        a.set_label(&mut top)?;
        a.lea(rdi, qword_ptr(rsi + rcx * 8))?;
        // (A slow path leaves the region: each access has its own
        // displacement, 0x40 apart, so that it is the first to cross on
        // some pass.)
        a.vmovdqu(ymm1, ymmword_ptr(rdi))?;
        a.vpcmpeqb(ymm2, ymm1, ymmword_ptr(rdi + 0x41))?;
        a.vpbroadcastd(ymm3, dword_ptr(rdi + 0x86))?;
        a.vpaddb(ymm4, ymm2, ymm3)?;
        a.vmovdqu(ymmword_ptr(rdi + 0xc7), ymm4)?;
        a.vmovq(xmm5, qword_ptr(rdi + 0x104))?;
        a.movbe(edx, dword_ptr(rdi + 0x146))?;
        a.movbe(qword_ptr(rdi + 0x185), rdx)?;
        a.vpmovmskb(eax, ymm4)?;
        a.add(ebx, eax)?;
        a.add(rbx, rdx)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.hlt()
    });
    assert!(b.state.halted != 0, "ran to the end");
    ran_compiled(&b, &jit, 80);
    {
        use iced_x86::Mnemonic as M;
        for m in [M::Vmovdqu, M::Vpcmpeqb, M::Vpbroadcastd, M::Vmovq, M::Movbe] {
            assert!(handler_runs(&jit, m) >= 1, "{m:?} crossed pages through the slow path");
        }
    }

    // A load from an unmapped page on pass ten.
    let (a, b, jit) = both_compiled(avx_long_mode, avx_on, |a| {
        on_pass_ten(a, |a| {
            a.mov(rsi, UNMAPPED)?;
            a.vpcmpeqb(ymm1, ymm2, ymmword_ptr(rsi + 0x20))
        })
    });
    assert_eq!((b.state.rip, b.state.cr2, b.state.gpr[1]), (stub(14) + 1, UNMAPPED + 0x20, 10));
    assert_eq!(a.state.cr2, b.state.cr2);
    assert_eq!(handler_runs(&jit, iced_x86::Mnemonic::Vpcmpeqb), 1, "the slow path");
    // A 32-byte store that runs into the unmapped page.
    let (_, b, jit) = both_compiled(avx_long_mode, avx_on, |a| {
        on_pass_ten(a, |a| {
            a.mov(rsi, UNMAPPED - 0x10)?;
            a.vmovdqu(ymmword_ptr(rsi), ymm3)
        })
    });
    assert_eq!((b.state.rip, b.state.cr2), (stub(14) + 1, UNMAPPED));
    assert_eq!(handler_runs(&jit, iced_x86::Mnemonic::Vmovdqu), 1, "the slow path");
    // A store to a read-only page (CR0.WP).
    let (_, b, jit) = both_compiled(avx_long_mode, avx_on, |a| {
        on_pass_ten(a, |a| {
            a.mov(rsi, READONLY)?;
            a.vmovdqu(xmmword_ptr(rsi + 8), xmm3)
        })
    });
    assert_eq!((b.state.rip, b.state.cr2), (stub(14) + 1, READONLY + 8));
    assert_eq!(handler_runs(&jit, iced_x86::Mnemonic::Vmovdqu), 1, "the slow path");
    // VMOVDQA and VMOVNTDQ of 32 bytes want 32-byte alignment: 16 is #GP.
    for nt in [false, true] {
        let (_, b, jit) = both(avx_long_mode, avx_on, |a| {
            let mut top = a.create_label();
            let mut skip = a.create_label();
            a.mov(rsi, DATA)?;
            a.mov(ecx, 300)?;
            a.set_label(&mut top)?;
            a.cmp(ecx, 100)?;
            a.jne(skip)?;
            a.add(rsi, 16)?;
            a.set_label(&mut skip)?;
            if nt {
                a.vmovntdq(ymmword_ptr(rsi + 0x1000), ymm1)?;
            } else {
                a.vmovdqa(ymm1, ymmword_ptr(rsi))?;
            }
            a.vpaddb(ymm0, ymm0, ymm1)?;
            a.dec(ecx)?;
            a.jnz(top)?;
            a.hlt()
        });
        assert_eq!((b.state.rip, b.state.gpr[1]), (stub(13) + 1, 100), "#GP (non-temporal: {nt})");
        assert!(jit.stats.native_insns > 0);
    }
}

/// The state that enables AVX, changed while a loop of AVX instructions
/// runs compiled: CR0.TS set gives #NM, XCR0 without YMM (XSETBV) gives
/// #UD, as the interpreter raises them; and a CPU model without AVX
/// raises #UD for VEX even with the state enabled (its regions leave VEX
/// to the interpreter).
#[test]
fn avx_faults_follow_the_state_that_enables_it() {
    for (what, vector) in [("cr0.ts", 7u8), ("xcr0", 6)] {
        // (Compiled whole first: the change runs as a fallback inside the
        // region, which goes on after XSETBV.)
        let (_, b, jit) = both_compiled(avx_long_mode, avx_on, |a| {
            let mut top = a.create_label();
            let mut skip = a.create_label();
            a.mov(r8d, 300)?;
            a.set_label(&mut top)?;
            a.cmp(r8d, 100)?;
            a.jne(skip)?;
            if what == "cr0.ts" {
                a.mov(rax, cr0)?;
                a.or(rax, 8)?;
                a.mov(cr0, rax)?;
            } else {
                a.xor(ecx, ecx)?;
                a.xor(edx, edx)?;
                a.mov(eax, 3)?;
                a.xsetbv()?;
            }
            a.set_label(&mut skip)?;
            a.vpxor(ymm2, ymm2, ymm3)?;
            a.vpmovmskb(eax, ymm2)?;
            a.dec(r8d)?;
            a.jnz(top)?;
            a.hlt()
        });
        assert_eq!((b.state.rip, b.state.gpr[8]), (stub(vector) + 1, 100), "{what}");
        assert!(jit.stats.native_insns > 0);
        assert_eq!(handler_runs(&jit, iced_x86::Mnemonic::Vpxor), 1, "{what}: the slow path");
    }
    // The model without AVX: VEX is #UD with the state enabled.
    let (_, b, jit) = both_compiled(long_mode, avx_on, |a| on_pass_ten(a, |a| a.vpor(ymm1, ymm2, ymm3)));
    assert_eq!((b.state.rip, b.state.gpr[1]), (stub(6) + 1, 10));
    assert!(jit.stats.native_insns > 0);
    assert_eq!(handler_runs(&jit, iced_x86::Mnemonic::Vpor), 1);
}

/// Code that rewrites an instruction of its own loop, on the same page,
/// while the loop runs compiled: the next run uses the new instruction.
#[test]
fn stores_into_running_compiled_code_take_effect() {
    let (_, b, jit) = both(
        long_mode,
        |_| {},
        |a| {
            let mut patch = a.create_label();
            let mut skip = a.create_label();
            a.mov(ecx, 400)?;
            a.lea(rdi, ptr(patch))?;
            a.set_label(&mut patch)?;
            a.add(ebx, 1)?; // 83 c3 01: its immediate is at patch + 2
            a.cmp(ecx, 200)?;
            a.jne(skip)?;
            a.mov(byte_ptr(rdi + 2), 7)?;
            a.set_label(&mut skip)?;
            a.dec(ecx)?;
            a.jnz(patch)?;
            a.hlt()
        },
    );
    assert_eq!(b.state.gpr[3], 201 + 199 * 7);
    assert!(jit.stats.invalidated_regions >= 1, "{:?}", jit.stats);
}

/// A store from code on another page into a page whose code runs
/// compiled (the callee of a loop).
#[test]
fn stores_into_another_compiled_page_take_effect() {
    let mut c = long_mode();
    let f = CODE + 0x1000;
    let code = assemble(&c, |a| {
        let mut top = a.create_label();
        let mut skip = a.create_label();
        a.mov(ecx, 600)?;
        a.xor(ebx, ebx)?;
        a.set_label(&mut top)?;
        a.call(f)?;
        a.cmp(ecx, 300)?;
        a.jne(skip)?;
        a.mov(rdx, f + 1)?;
        a.mov(byte_ptr(rdx), 5)?;
        a.set_label(&mut skip)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.hlt()
    });
    place(&mut c, &code);
    // f: mov eax, 1; add ebx, eax; ret
    c.mem().write(f, &[0xb8, 1, 0, 0, 0, 0x01, 0xc3, 0xc3]).unwrap();
    let mut jit = Jit::new(&mut c, cfg()).unwrap();
    run_jit(&mut c, &mut jit, 1_000_000);
    // Calls with ECX from 600 down to 300 ran the old code.
    assert_eq!(c.state.gpr[3], 301 + 299 * 5);
    assert!(jit.stats.invalidated_regions >= 1);
}

/// RDTSC in compiled code: EDX:EAX rise, the upper halves are clear, and
/// under CR4.TSD outside ring 0 it raises #GP where the interpreter does.
#[test]
fn rdtsc_reads_the_counter_and_faults_under_tsd() {
    let mut c = long_mode();
    let code = assemble(&c, |a| {
        let mut top = a.create_label();
        let mut ok = a.create_label();
        a.mov(ecx, 2000)?;
        a.xor(r8, r8)?;
        a.xor(r9, r9)?;
        a.set_label(&mut top)?;
        a.rdtsc()?;
        a.mov(r10, rax)?;
        a.or(r10, rdx)?;
        a.shr(r10, 32)?;
        a.add(r9, r10)?; // upper halves, always 0
        a.shl(rdx, 32)?;
        a.or(rax, rdx)?;
        a.cmp(rax, r8)?;
        a.jae(ok)?;
        a.inc(r9)?; // the counter went back
        a.set_label(&mut ok)?;
        a.mov(r8, rax)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.hlt()
    });
    place(&mut c, &code);
    let mut jit = Jit::new(&mut c, cfg()).unwrap();
    run_jit(&mut c, &mut jit, 1_000_000);
    assert_eq!(c.state.gpr[9], 0);
    assert_ne!(c.state.gpr[8], 0);
    assert_eq!(jit.stats.fallback_insns, 0, "{:?}", jit.stats);

    // CR4.TSD set once the loop runs compiled at CPL 3: the next RDTSC
    // faults with the state as before it.
    let mut c = long_mode();
    let code = assemble(&c, |a| {
        let mut top = a.create_label();
        a.mov(ecx, 100_000)?;
        a.set_label(&mut top)?;
        a.inc(rbx)?;
        a.rdtsc()?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.hlt()
    });
    let mut jit = at_user(&mut c, &code);
    jit.run(&mut c, 20_000);
    assert!(jit.stats.native_insns > 10_000, "{:?}", jit.stats);
    c.state.cr4 |= cpu::state::cr::CR4_TSD;
    run_jit(&mut c, &mut jit, 1_000_000);
    assert_eq!(c.state.rip, stub(13) + 1, "halted in the #GP handler");
    assert_eq!(c.state.gpr[3], 100_000 - (c.state.gpr[1] & 0xffff_ffff) + 1);
    assert_eq!(jit.stats.fault_exits, 1, "{:?}", jit.stats);
}

/// RDTSCP in compiled code: the counter as RDTSC reads it, and ECX from
/// IA32_TSC_AUX (its low half, the upper half of RCX cleared).
#[test]
fn rdtscp_reads_the_counter_and_tsc_aux() {
    let mut c = long_mode();
    c.state.msr.tsc_aux = 0xdead_0000_0000_0017;
    let code = assemble(&c, |a| {
        let mut top = a.create_label();
        let mut ok = a.create_label();
        a.mov(ebx, 2000)?;
        a.xor(r8, r8)?;
        a.xor(r9, r9)?;
        a.set_label(&mut top)?;
        a.mov(rcx, -1i64)?;
        a.rdtscp()?;
        a.add(r9, rcx)?; // 0x17 each time
        a.shl(rdx, 32)?;
        a.or(rax, rdx)?;
        a.cmp(rax, r8)?;
        a.jae(ok)?;
        a.add(r9, 1_000_000)?; // the counter went back
        a.set_label(&mut ok)?;
        a.mov(r8, rax)?;
        a.dec(ebx)?;
        a.jnz(top)?;
        a.hlt()
    });
    place(&mut c, &code);
    let mut jit = Jit::new(&mut c, cfg()).unwrap();
    run_jit(&mut c, &mut jit, 1_000_000);
    assert_eq!(c.state.gpr[9], 2000 * 0x17);
    assert_ne!(c.state.gpr[8], 0);
    assert_eq!(jit.stats.fallback_insns, 0, "{:?}", jit.stats);
}

/// MOVSS, MOVSD and MOVQ: loads that zero the rest of the register,
/// register moves that keep it (MOVSS/MOVSD) or zero it (MOVQ), stores, an
/// operand across a page boundary (the slow path), and a #PF.
#[test]
fn scalar_sse_moves_give_the_interpreters_results() {
    let prep = |c: &mut Cpu| {
        sse_on(c);
        let bytes: Vec<u8> = (0..0x2000u32).map(|i| (i * 29 + 3) as u8).collect();
        c.mem().write(DATA, &bytes).unwrap();
    };
    let (_, b, jit) = both(long_mode, prep, |a| {
        let mut top = a.create_label();
        a.mov(rsi, DATA)?;
        a.mov(ecx, 40)?;
        a.movdqu(xmm0, xmmword_ptr(rsi + 0x300))?;
        a.movdqu(xmm1, xmmword_ptr(rsi + 0x310))?;
        a.set_label(&mut top)?;
        a.movsd_2(xmm2, qword_ptr(rsi + 3))?;
        a.movss(xmm3, dword_ptr(rsi + 9))?;
        a.movq(xmm4, qword_ptr(rsi + 17))?;
        a.movdqa(xmm5, xmm0)?;
        a.movsd_2(xmm5, xmm2)?;
        a.movdqa(xmm6, xmm1)?;
        a.movss(xmm6, xmm3)?;
        a.movdqa(xmm7, xmm1)?;
        a.movq(xmm7, xmm5)?;
        a.paddq(xmm0, xmm5)?;
        a.paddd(xmm1, xmm6)?;
        a.movsd_2(qword_ptr(rsi + 0x1000), xmm5)?;
        a.movss(dword_ptr(rsi + 0x1008), xmm6)?;
        a.movq(qword_ptr(rsi + 0x100c), xmm0)?;
        // Across the page at DATA + 0x1000 on some passes.
        a.movsd_2(xmm2, qword_ptr(rsi + 0xffc))?;
        a.movsd_2(qword_ptr(rsi + 0x1ffd), xmm1)?;
        a.add(rsi, 5)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        // A #PF on a scalar load.
        a.mov(rdx, UNMAPPED)?;
        a.movsd_2(xmm3, qword_ptr(rdx + 8))?;
        a.hlt()
    });
    assert_eq!(b.state.cr2, UNMAPPED + 8);
    assert!(jit.stats.native_insns * 100 / jit.instructions(&b) >= 80, "{:?}", jit.stats);
}

/// MOVD/MOVQ and MOVLPS/MOVLPD/MOVHPS/MOVHPD between XMM registers and
/// memory, the packed shifts by an immediate (counts inside the lane, at
/// its width and past it) and the byte shifts PSLLDQ/PSRLDQ (past 15
/// too): the interpreter's results, none of them through its handlers.
#[test]
fn movd_with_memory_and_packed_shifts_give_the_interpreters_results() {
    use iced_x86::Mnemonic as M;
    let prep = |c: &mut Cpu| {
        sse_on(c);
        let bytes: Vec<u8> = (0..0x2000u32).map(|i| (i * 37 + 11) as u8).collect();
        c.mem().write(DATA, &bytes).unwrap();
    };
    let (_, b, jit) = both(long_mode, prep, |a| {
        let mut top = a.create_label();
        a.mov(rsi, DATA)?;
        a.mov(ecx, 40)?;
        a.movdqu(xmm8, xmmword_ptr(rsi + 0x300))?;
        a.set_label(&mut top)?;
        a.movdqu(xmm1, xmmword_ptr(rsi))?;
        a.movd(xmm2, dword_ptr(rsi + 5))?;
        a.movq(xmm3, qword_ptr(rsi + 9))?;
        a.movdqa(xmm0, xmm1)?;
        a.psrlq(xmm0, 64)?;
        a.movdqa(xmm4, xmm1)?;
        a.psrld(xmm4, 7)?;
        a.movdqa(xmm5, xmm1)?;
        a.pslld(xmm5, 30)?;
        a.movdqa(xmm6, xmm1)?;
        a.psrad(xmm6, 3)?;
        a.psraw(xmm6, 40)?;
        a.psllw(xmm1, 16)?;
        a.psrlw(xmm2, 1)?;
        a.psllq(xmm3, 13)?;
        a.movdqa(xmm7, xmm4)?;
        a.pslldq(xmm7, 3)?;
        a.movdqa(xmm9, xmm4)?;
        a.psrldq(xmm9, 9)?;
        a.movdqa(xmm10, xmm4)?;
        a.pslldq(xmm10, 16)?;
        a.movdqa(xmm11, xmm4)?;
        a.psrldq(xmm11, 200)?;
        a.movlpd(xmm13, qword_ptr(rsi + 3))?;
        a.movhpd(xmm13, qword_ptr(rsi + 21))?;
        a.movhps(xmm14, qword_ptr(rsi + 40))?;
        a.movlps(xmm14, qword_ptr(rsi + 50))?;
        for r in [xmm0, xmm1, xmm2, xmm3, xmm4, xmm5, xmm6, xmm7, xmm9, xmm10, xmm11, xmm13, xmm14] {
            a.pxor(xmm8, r)?;
            a.paddq(xmm8, xmm8)?;
        }
        a.movd(dword_ptr(rsi + 0x1000), xmm8)?;
        a.movq(qword_ptr(rsi + 0x1004), xmm7)?;
        a.movhpd(qword_ptr(rsi + 0x100c), xmm8)?;
        a.movlps(qword_ptr(rsi + 0x1014), xmm13)?;
        a.movhps(qword_ptr(rsi + 0x101c), xmm14)?;
        a.movlpd(qword_ptr(rsi + 0x1024), xmm14)?;
        a.movd(xmm12, dword_ptr(rsi + 0x1000))?;
        a.paddd(xmm8, xmm12)?;
        a.add(rsi, 7)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        // A #PF on a MOVD load.
        a.mov(rdx, UNMAPPED)?;
        a.movd(xmm3, dword_ptr(rdx + 4))?;
        a.hlt()
    });
    assert_eq!(b.state.cr2, UNMAPPED + 4);
    assert!(jit.stats.native_insns * 100 / jit.instructions(&b) >= 80, "{:?}", jit.stats);
    for m in [M::Movd, M::Movq, M::Psrld, M::Pslld, M::Psrad, M::Psraw, M::Psllw, M::Psrlw, M::Psllq, M::Psrlq] {
        assert_eq!(handler_runs(&jit, m), 0, "{m:?} ran through the interpreter");
    }
    for m in [M::Pslldq, M::Psrldq, M::Movlpd, M::Movhpd, M::Movlps, M::Movhps] {
        assert_eq!(handler_runs(&jit, m), 0, "{m:?} ran through the interpreter");
    }
}

/// CRC32 of every operand size (r32 and r64 destinations, 8-, 16-, 32- and
/// 64-bit sources from registers, AH-style high bytes included, and from
/// memory, one load across a page on a pass), destinations whose upper
/// half holds other bits, chained over many inputs: every register as the
/// interpreter gives it, no CRC32 through its handler; then a #PF on a
/// CRC32 load.
#[test]
fn crc32_of_every_operand_size_gives_the_interpreters_results() {
    use iced_x86::Mnemonic as M;
    let prep = |c: &mut Cpu| {
        let bytes: Vec<u8> = (0..0x2000u32).map(|i| (i * 89 + 7) as u8 ^ (i >> 5) as u8).collect();
        c.mem().write(DATA, &bytes).unwrap();
    };
    let (_, b, jit) = both(long_mode, prep, |a| {
        let mut top = a.create_label();
        a.mov(rsi, DATA)?;
        a.mov(ecx, 200)?;
        a.mov(rax, 0xdead_beef_ffff_ffffu64)?;
        a.mov(rbx, 0x1234_5678_0000_0000u64)?;
        a.mov(r8, -1i64)?;
        a.set_label(&mut top)?;
        a.crc32(eax, byte_ptr(rsi))?;
        a.crc32(eax, word_ptr(rsi + 1))?;
        a.crc32(eax, dword_ptr(rsi + 3))?;
        a.crc32(rax, qword_ptr(rsi + 7))?;
        a.crc32(rbx, byte_ptr(rsi + 15))?;
        a.mov(rdx, qword_ptr(rsi + 0x800))?;
        a.crc32(ebx, dh)?;
        a.crc32(r8d, dl)?;
        a.crc32(r9d, dx)?;
        a.crc32(r10d, edx)?;
        a.crc32(r11, rdx)?;
        a.crc32(r12, r11b)?;
        a.crc32(r13d, r12d)?;
        a.crc32(r13, r13)?;
        // The destination's upper half goes, whatever it held.
        a.mov(r14, rdx)?;
        a.crc32(r14d, byte_ptr(rsi + 2))?;
        a.mov(r15, rdx)?;
        a.not(r15)?;
        a.crc32(r15, qword_ptr(rsi + 5))?;
        a.add(r13, r14)?;
        a.xor(r13, r15)?;
        // Across the page at DATA + 0x1000 on the first pass.
        a.crc32(rdi, qword_ptr(rsi + 0xffc))?;
        a.crc32(edi, word_ptr(rsi + 0x1fff))?;
        a.add(rsi, 5)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        // A #PF on a CRC32 load.
        a.mov(rdx, UNMAPPED)?;
        a.crc32(eax, dword_ptr(rdx + 4))?;
        a.hlt()
    });
    assert_eq!(b.state.cr2, UNMAPPED + 4);
    assert!(jit.stats.native_insns * 100 / jit.instructions(&b) >= 90, "{:?}", jit.stats);
    assert_eq!(handler_runs(&jit, M::Crc32), 0, "CRC32 ran through the interpreter");
}

/// CRC32 in flat 32-bit code, from registers and memory of each size.
#[test]
fn crc32_in_32_bit_code_gives_the_interpreters_results() {
    use iced_x86::Mnemonic as M;
    let prep = |c: &mut Cpu| {
        let bytes: Vec<u8> = (0..0x1000u32).map(|i| (i * 53 + 1) as u8).collect();
        c.mem().write(DATA, &bytes).unwrap();
    };
    let (_, b, jit) = both(prot_mode, prep, |a| {
        let mut top = a.create_label();
        a.mov(esi, DATA as u32)?;
        a.mov(ecx, 300)?;
        a.mov(eax, 0xffff_ffffu32)?;
        a.set_label(&mut top)?;
        a.crc32(eax, byte_ptr(esi))?;
        a.crc32(eax, word_ptr(esi + 1))?;
        a.crc32(eax, dword_ptr(esi + 3))?;
        a.mov(edx, dword_ptr(esi + 0x400))?;
        a.crc32(ebx, dh)?;
        a.crc32(ebx, dl)?;
        a.crc32(edi, dx)?;
        a.crc32(ebp, edx)?;
        a.add(esi, 3)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.hlt()
    });
    ran_compiled(&b, &jit, 90);
    assert_eq!(handler_runs(&jit, M::Crc32), 0, "CRC32 ran through the interpreter");
}

/// PCLMULQDQ (registers and aligned memory) and VPCLMULQDQ (VEX.128,
/// registers and misaligned memory) with every quadword selection and
/// imm8 bits the instruction ignores, a destination that is also a source,
/// products fed back into the next pass: every register half (VEX.128
/// zeroes the destination's upper half) as the interpreter gives it, none
/// of them through its handler.
#[test]
fn carry_less_multiplies_give_the_interpreters_results() {
    use iced_x86::Mnemonic as M;
    let (_, b, jit) = both(avx_long_mode, avx_on, |a| {
        let mut top = a.create_label();
        a.mov(rsi, DATA)?;
        a.mov(ecx, 100)?;
        a.set_label(&mut top)?;
        a.movdqu(xmm1, xmmword_ptr(rsi + 3))?;
        a.movdqu(xmm2, xmmword_ptr(rsi + 0x403))?;
        a.pxor(xmm1, xmm12)?;
        for imm in [0x00u32, 0x01, 0x10, 0x11, 0xee, 0x3f] {
            a.movdqa(xmm3, xmm1)?;
            a.pclmulqdq(xmm3, xmm2, imm)?;
            a.pxor(xmm8, xmm3)?;
            a.movdqa(xmm4, xmm2)?;
            a.pclmulqdq(xmm4, xmmword_ptr(rsi + 0x800), imm)?;
            a.paddq(xmm9, xmm4)?;
            a.vpclmulqdq(xmm5, xmm1, xmm2, imm)?;
            a.pxor(xmm10, xmm5)?;
            a.vpclmulqdq(xmm6, xmm2, xmmword_ptr(rsi + 0x405), imm)?;
            a.paddq(xmm11, xmm6)?;
        }
        a.pclmulqdq(xmm7, xmm7, 0x11)?;
        a.por(xmm7, xmm1)?;
        a.vpclmulqdq(xmm12, xmm12, xmm8, 0x01)?;
        a.pxor(xmm12, xmm9)?;
        a.add(rsi, 16)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.hlt()
    });
    ran_compiled(&b, &jit, 90);
    assert!(b.state.xmm[12] != 0 && b.state.ymm_hi[5] == 0 && b.state.ymm_hi[3] != 0);
    for m in [M::Pclmulqdq, M::Vpclmulqdq] {
        assert_eq!(handler_runs(&jit, m), 0, "{m:?} ran through the interpreter");
    }
}

/// PCLMULQDQ's exceptions from compiled code: the #GP of a misaligned
/// legacy memory operand (VPCLMULQDQ's goes on), the #NM of CR0.TS, and
/// the #UD of a CPU model without PCLMULQDQ, where it is not translated.
#[test]
fn carry_less_multiply_faults_deliver_like_the_interpreter() {
    use iced_x86::Mnemonic as M;
    let (_, b, jit) = both_compiled(avx_long_mode, avx_on, |a| {
        a.mov(rsi, DATA)?;
        on_pass_ten(a, |a| {
            // (The load puts the page in the TLB.)
            a.mov(rax, qword_ptr(rsi))?;
            a.vpclmulqdq(xmm2, xmm1, xmmword_ptr(rsi + 1), 0x10)?;
            a.pclmulqdq(xmm3, xmmword_ptr(rsi + 1), 0x01)
        })
    });
    assert_eq!((b.state.rip, b.state.gpr[1]), (stub(13) + 1, 10), "#GP");
    assert_eq!(handler_runs(&jit, M::Vpclmulqdq), 0);
    assert_eq!(handler_runs(&jit, M::Pclmulqdq), 1, "the slow path");
    let full = |c: &mut Cpu| {
        sse_on(c);
        c.set_model(cpu::cpuid::Model::Max);
    };
    let b = ts_set_midway(full, 300, 100, |a| a.pclmulqdq(xmm2, xmm3, 0x11));
    assert_eq!(b.state.rip, stub(7) + 1, "#NM");
    assert_eq!(b.state.gpr[1], 100);
    // Without the model's PCLMULQDQ (AVX alone, or neither): the
    // interpreter's handler and its #UD.
    for make in [long_mode, avx_only_long_mode] {
        let (_, b, jit) = both_compiled(make, avx_on, |a| on_pass_ten(a, |a| a.pclmulqdq(xmm2, xmm3, 0)));
        assert_eq!((b.state.rip, b.state.gpr[1]), (stub(6) + 1, 10), "#UD");
        assert!(jit.stats.native_insns > 0);
        assert_eq!(handler_runs(&jit, M::Pclmulqdq), 1);
    }
    let (_, b, jit) =
        both_compiled(avx_only_long_mode, avx_on, |a| on_pass_ten(a, |a| a.vpclmulqdq(xmm2, xmm3, xmm4, 0)));
    assert_eq!((b.state.rip, b.state.gpr[1]), (stub(6) + 1, 10), "#UD of VPCLMULQDQ");
    assert_eq!(handler_runs(&jit, M::Vpclmulqdq), 1);
}

/// 64-bit long mode with AVX but without AES-NI and PCLMULQDQ.
fn avx_only_long_mode() -> Cpu {
    let mut c = long_mode();
    c.set_avx(true);
    c
}

/// MOVHLPS and MOVLHPS, and the VEX forms VMOVHLPS, VMOVLHPS and
/// VMOVLPS/VMOVLPD/VMOVHPS/VMOVHPD (loads merging VEX.vvvv and stores),
/// sources that are also the destination included: every register half
/// (the VEX forms zero the destination's upper half, the legacy ones keep
/// it) and memory as the interpreter gives them, none of them through its
/// handlers.
#[test]
fn quadword_moves_give_the_interpreters_results() {
    use iced_x86::Mnemonic as M;
    let (_, b, jit) = both(avx_long_mode, avx_on, |a| {
        let mut top = a.create_label();
        a.mov(rsi, DATA)?;
        a.mov(ecx, 60)?;
        a.set_label(&mut top)?;
        a.movdqu(xmm1, xmmword_ptr(rsi))?;
        a.movdqu(xmm2, xmmword_ptr(rsi + 0x13))?;
        a.movhlps(xmm3, xmm1)?;
        a.movlhps(xmm4, xmm2)?;
        a.movhlps(xmm5, xmm5)?;
        a.movlhps(xmm6, xmm6)?;
        a.movlhps(xmm6, xmm3)?;
        a.vmovhlps(xmm7, xmm1, xmm2)?;
        a.vmovlhps(xmm8, xmm2, xmm1)?;
        a.vmovhlps(xmm9, xmm9, xmm9)?;
        a.vmovlps_3(xmm10, xmm1, qword_ptr(rsi + 3))?;
        a.vmovhps_3(xmm11, xmm2, qword_ptr(rsi + 9))?;
        a.vmovlpd_3(xmm12, xmm12, qword_ptr(rsi + 0x21))?;
        a.vmovhpd_3(xmm13, xmm13, qword_ptr(rsi + 0x2f))?;
        a.vmovlps(qword_ptr(rsi + 0x1000), xmm7)?;
        a.vmovhps(qword_ptr(rsi + 0x1008), xmm8)?;
        a.vmovhpd(qword_ptr(rsi + 0x1010), xmm11)?;
        a.vmovlpd(qword_ptr(rsi + 0x1018), xmm10)?;
        for r in [xmm3, xmm4, xmm5, xmm6, xmm7, xmm8, xmm9, xmm10, xmm11, xmm12, xmm13] {
            a.pxor(xmm14, r)?;
            a.paddq(xmm14, xmm14)?;
        }
        a.movhlps(xmm15, xmm14)?;
        a.add(rsi, 9)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.hlt()
    });
    ran_compiled(&b, &jit, 90);
    assert!(b.state.ymm_hi[3] != 0 && b.state.ymm_hi[7] == 0 && b.state.ymm_hi[10] == 0);
    for m in [M::Movhlps, M::Movlhps, M::Vmovhlps, M::Vmovlhps, M::Vmovlps, M::Vmovhps, M::Vmovlpd, M::Vmovhpd] {
        assert_eq!(handler_runs(&jit, m), 0, "{m:?} ran through the interpreter");
    }
}

/// An instruction that crosses into the next page runs from compiled code
/// (the region holds both pages), and a store into its tail takes effect.
#[test]
fn an_instruction_across_a_page_boundary_runs_compiled_and_sees_stores() {
    // f at CODE + 0xffd: add ebx, 1 (81 c3 imm32, crossing into the next
    // page after its first immediate byte); ret.
    let f = CODE + 0xffd;
    let (_, b, jit) = both(
        long_mode,
        |c| c.mem().write(f, &[0x81, 0xc3, 1, 0, 0, 0, 0xc3]).unwrap(),
        |a| {
            let mut top = a.create_label();
            let mut skip = a.create_label();
            a.mov(ecx, 600)?;
            a.xor(ebx, ebx)?;
            a.set_label(&mut top)?;
            a.call(f)?;
            a.cmp(ecx, 300)?;
            a.jne(skip)?;
            // The immediate's second byte, in the next page: 1 becomes 257.
            a.mov(rdx, CODE + 0x1000)?;
            a.mov(byte_ptr(rdx), 1)?;
            a.set_label(&mut skip)?;
            a.dec(ecx)?;
            a.jnz(top)?;
            a.hlt()
        },
    );
    assert_eq!(b.state.gpr[3], 301 + 299 * 257);
    // Each call used to leave compiled code for the run loop twice.
    assert!(jit.stats.entries < 100, "{:?}", jit.stats);
    assert!(jit.stats.fallback_insns < 100, "the crossing ADD is translated: {:?}", jit.stats);
}

/// The page of a compiled page-crossing instruction's tail mapped to
/// another physical page: the next runs take the new bytes. Then unmapped:
/// the next run raises the #PF of the fetch.
#[test]
fn a_compiled_instruction_across_pages_faults_when_its_tail_is_unmapped() {
    let mut c = long_mode();
    let f = CODE + 0xffd;
    let code = assemble(&c, |a| {
        let mut top = a.create_label();
        a.mov(ecx, 1_000_000)?;
        a.set_label(&mut top)?;
        a.call(f)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.hlt()
    });
    place(&mut c, &code);
    c.mem().write(f, &[0x81, 0xc3, 1, 0, 0, 0, 0xc3]).unwrap();
    let mut jit = Jit::new(&mut c, cfg()).unwrap();
    jit.run(&mut c, 50_000);
    assert!(jit.stats.native_insns > 10_000, "{:?}", jit.stats);
    let next = CODE + 0x1000;
    let pte = PT + (next >> 12) * 8;
    // The same tail with an immediate of 257, in another physical page.
    let other = DATA + 0x3000;
    c.mem().write(other, &[1, 0, 0, 0xc3]).unwrap();
    let old = c.mem().read_u64(pte).unwrap();
    c.mem().write_u64(pte, other | (old & 0xfff)).unwrap();
    c.mmu.flush(false);
    let (sum0, count0) = (c.state.gpr[3] as u32, c.state.gpr[1] as u32);
    jit.run(&mut c, 50_000);
    let calls = i64::from(count0 - c.state.gpr[1] as u32);
    let added = i64::from((c.state.gpr[3] as u32).wrapping_sub(sum0));
    assert!(calls > 1000 && (added - 257 * calls).abs() <= 257, "{calls} calls added {added}");
    c.mem().write_u64(pte, 0).unwrap();
    c.mmu.flush(false);
    run_jit(&mut c, &mut jit, 1_000_000);
    assert_eq!(c.state.rip, stub(14) + 1, "halted in the #PF handler");
    assert_eq!(c.state.cr2, next);
}

/// A device's write (DMA: no CPU store) into a page of compiled code.
#[test]
fn dma_into_compiled_code_takes_effect() {
    let mut c = long_mode();
    let code = assemble(&c, |a| {
        let mut top = a.create_label();
        a.set_label(&mut top)?;
        a.add(ebx, 1)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.hlt()
    });
    place(&mut c, &code);
    c.state.gpr[1] = 100_000;
    let mut jit = Jit::new(&mut c, cfg()).unwrap();
    assert_eq!(jit.run(&mut c, 50_000), StopReason::Budget);
    assert!(jit.stats.native_insns > 0);
    let done = 100_000 - c.state.gpr[1];
    c.mem().write(CODE + 2, &[16]).unwrap();
    run_jit(&mut c, &mut jit, 1_000_000);
    assert_eq!(c.state.gpr[3], done + (100_000 - done) * 16);
}

/// Loads whose TLB entry the load before evicted (two pages 4 MiB apart
/// share one entry), so that each goes through the helper, while every
/// other general register holds a value computed in the same guest block:
/// the helper's call must leave them all as they were.
#[test]
fn accesses_through_the_helper_keep_every_held_register() {
    const FAR: i32 = 0x40_0000;
    let held = [rax, rbx, rdx, rdi, rbp, r8, r9, r10, r11, r12, r13, r14, r15];
    let (_, b, jit) = both(
        long_mode,
        |c| {
            for (i, r) in [0usize, 2, 3, 5, 7, 8, 9, 10, 11, 12, 13, 14, 15].into_iter().enumerate() {
                c.state.gpr[r] = 0x1111_1111_1111_1111u64.wrapping_mul(i as u64 + 1);
            }
        },
        |a| {
            data_loop(a, 200, |a| {
                for (i, &r) in held.iter().enumerate() {
                    a.add(r, i as i32 + 1)?;
                }
                a.add(rbx, qword_ptr(rsi + FAR))?;
                a.add(rax, qword_ptr(rsi + 8))?;
                a.xor(rax, qword_ptr(rsi + FAR + 8))?;
                for (i, &r) in held.iter().enumerate() {
                    a.xor(r, held[(i + 1) % held.len()])?;
                }
                Ok(())
            })
        },
    );
    ran_compiled(&b, &jit, 95);
}

/// Stores that miss the TLB on every pass (two pages 4 MiB apart share one
/// entry), plain and read-modify-write: each runs through the interpreter,
/// the region leaves after it and the next one goes on.
#[test]
fn stores_that_miss_run_through_the_interpreter() {
    const FAR: i32 = 0x40_0000;
    let (_, b, jit) = both(
        long_mode,
        |_| {},
        |a| {
            data_loop(a, 300, |a| {
                a.add(rax, rcx)?;
                a.mov(qword_ptr(rsi + FAR + 16), rax)?;
                a.lea(rbx, qword_ptr(rax + rcx * 2))?;
                a.mov(qword_ptr(rsi + 16), rbx)?;
                a.add(qword_ptr(rsi + FAR + 24), rbx)?;
                a.xor(qword_ptr(rsi + 24), rax)?;
                a.push(rbx)?;
                a.pop(rdx)?;
                a.add(rdx, qword_ptr(rsi + FAR + 24))?;
                a.mov(qword_ptr(rsi + 32), rdx)
            })
        },
    );
    assert!(jit.stats.fallback_insns >= 300, "{:?}", jit.stats);
    ran_compiled(&b, &jit, 50);
}

/// An interrupt raised while a compiled loop spins is taken within the
/// run's budget.
#[test]
fn an_interrupt_stops_a_compiled_loop() {
    let (mut c, _, irq) = new_cpu_with_irq();
    long_setup(&mut c);
    let code = assemble(&c, |a| {
        let mut top = a.create_label();
        a.set_label(&mut top)?;
        a.inc(rax)?;
        a.jmp(top)
    });
    place(&mut c, &code);
    c.state.rflags |= flags::IF;
    let mut jit = Jit::new(&mut c, cfg()).unwrap();
    assert_eq!(jit.run(&mut c, 100_000), StopReason::Budget);
    assert!(jit.stats.native_insns > 50_000, "{:?}", jit.stats);
    *irq.lock().unwrap() = Some(0x40);
    let before = jit.instructions(&c);
    jit.run(&mut c, 100_000);
    assert!(c.state.rip == stub(0x40) + 1 || c.state.rip == stub(0x40), "rip {:#x}", c.state.rip);
    assert!(jit.instructions(&c) - before <= 100_000);
    assert_eq!(c.state.seg[sreg::CS].selector, SEL_CODE64);
}

/// STI in compiled code: with no interrupt waiting the region goes on
/// (no fallback, no return to the run loop); with one waiting, the
/// instruction after STI runs under the shadow and the interrupt is taken
/// right after it, before the CLI that closes the window.
#[test]
fn sti_goes_on_unless_an_interrupt_waits() {
    let (mut c, _, irq) = new_cpu_with_irq();
    long_setup(&mut c);
    let code = assemble(&c, |a| {
        let mut top = a.create_label();
        a.mov(edx, 100_000)?; // 5 bytes
        a.set_label(&mut top)?;
        a.cli()?; // 1
        a.inc(rbx)?; // 3
        a.sti()?; // 1
        a.inc(rcx)?; // 3: the only instruction that ends with IF set
        a.cli()?;
        a.dec(edx)?;
        a.jnz(top)?;
        a.hlt()
    });
    place(&mut c, &code);
    let mut jit = Jit::new(&mut c, cfg()).unwrap();
    jit.run(&mut c, 20_000);
    let entries = jit.stats.entries;
    jit.run(&mut c, 50_000);
    assert_eq!(jit.stats.fallback_insns, 0, "{:?}", jit.stats);
    assert!(jit.stats.entries - entries <= 2, "STI left the region: {:?}", jit.stats);

    *irq.lock().unwrap() = Some(0x40);
    jit.run(&mut c, 100_000);
    assert!(c.state.rip == stub(0x40) + 1 || c.state.rip == stub(0x40), "rip {:#x}", c.state.rip);
    // The frame's RIP is the second CLI, the one place where the window is
    // open: INC RCX ran under the shadow.
    let mut ret = [0u8; 8];
    c.mem().read(c.state.gpr[4], &mut ret).unwrap();
    assert_eq!(u64::from_le_bytes(ret), CODE + 5 + 8);
    assert_eq!(c.state.gpr[3], c.state.gpr[1], "INC RCX after STI ran");
    assert!(c.state.gpr[3] < 100_000);
}

/// STAC and CLAC in compiled code, under SMAP with every page a user
/// page: the loads and the PUSH of a memory operand between them run with
/// AC set, and the load after the last CLAC faults, as in the interpreter.
#[test]
fn stac_clac_and_push_memory_match_the_interpreter() {
    let prep = |c: &mut Cpu| {
        c.state.gpr[6] = 0x20_0000;
        for i in 0..16u64 {
            c.mem().write_u64(0x20_0000 + i * 8, i * 0x1111).unwrap();
        }
    };
    let (_, b, jit) = both(long_mode, prep, |a| {
        let mut top = a.create_label();
        a.mov(rax, cr4)?;
        a.or(rax, cpu::state::cr::CR4_SMAP as i32)?;
        a.mov(cr4, rax)?;
        a.mov(ecx, 3000)?;
        a.set_label(&mut top)?;
        a.stac()?;
        a.mov(rax, qword_ptr(rsi))?;
        a.add(rbx, rax)?;
        a.push(qword_ptr(rsi + 8))?;
        a.pop(rdx)?;
        a.add(rbx, rdx)?;
        a.clac()?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.hlt()
    });
    assert_eq!(b.state.gpr[3], 3000 * 0x1111);
    assert_eq!(b.state.rflags & flags::AC, 0);
    // Only the CR4 moves ran through the interpreter's handlers.
    assert!(jit.stats.fallback_insns <= 2, "{:?}", jit.stats);
}

#[test]
fn the_mode_check_refuses_what_compiled_code_cannot_run() {
    let mut c = long_mode();
    assert_eq!(native_mode(&c.state), 64);
    c.state.rflags |= flags::TF;
    assert_eq!(native_mode(&c.state), 0);
    let c = prot_mode();
    assert_eq!(native_mode(&c.state), 32);
    let c = real_mode();
    assert_eq!(native_mode(&c.state), 0);
}

/// Compile cost of one region (printed; `--ignored --nocapture`).
#[test]
#[ignore]
fn compile_cost() {
    let mut c = long_mode();
    let bytes = assemble(&c, mixed);
    place(&mut c, &bytes);
    let jit = Jit::new(&mut c, cfg()).unwrap();
    let spec = jit.gather(&mut c, CODE, 64, true).spec;
    let n: usize = spec.blocks.iter().map(|b| b.insns.len()).sum();
    for (opt, ra) in [("none", "single_pass"), ("none", "backtracking"), ("speed", "backtracking")] {
        let isa = compiler::host_isa(&Settings { opt_level: opt.into(), regalloc: ra.into() }).unwrap();
        let t0 = std::time::Instant::now();
        let mut size = 0;
        for i in 0..20 {
            size = compiler::compile(&isa, i, &spec).unwrap().code.len();
        }
        println!(
            "{opt}/{ra}: {} blocks, {n} insns: {:?} per compile, {size} bytes",
            spec.blocks.len(),
            t0.elapsed() / 20
        );
    }
}

/// The IR of a small region (printed; `--ignored --nocapture`).
#[test]
#[ignore]
fn show_ir() {
    let mut c = long_mode();
    let bytes = assemble(&c, |a| {
        let mut top = a.create_label();
        a.set_label(&mut top)?;
        a.add(eax, dword_ptr(rsi))?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.hlt()
    });
    place(&mut c, &bytes);
    let jit = Jit::new(&mut c, cfg()).unwrap();
    let spec = jit.gather(&mut c, CODE, 64, true).spec;
    let isa = compiler::host_isa(&Settings::default()).unwrap();
    let mut func = cranelift_codegen::ir::Function::new();
    let mut fctx = cranelift_frontend::FunctionBuilderContext::new();
    func.signature = cranelift_codegen::ir::Signature::new(isa.default_call_conv());
    func.signature.params.push(cranelift_codegen::ir::AbiParam::new(isa.pointer_type()));
    func.signature.params.push(cranelift_codegen::ir::AbiParam::new(cranelift_codegen::ir::types::I32));
    let mut b = cranelift_frontend::FunctionBuilder::new(&mut func, &mut fctx);
    translate::translate(&mut b, &spec, isa.default_call_conv(), isa.pointer_type());
    b.finalize(isa.frontend_config());
    println!("{}", func.display());
    println!("{} bytes", compiler::compile(&isa, 0, &spec).unwrap().code.len());
}

/// The XSAVE feature set in compiled code, through the interpreter's
/// handlers: XSETBV, XGETBV, XSAVE/XSAVEC/XSAVEOPT and XRSTOR in a loop
/// that changes the SSE and x87 state between them, then a misaligned
/// XSAVE (#GP) from compiled code.
#[test]
fn xsave_instructions_in_compiled_code_give_the_interpreters_results() {
    let prep = |c: &mut Cpu| {
        sse_on(c);
        c.state.cr4 |= cpu::state::cr::CR4_OSXSAVE;
        c.mem().fill(DATA, 0x1000, 0).unwrap();
    };
    let (_, b, jit) = both(long_mode, prep, |a| {
        let mut top = a.create_label();
        let mut skip = a.create_label();
        a.xor(ecx, ecx)?;
        a.mov(eax, 3)?;
        a.xor(edx, edx)?;
        a.xsetbv()?;
        a.mov(rsi, DATA)?;
        a.mov(r8d, 200)?;
        a.set_label(&mut top)?;
        a.movd(xmm1, r8d)?;
        a.paddd(xmm0, xmm1)?;
        a.fild(dword_ptr(rsi + 0x800))?;
        a.mov(eax, 3)?;
        a.xsave64(ptr(rsi))?;
        a.xsavec(ptr(rsi + 0x240))?;
        a.mov(eax, 2)?;
        a.xsaveopt64(ptr(rsi + 0x480))?;
        a.pxor(xmm0, xmm0)?;
        a.mov(eax, 3)?;
        a.xrstor64(ptr(rsi))?;
        a.xor(ecx, ecx)?;
        a.xgetbv()?;
        a.add(r9, rax)?;
        a.cmp(r8d, 7)?;
        a.jne(skip)?;
        a.xsave(ptr(rsi + 0x20))?;
        a.set_label(&mut skip)?;
        a.dec(r8d)?;
        a.jnz(top)?;
        a.hlt()
    });
    assert_eq!(b.state.rip, stub(13) + 1, "#GP for the misaligned area");
    assert_eq!(b.state.gpr[8], 7);
    assert_eq!(b.state.gpr[9], 3 * 194);
    assert!(jit.stats.native_insns > 0, "{:?}", jit.stats);
}

/// The host's PCMPISTRI (where it has one) gives the interpreter's index and
/// flags for every control byte, on strings with nulls at every position,
/// repeated characters and signed bytes.
#[test]
fn host_pcmpistri_matches_the_interpreter() {
    let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
    // Few distinct bytes, so that sets and substrings match often.
    let alphabet = [0u8, b'a', b'b', b'c', 0x7f, 0x80, 0xff, b'a'];
    let string = |next: &mut dyn FnMut() -> u64| {
        let mut v = [0u8; 16];
        for byte in &mut v {
            *byte = alphabet[(next() % 8) as usize];
        }
        // Sometimes no null at all.
        if next().is_multiple_of(4) {
            for byte in &mut v {
                if *byte == 0 {
                    *byte = b'c';
                }
            }
        }
        u128::from_le_bytes(v)
    };
    let mut checked = 0;
    for imm in 0..=255u8 {
        for _ in 0..200 {
            let (a, b) = (string(&mut next), string(&mut next));
            let Some(host) = ctx::host_pcmp::pcmpistri(a, b, imm) else {
                println!("skipped: the host has no PCMPISTRI");
                return;
            };
            assert_eq!(host, cpu::ops::sse::pcmpistri(a, b, imm), "imm {imm:#x} a {a:#034x} b {b:#034x}");
            checked += 1;
        }
    }
    assert_eq!(checked, 256 * 200);
}

/// Two CPUs, each with its own JIT, on one guest memory. CPU B's
/// translated code stores through its TLB without looking at the
/// code-page bit where the page held no code when the entry was filled;
/// once CPU A runs code from that page, B's stores into it reach A, whose
/// compiled and decoded code then runs the new instruction.
#[test]
fn stores_by_another_cpus_compiled_code_reach_this_cpus_code() {
    let mut b = long_mode();
    let f = CODE + 0x1000;
    // B: stores of AL to [RDX], ECX times.
    let code = assemble(&b, |a| {
        let mut top = a.create_label();
        a.set_label(&mut top)?;
        a.mov(byte_ptr(rdx), al)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.hlt()
    });
    place(&mut b, &code);
    // A, at f: 50 passes of mov eax, imm32 (the immediate at f + 6), then HLT.
    b.mem().write(f, &[0xb9, 50, 0, 0, 0, 0xb8, 1, 0, 0, 0, 0xff, 0xc9, 0x75, 0xf7, 0xf4]).unwrap();
    let mut a = Cpu::new(b.mem().clone(), Box::new(cpu::NoDevices));
    a.set_state(b.state);
    let mut jit_a = Jit::new(&mut a, cfg()).unwrap();
    let mut jit_b = Jit::new(&mut b, cfg()).unwrap();
    let run = |c: &mut Cpu, jit: &mut Jit, rip: u64| {
        c.state.rip = rip;
        c.state.halted = 0;
        c.state.gpr[1] = 300;
        run_jit(c, jit, 1_000_000);
        let end = if rip == f { f + 15 } else { CODE + code.len() as u64 };
        assert_eq!(c.state.rip, end, "halted at the end");
    };
    // B's stores into f's page, which holds no code yet: compiled, and
    // straight through B's TLB.
    b.state.gpr[2] = f + 0x800;
    run(&mut b, &mut jit_b, CODE);
    assert!(jit_b.stats.native_insns > 0);
    // A runs f's code, compiled.
    run(&mut a, &mut jit_a, f);
    assert_eq!(a.state.gpr[0], 1);
    assert!(jit_a.stats.native_insns > 0);
    // B's stores, now into the immediate A runs, from the first one on in
    // B's compiled loop.
    b.state.gpr[2] = f + 6;
    b.state.gpr[0] = 7;
    let native = jit_b.stats.native_insns;
    run(&mut b, &mut jit_b, CODE);
    assert!(jit_b.stats.native_insns > native);
    run(&mut a, &mut jit_a, f);
    assert_eq!(a.state.gpr[0], 7, "A runs the new instruction");
    assert!(jit_a.stats.invalidated_regions >= 1, "{:?}", jit_a.stats);
    // A device's write reaches both.
    a.mem().write_u32(f + 6, 9).unwrap();
    run(&mut a, &mut jit_a, f);
    assert_eq!(a.state.gpr[0], 9);
}

/// Whether the host has the 128-bit compare-and-swap compiled CMPXCHG16B
/// needs (as `translate::classify::cas128`).
fn host_cas128() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("cmpxchg16b")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The JIT's configuration when other host threads share guest memory.
fn shared_cfg() -> Config {
    Config { shared_memory: true, ..cfg() }
}

/// Every guest atomic translated inline under `shared_memory` (LOCK ADD,
/// SUB, AND, OR, XOR with a register and an immediate, INC and DEC with
/// the carry known and not, NEG, NOT, ADC and SBB with the carry known and
/// not, XADD, XCHG, CMPXCHG both ways, BTS, BTR, BTC by an immediate and by
/// a register (a bit string reaching 1 KiB either side, in 64- and 32-bit
/// addressing), CMPXCHG8B and CMPXCHG16B both ways with and without LOCK,
/// MFENCE) in all their sizes gives the interpreter's memory, registers
/// and flags, on edge values that set and clear carry, overflow, zero and
/// sign: the flags after each one are folded into R13.
#[test]
fn inline_atomics_give_the_interpreters_results_and_flags() {
    const VALUES: [u64; 8] =
        [0, 1, 0x7f, 0x80, 0x7fff_ffff, 0x8000_0000_0000_0000, 0xffff_ffff_ffff_ffff, 0x0000_8000_ffff_7fff];
    let prep = |c: &mut Cpu| {
        for (i, v) in VALUES.iter().enumerate() {
            c.mem().write_u64(DATA + 0x800 + 8 * i as u64, *v).unwrap();
        }
        // The bit strings around DATA + 0x1000.
        for i in 0..0x100u64 {
            c.mem().write_u64(DATA + 0xc00 + 8 * i, i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).unwrap();
        }
    };
    type Op = fn(&mut CodeAssembler) -> Result<(), IcedError>;
    // A bit offset in R9 from -7808 to 7747 (RBX's low byte times 61).
    fn bit_offset(a: &mut CodeAssembler) -> Result<(), IcedError> {
        a.movsx(r9, bl)?;
        a.imul_3(r9, r9, 61)
    }
    // CF from bit `n` of the pass count.
    fn carry(a: &mut CodeAssembler, n: u32) -> Result<(), IcedError> {
        a.bt(ecx, n)
    }
    // RDX:RAX equal to the 16 bytes at RSI + 0x100 on every fourth pass
    // (RAX is the low half on odd passes; the high half is RBX, which RDX
    // holds when bit 1 of the pass count is set), RCX:RBX the new value;
    // RCX kept in R10.
    fn wide_operands(a: &mut CodeAssembler) -> Result<(), IcedError> {
        a.mov(r10, rcx)?;
        a.mov(qword_ptr(rsi + 0x108), rbx)?;
        a.mov(edx, ecx)?;
        a.and(edx, 2)?;
        a.shr(edx, 1)?;
        a.xor(edx, 1)?;
        a.add(rdx, rbx)?;
        a.mov(rcx, rdi)?;
        a.not(rcx)
    }
    // The same for CMPXCHG8B: EDX:EAX equal to the qword at RSI + 0x100 on
    // odd passes.
    fn wide_operands8(a: &mut CodeAssembler) -> Result<(), IcedError> {
        a.mov(r10, rcx)?;
        a.mov(rdx, rax)?;
        a.shr(rdx, 32)?;
        a.mov(rcx, rbx)?;
        a.not(rcx)
    }
    // Memory at RSI + 0x100 (a qword, RDI from the table), RBX the operand.
    let ops: Vec<Op> = vec![
        |a| a.lock().add(byte_ptr(rsi + 0x100), bl),
        |a| a.lock().add(word_ptr(rsi + 0x100), bx),
        |a| a.lock().add(dword_ptr(rsi + 0x100), ebx),
        |a| a.lock().add(qword_ptr(rsi + 0x100), rbx),
        |a| a.lock().add(dword_ptr(rsi + 0x100), 0x7fff_ffff),
        |a| a.lock().sub(byte_ptr(rsi + 0x100), bl),
        |a| a.lock().sub(word_ptr(rsi + 0x100), 1),
        |a| a.lock().sub(dword_ptr(rsi + 0x100), ebx),
        |a| a.lock().sub(qword_ptr(rsi + 0x100), rbx),
        |a| a.lock().and(word_ptr(rsi + 0x100), bx),
        |a| a.lock().and(qword_ptr(rsi + 0x100), -2),
        |a| a.lock().or(byte_ptr(rsi + 0x100), 0x80),
        |a| a.lock().or(dword_ptr(rsi + 0x100), ebx),
        |a| a.lock().xor(qword_ptr(rsi + 0x100), rbx),
        |a| a.lock().xor(byte_ptr(rsi + 0x100), bl),
        |a| a.lock().inc(byte_ptr(rsi + 0x100)),
        |a| a.lock().inc(qword_ptr(rsi + 0x100)),
        |a| a.lock().dec(word_ptr(rsi + 0x100)),
        |a| a.lock().dec(dword_ptr(rsi + 0x100)),
        |a| {
            // INC after a producer in the same block: its CF is known.
            a.add(rbx, rdx)?;
            a.lock().inc(dword_ptr(rsi + 0x100))
        },
        |a| {
            // DEC at the start of a guest block: its CF is deferred.
            let mut next = a.create_label();
            a.jmp(next)?;
            a.set_label(&mut next)?;
            a.lock().dec(byte_ptr(rsi + 0x100))
        },
        |a| a.lock().not(word_ptr(rsi + 0x100)),
        |a| a.lock().not(qword_ptr(rsi + 0x100)),
        |a| a.lock().xadd(byte_ptr(rsi + 0x100), bl),
        |a| a.lock().xadd(word_ptr(rsi + 0x100), bx),
        |a| a.lock().xadd(dword_ptr(rsi + 0x100), ebx),
        |a| a.lock().xadd(qword_ptr(rsi + 0x100), rbx),
        |a| a.xchg(byte_ptr(rsi + 0x100), bl),
        |a| a.xchg(word_ptr(rsi + 0x100), bx),
        |a| a.xchg(dword_ptr(rsi + 0x100), ebx),
        |a| a.lock().xchg(qword_ptr(rsi + 0x100), rbx),
        |a| a.lock().cmpxchg(byte_ptr(rsi + 0x100), bl),
        |a| a.lock().cmpxchg(word_ptr(rsi + 0x100), bx),
        |a| a.lock().cmpxchg(dword_ptr(rsi + 0x100), ebx),
        |a| a.lock().cmpxchg(qword_ptr(rsi + 0x100), rbx),
        |a| a.lock().bts(word_ptr(rsi + 0x100), 15),
        |a| a.lock().btr(dword_ptr(rsi + 0x100), 0),
        |a| a.lock().btc(qword_ptr(rsi + 0x100), 63),
        |a| a.lock().bts(qword_ptr(rsi + 0x100), 31),
        |a| {
            a.mfence()?;
            a.lock().add(qword_ptr(rsi + 0x100), rdx)
        },
        |a| a.lock().sub(qword_ptr(rsi + 0x100), rdx),
        |a| a.lock().neg(byte_ptr(rsi + 0x100)),
        |a| a.lock().neg(word_ptr(rsi + 0x100)),
        |a| a.lock().neg(dword_ptr(rsi + 0x100)),
        |a| a.lock().neg(qword_ptr(rsi + 0x100)),
        |a| {
            carry(a, 1)?;
            a.lock().adc(byte_ptr(rsi + 0x100), bl)
        },
        |a| {
            carry(a, 2)?;
            a.lock().adc(word_ptr(rsi + 0x100), 0x7fff)
        },
        |a| {
            carry(a, 1)?;
            a.lock().adc(dword_ptr(rsi + 0x100), ebx)
        },
        |a| {
            carry(a, 2)?;
            a.lock().adc(qword_ptr(rsi + 0x100), rbx)
        },
        |a| {
            // The carry from the state, at the start of a guest block.
            let mut next = a.create_label();
            carry(a, 1)?;
            a.jmp(next)?;
            a.set_label(&mut next)?;
            a.lock().adc(qword_ptr(rsi + 0x100), -1)
        },
        |a| {
            carry(a, 1)?;
            a.lock().sbb(byte_ptr(rsi + 0x100), bl)
        },
        |a| {
            carry(a, 2)?;
            a.lock().sbb(word_ptr(rsi + 0x100), bx)
        },
        |a| {
            carry(a, 1)?;
            a.lock().sbb(dword_ptr(rsi + 0x100), -1)
        },
        |a| {
            let mut next = a.create_label();
            carry(a, 2)?;
            a.jmp(next)?;
            a.set_label(&mut next)?;
            a.lock().sbb(qword_ptr(rsi + 0x100), rbx)
        },
        |a| {
            bit_offset(a)?;
            a.lock().bts(word_ptr(rsi + 0x1000), r9w)
        },
        |a| {
            bit_offset(a)?;
            a.lock().btr(word_ptr(rsi + 0x1000), r9w)
        },
        |a| {
            bit_offset(a)?;
            a.lock().btc(dword_ptr(rsi + 0x1000), r9d)
        },
        |a| {
            bit_offset(a)?;
            a.lock().bts(dword_ptr(rsi + 0x1000), r9d)
        },
        |a| {
            bit_offset(a)?;
            a.lock().btr(qword_ptr(rsi + 0x1000), r9)
        },
        |a| {
            bit_offset(a)?;
            a.lock().btc(qword_ptr(rsi + 0x1000), r9)
        },
        |a| {
            // 32-bit addressing (67h).
            bit_offset(a)?;
            a.lock().bts(dword_ptr(esi + 0x1000), r9d)
        },
        |a| {
            // Bits 0 to 511 of the string at RSI + 0x100, by the pass count.
            a.lea(r9, qword_ptr(rdx * 8 - 1))?;
            a.lock().bts(qword_ptr(rsi + 0x100), r9)
        },
        |a| {
            wide_operands8(a)?;
            a.lock().cmpxchg8b(qword_ptr(rsi + 0x100))?;
            a.mov(rcx, r10)
        },
        |a| {
            wide_operands8(a)?;
            a.cmpxchg8b(qword_ptr(rsi + 0x100))?;
            a.mov(rcx, r10)
        },
        |a| {
            wide_operands(a)?;
            a.lock().cmpxchg16b(xmmword_ptr(rsi + 0x100))?;
            a.mov(rcx, r10)
        },
        |a| {
            wide_operands(a)?;
            a.cmpxchg16b(xmmword_ptr(rsi + 0x100))?;
            a.mov(rcx, r10)
        },
    ];
    for (k, op) in ops.iter().enumerate() {
        let (_, b, jit) = both_with(shared_cfg(), long_mode, prep, |a| {
            // 64 passes: memory from VALUES[pass % 8], the operand from
            // VALUES[pass / 8]; RAX (CMPXCHG's comparand) equal to memory
            // on odd passes.
            let mut top = a.create_label();
            a.mov(rsi, DATA)?;
            a.xor(r13, r13)?;
            a.mov(ecx, 64)?;
            a.set_label(&mut top)?;
            a.mov(edx, ecx)?;
            a.and(edx, 7)?;
            a.mov(rdi, qword_ptr(rsi + rdx * 8 + 0x800))?;
            a.mov(qword_ptr(rsi + 0x100), rdi)?;
            a.mov(edx, ecx)?;
            a.shr(edx, 3)?;
            a.and(edx, 7)?;
            a.mov(rbx, qword_ptr(rsi + rdx * 8 + 0x800))?;
            a.mov(rax, rcx)?;
            a.and(rax, 1)?;
            a.neg(rax)?;
            a.and(rax, rdi)?;
            a.mov(rdx, rcx)?;
            op(a)?;
            a.pushfq()?;
            a.pop(r8)?;
            a.xor(r13, r8)?;
            a.rol(r13, 5)?;
            a.add(r13, qword_ptr(rsi + 0x100))?;
            a.add(r13, rbx)?;
            a.add(r13, rax)?;
            a.rol(r13, 3)?;
            a.dec(ecx)?;
            a.jnz(top)?;
            a.hlt()
        });
        ran_compiled(&b, &jit, 90);
        // Nothing falls back (CMPXCHG16B does where the host has no
        // 128-bit compare-and-swap).
        let limit = if k >= ops.len() - 2 && !host_cas128() { 64 } else { 0 };
        assert!(jit.stats.fallback_insns <= limit, "op {k}: {:?}", jit.stats);
    }
}

/// Under `shared_memory`, what the inline path cannot take goes through
/// the interpreter's locked handler and the results stay the
/// interpreter's: LOCKs across a page boundary and misaligned ones within
/// a page, of every form (ADC, SBB, NEG, XADD, CMPXCHG, CMPXCHG8B, the bit
/// strings by a register), and plain XADD and BT by a register across a
/// page.
#[test]
fn atomics_the_inline_path_refuses_give_the_interpreters_results() {
    let (_, b, jit) = both_with(
        shared_cfg(),
        long_mode,
        |_| {},
        |a| {
            data_loop(a, 200, |a| {
                a.lock().add(dword_ptr(rsi + 0xffe), ecx)?;
                a.lock().inc(qword_ptr(rsi + 0x13))?;
                a.mov(r8, rcx)?;
                a.lock().xadd(word_ptr(rsi + 0x21), r8w)?;
                a.mov(eax, dword_ptr(rsi + 0x40))?;
                a.lock().cmpxchg(dword_ptr(rsi + 0x40), ecx)?;
                a.bt(ecx, 0)?;
                a.lock().adc(dword_ptr(rsi + 0x45), ecx)?;
                a.lock().adc(qword_ptr(rsi + 0xffc), rcx)?;
                a.lock().sbb(word_ptr(rsi + 0x49), cx)?;
                a.lock().sbb(dword_ptr(rsi + 0xfff), ecx)?;
                a.lock().neg(qword_ptr(rsi + 0x51))?;
                a.lock().neg(word_ptr(rsi + 0xfff))?;
                a.mov(eax, dword_ptr(rsi + 0x5c))?;
                a.mov(edx, dword_ptr(rsi + 0x60))?;
                a.lock().cmpxchg8b(qword_ptr(rsi + 0x5c))?;
                a.lock().cmpxchg8b(qword_ptr(rsi + 0xffc))?;
                a.mov(r9, rcx)?;
                a.and(r9, 127)?;
                a.lock().bts(qword_ptr(rsi + 0x64), r9)?;
                // The first unit crosses the page, the others are
                // misaligned.
                a.lock().btc(word_ptr(rsi + 0xfff), r9w)?;
                a.lock().btr(dword_ptr(rsi + 0xffe), r9d)?;
                a.xadd(dword_ptr(rsi + 0xffd), r8d)?;
                a.bt(qword_ptr(rsi + 0xffc), r9)?;
                a.adc(r10, 0)
            })
        },
    );
    assert!(b.state.rip < stub(0) || b.state.rip > stub(31), "faulted: {:#x}", b.state.rip);
    assert!(jit.stats.native_insns > 0, "{:?}", jit.stats);
}

/// CMPXCHG16B of a misaligned operand raises #GP(0) from compiled code as
/// the interpreter does, with LOCK under `shared_memory` and without on one
/// thread (the inline path's alignment test sends it to the interpreter).
#[test]
fn a_misaligned_cmpxchg16b_in_compiled_code_raises_gp() {
    for shared in [false, true] {
        let jit_cfg = if shared { shared_cfg() } else { cfg() };
        let (_, b, _) = both_with(
            jit_cfg,
            long_mode,
            |_| {},
            |a| {
                a.mov(rsi, DATA + 0x100)?;
                on_pass_ten(a, |a| {
                    a.add(rsi, 8)?;
                    if shared {
                        a.lock().cmpxchg16b(xmmword_ptr(rsi))
                    } else {
                        a.cmpxchg16b(xmmword_ptr(rsi))
                    }
                })
            },
        );
        assert_eq!(b.state.rip, stub(13) + 1, "halted in the #GP handler");
    }
}

/// On one thread XADD (with and without LOCK), BT, BTS, BTR and BTC of a
/// bit string by a register (16, 32 and 64 bits, offsets either side, in
/// 64-bit and flat 32-bit code) and CMPXCHG8B/16B run compiled, with the
/// interpreter's results and flags, and nothing falls back.
#[test]
fn plain_xadd_bit_strings_and_wide_compare_exchanges_give_the_interpreters_results() {
    let prep = |c: &mut Cpu| {
        for i in 0..0x200u64 {
            c.mem().write_u64(DATA + 8 * i, i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).unwrap();
        }
    };
    let (_, b, jit) = both(long_mode, prep, |a| {
        let mut top = a.create_label();
        a.mov(rsi, DATA + 0x800)?;
        a.mov(ecx, 300)?;
        a.mov(rbx, 0x0123_4567_89ab_cdefu64)?;
        a.set_label(&mut top)?;
        // XADD of registers, the same register twice, high bytes, memory.
        a.xadd(rbx, r13)?;
        a.add(r13, rcx)?;
        a.xadd(r8d, r8d)?;
        a.xadd(ah, bl)?;
        a.xadd(dx, r9w)?;
        a.xadd(qword_ptr(rsi + 0x100), rbx)?;
        a.lock().xadd(byte_ptr(rsi + 0x108), r13b)?;
        a.xadd(word_ptr(rsi + 0x10a), r8w)?;
        a.pushfq()?;
        a.pop(r11)?;
        a.add(r12, r11)?;
        // A bit offset from -2400 to 2384 bits.
        a.mov(r9, rcx)?;
        a.imul_3(r9, r9, 16)?;
        a.sub(r9, 2400)?;
        a.bt(qword_ptr(rsi), r9)?;
        a.adc(r12, 0)?;
        a.bts(dword_ptr(rsi + 4), r9d)?;
        a.adc(r12, 0)?;
        a.btr(word_ptr(rsi + 2), r9w)?;
        a.adc(r12, 0)?;
        a.btc(qword_ptr(rsi + 8), r9)?;
        a.adc(r12, 0)?;
        a.lock().btc(dword_ptr(rsi + rcx * 4), r9d)?;
        a.adc(r12, 0)?;
        a.bt(word_ptr(rsi + 6), cx)?;
        a.adc(r12, 0)?;
        // CMPXCHG8B/16B: equal on every other pass.
        a.mov(r10, rcx)?;
        a.mov(rax, qword_ptr(rsi + 0x200))?;
        a.mov(rdx, qword_ptr(rsi + 0x208))?;
        a.mov(r11d, ecx)?;
        a.and(r11d, 1)?;
        a.add(rax, r11)?;
        a.lea(rbx, qword_ptr(rax + 3))?;
        a.mov(rcx, rdx)?;
        a.not(rcx)?;
        a.cmpxchg16b(xmmword_ptr(rsi + 0x200))?;
        a.adc(r12, rax)?;
        a.lock().cmpxchg16b(xmmword_ptr(rsi + 0x210))?;
        a.adc(r12, rdx)?;
        a.mov(eax, dword_ptr(rsi + 0x220))?;
        a.add(eax, r11d)?;
        a.mov(edx, dword_ptr(rsi + 0x224))?;
        a.cmpxchg8b(qword_ptr(rsi + 0x220))?;
        a.setz(r11b)?;
        a.add(r12, r11)?;
        a.lock().cmpxchg8b(qword_ptr(rsi + 0x228))?;
        a.add(r12, rax)?;
        a.mov(rcx, r10)?;
        a.mov(rbx, r12)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.hlt()
    });
    ran_compiled(&b, &jit, 95);
    // (CMPXCHG16B falls back where the host has no 128-bit CAS.)
    let limit = if host_cas128() { 0 } else { 2 * 300 };
    assert!(jit.stats.fallback_insns <= limit, "{:?}", jit.stats);

    let (_, b, jit) = both(prot_mode, prep, |a| {
        let mut top = a.create_label();
        a.mov(esi, (DATA + 0x800) as u32)?;
        a.mov(ecx, 300)?;
        a.set_label(&mut top)?;
        a.lea(eax, dword_ptr(ecx + ebx))?;
        a.xadd(dword_ptr(esi + 0x100), eax)?;
        a.xadd(ebx, eax)?;
        a.mov(edi, ecx)?;
        a.imul_3(edi, edi, 16)?;
        a.sub(edi, 2400)?;
        a.btc(dword_ptr(esi + 4), edi)?;
        a.adc(ebp, 0)?;
        a.lock().bts(word_ptr(esi), di)?;
        a.adc(ebp, 0)?;
        a.bt(dword_ptr(esi + ecx), edi)?;
        a.adc(ebp, 0)?;
        a.push(ecx)?;
        a.push(ebx)?;
        a.mov(eax, dword_ptr(esi + 0x200))?;
        a.mov(edx, ecx)?;
        a.and(edx, 1)?;
        a.add(eax, edx)?;
        a.mov(edx, dword_ptr(esi + 0x204))?;
        a.lea(ebx, dword_ptr(eax + 5))?;
        a.mov(ecx, edx)?;
        a.not(ecx)?;
        a.lock().cmpxchg8b(qword_ptr(esi + 0x200))?;
        a.adc(ebp, eax)?;
        a.pop(ebx)?;
        a.pop(ecx)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.hlt()
    });
    ran_compiled(&b, &jit, 95);
    assert_eq!(jit.stats.fallback_insns, 0, "{:?}", jit.stats);
}

/// A LOCK ADD into the running region's own code, translated inline under
/// `shared_memory`: the store takes the slow path (the TLB has no write
/// entry for a page with code), the code is invalidated and the next pass
/// runs the new instruction.
#[test]
fn an_inline_atomic_into_running_code_invalidates_it() {
    let (_, b, jit) = both_with(
        shared_cfg(),
        long_mode,
        |_| {},
        |a| {
            let mut patch = a.create_label();
            let mut skip = a.create_label();
            a.mov(ecx, 400)?;
            a.lea(rdi, ptr(patch))?;
            a.set_label(&mut patch)?;
            a.add(ebx, 1)?; // 83 c3 01: its immediate is at patch + 2
            a.cmp(ecx, 200)?;
            a.jne(skip)?;
            a.lock().add(byte_ptr(rdi + 2), 6)?;
            a.set_label(&mut skip)?;
            a.dec(ecx)?;
            a.jnz(patch)?;
            a.hlt()
        },
    );
    assert_eq!(b.state.gpr[3], 201 + 199 * 7);
    assert!(jit.stats.invalidated_regions >= 1, "{:?}", jit.stats);
}

/// Counts MMIO accesses; reads give 41.
#[derive(Default, Clone)]
struct Mmio(std::sync::Arc<std::sync::Mutex<(u32, u32, Vec<u8>)>>);

impl cpu::Platform for Mmio {
    fn io_read(&mut self, _port: u16, _size: u8) -> u32 {
        0
    }
    fn io_write(&mut self, _port: u16, _size: u8, _value: u32) {}
    fn mmio_read(&mut self, _addr: u64, data: &mut [u8]) {
        let mut g = self.0.lock().unwrap();
        g.0 += 1;
        data.fill(0);
        data[0] = 41;
    }
    fn mmio_write(&mut self, _addr: u64, data: &[u8]) {
        let mut g = self.0.lock().unwrap();
        g.1 += 1;
        g.2 = data.to_vec();
    }
}

/// A LOCK ADD on MMIO in a compiled loop under `shared_memory` goes
/// through the interpreter's locked handler: one read and one write reach
/// the device per pass, and the loop still runs compiled.
#[test]
fn a_lock_on_mmio_in_compiled_code_reaches_the_device_once_per_pass() {
    let mmio = Mmio::default();
    let mem = std::sync::Arc::new(mmu::GuestMemory::new(16 << 20).unwrap());
    let mut c = Cpu::new(mem, Box::new(mmio.clone()));
    prot_setup(&mut c);
    let code = assemble(&c, |a| {
        let mut top = a.create_label();
        a.mov(ebx, 0xfee0_0000u32)?;
        a.mov(ecx, 300)?;
        a.set_label(&mut top)?;
        a.lock().add(dword_ptr(ebx), 1)?;
        a.lock().xadd(dword_ptr(ebx), edx)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.hlt()
    });
    place(&mut c, &code);
    let mut jit = Jit::new(&mut c, shared_cfg()).unwrap();
    run_jit(&mut c, &mut jit, 1_000_000);
    assert_eq!(c.state.rip, CODE + code.len() as u64, "halted at the end");
    let g = mmio.0.lock().unwrap();
    assert_eq!((g.0, g.1), (600, 600));
    assert!(jit.stats.native_insns > 0, "{:?}", jit.stats);
}

/// The new inline forms on MMIO in a compiled loop under `shared_memory`
/// (LOCK BTS and BTR by a register, NEG, ADC, SBB, CMPXCHG8B; plain XADD
/// and BT by a register) go through the interpreter's handlers: the device
/// sees the accesses, and the last value written, that the interpreter
/// alone gives it.
#[test]
fn new_inline_forms_on_mmio_reach_the_device_as_the_interpreters_do() {
    let code = |c: &Cpu| {
        assemble(c, |a| {
            let mut top = a.create_label();
            a.mov(ebx, 0xfee0_0000u32)?;
            a.mov(ecx, 300)?;
            a.set_label(&mut top)?;
            a.mov(edx, ecx)?;
            a.and(edx, 63)?;
            a.lock().bts(dword_ptr(ebx), edx)?;
            a.lock().btr(word_ptr(ebx + 0x10), dx)?;
            a.lock().neg(dword_ptr(ebx))?;
            a.bt(ecx, 0)?;
            a.lock().adc(dword_ptr(ebx + 4), ecx)?;
            a.lock().sbb(byte_ptr(ebx + 8), cl)?;
            a.mov(eax, ecx)?;
            a.lock().cmpxchg8b(qword_ptr(ebx + 0x18))?;
            a.xadd(dword_ptr(ebx + 0x20), edx)?;
            a.bt(dword_ptr(ebx), ecx)?;
            a.adc(esi, 0)?;
            a.dec(ecx)?;
            a.jnz(top)?;
            a.hlt()
        })
    };
    let run = |jit_cfg: Option<Config>| {
        let mmio = Mmio::default();
        let mem = std::sync::Arc::new(mmu::GuestMemory::new(16 << 20).unwrap());
        let mut c = Cpu::new(mem, Box::new(mmio.clone()));
        prot_setup(&mut c);
        let bytes = code(&c);
        place(&mut c, &bytes);
        let native = match jit_cfg {
            Some(cfg) => {
                let mut jit = Jit::new(&mut c, cfg).unwrap();
                run_jit(&mut c, &mut jit, 1_000_000);
                jit.stats.native_insns
            }
            None => {
                run_interp(&mut c, 1_000_000);
                0
            }
        };
        assert_eq!(c.state.rip, CODE + bytes.len() as u64, "halted at the end");
        c.state.materialize_flags();
        let g = mmio.0.lock().unwrap().clone();
        ((g.0, g.1, g.2), c.state.gpr, c.state.rflags, native)
    };
    let (dev_a, gpr_a, fl_a, _) = run(None);
    let (dev_b, gpr_b, fl_b, native) = run(Some(shared_cfg()));
    assert_eq!(dev_a, dev_b, "device accesses (reads, writes, last data)");
    assert_eq!((gpr_a, fl_a), (gpr_b, fl_b));
    assert!(dev_a.0 >= 300 * 9, "{dev_a:?}");
    assert!(native > 0);
}

/// Stops the world for the threads' processors (as the machine's run loop
/// does): each runs slices between [`World::enter`] and [`World::leave`];
/// an exclusive request waits until every other processor is out of its
/// slice and holds new slices off until it is served.
#[derive(Default)]
struct World {
    m: std::sync::Mutex<(usize, usize, bool)>,
    cv: std::sync::Condvar,
}

impl World {
    fn enter(&self) {
        let mut g = self.m.lock().unwrap();
        while g.1 > 0 || g.2 {
            g = self.cv.wait(g).unwrap();
        }
        g.0 += 1;
    }

    fn leave(&self) {
        let mut g = self.m.lock().unwrap();
        g.0 -= 1;
        self.cv.notify_all();
    }

    fn exclusive(&self, f: &mut dyn FnMut()) {
        let mut g = self.m.lock().unwrap();
        g.0 -= 1;
        g.1 += 1;
        self.cv.notify_all();
        while g.2 || g.0 > 0 {
            g = self.cv.wait(g).unwrap();
        }
        g.2 = true;
        g.1 -= 1;
        drop(g);
        f();
        let mut g = self.m.lock().unwrap();
        g.2 = false;
        g.0 += 1;
        self.cv.notify_all();
    }
}

const THREADS: usize = 4;
const PASSES: u32 = 200_000;

/// Run `code` (at CODE in 64-bit mode, R15 the processor's index) with the
/// JIT under `shared_memory` on `n` processors, each on its own host
/// thread over one guest memory, until each halts. Returns the memory and
/// each JIT's statistics.
fn jit_on_threads(n: usize, code: impl Fn(&Cpu) -> Vec<u8>) -> (std::sync::Arc<mmu::GuestMemory>, Vec<JitStats>) {
    use std::sync::Arc;
    let mem = Arc::new(mmu::GuestMemory::new(16 << 20).unwrap());
    let mut c0 = Cpu::new(mem.clone(), Box::new(cpu::NoDevices));
    long_setup(&mut c0);
    let bytes = code(&c0);
    place(&mut c0, &bytes);
    let state = c0.state;
    drop(c0);
    let w = Arc::new(World::default());
    let shared = shared::Shared::new(&shared_cfg().settings).unwrap();
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let (mem, w, shared) = (mem.clone(), w.clone(), shared.clone());
            std::thread::spawn(move || {
                let mut c = Cpu::new(mem, Box::new(cpu::NoDevices));
                c.set_state(state);
                c.state.gpr[15] = i as u64;
                let hook = w.clone();
                c.set_exclusive(Some(Arc::new(move |f: &mut dyn FnMut()| hook.exclusive(f))));
                let mut jit = Jit::with_shared(&mut c, shared_cfg(), shared).unwrap();
                loop {
                    w.enter();
                    let r = jit.run(&mut c, 20_000);
                    w.leave();
                    match r {
                        StopReason::Budget => {}
                        StopReason::Halted => break,
                        other => panic!("processor {i} stopped: {other:?}"),
                    }
                }
                assert_eq!(c.stats.exceptions, 0);
                jit.stats
            })
        })
        .collect();
    let stats = threads.into_iter().map(|t| t.join().unwrap()).collect();
    (mem, stats)
}

/// Counters of 1 to 8 bytes updated by LOCK XADD, ADD, INC and SUB from
/// compiled code on four threads: every update counts, and the atomics ran
/// inline (almost nothing fell back).
#[test]
fn inline_atomics_count_exactly_across_threads() {
    let (mem, stats) = jit_on_threads(THREADS, |c| {
        assemble(c, |a| {
            let mut top = a.create_label();
            a.mov(rbx, DATA)?;
            a.mov(ecx, PASSES)?;
            a.set_label(&mut top)?;
            a.mov(eax, 1)?;
            a.lock().xadd(dword_ptr(rbx), eax)?;
            a.lock().add(qword_ptr(rbx + 0x40), 2)?;
            a.lock().inc(word_ptr(rbx + 0x80))?;
            a.lock().sub(dword_ptr(rbx + 0xc0), 3)?;
            a.lock().add(byte_ptr(rbx + 0x100), 1)?;
            a.dec(ecx)?;
            a.jnz(top)?;
            a.hlt()
        })
    });
    let total = THREADS as u64 * u64::from(PASSES);
    assert_eq!(u64::from(mem.read_u32(DATA).unwrap()), total);
    assert_eq!(mem.read_u64(DATA + 0x40).unwrap(), 2 * total);
    assert_eq!(u64::from(mem.read_u16(DATA + 0x80).unwrap()), total & 0xffff);
    assert_eq!(mem.read_u32(DATA + 0xc0).unwrap(), (3 * total as u32).wrapping_neg());
    assert_eq!(u64::from(mem.read_u8(DATA + 0x100).unwrap()), total & 0xff);
    for s in &stats {
        assert!(s.native_insns > 10 * s.fallback_insns.max(1), "{s:?}");
    }
}

/// A spinlock taken with LOCK CMPXCHG (or XCHG) and released with a plain
/// store protects a plain increment.
fn spinlock(c: &Cpu, xchg: bool) -> Vec<u8> {
    assemble(c, |a| {
        let mut spin = a.create_label();
        let mut wait = a.create_label();
        a.mov(rbx, DATA)?;
        a.mov(ecx, PASSES)?;
        a.mov(edx, 1)?;
        a.set_label(&mut spin)?;
        if xchg {
            a.mov(eax, 1)?;
            a.xchg(dword_ptr(rbx), eax)?;
            a.test(eax, eax)?;
        } else {
            a.xor(eax, eax)?;
            a.lock().cmpxchg(dword_ptr(rbx), edx)?;
        }
        a.jnz(wait)?;
        a.mov(esi, dword_ptr(rbx + 64))?;
        a.add(esi, 1)?;
        a.mov(dword_ptr(rbx + 64), esi)?;
        a.mov(dword_ptr(rbx), 0)?;
        a.dec(ecx)?;
        a.jnz(spin)?;
        a.hlt()?;
        a.set_label(&mut wait)?;
        a.pause()?;
        a.cmp(dword_ptr(rbx), 0)?;
        a.jne(wait)?;
        a.jmp(spin)
    })
}

#[test]
fn an_inline_lock_cmpxchg_spinlock_protects_a_plain_increment() {
    let (mem, stats) = jit_on_threads(THREADS, |c| spinlock(c, false));
    assert_eq!(mem.read_u32(DATA + 64).unwrap(), THREADS as u32 * PASSES);
    assert_eq!(mem.read_u32(DATA).unwrap(), 0);
    for s in &stats {
        assert!(s.native_insns > 10 * s.fallback_insns.max(1), "{s:?}");
    }
}

#[test]
fn an_inline_xchg_spinlock_protects_a_plain_increment() {
    let (mem, stats) = jit_on_threads(THREADS, |c| spinlock(c, true));
    assert_eq!(mem.read_u32(DATA + 64).unwrap(), THREADS as u32 * PASSES);
    for s in &stats {
        assert!(s.native_insns > 10 * s.fallback_insns.max(1), "{s:?}");
    }
}

/// A LOCK ADD across a page boundary in compiled code on four threads
/// goes through the interpreter's locked handler (the others stopped), and
/// no update is lost, to it or to the aligned counter updated inline
/// alongside.
#[test]
fn a_page_crossing_lock_in_compiled_code_counts_exactly_across_threads() {
    const M: u32 = 3_000;
    let (mem, _) = jit_on_threads(THREADS, |c| {
        assemble(c, |a| {
            let mut top = a.create_label();
            a.mov(rbx, DATA + 0xffe)?;
            a.mov(ecx, M)?;
            a.set_label(&mut top)?;
            a.lock().add(dword_ptr(rbx), 3)?;
            a.lock().inc(qword_ptr(rbx + 0x12))?;
            a.dec(ecx)?;
            a.jnz(top)?;
            a.hlt()
        })
    });
    assert_eq!(mem.read_u32(DATA + 0xffe).unwrap(), 3 * THREADS as u32 * M);
    assert_eq!(mem.read_u64(DATA + 0x1010).unwrap(), u64::from(THREADS as u32 * M));
}

/// A spinlock taken with LOCK BTS of a bit string by a register and
/// released with LOCK BTR protects a plain increment on four threads, and
/// counters updated by LOCK ADC and SBB (with CF set) and CMPXCHG8B and
/// CMPXCHG16B loops count exactly; everything runs inline.
#[test]
fn bit_string_locks_and_wide_compare_exchange_counters_count_exactly_across_threads() {
    const N: u32 = 50_000;
    let (mem, stats) = jit_on_threads(THREADS, |c| {
        assemble(c, |a| {
            let mut spin = a.create_label();
            let mut wait = a.create_label();
            let mut retry8 = a.create_label();
            let mut retry16 = a.create_label();
            a.mov(rbx, DATA)?;
            a.mov(ecx, N)?;
            // Bit 100 of the string at RBX: bit 36 of the qword at RBX + 8.
            a.mov(r8d, 100)?;
            a.set_label(&mut spin)?;
            a.lock().bts(qword_ptr(rbx), r8)?;
            a.jc(wait)?;
            a.mov(esi, dword_ptr(rbx + 64))?;
            a.add(esi, 1)?;
            a.mov(dword_ptr(rbx + 64), esi)?;
            a.lock().btr(qword_ptr(rbx), r8)?;
            a.stc()?;
            a.lock().adc(qword_ptr(rbx + 0x80), 0)?;
            a.stc()?;
            a.lock().sbb(dword_ptr(rbx + 0x88), 1)?;
            // CMPXCHG8B: the low half counts by 1, the high half by 3.
            a.mov(r9, rcx)?;
            a.mov(eax, dword_ptr(rbx + 0xc0))?;
            a.mov(edx, dword_ptr(rbx + 0xc4))?;
            a.set_label(&mut retry8)?;
            a.lea(ebx, dword_ptr(eax + 1))?;
            a.lea(ecx, dword_ptr(edx + 3))?;
            a.mov(r10, DATA + 0xc0)?;
            a.lock().cmpxchg8b(qword_ptr(r10))?;
            a.mov(rbx, DATA)?;
            a.jnz(retry8)?;
            // CMPXCHG16B: the low half by 1, the high half by 5.
            a.mov(rax, qword_ptr(rbx + 0x100))?;
            a.mov(rdx, qword_ptr(rbx + 0x108))?;
            a.set_label(&mut retry16)?;
            a.lea(rbx, qword_ptr(rax + 1))?;
            a.lea(rcx, qword_ptr(rdx + 5))?;
            a.mov(r10, DATA + 0x100)?;
            a.lock().cmpxchg16b(xmmword_ptr(r10))?;
            a.mov(rbx, DATA)?;
            a.jnz(retry16)?;
            a.mov(rcx, r9)?;
            a.dec(ecx)?;
            a.jnz(spin)?;
            a.hlt()?;
            a.set_label(&mut wait)?;
            a.pause()?;
            a.bt(qword_ptr(rbx), r8)?;
            a.jc(wait)?;
            a.jmp(spin)
        })
    });
    let total = THREADS as u64 * u64::from(N);
    assert_eq!(u64::from(mem.read_u32(DATA + 64).unwrap()), total);
    assert_eq!(mem.read_u64(DATA).unwrap() | mem.read_u64(DATA + 8).unwrap(), 0, "the lock is free");
    assert_eq!(mem.read_u64(DATA + 0x80).unwrap(), total);
    assert_eq!(mem.read_u32(DATA + 0x88).unwrap(), (2 * total as u32).wrapping_neg());
    assert_eq!(mem.read_u64(DATA + 0xc0).unwrap(), total | (3 * total) << 32);
    assert_eq!((mem.read_u64(DATA + 0x100).unwrap(), mem.read_u64(DATA + 0x108).unwrap()), (total, 5 * total));
    for s in &stats {
        assert!(s.native_insns > 10 * s.fallback_insns.max(1), "{s:?}");
    }
}

/// Two processors on one guest memory, each with its own JIT over one
/// [`shared::Shared`], run `code` at CODE (64-bit, CPL 0) one after the
/// other, the second after `between` changed memory. Returns both CPUs'
/// RAX and the second JIT's statistics.
fn two_vcpus(code: &[u8], between: impl FnOnce(&mmu::GuestMemory)) -> (u64, u64, JitStats) {
    use std::sync::Arc;
    let mem = Arc::new(mmu::GuestMemory::new(16 << 20).unwrap());
    let shared = shared::Shared::new(&cfg().settings).unwrap();
    let mut a = Cpu::new(mem.clone(), Box::new(cpu::NoDevices));
    long_setup(&mut a);
    place(&mut a, code);
    let state = a.state;
    let mut ja = Jit::with_shared(&mut a, cfg(), shared.clone()).unwrap();
    run_jit(&mut a, &mut ja, 1_000_000);
    assert!(ja.stats.regions_compiled > 0 && ja.stats.shared_compiles == 0, "{:?}", ja.stats);
    between(&mem);
    let mut b = Cpu::new(mem, Box::new(cpu::NoDevices));
    b.set_state(state);
    let mut jb = Jit::with_shared(&mut b, cfg(), shared).unwrap();
    run_jit(&mut b, &mut jb, 1_000_000);
    (a.state.gpr[0], b.state.gpr[0], jb.stats)
}

/// `passes` passes of ADD EAX, `k` (ECX counting down), then HLT.
fn adding_loop(c: &Cpu, k: i32) -> Vec<u8> {
    assemble(c, |a| {
        let mut top = a.create_label();
        a.xor(eax, eax)?;
        a.mov(ecx, 50)?;
        a.set_label(&mut top)?;
        a.add(eax, k)?;
        a.nop()?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.hlt()
    })
}

/// A second vCPU that reaches the code the first compiled runs the first
/// one's compile (copied into its own code cache), not a compile of its
/// own, with the same result.
#[test]
fn one_vcpus_compile_serves_another() {
    let mut c = Cpu::new(std::sync::Arc::new(mmu::GuestMemory::new(16 << 20).unwrap()), Box::new(cpu::NoDevices));
    long_setup(&mut c);
    let code = adding_loop(&c, 3);
    let (a, b, stats) = two_vcpus(&code, |_| {});
    assert_eq!((a, b), (150, 150));
    assert!(stats.regions_compiled > 0, "{stats:?}");
    assert_eq!(stats.shared_compiles, stats.regions_compiled, "{stats:?}");
    assert!(stats.native_insns > 0, "{stats:?}");
}

/// Code changed between the two vCPUs at the same addresses (the same
/// length, another immediate): the second compiles its own region and
/// runs the new code.
#[test]
fn another_vcpus_compile_is_not_taken_for_changed_code() {
    let mut c = Cpu::new(std::sync::Arc::new(mmu::GuestMemory::new(16 << 20).unwrap()), Box::new(cpu::NoDevices));
    long_setup(&mut c);
    let (old, new) = (adding_loop(&c, 3), adding_loop(&c, 5));
    assert_eq!(old.len(), new.len());
    let lin = c.state.rip;
    let (a, b, stats) = two_vcpus(&old, |m| m.write(lin, &new).unwrap());
    assert_eq!((a, b), (150, 250));
    assert!(stats.regions_compiled > 0, "{stats:?}");
    assert_eq!(stats.shared_compiles, 0, "{stats:?}");
}

/// The same loop at two pages of CODE: the first copy ends in a jump to
/// the second, the second in HLT.
fn loop_at_two_pages() -> Vec<u8> {
    let body = |a: &mut CodeAssembler| -> Result<(), IcedError> {
        let mut top = a.create_label();
        a.mov(rsi, DATA)?;
        a.mov(ecx, 3000u32)?;
        a.set_label(&mut top)?;
        a.add(eax, dword_ptr(rsi))?;
        a.add(dword_ptr(rsi + 8), eax)?;
        a.lea(rdx, ptr(top))?;
        a.xor(eax, edx)?;
        a.dec(ecx)?;
        a.jnz(top)
    };
    let mut first = CodeAssembler::new(64).unwrap();
    body(&mut first).unwrap();
    first.jmp(CODE + 0x1000).unwrap();
    let mut bytes = first.assemble(CODE).unwrap();
    bytes.resize(0x1000, 0xcc);
    let mut second = CodeAssembler::new(64).unwrap();
    body(&mut second).unwrap();
    second.hlt().unwrap();
    bytes.extend(second.assemble(CODE + 0x1000).unwrap());
    bytes
}

#[test]
fn the_same_code_at_another_page_runs_compiled_after_the_probe() {
    let code = loop_at_two_pages();
    let probing = Config { threshold: 1000, probe: 32, ..cfg() };
    let (_, b, jit) = both_with(probing.clone(), long_mode, |_| {}, |a| a.db(&code));
    // The second copy's loop took the first's region after 32 runs.
    assert!(jit.stats.early_regions >= 1, "{:?}", jit.stats);
    assert!(jit.shared.content_hits() >= 1);
    // In the interpreter: 1,000 runs of the first copy's loop, 32 of the
    // second's, and a few blocks around them.
    let interpreted = jit.instructions(&b) - jit.stats.native_insns;
    assert!(interpreted < 1100 * 6, "{interpreted} interpreted, {:?}", jit.stats);
    // Without the probe, the second copy counts to 1,000 runs as well.
    let (_, b, jit) = both_with(Config { probe: 0, ..probing.clone() }, long_mode, |_| {}, |a| a.db(&code));
    assert_eq!(jit.stats.early_regions, 0);
    assert!(jit.instructions(&b) - jit.stats.native_insns > 1900 * 6, "{:?}", jit.stats);
    // Nor without the content table.
    let (_, _, jit) = both_with(Config { content_cache: false, ..probing }, long_mode, |_| {}, |a| a.db(&code));
    assert_eq!(jit.stats.early_regions, 0);
}
