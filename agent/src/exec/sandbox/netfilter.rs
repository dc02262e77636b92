//! The egress filter of a job in `egress` network mode: a small eBPF program attached to the job's cgroup
//! (cgroup v2) at the `connect` and UDP `sendmsg` hooks, refusing destinations on a deny-list — the
//! coordinators, Meridian's own listeners on this node and the cloud metadata addresses.
//!
//! The program is generated here from [`DenyRule`]s (pure, unit-tested instruction by instruction) and
//! loaded with the `bpf(2)` system call; no compiler, loader library or kernel headers are needed. The filter
//! only ever refuses (`EPERM` to the caller); it never rewrites an address. It must never be attached to a
//! cgroup that is not a job's own.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// One refused destination: every address of `network/prefix` on `port` (any port when `None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DenyRule {
    pub network: IpAddr,
    /// Prefix length in bits (0–32 for IPv4, 0–128 for IPv6).
    pub prefix: u8,
    pub port: Option<u16>,
}

impl DenyRule {
    /// Every port of one address.
    pub fn host(addr: IpAddr) -> DenyRule {
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        DenyRule {
            network: addr,
            prefix,
            port: None,
        }
    }

    /// One port of one address.
    pub fn host_port(addr: IpAddr, port: u16) -> DenyRule {
        DenyRule {
            port: Some(port),
            ..DenyRule::host(addr)
        }
    }

    /// Parses `ADDR`, `ADDR/PREFIX`, `ADDR:PORT` or `[V6]:PORT` (an operator's `[sandbox] deny` entry).
    pub fn parse(text: &str) -> Result<DenyRule, String> {
        let t = text.trim();
        let bad = || format!("{t:?} is not ADDR, ADDR/PREFIX or ADDR:PORT");
        if let Ok(sock) = t.parse::<std::net::SocketAddr>() {
            return Ok(DenyRule::host_port(sock.ip(), sock.port()));
        }
        let (addr, prefix) = match t.split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| bad())?)),
            None => (t, None),
        };
        let network: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(format!("{t:?}: prefix longer than {max} bits"));
        }
        Ok(DenyRule {
            network,
            prefix,
            port: None,
        })
    }

    /// The rule as it applies to IPv6 sockets: IPv4 rules also match their IPv4-mapped form
    /// (`::ffff:a.b.c.d`), which an IPv6 socket may use to reach an IPv4 destination.
    fn as_v6(&self) -> (Ipv6Addr, u8) {
        match self.network {
            IpAddr::V4(v4) => (v4.to_ipv6_mapped(), 96 + self.prefix),
            IpAddr::V6(v6) => (v6, self.prefix),
        }
    }
}

/// The destinations every job in `egress` mode is refused, besides those derived from the node's
/// configuration: the link-local range that holds the cloud metadata services (169.254.169.254 and
/// friends) and AWS's IPv6 metadata address.
pub fn metadata_rules() -> Vec<DenyRule> {
    vec![
        DenyRule {
            network: IpAddr::V4(Ipv4Addr::new(169, 254, 0, 0)),
            prefix: 16,
            port: None,
        },
        DenyRule::host(IpAddr::V6(Ipv6Addr::new(
            0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254,
        ))),
    ]
}

/// The deny-list derived from the node's configuration: every port of a coordinator on another host (its
/// mesh and admin API alike), and on this host — loopback, the unspecified address and each of the node's
/// own addresses — the coordinators' ports and Meridian's own listener `ports`. Other loopback ports stay
/// open: a job's processes may talk to each other there.
pub fn deny_rules(
    coordinators: &[std::net::SocketAddr],
    ports: &[u16],
    node: &[IpAddr],
) -> Vec<DenyRule> {
    let local = |ip: &IpAddr| ip.is_loopback() || ip.is_unspecified() || node.contains(ip);
    let mut local_ports: Vec<u16> = ports.to_vec();
    let mut rules = Vec::new();
    for addr in coordinators {
        if local(&addr.ip()) {
            local_ports.push(addr.port());
        } else {
            rules.push(DenyRule::host(addr.ip()));
        }
    }
    local_ports.sort_unstable();
    local_ports.dedup();
    let mut local_nets = vec![
        DenyRule {
            network: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)),
            prefix: 8,
            port: None,
        },
        DenyRule::host(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        DenyRule::host(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        DenyRule::host(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
    ];
    local_nets.extend(
        node.iter()
            .copied()
            .filter(|ip| !ip.is_loopback())
            .map(DenyRule::host),
    );
    for port in local_ports {
        rules.extend(local_nets.iter().map(|net| DenyRule {
            port: Some(port),
            ..*net
        }));
    }
    rules.sort_by_key(|r| (r.network, r.prefix, r.port));
    rules.dedup();
    rules
}

/// The node's own interface addresses.
pub fn local_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list we free below; each entry's address, when not
    // null, points at a sockaddr of the family it names.
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            return out;
        }
        let mut entry = list;
        while !entry.is_null() {
            let addr = (*entry).ifa_addr;
            if !addr.is_null() {
                match i32::from((*addr).sa_family) {
                    libc::AF_INET => {
                        let v4 = &*(addr as *const libc::sockaddr_in);
                        out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr))));
                    }
                    libc::AF_INET6 => {
                        let v6 = &*(addr as *const libc::sockaddr_in6);
                        out.push(IpAddr::V6(Ipv6Addr::from(v6.sin6_addr.s6_addr)));
                    }
                    _ => {}
                }
            }
            entry = (*entry).ifa_next;
        }
        libc::freeifaddrs(list);
    }
    out.sort();
    out.dedup();
    out
}

/// One eBPF instruction (`struct bpf_insn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub(crate) struct Insn {
    code: u8,
    /// dst in the low nibble, src in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

// Instruction classes and fields (linux/bpf_common.h, linux/bpf.h).
const BPF_LDX: u8 = 0x01;
const BPF_ALU: u8 = 0x04;
const BPF_JMP: u8 = 0x05;
const BPF_JMP32: u8 = 0x06;
const BPF_ALU64: u8 = 0x07;
const BPF_W: u8 = 0x00;
const BPF_MEM: u8 = 0x60;
const BPF_K: u8 = 0x00;
const BPF_X: u8 = 0x08;
const BPF_AND: u8 = 0x50;
const BPF_MOV: u8 = 0xb0;
const BPF_JNE: u8 = 0x50;
const BPF_EXIT: u8 = 0x90;

/// Offsets in `struct bpf_sock_addr`.
const OFF_USER_IP4: i16 = 4;
const OFF_USER_IP6: i16 = 8;
const OFF_USER_PORT: i16 = 24;

const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R6: u8 = 6;

fn mov64_reg(dst: u8, src: u8) -> Insn {
    Insn {
        code: BPF_ALU64 | BPF_MOV | BPF_X,
        regs: dst | (src << 4),
        off: 0,
        imm: 0,
    }
}

fn mov64_imm(dst: u8, imm: i32) -> Insn {
    Insn {
        code: BPF_ALU64 | BPF_MOV | BPF_K,
        regs: dst,
        off: 0,
        imm,
    }
}

fn load_u32(dst: u8, src: u8, off: i16) -> Insn {
    Insn {
        code: BPF_LDX | BPF_W | BPF_MEM,
        regs: dst | (src << 4),
        off,
        imm: 0,
    }
}

fn and32(dst: u8, mask: u32) -> Insn {
    Insn {
        code: BPF_ALU | BPF_AND | BPF_K,
        regs: dst,
        off: 0,
        // The bit pattern is what counts: a 32-bit AND does not sign-extend.
        imm: mask as i32,
    }
}

/// `if (u32)dst != value goto +off` — a 32-bit compare, so values with the top bit set compare as written.
fn jne32(dst: u8, value: u32, off: i16) -> Insn {
    Insn {
        code: BPF_JMP32 | BPF_JNE | BPF_K,
        regs: dst,
        off,
        imm: value as i32,
    }
}

fn exit() -> Insn {
    Insn {
        code: BPF_JMP | BPF_EXIT,
        regs: 0,
        off: 0,
        imm: 0,
    }
}

/// The 32-bit words of an address as the program reads them from the context: network byte order in
/// memory, loaded as native-endian `u32`s.
fn words(octets: &[u8]) -> Vec<u32> {
    octets
        .chunks(4)
        .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Masks for a prefix of `prefix` bits over `n` words, in the same memory order as [`words`].
fn prefix_masks(prefix: u8, n: usize) -> Vec<u32> {
    (0..n)
        .map(|i| {
            let bits = (usize::from(prefix)).saturating_sub(i * 32).min(32);
            let be: u32 = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            u32::from_ne_bytes(be.to_be_bytes())
        })
        .collect()
}

/// The port as the program reads `user_port`: the network-order 16-bit value in a native `u32`.
fn port_word(port: u16) -> u32 {
    u32::from(u16::from_ne_bytes(port.to_be_bytes()))
}

/// Which hook family a program serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    V4,
    V6,
}

/// The program for one family: for each rule that applies, compare the masked destination words (and the
/// port), and return 0 (refuse) on a full match; return 1 (allow) after the last rule.
pub(crate) fn program(family: Family, rules: &[DenyRule]) -> Vec<Insn> {
    let mut out = vec![mov64_reg(R6, R1)];
    for rule in rules {
        let (addr_words, masks, base) = match (family, rule.network) {
            (Family::V4, IpAddr::V4(v4)) => (
                words(&v4.octets()),
                prefix_masks(rule.prefix, 1),
                OFF_USER_IP4,
            ),
            (Family::V4, IpAddr::V6(_)) => continue,
            (Family::V6, _) => {
                let (v6, prefix) = rule.as_v6();
                (words(&v6.octets()), prefix_masks(prefix, 4), OFF_USER_IP6)
            }
        };
        // Words the prefix does not reach compare nothing: leave them out.
        let checks: Vec<(i16, u32, u32)> = addr_words
            .iter()
            .zip(&masks)
            .enumerate()
            .filter(|(_, (_, &mask))| mask != 0)
            .map(|(i, (&word, &mask))| (base + 4 * i as i16, word & mask, mask))
            .collect();
        // Each check is a load, maybe an AND, and a jump; then the port (load + jump) and the refusal (2).
        let mut len: usize = checks
            .iter()
            .map(|&(_, _, mask)| if mask == u32::MAX { 2 } else { 3 })
            .sum();
        if rule.port.is_some() {
            len += 2;
        }
        len += 2;
        let mut emitted = 0usize;
        let skip_to_next = |emitted_after_jump: usize| -> i16 {
            // Jumps are relative to the next instruction.
            i16::try_from(len - emitted_after_jump).unwrap_or(i16::MAX)
        };
        for (off, value, mask) in checks {
            out.push(load_u32(R2, R6, off));
            emitted += 1;
            if mask != u32::MAX {
                out.push(and32(R2, mask));
                emitted += 1;
            }
            emitted += 1;
            out.push(jne32(R2, value, skip_to_next(emitted)));
        }
        if let Some(port) = rule.port {
            out.push(load_u32(R2, R6, OFF_USER_PORT));
            emitted += 2;
            out.push(jne32(R2, port_word(port), skip_to_next(emitted)));
        }
        out.push(mov64_imm(R0, 0));
        out.push(exit());
    }
    out.push(mov64_imm(R0, 1));
    out.push(exit());
    out
}

// bpf(2) commands, program type and attach types (linux/bpf.h).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
const BPF_CGROUP_INET4_CONNECT: u32 = 10;
const BPF_CGROUP_INET6_CONNECT: u32 = 11;
const BPF_CGROUP_UDP4_SENDMSG: u32 = 14;
const BPF_CGROUP_UDP6_SENDMSG: u32 = 15;

/// The leading fields of `union bpf_attr` for `BPF_PROG_LOAD`, zero-padded to a size every kernel accepts.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    _pad: [u64; 8],
}

#[repr(C)]
#[derive(Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    _pad: [u64; 4],
}

fn load(insns: &[Insn], attach_type: u32) -> io::Result<OwnedFd> {
    match load_with_log(insns, attach_type, None) {
        Ok(fd) => Ok(fd),
        Err(err) => {
            // Load again with the verifier's log, only to say why.
            let mut log = vec![0u8; 1 << 16];
            let _ = load_with_log(insns, attach_type, Some(&mut log));
            let text = String::from_utf8_lossy(&log);
            let text = text.trim_end_matches('\0').trim();
            let tail: Vec<&str> = text.lines().rev().take(3).collect();
            Err(io::Error::new(
                err.kind(),
                format!(
                    "loading the egress filter: {err}; verifier: {}",
                    tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
                ),
            ))
        }
    }
}

fn load_with_log(insns: &[Insn], attach_type: u32, log: Option<&mut [u8]>) -> io::Result<OwnedFd> {
    let license = CString::new("GPL").map_err(io::Error::other)?;
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
        insn_cnt: u32::try_from(insns.len()).map_err(io::Error::other)?,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        expected_attach_type: attach_type,
        ..Default::default()
    };
    if let Some(log) = log {
        attr.log_level = 1;
        attr.log_size = u32::try_from(log.len()).unwrap_or(u32::MAX);
        attr.log_buf = log.as_mut_ptr() as u64;
    }
    attr.prog_name[..8].copy_from_slice(b"mrd_egrs");
    // SAFETY: `attr` is a valid bpf_attr prefix whose pointers (instructions, license, log) outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &mut attr as *mut ProgLoadAttr,
            std::mem::size_of::<ProgLoadAttr>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: the kernel just returned this descriptor and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn attach(cgroup: &File, prog: &OwnedFd, attach_type: u32) -> io::Result<()> {
    let mut attr = ProgAttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type,
        ..Default::default()
    };
    // SAFETY: `attr` is a valid bpf_attr prefix for BPF_PROG_ATTACH; both descriptors are open.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &mut attr as *mut ProgAttachAttr,
            std::mem::size_of::<ProgAttachAttr>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Attaches the filter for `rules` to the cgroup v2 directory `group` (TCP and UDP connects, UDP sends;
/// IPv4 and IPv6). The attachment lives as long as the group; nothing needs to be detached.
pub(crate) fn attach_to(group: &Path, rules: &[DenyRule]) -> io::Result<()> {
    let dir = File::open(group)?;
    for (family, hooks) in [
        (
            Family::V4,
            [BPF_CGROUP_INET4_CONNECT, BPF_CGROUP_UDP4_SENDMSG],
        ),
        (
            Family::V6,
            [BPF_CGROUP_INET6_CONNECT, BPF_CGROUP_UDP6_SENDMSG],
        ),
    ] {
        let insns = program(family, rules);
        for hook in hooks {
            let prog = load(&insns, hook)?;
            attach(&dir, &prog, hook)?;
        }
    }
    Ok(())
}

/// Whether this kernel loads the filter (checked once at start-up, without attaching anything).
pub(crate) fn probe() -> io::Result<()> {
    let insns = program(Family::V4, &metadata_rules());
    load(&insns, BPF_CGROUP_INET4_CONNECT).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the program over a destination the way the kernel would: a tiny interpreter for the handful of
    /// instructions [`program`] emits.
    fn run(insns: &[Insn], ctx: &[u8; 32]) -> u64 {
        let mut regs = [0u64; 11];
        let mut pc = 0usize;
        let read = |off: i16| -> u64 {
            let o = usize::try_from(off).expect("offset");
            u64::from(u32::from_ne_bytes([
                ctx[o],
                ctx[o + 1],
                ctx[o + 2],
                ctx[o + 3],
            ]))
        };
        for _ in 0..10_000 {
            let i = insns[pc];
            let (dst, src) = (usize::from(i.regs & 0xf), usize::from(i.regs >> 4));
            pc += 1;
            match i.code {
                c if c == BPF_ALU64 | BPF_MOV | BPF_X => regs[dst] = regs[src],
                c if c == BPF_ALU64 | BPF_MOV | BPF_K => regs[dst] = i.imm as i64 as u64,
                c if c == BPF_LDX | BPF_W | BPF_MEM => {
                    assert_eq!(src, 6, "loads only from the saved context");
                    regs[dst] = read(i.off);
                }
                c if c == BPF_ALU | BPF_AND | BPF_K => {
                    regs[dst] = u64::from((regs[dst] as u32) & (i.imm as u32))
                }
                c if c == BPF_JMP32 | BPF_JNE | BPF_K => {
                    if regs[dst] as u32 != i.imm as u32 {
                        pc = usize::try_from(pc as i64 + i64::from(i.off)).expect("jump target");
                    }
                }
                c if c == BPF_JMP | BPF_EXIT => return regs[0],
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
        panic!("program did not finish");
    }

    fn ctx_v4(addr: Ipv4Addr, port: u16) -> [u8; 32] {
        let mut ctx = [0u8; 32];
        ctx[4..8].copy_from_slice(&addr.octets());
        ctx[24..26].copy_from_slice(&port.to_be_bytes());
        ctx
    }

    fn ctx_v6(addr: Ipv6Addr, port: u16) -> [u8; 32] {
        let mut ctx = [0u8; 32];
        ctx[8..24].copy_from_slice(&addr.octets());
        ctx[24..26].copy_from_slice(&port.to_be_bytes());
        ctx
    }

    fn rules() -> Vec<DenyRule> {
        let mut rules = metadata_rules();
        rules.push(
            DenyRule::parse("127.0.0.0/8")
                .map(|r| DenyRule {
                    port: Some(7070),
                    ..r
                })
                .expect("rule"),
        );
        rules.push(DenyRule::parse("10.1.2.3").expect("rule"));
        rules.push(DenyRule::parse("[::1]:7170").expect("rule"));
        rules.push(DenyRule::parse("fd12:3456::/32").expect("rule"));
        rules
    }

    #[test]
    fn ipv4_destinations_on_the_list_are_refused_and_others_pass() {
        let p = program(Family::V4, &rules());
        let allowed = |a: [u8; 4], port| run(&p, &ctx_v4(Ipv4Addr::from(a), port)) == 1;
        assert!(!allowed([169, 254, 169, 254], 80));
        assert!(!allowed([169, 254, 1, 1], 53));
        assert!(!allowed([127, 0, 0, 1], 7070));
        assert!(!allowed([127, 9, 9, 9], 7070));
        assert!(
            allowed([127, 0, 0, 1], 7071),
            "other loopback ports stay open"
        );
        assert!(!allowed([10, 1, 2, 3], 1));
        assert!(!allowed([10, 1, 2, 3], 65535));
        assert!(allowed([10, 1, 2, 4], 7070));
        assert!(allowed([8, 8, 8, 8], 443));
        assert!(allowed([169, 253, 255, 255], 80));
    }

    #[test]
    fn ipv6_destinations_and_mapped_ipv4_ones_are_refused() {
        let p = program(Family::V6, &rules());
        let allowed = |a: &str, port| run(&p, &ctx_v6(a.parse().expect("v6"), port)) == 1;
        assert!(!allowed("::ffff:169.254.169.254", 80));
        assert!(!allowed("::ffff:127.0.0.1", 7070));
        assert!(!allowed("::ffff:10.1.2.3", 22));
        assert!(allowed("::ffff:10.1.2.4", 22));
        assert!(!allowed("::1", 7170));
        assert!(allowed("::1", 7171));
        assert!(!allowed("fd00:ec2::254", 80));
        assert!(!allowed("fd12:3456:ffff::1", 443));
        assert!(allowed("fd12:3457::1", 443));
        assert!(allowed("2001:db8::1", 443));
    }

    #[test]
    fn an_empty_list_allows_everything() {
        for family in [Family::V4, Family::V6] {
            let p = program(family, &[]);
            assert_eq!(p.len(), 3);
            assert_eq!(run(&p, &ctx_v4(Ipv4Addr::LOCALHOST, 1)), 1);
        }
    }

    #[test]
    fn rules_parse_with_clear_errors() {
        assert_eq!(
            DenyRule::parse("10.0.0.1:7070"),
            Ok(DenyRule::host_port("10.0.0.1".parse().expect("ip"), 7070))
        );
        assert_eq!(DenyRule::parse(" 10.0.0.0/8 ").map(|r| r.prefix), Ok(8));
        assert!(DenyRule::parse("10.0.0.0/33").is_err());
        assert!(DenyRule::parse("::/129").is_err());
        assert!(DenyRule::parse("node-1:7070").is_err());
        assert!(DenyRule::parse("").is_err());
    }

    #[test]
    fn configured_destinations_become_rules() {
        let node: IpAddr = "10.0.0.5".parse().expect("ip");
        let coordinators: Vec<std::net::SocketAddr> = vec![
            "127.0.0.1:7170".parse().expect("addr"),
            "10.0.0.5:7171".parse().expect("addr"),
            "10.0.0.9:7170".parse().expect("addr"),
        ];
        let rules = deny_rules(
            &coordinators,
            &[7443],
            &[node, IpAddr::V4(Ipv4Addr::LOCALHOST)],
        );
        let mut all = metadata_rules();
        all.extend(rules);
        let p4 = program(Family::V4, &all);
        let allowed = |a: [u8; 4], port| run(&p4, &ctx_v4(Ipv4Addr::from(a), port)) == 1;
        // A remote coordinator: every port.
        assert!(!allowed([10, 0, 0, 9], 7070));
        assert!(!allowed([10, 0, 0, 9], 22));
        // Local coordinators and the agent: their ports on every local address.
        for port in [7170, 7171, 7443] {
            assert!(!allowed([127, 0, 0, 1], port), "{port}");
            assert!(!allowed([0, 0, 0, 0], port), "{port}");
            assert!(!allowed([10, 0, 0, 5], port), "{port}");
        }
        // Other local ports, and other hosts, stay reachable.
        assert!(allowed([127, 0, 0, 1], 29500));
        assert!(allowed([10, 0, 0, 5], 29500));
        assert!(allowed([10, 0, 0, 6], 7170));
        let p6 = program(Family::V6, &all);
        assert_eq!(run(&p6, &ctx_v6("::1".parse().expect("v6"), 7443)), 0);
        assert_eq!(
            run(&p6, &ctx_v6("::ffff:10.0.0.9".parse().expect("v6"), 80)),
            0
        );
        assert_eq!(run(&p6, &ctx_v6("::1".parse().expect("v6"), 29500)), 1);
    }

    #[test]
    fn masks_cover_exactly_the_prefix() {
        assert_eq!(prefix_masks(0, 1), vec![0]);
        assert_eq!(prefix_masks(32, 1), vec![u32::MAX]);
        let m = prefix_masks(8, 1)[0];
        assert_eq!(m.to_ne_bytes(), [0xff, 0, 0, 0]);
        let m = prefix_masks(100, 4);
        assert_eq!(m[0..3], [u32::MAX; 3]);
        assert_eq!(m[3].to_ne_bytes(), [0xf0, 0, 0, 0]);
    }
}
