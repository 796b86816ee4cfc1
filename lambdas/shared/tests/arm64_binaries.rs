//! The arm64 Lambda binaries built by `lambdas/build-arm64.sh` are static aarch64 ELF executables.
//! Without them this test fails under CI (`CI` set) and is skipped with a reason otherwise.
//! When `qemu-aarch64-static` is installed, each binary is also started once: without the Lambda
//! runtime API it must exit with an error naming the first missing variable (not crash).

use std::path::PathBuf;
use std::process::Command;

const FUNCTIONS: [&str; 3] = ["csv-validator", "data-transformer", "notification-sender"];
const EM_AARCH64: u16 = 183;

/// `<target dir>/lambda`: `TAP_LAMBDA_DIR`, else derived from this test binary's location
/// (`<target dir>/<profile>/deps/<test>`), which follows `CARGO_TARGET_DIR`.
fn lambda_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("TAP_LAMBDA_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("test binary path");
    exe.ancestors().nth(3).expect("target dir").join("lambda")
}

#[derive(Debug, PartialEq, Eq)]
struct ElfHeader {
    class64: bool,
    little_endian: bool,
    elf_type: u16,
    machine: u16,
}

fn parse_elf(bytes: &[u8]) -> Result<ElfHeader, String> {
    if bytes.len() < 64 {
        return Err(format!(
            "{} bytes: too short for an ELF64 header",
            bytes.len()
        ));
    }
    if &bytes[..4] != b"\x7fELF" {
        return Err(format!("bad magic {:02x?}", &bytes[..4]));
    }
    let little_endian = bytes[5] == 1;
    let u16_at = |o: usize| {
        let b = [bytes[o], bytes[o + 1]];
        if little_endian {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        }
    };
    Ok(ElfHeader {
        class64: bytes[4] == 2,
        little_endian,
        elf_type: u16_at(16),
        machine: u16_at(18),
    })
}

/// Whether the ELF has a PT_INTERP program header (i.e. is dynamically linked).
fn has_interpreter(bytes: &[u8]) -> bool {
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap()) as usize;
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let (phoff, phentsize, phnum) = (u64_at(32), u16_at(54), u16_at(56));
    (0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        o + 4 <= bytes.len() && u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap()) == 3
    })
}

#[test]
fn elf_parser_recognises_this_test_binary() {
    let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    let header = parse_elf(&me).unwrap();
    assert!(header.class64);
    assert_ne!(header.machine, 0);
    assert!(parse_elf(b"#!/bin/sh\necho not an elf\n".repeat(8).as_slice()).is_err());
}

#[test]
fn arm64_bootstraps_are_static_aarch64_elf() {
    let dir = lambda_dir();
    let missing: Vec<String> = FUNCTIONS
        .iter()
        .map(|f| dir.join(f).join("bootstrap"))
        .filter(|p| !p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if !missing.is_empty() {
        let reason = format!(
            "arm64 binaries not built ({}); run lambdas/build-arm64.sh",
            missing.join(", ")
        );
        if std::env::var_os("CI").is_some() {
            panic!("{reason}");
        }
        eprintln!("SKIPPED: {reason}");
        return;
    }
    for function in FUNCTIONS {
        let path = dir.join(function).join("bootstrap");
        let bytes = std::fs::read(&path).unwrap();
        let header = parse_elf(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            header,
            ElfHeader {
                class64: true,
                little_endian: true,
                elf_type: 2,
                machine: EM_AARCH64
            },
            "{} is not a 64-bit little-endian aarch64 executable",
            path.display()
        );
        assert!(
            !has_interpreter(&bytes),
            "{} is dynamically linked; Lambda needs a static binary",
            path.display()
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert!(mode & 0o111 != 0, "{} is not executable", path.display());

        if let Ok(qemu) = which("qemu-aarch64-static") {
            let out = Command::new(qemu).arg(&path).env_clear().output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success(),
                "{function} started without its configuration"
            );
            assert!(
                stderr.contains("missing environment variable"),
                "{function} under qemu: {stderr} (status {})",
                out.status
            );
        }
    }
}

fn which(name: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join(name))
                .find(|p| p.is_file())
        })
        .ok_or(())
}
