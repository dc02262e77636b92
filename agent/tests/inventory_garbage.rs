//! The `nvidia-smi` parsers on hostile and mangled input: they must never panic, and what they return must
//! still be consistent.

use agent::inventory::{parse_compute_apps, parse_query_gpu, ComputeAppsOutput, QueryGpuOutput};

const ROW: &str =
    "0, GPU-0824f7c9-1cc0-41ef-7ba4-d4e33500582c, NVIDIA H200, 00000000:00:06.0, 143771, 0, \
                   143156, 0, 0, 42, 131.73, 700.00, 9.0, Disabled, 580.159.04";
const APP: &str = "418, GPU-11f4dd46-e32b-6944-7071-92596d083618, 1386";

/// xorshift64*: a fixed seed gives the same inputs on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const PIECES: &[&str] = &[
    ",",
    ", ",
    "[N/A]",
    "[Not Supported]",
    "[GPU is lost]",
    "[",
    "]",
    "\n",
    "\r\n",
    "-",
    ".",
    "%",
    " W",
    "18446744073709551616",
    "4294967296",
    "-1",
    "NaN",
    "inf",
    "1e309",
    "Enabled",
    "\u{feff}",
    "\u{0}",
    "é",
    "😀",
    "GPU-",
    "Unable to determine the device handle for GPU 0000:00:06.0: Unknown Error",
];

fn mutate(rng: &mut Rng, base: &str) -> String {
    let mut s: Vec<char> = base.chars().collect();
    for _ in 0..=rng.below(6) {
        let at = rng.below(s.len() + 1);
        match rng.below(5) {
            0 if !s.is_empty() => {
                let end = (at + rng.below(12)).min(s.len());
                s.drain(at.min(end)..end);
            }
            1 => {
                let piece = PIECES[rng.below(PIECES.len())];
                s.splice(at..at, piece.chars());
            }
            2 => {
                let c = char::from_u32((rng.next() % 0x800) as u32).unwrap_or('?');
                s.insert(at, c);
            }
            3 => s.truncate(at),
            _ => {
                let copy: Vec<char> = s.clone();
                s.extend(['\n']);
                s.extend(copy);
            }
        }
    }
    s.into_iter().collect()
}

fn check_gpus(input: &str, out: &QueryGpuOutput) {
    let mut last = None;
    for gpu in &out.gpus {
        if gpu.healthy {
            assert!(
                !gpu.uuid.is_empty() && gpu.memory_total_mib > 0,
                "{input:?} → {gpu:?}"
            );
        }
        assert!(
            gpu.utilization_gpu_percent.is_none_or(|p| p <= 100),
            "{input:?}"
        );
        assert!(
            gpu.utilization_memory_percent.is_none_or(|p| p <= 100),
            "{input:?}"
        );
        assert!(
            gpu.power_draw_w.is_none_or(|w| w.is_finite() && w >= 0.0),
            "{input:?}"
        );
        assert!(
            last.is_none_or(|l| l <= gpu.index),
            "sorted by index: {input:?}"
        );
        last = Some(gpu.index);
    }
    let lines = input.lines().filter(|l| !l.trim().is_empty()).count();
    assert!(out.gpus.len() <= lines, "{input:?}");
}

fn check_apps(input: &str, out: &ComputeAppsOutput) {
    let lines = input.lines().filter(|l| !l.trim().is_empty()).count();
    assert!(out.processes.len() <= lines, "{input:?}");
    assert!(
        out.processes.iter().all(|p| !p.gpu_uuid.is_empty()),
        "{input:?}"
    );
}

#[test]
fn fixed_hostile_inputs() {
    let long_line = "9".repeat(1 << 20);
    let many_commas = ",".repeat(100_000);
    let many_lines = format!("{ROW}\n").repeat(2_000);
    for input in [
        "",
        "\n\n\n",
        "\0",
        ",,,,,,,,,,,,,,",
        ", , , , , , , , , , , , , , ",
        "[N/A],[N/A],[N/A],[N/A],[N/A],[N/A],[N/A],[N/A],[N/A],[N/A],[N/A],[N/A],[N/A],[N/A],[N/A]",
        "No devices were found",
        "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.",
        long_line.as_str(),
        many_commas.as_str(),
        many_lines.as_str(),
    ] {
        let gpus = parse_query_gpu(input);
        check_gpus(input, &gpus);
        check_apps(input, &parse_compute_apps(input));
    }
    assert_eq!(parse_query_gpu(&many_lines).gpus.len(), 2_000);
    assert!(parse_query_gpu("No devices were found").gpus.is_empty());
}

#[test]
fn mangled_rows_never_panic() {
    let mut rng = Rng(0x05ee_d0fa_11ce);
    let mut parsed_some = 0;
    for _ in 0..20_000 {
        let input = mutate(&mut rng, ROW);
        let out = parse_query_gpu(&input);
        check_gpus(&input, &out);
        parsed_some += usize::from(!out.gpus.is_empty());
        let input = mutate(&mut rng, APP);
        check_apps(&input, &parse_compute_apps(&input));
    }
    // The mutations leave many rows readable, so the checks above saw real GPUs, not only rejections.
    assert!(parsed_some > 1_000, "{parsed_some}");
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(42);
    for _ in 0..5_000 {
        let len = rng.below(400);
        let bytes: Vec<u8> = (0..len).map(|_| (rng.next() >> 56) as u8).collect();
        let input = String::from_utf8_lossy(&bytes);
        check_gpus(&input, &parse_query_gpu(&input));
        check_apps(&input, &parse_compute_apps(&input));
    }
}
