//! qemu-run.sh's environment checks (no boot needed).

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use qemu_tests::workspace_root;

fn qemu_run(qemu: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(workspace_root().join("qemu-run.sh"))
        .args(args)
        .env("QEMU", qemu)
        .output()
        .expect("run qemu-run.sh");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn old_or_missing_qemu_is_refused_with_the_install_command() {
    let dir = std::env::temp_dir().join(format!("fake-qemu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fake = dir.join("qemu-system-x86_64");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'QEMU emulator version 7.2.15 (Debian 1:7.2+dfsg-7+deb12u12)'\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (code, err) = qemu_run(fake.to_str().unwrap(), &["--kernel", "/dev/null"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("version 10.0 or newer is required"), "{err}");
    assert!(
        err.contains("apt-get install -y -t bookworm-backports qemu-system-x86"),
        "{err}"
    );

    let (code, err) = qemu_run(
        dir.join("nope").to_str().unwrap(),
        &["--kernel", "/dev/null"],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("bookworm-backports"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_options_are_usage_errors() {
    for args in [
        &["--smp", "0"][..],
        &["--bogus"],
        &["--accel", "hvf"],
        &["--uefi"],
    ] {
        let (code, err) = qemu_run("/bin/true", args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
    }
}
