//! How much thread stack lapin's parser needs for the deepest header a
//! frame can hold, and whether this process has it.
//!
//! amq-protocol parses field tables and arrays recursively, on lapin's own
//! I/O thread, whose stack is the process default (`RUST_MIN_STACK`, else
//! 2 MiB): a header nested ~12,000 deep overflows it and aborts the process,
//! and the broker hands the same message to the next consumer. Neither idem
//! nor lapin can bound the nesting before the parse: RabbitMQ sends a content
//! header whole, however small the frame size the consumer negotiated. What
//! bounds it is the frame size the broker accepts from a *publisher*, which it
//! offers every client in `connection.tune`: a header of `frame_max` bytes
//! nests at most `frame_max / 5` deep (an array inside an array costs 5 bytes).
//!
//! Measured (amq-protocol 10.6.3 `parse_frame`, x86-64, this repository's
//! profiles): 26,000 nested arrays in a 128 KiB frame parse in 40 MiB of stack
//! in release (about 1.6 KiB a level) and need between 128 and 256 MiB
//! unoptimised. [`PER_LEVEL`] allows 2.5 times that.

/// Stack allowed per nesting level; unoptimised builds use far more.
pub const PER_LEVEL: usize = if cfg!(debug_assertions) {
    16 * 1024
} else {
    4 * 1024
};
/// Bytes per nesting level in the cheapest encoding (`A` + a u32 length).
const BYTES_PER_LEVEL: usize = 5;
/// Stack for everything but the recursion.
const BASE: usize = 4 * 1024 * 1024;
/// RabbitMQ's default `frame_max`, which idem's default stack covers twice.
pub const RABBITMQ_FRAME_MAX: u32 = 131_072;
/// The stack idem's binary gives every thread (it sets `RUST_MIN_STACK` and
/// re-executes itself when the variable is unset): twice what RabbitMQ's
/// default frame size needs. Reserved address space; only what a parse
/// touches becomes resident.
pub const DEFAULT: usize = 2 * needed(RABBITMQ_FRAME_MAX);
/// The variable Rust's standard library reads for a new thread's stack.
pub const VAR: &str = "RUST_MIN_STACK";

/// Stack a thread needs to parse any content header of up to `frame_max` bytes.
pub const fn needed(frame_max: u32) -> usize {
    (frame_max as usize / BYTES_PER_LEVEL) * PER_LEVEL + BASE
}

/// The default stack of threads this process spawns, as the standard
/// library will read it (2 MiB when `RUST_MIN_STACK` is unset or unreadable).
pub fn current() -> usize {
    std::env::var(VAR)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(2 * 1024 * 1024)
}

/// Refuse to consume from a broker whose frame size lets a publisher nest a
/// header deeper than this process's threads can parse: a replica would
/// abort on the first such message instead of quarantining it.
pub fn check(broker_frame_max: u32, stack: usize) -> Result<(), String> {
    // 0 means the broker sets no limit: no stack is enough.
    let frame = if broker_frame_max == 0 {
        u32::MAX
    } else {
        broker_frame_max
    };
    let need = needed(frame);
    if stack >= need {
        return Ok(());
    }
    Err(format!(
        "RabbitMQ accepts frames of up to {} from publishers; a header nested as deep as such a frame allows \
         needs {} MiB of thread stack to parse, and this process's threads have {} MiB ({VAR}). \
         Lower `frame_max` in rabbitmq.conf (its default, {RABBITMQ_FRAME_MAX}, is covered) or start idem with \
         {VAR}={need}",
        if broker_frame_max == 0 {
            "any size".to_owned()
        } else {
            format!("{broker_frame_max} bytes")
        },
        need.div_ceil(1024 * 1024),
        stack / (1024 * 1024),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_covers_rabbitmqs_default_frame_size_and_not_an_unbounded_one() {
        assert!(check(RABBITMQ_FRAME_MAX, DEFAULT).is_ok());
        assert!(check(2 * RABBITMQ_FRAME_MAX, DEFAULT).is_ok(), "twice over");
        let err = check(4 * RABBITMQ_FRAME_MAX, DEFAULT).expect_err("too deep");
        assert!(err.contains("524288 bytes") && err.contains(VAR), "{err}");
        let err = check(0, DEFAULT).expect_err("no limit");
        assert!(err.contains("any size"), "{err}");
        assert!(
            check(RABBITMQ_FRAME_MAX, 2 * 1024 * 1024).is_err(),
            "std's default"
        );
    }

    /// The stack cargo gives the processes it runs (`.cargo/config.toml`)
    /// covers this build's default, so in-process replicas pass [`check`].
    #[test]
    fn stack_for_tests_covers_the_default() {
        let config = include_str!("../../../.cargo/config.toml");
        let value: usize = config
            .lines()
            .find_map(|l| l.strip_prefix("RUST_MIN_STACK = "))
            .and_then(|v| v.trim().trim_matches('"').parse().ok())
            .expect("RUST_MIN_STACK in .cargo/config.toml");
        assert!(value >= DEFAULT, "{value} < {DEFAULT}");
        assert_eq!(current(), value, "cargo passed it to this test");
    }
}
