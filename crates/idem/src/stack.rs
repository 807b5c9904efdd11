//! The thread stack the process runs with. lapin parses a header's nested
//! tables recursively on a thread of its own, with the process's default
//! stack; `RUST_MIN_STACK` is the only way to size it, and the standard library
//! reads it once, so it must be in the environment before the first thread
//! starts. Setting it from inside is `unsafe` (and forbidden here), so when it
//! is unset the binary executes itself again with it set: same pid, same
//! arguments, nothing else changed (`idem_inbox::stack` says how much and why).

use std::os::unix::process::CommandExt;

use idem_inbox::stack::{DEFAULT, VAR};

/// Set when idem re-executed itself, so a second start never loops.
const MARK: &str = "IDEM_STACK_REEXEC";

/// Re-execute with `RUST_MIN_STACK` set, unless it is set already (an
/// operator's value stands; a replica checks it against the broker's frame
/// size at start). Returns only if re-executing was not needed or failed.
pub fn ensure() {
    if std::env::var_os(VAR).is_some() || std::env::var_os(MARK).is_some() {
        return;
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return warn(&e),
    };
    let mut args = std::env::args_os();
    let mut command = std::process::Command::new(exe);
    if let Some(arg0) = args.next() {
        command.arg0(arg0);
    }
    let error = command
        .args(args)
        .env(VAR, DEFAULT.to_string())
        .env(MARK, "1")
        .exec();
    warn(&error);
}

fn warn(error: &std::io::Error) {
    eprintln!(
        "warning: cannot re-execute idem with {VAR}={DEFAULT} ({error}); threads keep the default stack, \
         and a replica refuses to start unless {VAR} covers the broker's frame size"
    );
}
