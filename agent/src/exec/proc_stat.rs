//! `/proc/<pid>/stat`: the few fields that identify a job's process (start time, parent, process group) and say
//! whether it is still alive.
//!
//! Reads only; never signals or waits for anything.

/// The fields of `/proc/<pid>/stat` that the launcher needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcStat {
    /// Field 3: `R`, `S`, `D`, `Z` (zombie), `X` (dead), …
    pub(crate) state: char,
    /// Field 4: the parent's pid.
    pub(crate) ppid: i32,
    /// Field 5.
    pub(crate) pgrp: i32,
    /// Field 22: clock ticks after boot.
    pub(crate) start_time: u64,
}

impl ProcStat {
    /// The process has ended (only its zombie, if anything, is left).
    pub(crate) fn has_exited(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses the text of `/proc/<pid>/stat`. The command name (field 2) is in parentheses and may itself
/// contain spaces and parentheses, so the fields are counted from the last `)`.
pub(crate) fn parse_stat(text: &str) -> Option<ProcStat> {
    let close = text.rfind(')')?;
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // `rest[0]` is field 3.
    let field = |n: usize| rest.get(n - 3).copied();
    let state = field(3)?.chars().next()?;
    let ppid = field(4)?.parse().ok()?;
    let pgrp = field(5)?.parse().ok()?;
    let start_time = field(22)?.parse().ok()?;
    Some(ProcStat {
        state,
        ppid,
        pgrp,
        start_time,
    })
}

/// The current stat of `pid`, or `None` when no such process exists (or it cannot be read).
pub(crate) fn read_stat(pid: i32) -> Option<ProcStat> {
    if pid <= 0 {
        return None;
    }
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_plain_line() {
        let line = "4242 (sleep) S 4240 4242 4242 0 -1 4194560 100 0 0 0 1 2 3 4 20 0 1 0 987654 \
                    8192000 200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let stat = parse_stat(line).expect("a well-formed line parses");
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.ppid, 4240);
        assert_eq!(stat.pgrp, 4242);
        assert_eq!(stat.start_time, 987654);
        assert!(!stat.has_exited());
    }

    #[test]
    fn command_names_with_spaces_and_parentheses_do_not_shift_fields() {
        let line = "77 (a) b (c)) Z 1 70 70 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5555 0 0";
        let stat = parse_stat(line).expect("parses");
        assert_eq!(stat.state, 'Z');
        assert_eq!(stat.pgrp, 70);
        assert_eq!(stat.start_time, 5555);
        assert!(stat.has_exited());
    }

    #[test]
    fn truncated_or_garbled_lines_are_refused() {
        assert_eq!(parse_stat(""), None);
        assert_eq!(parse_stat("12 (x) S 1 2"), None);
        assert_eq!(
            parse_stat("12 x S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20"),
            None
        );
        let bad_start = "12 (x) S 1 12 12 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 notanumber 0";
        assert_eq!(parse_stat(bad_start), None);
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id() as i32;
        let stat = read_stat(me).expect("our own stat is readable");
        assert!(stat.start_time > 0);
        assert_eq!(read_stat(0), None);
        assert_eq!(read_stat(-5), None);
    }
}
