//! The bare-metal verdict command on logs from real boots (and damaged copies of them).

use std::io::Write;
use std::process::{Command, Stdio};

use qemu_tests::Boot;

fn verdict_of_file(log: &str) -> (Option<i32>, String) {
    let dir = std::env::temp_dir().join(format!("serial-verdict-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{:x}.log", log.len() ^ log.as_ptr() as usize));
    std::fs::write(&path, log).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_serial-verdict"))
        .arg("--quiet")
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn serial_verdict_agrees_with_qemu_exit_status() {
    let pass = Boot::kernel()
        .smp(2)
        .ktest("breakpoint,every_cpu_runs")
        .run();
    pass.expect_pass();
    let (code, msg) = verdict_of_file(&pass.serial);
    assert_eq!(code, Some(0), "{msg}");
    assert!(msg.contains("PASS (2 kernel tests passed"), "{msg}");

    let fail = Boot::kernel().smp(1).ktest("deliberately_fails").run();
    assert_eq!(fail.status, Some(1));
    let (code, msg) = verdict_of_file(&fail.serial);
    assert_eq!(code, Some(1), "{msg}");
    assert!(
        msg.contains("ktests::framework::deliberately_fails"),
        "{msg}"
    );

    // A capture cut off before the verdict (hang or reset) has no verdict.
    let cut = pass.serial.split("ktest: 2 passed").next().unwrap();
    let (code, msg) = verdict_of_file(cut);
    assert_eq!(code, Some(2), "{msg}");

    // Streaming from stdin (how a serial device is read) stops at the exit line.
    let mut child = Command::new(env!("CARGO_BIN_EXE_serial-verdict"))
        .args(["--quiet", "--timeout", "300", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(pass.serial.as_bytes()).unwrap();
    // Keep stdin open: the command must stop by itself at `kernel-exit:`.
    let out = child.wait_with_output().unwrap();
    drop(stdin);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn main_job_log_passes() {
    let r = Boot::kernel().smp(1).run();
    r.expect_pass();
    let (code, msg) = verdict_of_file(&r.serial);
    assert_eq!(code, Some(0), "{msg}");
}

#[test]
fn console_on_com2_and_verdict_from_a_captured_file() {
    // A rig whose console is the second UART: the kernel follows console=ttyS1, and the
    // verdict comes from the captured file alone.
    let path = std::env::temp_dir().join(format!("com2-{}.log", std::process::id()));
    let r = Boot::kernel()
        .smp(2)
        .arg("console=ttyS1")
        .ktest("breakpoint")
        .qemu_arg("-serial")
        .qemu_arg(&format!("file:{}", path.display()))
        .run();
    assert_eq!(r.status, Some(0), "{}", r.stderr);
    assert!(
        !r.serial.contains("ktest:"),
        "COM1 must stay quiet with console=ttyS1:\n{}",
        r.serial
    );
    let log = std::fs::read_to_string(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(log.contains("ktest: 1 passed, 0 failed"), "{log}");
    let (code, msg) = verdict_of_file(&log);
    assert_eq!(code, Some(0), "{msg}");
}
