//! The JIT tier: Cranelift translation of hot guest blocks, the translated-block
//! cache keyed by guest physical address and mode bits, and the dispatcher that
//! chains blocks. It stands on the interpreter in `cpu`, whose single-instruction
//! handlers cover what it does not translate.
