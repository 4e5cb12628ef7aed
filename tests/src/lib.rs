//! Host-side harness: build the kernel (each [`Flavour`] once per test process), boot it
//! through `qemu-run.sh` in a chosen configuration, capture the serial console, and judge it
//! with the same parser as the bare-metal `serial-verdict` command ([`verdict`]).
//!
//! [`Boot::kernel`] boots the flavour its kernel arguments need, as `qemu-run.sh` chooses
//! it: `ktest` for the kernel tests, `product` for a main job with `workload=none`, `bench`
//! otherwise; [`Boot::flavour`] picks one.
//!
//! Adding a boot configuration is one test:
//!
//! ```no_run
//! use qemu_tests::Boot;
//! #[test]
//! fn ktests_smp2_xapic() {
//!     Boot::kernel().smp(2).cpu("qemu64").ktest("").run().expect_pass();
//! }
//! ```
#![forbid(unsafe_code)]

pub mod verdict;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use verdict::{Report, TestStatus, Verdict, json_field};

/// The workspace root (parent of this crate).
pub fn workspace_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("tests/ lives in the workspace")
            .to_path_buf()
    })
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| {
            if p.is_absolute() {
                p
            } else {
                workspace_root().join(p)
            }
        })
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn run_logged(cmd: &mut Command, what: &str) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{what}: cannot run: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{what} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A kernel flavour: the `kernel` package's cargo features (`kernel/flavour.sh`,
/// `kernel/src/flavour.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flavour {
    /// No features: no kernel tests, no workload runner, no benchmark.
    Product,
    /// `bench`: the DSA workload runner and the IMS benchmark.
    Bench,
    /// `ktest`: the kernel tests (and `bench`).
    Ktest,
}

impl Flavour {
    /// The name `kernel/flavour.sh` takes.
    pub fn name(self) -> &'static str {
        match self {
            Flavour::Product => "product",
            Flavour::Bench => "bench",
            Flavour::Ktest => "ktest",
        }
    }

    /// The flavour a kernel command line needs (the rule of `qemu-run.sh`).
    pub fn needed_by<S: AsRef<str>>(kernel_args: &[S]) -> Flavour {
        let (mut tests, mut bench, mut workload) = (false, false, None);
        for t in kernel_args
            .iter()
            .flat_map(|a| a.as_ref().split_whitespace())
        {
            let (key, value) = t.split_once('=').map_or((t, None), |(k, v)| (k, Some(v)));
            match key {
                "ktest" | "ktest.list" | "sva.suite" => tests = true,
                k if k == "ims.bench" || k.starts_with("ims.bench.") => bench = true,
                "workload" => workload = value,
                _ => {}
            }
        }
        if tests {
            Flavour::Ktest
        } else if bench || !matches!(workload, Some("none" | "off")) {
            Flavour::Bench
        } else {
            Flavour::Product
        }
    }
}

/// Builds a debug kernel flavour with `kernel/flavour.sh` once per process (parallel test
/// threads wait for the same build; the script serialises builds of different flavours)
/// and returns its ELF path.
pub fn kernel_elf(flavour: Flavour) -> &'static Path {
    static ELF: [OnceLock<Result<PathBuf, String>>; 3] =
        [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let r = ELF[flavour as usize].get_or_init(|| {
        let out = run_logged(
            Command::new(workspace_root().join("kernel/flavour.sh"))
                .arg(flavour.name())
                .current_dir(workspace_root())
                .env_remove("CARGO_MAKEFLAGS")
                .env_remove("MAKEFLAGS"),
            "kernel build",
        )?;
        let p = PathBuf::from(out.trim());
        if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "kernel/flavour.sh {} produced no {}",
                flavour.name(),
                p.display()
            ))
        }
    });
    match r {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

/// The QEMU binary for this process: `$QEMU`, else the patched QEMU from
/// `emulator/qemu/build.sh --ensure` (built once here, so parallel boots do not race to
/// build it), else `None` (qemu-run.sh then uses the system QEMU).
pub fn qemu_binary() -> Option<&'static Path> {
    static QEMU: OnceLock<Result<Option<PathBuf>, String>> = OnceLock::new();
    let r = QEMU.get_or_init(|| {
        if let Some(q) = std::env::var_os("QEMU") {
            return Ok(Some(PathBuf::from(q)));
        }
        let script = workspace_root().join("emulator/qemu/build.sh");
        if !script.is_file() {
            return Ok(None);
        }
        let out = Command::new(&script)
            .arg("--ensure")
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("{}: {e}", script.display()))?;
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() || path.is_empty() {
            return Err(format!(
                "{} --ensure failed ({})",
                script.display(),
                out.status
            ));
        }
        Ok(Some(PathBuf::from(path)))
    });
    match r {
        Ok(p) => p.as_deref(),
        Err(e) => panic!("{e}"),
    }
}

/// Builds (once per process) a GRUB ISO whose default entry runs the kernel tests,
/// booting at once; `boot/mkiso.sh` builds the kernel flavour itself.
pub fn ktest_iso() -> &'static Path {
    static ISO: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let r = ISO.get_or_init(|| {
        let out = target_dir().join("iso/ktest.iso");
        run_logged(
            Command::new(workspace_root().join("boot/mkiso.sh"))
                .arg("-o")
                .arg(&out)
                .args(["--default", "ktest", "--timeout", "0"])
                .current_dir(workspace_root())
                .env_remove("CARGO_MAKEFLAGS")
                .env_remove("MAKEFLAGS"),
            "boot/mkiso.sh",
        )?;
        Ok(out)
    });
    match r {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

/// Whether OVMF (UEFI firmware for QEMU) is installed.
pub fn ovmf_available() -> bool {
    let code =
        std::env::var("OVMF_CODE").unwrap_or_else(|_| "/usr/share/OVMF/OVMF_CODE_4M.fd".into());
    Path::new(&code).is_file()
}

/// What to boot.
#[derive(Debug, Clone)]
pub enum Image {
    /// A kernel ELF through PVH.
    Kernel(PathBuf),
    /// A kernel flavour (built on first use) through PVH; `None`: the one the kernel
    /// arguments need ([`Flavour::needed_by`]).
    Flavour(Option<Flavour>),
    /// A GRUB ISO, SeaBIOS or OVMF.
    Iso {
        /// The ISO.
        path: PathBuf,
        /// Boot through OVMF.
        uefi: bool,
    },
}

/// QEMU timeout of a boot unless the test sets one: a bound for hangs only. Boots take
/// seconds to a minute on an idle host, several times that on a loaded 2-core machine where
/// TCG vCPU threads share the cores with builds and other VMs.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// One boot configuration.
#[derive(Debug, Clone)]
pub struct Boot {
    image: Image,
    smp: u32,
    mem: String,
    cpu: Option<String>,
    accel: Option<String>,
    kernel_args: Vec<String>,
    qemu_args: Vec<String>,
    timeout: Duration,
    /// intel-dsa devices (qemu-run.sh `--dsa`; 0 unless asked for, whatever its default).
    dsa: u32,
    /// Extra intel-dsa properties (`--dsa-opts`).
    dsa_opts: Option<String>,
    /// intel-iommu posted interrupts (`--posted-intr`; qemu-run.sh's default when `None`).
    posted_intr: Option<bool>,
    /// QEMU's intel-iommu device (`--iommu`, default on).
    iommu: bool,
}

impl Boot {
    fn with(image: Image) -> Self {
        Self {
            image,
            smp: 4,
            mem: "512M".into(),
            cpu: None,
            accel: None,
            kernel_args: Vec::new(),
            qemu_args: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            dsa: 0,
            dsa_opts: None,
            posted_intr: None,
            iommu: true,
        }
    }

    /// The kernel flavour the kernel arguments need (built on first use), 4 CPUs,
    /// 512 MiB, `-cpu max`, TCG.
    pub fn kernel() -> Self {
        Self::with(Image::Flavour(None))
    }

    /// Like [`Boot::kernel`], with the given flavour whatever the arguments.
    pub fn flavour(f: Flavour) -> Self {
        Self::with(Image::Flavour(Some(f)))
    }

    /// The flavour this configuration boots, if it boots one.
    pub fn kernel_flavour(&self) -> Option<Flavour> {
        match self.image {
            Image::Flavour(f) => Some(f.unwrap_or_else(|| Flavour::needed_by(&self.kernel_args))),
            _ => None,
        }
    }

    /// The kernel-test GRUB ISO (built on first use), SeaBIOS or OVMF.
    pub fn ktest_iso(uefi: bool) -> Self {
        Self::with(Image::Iso {
            path: ktest_iso().to_path_buf(),
            uefi,
        })
    }

    /// Number of CPUs.
    pub fn smp(mut self, n: u32) -> Self {
        self.smp = n;
        self
    }
    /// Memory size (QEMU syntax).
    pub fn mem(mut self, m: &str) -> Self {
        self.mem = m.into();
        self
    }
    /// CPU model.
    pub fn cpu(mut self, model: &str) -> Self {
        self.cpu = Some(model.into());
        self
    }
    /// Accelerator (`tcg`, `kvm`).
    pub fn accel(mut self, a: &str) -> Self {
        self.accel = Some(a.into());
        self
    }
    /// Number of intel-dsa devices (patched QEMU), each behind its own PCIe root port.
    pub fn dsa(mut self, n: u32) -> Self {
        self.dsa = n;
        self
    }
    /// Extra intel-dsa properties for every device (e.g. `fault-injection=on`).
    pub fn dsa_opts(mut self, props: &str) -> Self {
        self.dsa_opts = Some(props.into());
        self
    }
    /// intel-iommu posted interrupts (CAP.PI) on or off.
    pub fn posted_intr(mut self, on: bool) -> Self {
        self.posted_intr = Some(on);
        self
    }
    /// With `false`, no intel-iommu device: a platform without VT-d.
    pub fn iommu(mut self, on: bool) -> Self {
        self.iommu = on;
        self
    }
    /// Appends a kernel argument.
    pub fn arg(mut self, a: &str) -> Self {
        self.kernel_args.push(a.into());
        self
    }
    /// Runs the kernel tests matching `filter` (`""` = all normal tests).
    pub fn ktest(self, filter: &str) -> Self {
        if filter.is_empty() {
            self.arg("ktest")
        } else {
            self.arg(&format!("ktest={filter}"))
        }
    }
    /// Appends a QEMU argument.
    pub fn qemu_arg(mut self, a: &str) -> Self {
        self.qemu_args.push(a.into());
        self
    }
    /// QEMU timeout (enforced by qemu-run.sh; the harness kills the process group
    /// 30 s later as a backstop).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// The `qemu-run.sh` arguments for this configuration.
    pub fn script_args(&self) -> Vec<String> {
        let mut a = Vec::new();
        match &self.image {
            Image::Kernel(p) => a.extend(["--kernel".to_string(), p.display().to_string()]),
            Image::Flavour(_) => {
                let f = self.kernel_flavour().expect("a flavour image");
                a.extend(["--kernel".to_string(), kernel_elf(f).display().to_string()]);
            }
            Image::Iso { path, uefi } => {
                a.extend(["--iso".to_string(), path.display().to_string()]);
                if *uefi {
                    a.push("--uefi".into());
                }
            }
        }
        a.extend([
            "--smp".into(),
            self.smp.to_string(),
            "--mem".into(),
            self.mem.clone(),
        ]);
        if let Some(c) = &self.cpu {
            a.extend(["--cpu".into(), c.clone()]);
        }
        if let Some(x) = &self.accel {
            a.extend(["--accel".into(), x.clone()]);
        }
        a.extend(["--dsa".into(), self.dsa.to_string()]);
        if let Some(on) = self.posted_intr {
            a.extend(["--posted-intr".into(), if on { "on" } else { "off" }.into()]);
        }
        if let Some(o) = &self.dsa_opts {
            a.extend(["--dsa-opts".into(), o.clone()]);
        }
        if !self.iommu {
            a.extend(["--iommu".into(), "off".into()]);
        }
        a.extend([
            "--timeout".into(),
            self.timeout.as_secs().max(1).to_string(),
        ]);
        if !self.kernel_args.is_empty() {
            a.extend(["--append".into(), self.kernel_args.join(" ")]);
        }
        if !self.qemu_args.is_empty() {
            a.push("--".into());
            a.extend(self.qemu_args.iter().cloned());
        }
        a
    }

    /// Boots and waits for the end of the run.
    pub fn run(&self) -> BootResult {
        let qemu = qemu_binary();
        let mut cmd = Command::new(workspace_root().join("qemu-run.sh"));
        cmd.args(self.script_args())
            .current_dir(workspace_root())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        if let Some(q) = qemu {
            cmd.env("QEMU", q);
        }
        let start = Instant::now();
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run qemu-run.sh: {e}"));
        let mut out = child.stdout.take().expect("piped");
        let mut err = child.stderr.take().expect("piped");
        let t_out = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = out.read_to_end(&mut v);
            v
        });
        let t_err = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = err.read_to_end(&mut v);
            v
        });
        let backstop = self.timeout + Duration::from_secs(30);
        let mut killed = false;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s.code(),
                Ok(None) if start.elapsed() > backstop => {
                    let _ = Command::new("kill")
                        .args(["-KILL", &format!("-{}", child.id())])
                        .status();
                    killed = true;
                    let _ = child.wait();
                    break None;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("waiting for qemu-run.sh: {e}"),
            }
        };
        let serial = String::from_utf8_lossy(&t_out.join().unwrap_or_default()).into_owned();
        let stderr = String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned();
        let report = verdict::parse(&serial);
        BootResult {
            config: self.clone(),
            status,
            killed_by_harness: killed,
            serial,
            stderr,
            elapsed: start.elapsed(),
            report,
        }
    }
}

/// The outcome of one boot.
#[derive(Debug)]
pub struct BootResult {
    /// The configuration.
    pub config: Boot,
    /// Exit status of qemu-run.sh (`None` if killed by the harness).
    pub status: Option<i32>,
    /// The harness had to kill the process group.
    pub killed_by_harness: bool,
    /// Everything the kernel printed on the serial console.
    pub serial: String,
    /// qemu-run.sh and QEMU diagnostics.
    pub stderr: String,
    /// Wall time.
    pub elapsed: Duration,
    /// Parsed serial log.
    pub report: Report,
}

impl BootResult {
    /// The verdict on the serial log.
    pub fn verdict(&self) -> Verdict {
        self.report.verdict()
    }

    fn context(&self) -> String {
        let tail: Vec<&str> = self.serial.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        let etail: Vec<&str> = self.stderr.lines().rev().take(8).collect();
        let etail: Vec<&str> = etail.into_iter().rev().collect();
        format!(
            "configuration: qemu-run.sh {}\nstatus: {:?}{} after {:.1?}\n--- serial (last 40 lines) ---\n{}\n--- stderr (last lines) ---\n{}",
            self.config.script_args().join(" "),
            self.status,
            if self.killed_by_harness {
                " (killed by the harness)"
            } else {
                ""
            },
            self.elapsed,
            tail.join("\n"),
            etail.join("\n")
        )
    }

    /// Panics unless qemu-run.sh exited 0 and the serial log is a pass. The message names
    /// the failing kernel tests.
    pub fn expect_pass(&self) -> &Self {
        let v = self.verdict();
        assert!(
            self.status == Some(0) && v.is_pass(),
            "boot did not pass: {v}\n{}",
            self.context()
        );
        eprintln!("boot passed in {:.2?}: {v}", self.elapsed);
        self
    }

    /// Panics unless the run failed (status 1) and the verdict names `test` as failed.
    pub fn expect_failed_test(&self, test: &str) -> &Self {
        match self.verdict() {
            Verdict::Fail { failed_tests, .. }
                if self.status == Some(1)
                    && failed_tests
                        .iter()
                        .any(|t| t == test || t.ends_with(&format!("::{test}"))) => {}
            v => panic!(
                "expected kernel test '{test}' to fail the run, got: {v}\n{}",
                self.context()
            ),
        }
        self
    }

    /// Panics unless the kernel test `name` passed.
    pub fn expect_test_ok(&self, name: &str) -> &Self {
        match self.report.status_of(name) {
            Some(TestStatus::Ok) => self,
            other => panic!(
                "kernel test '{name}': expected ok, got {other:?}\n{}",
                self.context()
            ),
        }
    }

    /// Panics unless every kernel test in `names` passed (see [`BootResult::expect_test_ok`]).
    pub fn expect_tests_ok(&self, names: &[&str]) -> &Self {
        for name in names {
            self.expect_test_ok(name);
        }
        self
    }

    /// Panics unless the serial log contains `needle`.
    pub fn expect_serial(&self, needle: &str) -> &Self {
        assert!(
            self.serial.contains(needle),
            "serial log lacks '{needle}'\n{}",
            self.context()
        );
        self
    }
}
