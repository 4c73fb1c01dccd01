//! The `nixos-test-driver` command line (upstream generations A, B and C), with the
//! environment-variable defaults of generations A/B.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;

use super::{json, Config, LogLevel, MachineConfig, MachineKind};
use crate::error::{Error, Result};
use crate::names;

/// argparse's exit status for usage errors, which upstream users see.
pub const USAGE_EXIT_CODE: i32 = crate::exit_status::USAGE;

#[derive(Parser, Debug)]
#[command(
    name = "nixos-test-driver",
    about = "Run a NixOS integration test (nixos-test-ng, a drop-in replacement for nixpkgs' driver).",
    infer_long_args = true,
    disable_version_flag = true
)]
struct Args {
    /// Reuse the machines' state directories from a previous run.
    #[arg(short = 'K', long = "keep-machine-state")]
    keep_machine_state: bool,
    /// Deprecated spelling of --keep-machine-state.
    #[arg(long = "keep-vm-state", hide = true)]
    keep_vm_state: bool,
    /// Open a Python REPL with the test's namespace instead of running the script.
    #[arg(short = 'I', long = "interactive", overrides_with = "no_interactive")]
    interactive: bool,
    /// Run the script (the default).
    #[arg(long = "no-interactive", overrides_with = "interactive")]
    no_interactive: bool,
    /// Show each VM's display over VNC on 127.0.0.1 (a free port from 5900 per VM, printed
    /// when it starts); with or without --interactive. New.
    #[arg(long = "vnc")]
    vnc: bool,
    /// Start VMs from the boot cache when an earlier run saved them with the same inputs, and
    /// save them there when they first become ready (dir: NIXOS_TEST_NG_BOOT_CACHE, else
    /// $XDG_CACHE_HOME/nixos-test-ng/boots). New.
    #[arg(long = "reuse-boots")]
    reuse_boots: bool,
    /// Do not check the script's names before booting (`nixos-test-ng check`'s name check).
    #[arg(long = "skip-check")]
    skip_check: bool,
    /// After a failed subtest, go on with the rest of the script (the run still fails).
    #[arg(long = "keep-going")]
    keep_going: bool,
    /// Enable breakpoint-on-failure; CMD is printed as the command to attach with.
    #[arg(long = "debug-hook-attach", value_name = "CMD")]
    debug_hook_attach: Option<String>,
    /// Start scripts of the VMs (generation A); env `startScripts`.
    #[arg(long = "start-scripts", num_args = 0.., value_name = "START-SCRIPT")]
    start_scripts: Option<Vec<String>>,
    /// Start scripts of the VMs; env `vmStartScripts`.
    #[arg(long = "vm-start-scripts", num_args = 0.., value_name = "S")]
    vm_start_scripts: Option<Vec<String>>,
    /// Names of the VMs, one per --vm-start-scripts entry; env `vmNames`.
    #[arg(long = "vm-names", num_args = 0.., value_name = "NAME")]
    vm_names: Option<Vec<String>>,
    /// Names of the containers; env `containerNames`.
    #[arg(long = "container-names", num_args = 0.., value_name = "NAME")]
    container_names: Option<Vec<String>>,
    /// Start scripts of the containers (`run-<name>-nspawn`); env `containerStartScripts`.
    #[arg(long = "container-start-scripts", num_args = 0.., value_name = "S")]
    container_start_scripts: Option<Vec<String>>,
    /// VLAN numbers; env `vlans`.
    #[arg(long = "vlans", num_args = 0.., value_name = "VLAN")]
    vlans: Option<Vec<String>>,
    /// Seconds for the whole test; env `globalTimeout` (default 7 days).
    #[arg(
        long = "global-timeout",
        value_name = "N",
        allow_negative_numbers = true
    )]
    global_timeout: Option<String>,
    /// Seconds a machine may take from start to its backdoor handshake (default 600;
    /// env `NIXOS_TEST_NG_BOOT_TIMEOUT`; 0 for no limit).
    #[arg(long = "boot-timeout", value_name = "N", allow_negative_numbers = true)]
    boot_timeout: Option<String>,
    /// Existing, writable directory for screenshots, copied files and reports (default: cwd).
    #[arg(
        short = 'o',
        long = "output_directory",
        alias = "output-directory",
        value_name = "DIR"
    )]
    output_directory: Option<PathBuf>,
    /// Write a JUnit XML report to this path (relative to the output directory).
    #[arg(long = "junit-xml", value_name = "PATH")]
    junit_xml: Option<PathBuf>,
    /// Write the HTML report to this path (relative to the output directory). Default:
    /// `report.html` in the output directory when `-o` is given. New.
    #[arg(long = "html-report", value_name = "PATH")]
    html_report: Option<PathBuf>,
    /// Write no HTML report. New.
    #[arg(long = "no-html-report", conflicts_with = "html_report")]
    no_html_report: bool,
    /// Print how to reach the machines through the vsock SSH backdoor, numbering from OFFSET+1.
    #[arg(long = "dump-vsocks", value_name = "OFFSET")]
    dump_vsocks: Option<u32>,
    /// Generation C's JSON driver configuration.
    #[arg(long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log level.
    #[arg(long = "log-level", value_enum)]
    log_level: Option<LogLevel>,
    /// The Python test script; env `testScript`.
    testscript: Option<String>,
    /// After the script (and `--`): arguments for pytest, for pytest-style scripts.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "PYTEST-ARGS"
    )]
    pytest_args: Vec<String>,
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Parsed {
    /// Run with this configuration.
    Run(Box<Config>),
    /// Print this text (help) to stdout and exit successfully.
    Print(String),
}

fn split_env(env: &HashMap<String, String>, key: &str) -> Option<Vec<String>> {
    env.get(key)
        .map(|v| v.split_whitespace().map(str::to_string).collect())
}

/// Parses `argv` (without the program name) with `env` as the environment.
pub fn parse_args(argv: &[String], env: &HashMap<String, String>) -> Result<Parsed> {
    let mut full = vec!["nixos-test-driver".to_string()];
    full.extend(argv.iter().cloned());
    let mut args = match Args::try_parse_from(&full) {
        Ok(a) => a,
        Err(e) => {
            use clap::error::ErrorKind;
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    Ok(Parsed::Print(e.render().to_string()))
                }
                _ => {
                    let text = e.render().to_string();
                    let text = text
                        .trim_end()
                        .strip_prefix("error: ")
                        .unwrap_or(text.trim_end());
                    Err(Error::Config(text.to_string()))
                }
            };
        }
    };
    let mut cfg = Config::default();

    if let Some(path) = &args.config {
        json::apply_file(path, &mut cfg)?;
    }

    // A test script given after a list-valued flag is swallowed by it, as in argparse;
    // take it back when the last value cannot be what the flag lists.
    if args.testscript.is_none() {
        recover_test_script(&mut args);
    }

    if args.keep_vm_state {
        cfg.warnings
            .push("--keep-vm-state is deprecated, use --keep-machine-state".to_string());
    }
    cfg.keep_machine_state = args.keep_machine_state || args.keep_vm_state;
    cfg.interactive = args.interactive && !args.no_interactive;
    cfg.vnc = args.vnc;
    cfg.reuse_boots = args.reuse_boots;
    cfg.keep_going = args.keep_going;
    cfg.skip_check = args.skip_check;
    cfg.pytest_args = args.pytest_args.clone();
    cfg.debug_hook_attach = args.debug_hook_attach.clone();
    cfg.dump_vsocks = args.dump_vsocks.filter(|&n| n != 0);
    if let Some(level) = args.log_level {
        cfg.log_level = level;
    }

    // Machines.
    let start_scripts = args
        .start_scripts
        .clone()
        .or_else(|| split_env(env, "startScripts"))
        .unwrap_or_default();
    let vm_scripts = args
        .vm_start_scripts
        .clone()
        .or_else(|| split_env(env, "vmStartScripts"))
        .unwrap_or_default();
    let vm_names = args.vm_names.clone().or_else(|| split_env(env, "vmNames"));
    let container_scripts = args
        .container_start_scripts
        .clone()
        .or_else(|| split_env(env, "containerStartScripts"))
        .unwrap_or_default();
    let container_names = args
        .container_names
        .clone()
        .or_else(|| split_env(env, "containerNames"));

    for s in &start_scripts {
        cfg.machines
            .push(machine(s, None, MachineKind::of_start_script(s)));
    }
    add_named(
        &mut cfg,
        &vm_scripts,
        vm_names.as_deref(),
        MachineKind::Qemu,
        "--vm-names",
        "--vm-start-scripts",
    )?;
    add_named(
        &mut cfg,
        &container_scripts,
        container_names.as_deref(),
        MachineKind::Nspawn,
        "--container-names",
        "--container-start-scripts",
    )?;

    // VLANs.
    let vlans = args.vlans.clone().or_else(|| split_env(env, "vlans"));
    for v in vlans.unwrap_or_default() {
        let nr: u32 = v.parse().map_err(|_| {
            Error::Config(format!(
                "invalid VLAN number `{v}` (expected an integer 1-255)"
            ))
        })?;
        if !(1..=255).contains(&nr) {
            return Err(Error::Config(format!(
                "invalid VLAN number `{nr}` (expected an integer 1-255)"
            )));
        }
        cfg.vlans.push(nr);
    }
    super::dedup_vlans(&mut cfg.vlans);

    // Timeouts.
    if let Some(t) = args
        .global_timeout
        .clone()
        .or_else(|| env.get("globalTimeout").cloned())
    {
        cfg.global_timeout = parse_seconds(&t, "--global-timeout")?
            .ok_or_else(|| Error::Config("--global-timeout must be positive".to_string()))?;
    }
    if let Some(t) = args
        .boot_timeout
        .clone()
        .or_else(|| env.get("NIXOS_TEST_NG_BOOT_TIMEOUT").cloned())
    {
        cfg.boot_timeout = parse_seconds(&t, "--boot-timeout")?;
    }

    // Output directory and reports.
    let out = args
        .output_directory
        .clone()
        .unwrap_or_else(|| PathBuf::from("."));
    cfg.out_dir = writable_dir(&out)?;
    cfg.junit_xml = args.junit_xml.as_ref().map(|p| cfg.out_dir.join(p));
    cfg.html_report = match (&args.html_report, &args.output_directory) {
        _ if args.no_html_report => None,
        (Some(p), _) => Some(cfg.out_dir.join(p)),
        (None, Some(_)) => Some(cfg.out_dir.join("report.html")),
        (None, None) => None,
    };

    // The script.
    if let Some(s) = args
        .testscript
        .clone()
        .or_else(|| env.get("testScript").cloned())
    {
        cfg.test_script = Some(PathBuf::from(s));
    }
    if let Some(script) = &cfg.test_script {
        if !script.is_file() {
            return Err(Error::Config(format!(
                "test script `{}` does not exist or is not a file",
                script.display()
            )));
        }
    } else if !cfg.interactive {
        return Err(Error::Config(
            "no test script given (pass it as an argument, set `testScript`, or use --interactive)"
                .to_string(),
        ));
    }

    cfg.apply_env(env)?;
    validate_machines(&mut cfg)?;
    Ok(Parsed::Run(Box::new(cfg)))
}

fn machine(script: &str, name: Option<&str>, kind: MachineKind) -> MachineConfig {
    MachineConfig {
        name: name
            .map(str::to_string)
            .unwrap_or_else(|| names::from_start_script_of(script, kind)),
        start_script: PathBuf::from(script),
        kind,
        inline: None,
    }
}

fn add_named(
    cfg: &mut Config,
    scripts: &[String],
    names: Option<&[String]>,
    kind: MachineKind,
    names_flag: &str,
    scripts_flag: &str,
) -> Result<()> {
    if let Some(names) = names {
        if names.len() != scripts.len() {
            return Err(Error::Config(format!(
                "{names_flag} lists {} names but {scripts_flag} lists {} scripts; they must match one to one",
                names.len(),
                scripts.len()
            )));
        }
    }
    for (i, s) in scripts.iter().enumerate() {
        let name = names.map(|n| n[i].as_str());
        cfg.machines.push(machine(s, name, kind));
    }
    Ok(())
}

fn recover_test_script(args: &mut Args) {
    let looks_like_script = |v: &str| v.ends_with(".py") || !is_executable(Path::new(v));
    for list in [
        &mut args.start_scripts,
        &mut args.vm_start_scripts,
        &mut args.container_start_scripts,
    ]
    .into_iter()
    .flatten()
    {
        if list.last().is_some_and(|v| looks_like_script(v)) {
            args.testscript = list.pop();
            return;
        }
    }
    if let Some(list) = args.vlans.as_mut() {
        if list.last().is_some_and(|v| v.parse::<u32>().is_err()) {
            args.testscript = list.pop();
            return;
        }
    }
    for list in [&mut args.vm_names, &mut args.container_names]
        .into_iter()
        .flatten()
    {
        if list
            .last()
            .is_some_and(|v| v.ends_with(".py") && Path::new(v).is_file())
        {
            args.testscript = list.pop();
            return;
        }
    }
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Parses seconds (an integer or a decimal); `0` means no limit.
pub(crate) fn parse_seconds(text: &str, what: &str) -> Result<Option<Duration>> {
    let secs: f64 = text
        .trim()
        .parse()
        .map_err(|_| Error::Config(format!("{what}: `{text}` is not a number of seconds")))?;
    if !secs.is_finite() || secs < 0.0 {
        return Err(Error::Config(format!(
            "{what}: `{text}` is not a number of seconds"
        )));
    }
    if secs == 0.0 {
        return Ok(None);
    }
    Duration::try_from_secs_f64(secs)
        .map(Some)
        .map_err(|_| Error::Config(format!("{what}: `{text}` seconds is too long")))
}

fn writable_dir(p: &Path) -> Result<PathBuf> {
    let md = std::fs::metadata(p)
        .map_err(|_| Error::Config(format!("output directory `{}` does not exist", p.display())))?;
    if !md.is_dir() {
        return Err(Error::Config(format!(
            "output directory `{}` is not a directory",
            p.display()
        )));
    }
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap_or_default();
    // SAFETY: access(2) on a NUL-terminated path.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK) } != 0 {
        return Err(Error::Config(format!(
            "output directory `{}` is not writable",
            p.display()
        )));
    }
    p.canonicalize()
        .map_err(|e| Error::io(format!("resolving {}", p.display()), e))
}

fn validate_machines(cfg: &mut Config) -> Result<()> {
    let mut seen: HashMap<String, String> = HashMap::new();
    for m in cfg.machines.iter_mut().filter(|m| m.inline.is_none()) {
        // Machines run with their state dir as cwd, so relative paths must be resolved now.
        if let Ok(abs) = std::path::absolute(&m.start_script) {
            m.start_script = abs;
        }
    }
    let odd_names: Vec<String> = cfg
        .machines
        .iter()
        .filter(|m| m.name.contains('/'))
        .map(|m| {
            format!(
                "machine `{}` takes its name from the first `run-` in the path `{}` (upstream's \
                 rule); scripts call it `{}`; pass --vm-names to choose another",
                m.name,
                m.start_script.display(),
                names::pythonize(&m.name)
            )
        })
        .collect();
    cfg.warnings.extend(odd_names);
    for m in &cfg.machines {
        let script = &m.start_script;
        let shown = match m.inline {
            Some(_) => format!("the inline configuration of `{}`", m.name),
            None => script.display().to_string(),
        };
        // An inline configuration was checked as `--config` was read.
        if m.inline.is_none() && !script.exists() {
            return Err(Error::Config(format!(
                "start script `{shown}` of machine `{}` does not exist",
                m.name
            )));
        }
        if m.inline.is_none() && !is_executable(script) {
            return Err(Error::Config(format!(
                "start script `{shown}` of machine `{}` is not an executable file",
                m.name
            )));
        }
        let py = names::pythonize(&m.name);
        if let Some(other) = seen.insert(py.clone(), shown.clone()) {
            let hint = if m.name == "machine" {
                " (a start script not named `run-<name>-vm` is called `machine`; rename it or pass --vm-names)"
            } else {
                ""
            };
            return Err(Error::Config(format!(
                "two machines are both called `{py}`: `{other}` and `{shown}`{hint}"
            )));
        }
    }
    let unnamed = cfg
        .machines
        .iter()
        .filter(|m| m.name == "machine" && !m.start_script.ends_with("run-machine-vm"))
        .count();
    if unnamed == 1 {
        cfg.warnings.push(
            "a start script is not named `run-<name>-vm`; its machine is called `machine`".into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    struct Fixture {
        dir: PathBuf,
    }

    impl Fixture {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("ntng-cli-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            for name in ["run-a-vm", "run-b-vm", "qemu-thing"] {
                let p = dir.join(name);
                fs::write(&p, "#!/bin/sh\n").unwrap();
                fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
            }
            fs::write(dir.join("notexec-vm"), "").unwrap();
            fs::write(dir.join("t.py"), "pass\n").unwrap();
            Fixture { dir }
        }
        fn p(&self, n: &str) -> String {
            self.dir.join(n).display().to_string()
        }
        fn parse(&self, args: &[&str], env: &[(&str, &str)]) -> Result<Config> {
            let argv: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            let env = env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            match parse_args(&argv, &env)? {
                Parsed::Run(c) => Ok(*c),
                Parsed::Print(t) => panic!("printed {t}"),
            }
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn the_transport_comes_from_the_environment() {
        let f = Fixture::new("transport");
        let script = f.p("t.py");
        let c = f.parse(&[&script], &[]).unwrap();
        assert_eq!(c.transport, crate::config::Transport::Auto);
        let c = f
            .parse(&[&script], &[("NIXOS_TEST_NG_TRANSPORT", "backdoor")])
            .unwrap();
        assert_eq!(c.transport, crate::config::Transport::Backdoor);
        let e = f
            .parse(&[&script], &[("NIXOS_TEST_NG_TRANSPORT", "ssh")])
            .unwrap_err();
        assert!(
            matches!(&e, Error::Config(m) if m.starts_with("NIXOS_TEST_NG_TRANSPORT=\"ssh\" is not a transport")),
            "{e}"
        );
    }

    #[test]
    fn script_anywhere_and_vlans_optional() {
        let f = Fixture::new("anywhere");
        let c = f
            .parse(
                &[
                    "--vm-start-scripts",
                    &f.p("run-a-vm"),
                    &f.p("run-b-vm"),
                    &f.p("t.py"),
                ],
                &[],
            )
            .unwrap();
        assert_eq!(c.test_script.unwrap(), PathBuf::from(f.p("t.py")));
        assert_eq!(c.machines.len(), 2);
        assert_eq!(c.machines[1].name, "b");
        assert!(c.vlans.is_empty());
        let c = f
            .parse(&["--vlans", "1", "2", "1", &f.p("t.py")], &[])
            .unwrap();
        assert_eq!(c.vlans, vec![1, 2]);
    }

    #[test]
    fn vlans_are_deduplicated_and_sorted_as_upstreams_set() {
        let f = Fixture::new("vlanorder");
        let t = f.p("t.py");
        let c = f.parse(&["--vlans", "2", "1", "2", &t], &[]).unwrap();
        assert_eq!(c.vlans, vec![1, 2]);
        let c = f.parse(&[&t], &[("vlans", "3 1 3")]).unwrap();
        assert_eq!(c.vlans, vec![1, 3]);
    }

    #[test]
    fn vnc_flag() {
        let f = Fixture::new("vnc");
        let t = f.p("t.py");
        assert!(!f.parse(&[&t], &[]).unwrap().vnc);
        // with or without --interactive
        let c = f.parse(&["--vnc", &t], &[]).unwrap();
        assert!(c.vnc && !c.interactive);
        let c = f.parse(&["-I", "--vnc"], &[]).unwrap();
        assert!(c.vnc && c.interactive);
        let e = f.parse(&["--vnc=1", &t], &[]).unwrap_err();
        assert!(e.to_string().contains("--vnc"), "{e}");
    }

    #[test]
    fn reuse_boots_flag_and_variable() {
        let f = Fixture::new("reuse");
        let t = f.p("t.py");
        assert_eq!(f.parse(&[&t], &[("HOME", "/h")]).unwrap().boot_cache, None);
        let c = f.parse(&["--reuse-boots", &t], &[("HOME", "/h")]).unwrap();
        let store = c.boot_cache.unwrap();
        assert_eq!(store.dir, PathBuf::from("/h/.cache/nixos-test-ng/boots"));
        let c = f
            .parse(&[&t], &[("NIXOS_TEST_NG_BOOT_CACHE", "/c")])
            .unwrap();
        assert_eq!(c.boot_cache.unwrap().dir, PathBuf::from("/c"));
        let e = f
            .parse(
                &["--reuse-boots", &t],
                &[("NIXOS_TEST_NG_BOOT_CACHE_SIZE", "lots")],
            )
            .unwrap_err();
        assert!(e.to_string().contains("is not a size"), "{e}");
    }

    #[test]
    fn env_defaults_and_flag_precedence() {
        let f = Fixture::new("env");
        let scripts = format!("{} {}", f.p("run-a-vm"), f.p("run-b-vm"));
        let c = f
            .parse(
                &["--global-timeout", "30"],
                &[
                    ("startScripts", &scripts),
                    ("vlans", "1  2"),
                    ("globalTimeout", "99"),
                    ("testScript", &f.p("t.py")),
                ],
            )
            .unwrap();
        assert_eq!(c.global_timeout, Duration::from_secs(30));
        assert_eq!(c.vlans, vec![1, 2]);
        assert_eq!(
            c.machines
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
    }

    #[test]
    fn names_must_match_scripts() {
        let f = Fixture::new("names");
        let e = f
            .parse(
                &[
                    "--vm-names",
                    "x",
                    "--vm-start-scripts",
                    &f.p("run-a-vm"),
                    &f.p("run-b-vm"),
                    "--",
                    &f.p("t.py"),
                ],
                &[],
            )
            .unwrap_err();
        assert!(e.to_string().contains("must match"), "{e}");
        let c = f
            .parse(
                &[
                    "--vm-names",
                    "x",
                    "--vm-start-scripts",
                    &f.p("qemu-thing"),
                    "--",
                    &f.p("t.py"),
                ],
                &[],
            )
            .unwrap();
        assert_eq!(c.machines[0].name, "x");
    }

    #[test]
    fn bad_input_is_named() {
        let f = Fixture::new("bad");
        let t = f.p("t.py");
        let e = f
            .parse(
                &["--vm-start-scripts", &f.p("run-missing-vm"), "--", &t],
                &[],
            )
            .unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        let e = f
            .parse(&["--vm-start-scripts", &f.p("notexec-vm"), "--", &t], &[])
            .unwrap_err();
        assert!(e.to_string().contains("not an executable"), "{e}");
        let e = f.parse(&["--bogus", &t], &[]).unwrap_err();
        assert!(e.to_string().contains("--bogus"), "{e}");
        let e = f
            .parse(&["--vlans", "x1", "--global-timeout", "1", &t], &[])
            .unwrap_err();
        assert!(e.to_string().contains("x1"), "{e}");
        let e = f.parse(&[&f.p("nope.py")], &[]).unwrap_err();
        assert!(e.to_string().contains("nope.py"), "{e}");
        let e = f.parse(&["-o", "/nonexistent-dir", &t], &[]).unwrap_err();
        assert!(e.to_string().contains("/nonexistent-dir"), "{e}");
        let e = f
            .parse(
                &[
                    "--start-scripts",
                    &f.p("qemu-thing"),
                    &f.p("qemu-thing"),
                    "--",
                    &t,
                ],
                &[],
            )
            .unwrap_err();
        assert!(e.to_string().contains("both called `machine`"), "{e}");
    }

    #[test]
    fn upstream_prefixes_work() {
        let f = Fixture::new("prefix");
        let c = f
            .parse(
                &[
                    "--junit=junit.xml",
                    "--debug-hook=attach-cmd",
                    "-K",
                    &f.p("t.py"),
                ],
                &[],
            )
            .unwrap();
        assert!(c.junit_xml.unwrap().ends_with("junit.xml"));
        assert_eq!(c.debug_hook_attach.as_deref(), Some("attach-cmd"));
        assert!(c.keep_machine_state);
    }
}
